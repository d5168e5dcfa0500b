"""Hugging Face transformers state_dicts <-> :class:`scene3d.models.vit.ViT` (DINOv2, DINOv2 with registers, SigLIP2).

Key names follow transformers ``HF_TRANSFORMERS_VERSION`` (pinned in requirements.txt): ``Dinov2Model``,
``Dinov2WithRegistersModel`` (``attention.{q,k,v,o}_proj``) and ``Siglip2VisionModel``. Importing also accepts

- a key prefix, found from the patch-embedding key: ``dinov2.`` (``Dinov2ForImageClassification``),
  ``vision_model.`` (a full ``Siglip2Model`` checkpoint; its text tower is ignored), ...;
- the legacy DINOv2 names of the hub checkpoints (``attention.attention.{query,key,value}``,
  ``attention.output.dense``), renamed as transformers renames them when loading.

``from_hf_state_dict(model_or_abstract, sd, family) -> (nnx.State, report)``; ``to_hf_state_dict(model, family)
-> {key: np.ndarray}`` (5.23 names, float32); ``hf_key_shapes(model)`` (abstract, nothing allocated);
``read_hf_checkpoint(path)`` reads safetensors / torch files or a folder of shards; ``load_vit(variant, source)``
builds a ViT (abstractly, no random init materialised) with HF weights; ``check_hf_config(path, variant)`` compares
the ``config.json`` of a downloaded snapshot / ``save_pretrained`` folder with a ViT variant's sizes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.convert.engine import entry, linear, norm
from scene3d.models.vit import FAMILIES, ViT, vit_config

HF_TRANSFORMERS_VERSION = "5.23.0"

_DINO_LEGACY = ((".attention.attention.query.", ".attention.q_proj."),
                (".attention.attention.key.", ".attention.k_proj."),
                (".attention.attention.value.", ".attention.v_proj."),
                (".attention.output.dense.", ".attention.o_proj."))
_ANCHOR = {"dinov2": "embeddings.patch_embeddings.projection.weight",
           "dinov2_reg": "embeddings.patch_embeddings.projection.weight",
           "siglip2": "embeddings.patch_embedding.weight"}


def _cls_grid_to_official(arrays, xp):
    cls_pos, grid = arrays
    d = grid.shape[-1]
    return [xp.concatenate([xp.reshape(cls_pos, (1, 1, d)), xp.reshape(grid, (1, -1, d))], axis=1)]


# DINOv2 position embeddings (1, 1 + S * S, D) <-> our cls_pos (D,) and grid (S, S, D).
CLS_GRID = engine.Kind("cls_grid", _cls_grid_to_official, lambda t, s: [t[0][0, 0], t[0][0, 1:].reshape(s[1])])


def _tower(family: str, depth: int) -> list[engine.Entry]:
    b = ("blocks", "layers")
    if family == "siglip2":
        out = linear("embeddings.patch_embedding", ("patch_embed", "proj"))  # features (py, px, c) on both sides
        out.append(entry("embeddings.position_embedding.weight", ("pos_embed",),
                         engine.reshape(lambda s: (s[0] * s[1], s[2]))))
        layer, norms, attn, o = "encoder.layers.{i}", ("layer_norm1", "layer_norm2"), "self_attn", "out_proj"
    else:
        out = linear("embeddings.patch_embeddings.projection", ("patch_embed", "proj"), kind=engine.patch(3))
        out += [engine.Entry(("embeddings.position_embeddings",), (("cls_pos",), ("pos_embed",)), CLS_GRID),
                entry("embeddings.cls_token", ("cls_token",), engine.reshape(lambda s: (1, 1) + s)),
                entry("embeddings.mask_token", ("mask_token",), engine.reshape(lambda s: (1,) + s),
                      optional=family == "dinov2")]
        if family == "dinov2_reg":
            out.append(entry("embeddings.register_tokens", ("registers",), engine.reshape(lambda s: (1,) + s)))
        layer, norms, attn, o = "encoder.layer.{i}", ("norm1", "norm2"), "attention", "o_proj"
    for i in range(depth):
        L, ix = layer.format(i=i), (i,)
        out += norm(f"{L}.{norms[0]}", b + ("norm1",), ix) + norm(f"{L}.{norms[1]}", b + ("norm2",), ix)
        for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", o)):
            out += linear(f"{L}.{attn}.{hf}", b + ("attn", ours), ix)
        out += linear(f"{L}.mlp.fc1", b + ("mlp", "fc1"), ix) + linear(f"{L}.mlp.fc2", b + ("mlp", "fc2"), ix)
        if family != "siglip2":
            out += [entry(f"{L}.layer_scale1.lambda1", b + ("ls1",), index=ix),
                    entry(f"{L}.layer_scale2.lambda1", b + ("ls2",), index=ix)]
    return out + norm("post_layernorm" if family == "siglip2" else "layernorm", ("norm",))


def _head() -> list[engine.Entry]:
    """SigLIP2 attention-pooling head (nn.MultiheadAttention packs q, k, v into in_proj)."""
    a = ("head", "attn")
    return ([entry("head.probe", ("head", "probe"), engine.reshape(lambda s: (1,) + s)),
             engine.Entry(("head.attention.in_proj_weight",), tuple(a + (n, "kernel") for n in "qkv"), engine.ROWS),
             engine.Entry(("head.attention.in_proj_bias",), tuple(a + (n, "bias") for n in "qkv"), engine.ROWS_BIAS)]
            + linear("head.attention.out_proj", a + ("out",)) + norm("head.layernorm", ("head", "norm"))
            + linear("head.mlp.fc1", ("head", "mlp", "fc1")) + linear("head.mlp.fc2", ("head", "mlp", "fc2")))


class HFViTLayout(engine.Layout):
    """The transformers layout of one ViT family (the table is built from the model's or state's variables)."""
    anchor_required = True
    strict = False  # other towers / heads of a checkpoint are ignored (and reported)
    variables = nnx.Variable

    def __init__(self, family: str):
        if family not in FAMILIES:
            raise ValueError(f"HF ViT layout: family must be one of {FAMILIES}, got {family!r}")
        self.family, self.anchor, self.what = family, _ANCHOR[family], f"{family!r} vision tower"
        self.renames = _DINO_LEGACY if family in ("dinov2", "dinov2_reg") else ()

    def table(self, model) -> list[engine.Entry]:
        flat = self.flat(model)
        depth = flat[("blocks", "layers", "norm1", "scale")].shape[0]
        return _tower(self.family, depth) + (_head() if ("head", "probe") in flat else [])

    def validate(self, keys, name):
        if any(".mlp.weights_in." in k or ".mlp.gate_proj." in k for k in keys):
            raise ValueError(f"{name}: SwiGLU FFN checkpoints (dinov2-giant, use_swiglu_ffn=True) are not supported "
                             "by ViT")


LAYOUTS = {f: HFViTLayout(f) for f in FAMILIES}


def _layout(model_or_state, family: str | None, fn: str) -> HFViTLayout:
    if isinstance(model_or_state, nnx.Module):
        fam = getattr(model_or_state, "family", None)
        if family is not None and fam is not None and family != fam:
            raise ValueError(f"{fn}: family={family!r} but the model is a {fam!r} ViT")
        family = family or fam
    if family is None:
        raise ValueError(f"{fn}: pass family= ('dinov2' | 'dinov2_reg' | 'siglip2') with a State")
    if family not in LAYOUTS:
        raise ValueError(f"{fn}: family must be one of {FAMILIES}, got {family!r}")
    return LAYOUTS[family]


def from_hf_state_dict(model_or_abstract, sd: Mapping[str, Any], family: str | None = None):
    """HF PyTorch state_dict -> (nnx.State for ``model_or_abstract``, report).

    ``model_or_abstract``: a ViT (real or from ``nnx.eval_shape``; frozen or not) or its (abstract) State; the
    result has the same structure, variable types and dtypes. Raises ValueError naming every missing key and
    wrong shape with the expected (HF) shape. report: 'prefix', 'loaded' (HF keys used), 'ignored' (other
    keys), 'renamed_legacy' (count), 'defaulted' (optional HF tensors absent, left as initialised).
    """
    layout = _layout(model_or_abstract, family, "from_hf_state_dict")
    state, r = layout.to_state(model_or_abstract, sd, name=f"HF state_dict (transformers {HF_TRANSFORMERS_VERSION} "
                                                           "names)")
    return state, {"prefix": r.prefix, "loaded": r.consumed, "ignored": sorted(r.ignored),
                   "renamed_legacy": r.renamed, "defaulted": sorted(r.initialised)}


def to_hf_state_dict(model_or_state, family: str | None = None, *, prefix: str = "") -> dict[str, Any]:
    """ViT (or its State) -> HF PyTorch state_dict as float32 numpy arrays, transformers 5.23 key names.

    Load it with ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    layout = _layout(model_or_state, family, "to_hf_state_dict")
    return layout.export(model_or_state, prefix=prefix)


