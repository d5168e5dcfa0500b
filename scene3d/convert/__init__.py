"""Checkpoint conversion: one engine (``engine``: tables of official keys <-> our variables applied both ways, one
import report, state_dict file IO) and one table per layout: ``can3tok``, ``scenetok``, ``scenegen``, ``image_vae``
(the released PyTorch codebases), ``hf_vit`` (transformers ViT towers) and ``torch_port`` (our plain-PyTorch port,
``scene3d_torch``). ``config_from_official`` of each family lives in its layout module.

``layout_for(model, name)`` finds the layout of a model class ('official' or 'torch_port'), keyed by class;
``layouts_of(model)`` lists the names a class supports. A layout's ``to_state_dict(model, extra=...)`` writes the
file a release would hold and ``to_state(model, state_dict, name=...)`` reads one (-> nnx.State, Report).
"""
from __future__ import annotations

from scene3d.convert import can3tok, engine, image_vae, scenegen, scenetok, torch_port
from scene3d.models.can3tok import Can3Tok
from scene3d.models.image_vae import ImageVAE
from scene3d.models.scenegen import SceneGen
from scene3d.models.scenetok import SceneTok

# model class -> {layout name: layout}
LAYOUTS: dict[type, dict[str, engine.Layout]] = {
    Can3Tok: {"official": can3tok.LAYOUT},
    SceneTok: {"official": scenetok.LAYOUT},
    SceneGen: {"official": scenegen.LAYOUT},
    ImageVAE: {"official": image_vae.LAYOUT},
}
for _cls in torch_port.SPECS:  # a class may have both (Can3Tok, SceneTok)
    LAYOUTS.setdefault(_cls, {})["torch_port"] = torch_port.LAYOUT


def layouts_of(model_or_class) -> list[str]:
    """The layout names ``model_or_class`` supports (official first)."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    return sorted(LAYOUTS.get(cls, {}), key=lambda n: n != "official")


def layout_for(model_or_class, name: str) -> engine.Layout:
    """The ``name`` layout of ``model_or_class`` (ValueError naming the ones it has)."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    layout = LAYOUTS.get(cls, {}).get(name)
    if layout is None:
        raise ValueError(f"{cls.__name__} has no {name!r} layout; {cls.__name__} supports: "
                         f"{layouts_of(cls) or 'none'}")
    return layout
