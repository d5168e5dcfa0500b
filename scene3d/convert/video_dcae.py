"""Open-Sora v2 Video DC-AE official state_dict (``F32T4C128_AE.safetensors`` / DCAE_HF.state_dict()) <-> our
:class:`~scene3d.models.video_dcae.VideoDCAE`.

Our module tree mirrors the official names, so the table is derived from our variable paths: ``kernel`` and the
RMSNorm ``scale`` are ``weight``; torch Conv3d weights (O, I/groups, kt, kh, kw) <-> our channels-last kernels
(kt, kh, kw, I/groups, O) (the engine's CONV kind, depthwise and grouped convs included); biases and norm
parameters copy. No buffers, no training-only tensors in the release file (339 keys at full size).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.models.video_dcae import VideoDCAE
from scene3d.specs.video_dcae import config_from_dict


def _official_key(path: tuple) -> str:
    return ".".join("weight" if p in ("kernel", "scale") else str(p) for p in path)


class VideoDCAELayout(engine.Layout):
    what = "VideoDCAE"
    anchor = "encoder.project_in.conv.weight"
    anchor_required = True

    def table(self, model) -> list[engine.Entry]:
        return [engine.entry(_official_key(p), p, engine.CONV if len(a.shape) == 5 else engine.COPY)
                for p, a in self.flat(model).items()]


LAYOUT = VideoDCAELayout()


def official_shapes(model) -> dict[str, tuple[int, ...]]:
    """{official key: torch shape} for ``model``'s configuration (nothing allocated with an abstract model)."""
    return LAYOUT.shapes(model)


def export_official(model, state=None, *, prefix: str = "") -> dict[str, Any]:
    return LAYOUT.export(model, state, prefix=prefix)


def official_to_state(model, state_dict: Mapping[str, Any], **kwargs):
    return LAYOUT.to_state(model, state_dict, **kwargs)


def import_official(model: VideoDCAE, state_dict, **kwargs) -> engine.Report:
    """Load an official state_dict (mapping or file) into ``model`` in place."""
    return LAYOUT.import_into(model, state_dict, **kwargs)


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A fixture config.json path / dict (with ``dcae_config``) or a DCAEConfig dict -> VideoDCAE kwargs."""
    if not isinstance(config, Mapping):
        with open(config) as f:
            config = json.load(f)
    return config_from_dict(config)


def model_from_official(config, weights, *, strict: bool = True, **model_kwargs) -> tuple[VideoDCAE, engine.Report]:
    """A VideoDCAE built abstractly from ``config`` (see :func:`load_config`) holding ``weights`` (dict or file)."""
    kwargs = dict(load_config(config), **model_kwargs)
    return LAYOUT.build(lambda: VideoDCAE(rngs=nnx.Rngs(0), **kwargs), weights, strict=strict)