def hf_key_shapes(model_or_abstract, family: str | None = None, *, prefix: str = "") -> dict[str, tuple]:
    """{HF key: shape} that :func:`to_hf_state_dict` would write, computed abstractly (nothing allocated)."""
    return _layout(model_or_abstract, family, "hf_key_shapes").shapes(model_or_abstract, prefix=prefix)


read_hf_checkpoint = engine.load_state_dict


def load_vit(variant: str | None, source, **vit_kwargs) -> tuple[ViT, dict]:
    """ViT ``variant`` (and ``vit_kwargs``) with HF weights from ``source`` (a state_dict or a checkpoint path /
    folder), built abstractly (``nnx.eval_shape``: no random initialisation materialised). Returns (model,
    report)."""
    sd = source if isinstance(source, Mapping) else read_hf_checkpoint(source)
    abstract = nnx.eval_shape(lambda: ViT(variant, rngs=nnx.Rngs(0), **vit_kwargs))
    graphdef, _ = nnx.split(abstract)
    state, report = from_hf_state_dict(abstract, sd)
    return nnx.merge(graphdef, state), report


# transformers model_type -> our family (a full Siglip2Model's config holds the tower's under vision_config).
_MODEL_TYPES = {"dinov2": "dinov2", "dinov2_with_registers": "dinov2_reg", "siglip2_vision_model": "siglip2",
                "siglip2": "siglip2"}


def check_hf_config(path, variant: str, **vit_overrides) -> dict | None:
    """Compare the transformers ``config.json`` next to a checkpoint (``path``: a snapshot / ``save_pretrained``
    folder or a weights file in one) with ViT ``variant``: the model type's family, width, depth, heads, patch,
    MLP width, position grid and registers. Returns the (vision) config read, or None when there is no
    config.json; raises ValueError naming the file and every field that differs."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: cannot read the transformers config: {e}") from e
    if not isinstance(hf, dict):
        raise ValueError(f"{file}: expected a JSON object (a transformers config), got {type(hf).__name__}")
    if hf.get("model_type") == "siglip2" and isinstance(hf.get("vision_config"), dict):
        hf = {"model_type": "siglip2_vision_model", **hf["vision_config"]}
    cfg = vit_config(variant, **vit_overrides)
    family = _MODEL_TYPES.get(hf.get("model_type"))
    if family is None:
        raise ValueError(f"{file}: model_type {hf.get('model_type')!r} is not a supported vision tower (expected one "
                         f"of {sorted(_MODEL_TYPES)})")
    want = {"family": cfg.family, "hidden_size": cfg.dim, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.num_heads, "patch_size": cfg.patch}
    got = {"family": family}
    for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size"):
        if k in hf:
            got[k] = hf[k]
    if family == "siglip2":
        want.update(intermediate_size=cfg.mlp_dim, num_patches=cfg.pos_grid ** 2)
        got.update({k: hf[k] for k in ("intermediate_size", "num_patches") if k in hf})
    else:
        want.update(mlp_ratio=cfg.mlp_dim / cfg.dim, image_size=cfg.native_size)
        got.update({k: hf[k] for k in ("mlp_ratio", "image_size") if k in hf})
        if family == "dinov2_reg":
            want["num_register_tokens"] = cfg.num_registers
            got.update({k: hf[k] for k in ("num_register_tokens",) if k in hf})
    bad = [f"{k}={got[k]!r} (the tower {variant!r} has {want[k]!r})" for k in want if k in got and got[k] != want[k]]
    if bad:
        raise ValueError(f"{file}: the checkpoint does not match config.model.encoder={variant!r}: " + ", ".join(bad))
    return hf
