"""Hugging Face transformers <-> :class:`scene3d.models.vit.ViT` weights (DINOv2, DINOv2 with registers, SigLIP2).

Key names follow transformers ``HF_TRANSFORMERS_VERSION`` (pinned in requirements.txt): ``Dinov2Model``,
``Dinov2WithRegistersModel`` (``attention.{q,k,v,o}_proj``) and ``Siglip2VisionModel``. Importing also accepts

- a key prefix, found from the patch-embedding key: ``dinov2.`` (``Dinov2ForImageClassification``),
  ``vision_model.`` (a full ``Siglip2Model`` checkpoint; its text tower is ignored), ...;
- the legacy DINOv2 names of the hub checkpoints (``attention.attention.{query,key,value}``,
  ``attention.output.dense``), renamed as transformers renames them when loading.

``from_hf_state_dict(model_or_abstract, sd, family) -> (nnx.State, report)``; ``to_hf_state_dict(model, family)
-> {key: np.ndarray}`` (5.23 names, float32); ``hf_key_shapes(model)`` (abstract, nothing allocated);
``read_hf_checkpoint(path)`` reads safetensors / torch files; ``load_vit(variant, source)`` builds a ViT
(abstractly, no random init materialised) with HF weights.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models.vit import FAMILIES, ViT

HF_TRANSFORMERS_VERSION = "5.23.0"

# Hub checkpoints of DINOv2 keep the pre-5.0 attention names; transformers 5.x renames them on load.
_LEGACY_RENAMES = {
    "dinov2": ((".attention.attention.query.", ".attention.q_proj."),
               (".attention.attention.key.", ".attention.k_proj."),
               (".attention.attention.value.", ".attention.v_proj."),
               (".attention.output.dense.", ".attention.o_proj.")),
}
_LEGACY_RENAMES["dinov2_reg"] = _LEGACY_RENAMES["dinov2"]

_ANCHOR = {"dinov2": "embeddings.patch_embeddings.projection.weight",
           "dinov2_reg": "embeddings.patch_embeddings.projection.weight",
           "siglip2": "embeddings.patch_embedding.weight"}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Our variables ``ours`` (paths) <-> HF tensors ``hf`` (keys; '{i}' = layer index when per_layer)."""
    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_ours: Callable[..., tuple]
    to_hf: Callable[..., tuple]
    per_layer: bool = False
    optional: bool = False  # may be absent from an HF state_dict (then left as initialised)


def _linear(ours: str, hf: str, per_layer: bool = False) -> list[_Rule]:
    """nn.Linear weight (out, in) / bias <-> nnx kernel (in, out) / bias."""
    return [_Rule((f"{ours}/kernel",), (f"{hf}.weight",), lambda w: (w.T,), lambda k: (k.T,), per_layer),
            _Rule((f"{ours}/bias",), (f"{hf}.bias",), lambda b: (b,), lambda b: (b,), per_layer)]


def _norm(ours: str, hf: str, per_layer: bool = False) -> list[_Rule]:
    ident = lambda x: (x,)  # noqa: E731
    return [_Rule((f"{ours}/scale",), (f"{hf}.weight",), ident, ident, per_layer),
            _Rule((f"{ours}/bias",), (f"{hf}.bias",), ident, ident, per_layer)]


def _same(ours: str, hf: str, ours_shape: Callable, hf_shape: Callable, per_layer=False, optional=False) -> _Rule:
    """A reshape-only correspondence (ours_shape / hf_shape map the other side's array to the target shape)."""
    return _Rule((ours,), (hf,), lambda x: (x.reshape(ours_shape(x)),), lambda x: (x.reshape(hf_shape(x)),),
                 per_layer, optional)


def _cat(xs, axis):
    return jnp.concatenate(xs, axis) if any(isinstance(x, jax.Array) for x in xs) else np.concatenate(xs, axis)


def _rules(family: str) -> list[_Rule]:
    if family not in FAMILIES:
        raise ValueError(f"convert_hf: family must be one of {FAMILIES}, got {family!r}")
    r: list[_Rule] = []
    if family in ("dinov2", "dinov2_reg"):
        def conv_to_ours(w):  # (D, C, p, p) -> (p * p * C, D), rows (py, px, c) as PatchEmbed
            return (w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]),)

        def conv_to_hf(k):
            p = int(round((k.shape[0] // 3) ** 0.5))
            return (k.reshape(p, p, 3, k.shape[1]).transpose(3, 2, 0, 1),)

        def pos_to_ours(pe):  # (1, 1 + S * S, D) -> cls_pos (D,), grid (S, S, D)
            s = int(round((pe.shape[1] - 1) ** 0.5))
            return pe[0, 0], pe[0, 1:].reshape(s, s, pe.shape[-1])

        def pos_to_hf(cls_pos, grid):
            d = grid.shape[-1]
            return (_cat([cls_pos.reshape(1, 1, d), grid.reshape(1, -1, d)], 1),)

        r += [_Rule(("patch_embed/proj/kernel",), ("embeddings.patch_embeddings.projection.weight",), conv_to_ours,
                    conv_to_hf),
              _Rule(("patch_embed/proj/bias",), ("embeddings.patch_embeddings.projection.bias",),
                    lambda b: (b,), lambda b: (b,)),
              _Rule(("cls_pos", "pos_embed"), ("embeddings.position_embeddings",), pos_to_ours, pos_to_hf),
              _same("cls_token", "embeddings.cls_token", lambda x: (x.shape[-1],), lambda x: (1, 1, x.shape[-1])),
              _same("mask_token", "embeddings.mask_token", lambda x: (x.shape[-1],), lambda x: (1, x.shape[-1]),
                    optional=family == "dinov2")]
        if family == "dinov2_reg":
            r.append(_same("registers", "embeddings.register_tokens", lambda x: x.shape[1:],
                           lambda x: (1,) + x.shape))
        L, b = "encoder.layer.{i}", "blocks/layers"
        r += _norm(f"{b}/norm1", f"{L}.norm1", True) + _norm(f"{b}/norm2", f"{L}.norm2", True)
        for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "o_proj")):
            r += _linear(f"{b}/attn/{ours}", f"{L}.attention.{hf}", True)
        r += _linear(f"{b}/mlp/fc1", f"{L}.mlp.fc1", True) + _linear(f"{b}/mlp/fc2", f"{L}.mlp.fc2", True)
        r += [_same(f"{b}/ls1", f"{L}.layer_scale1.lambda1", lambda x: x.shape, lambda x: x.shape, True),
              _same(f"{b}/ls2", f"{L}.layer_scale2.lambda1", lambda x: x.shape, lambda x: x.shape, True)]
        r += _norm("norm", "layernorm")
        return r

    # siglip2
    r += _linear("patch_embed/proj", "embeddings.patch_embedding")  # features (py, px, c) on both sides
    r.append(_same("pos_embed", "embeddings.position_embedding.weight",
                   lambda x: (int(round(x.shape[0] ** 0.5)),) * 2 + (x.shape[-1],),
                   lambda x: (x.shape[0] * x.shape[1], x.shape[2])))
    L, b = "encoder.layers.{i}", "blocks/layers"
    r += _norm(f"{b}/norm1", f"{L}.layer_norm1", True) + _norm(f"{b}/norm2", f"{L}.layer_norm2", True)
    for ours, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj")):
        r += _linear(f"{b}/attn/{ours}", f"{L}.self_attn.{hf}", True)
    r += _linear(f"{b}/mlp/fc1", f"{L}.mlp.fc1", True) + _linear(f"{b}/mlp/fc2", f"{L}.mlp.fc2", True)
    r += _norm("norm", "post_layernorm")
    return r


def _head_rules() -> list[_Rule]:
    """SigLIP2 attention-pooling head (nn.MultiheadAttention packs q, k, v into in_proj)."""
    qkv = tuple(f"head/attn/{n}/kernel" for n in "qkv")
    qkv_b = tuple(f"head/attn/{n}/bias" for n in "qkv")
    return ([_same("head/probe", "head.probe", lambda x: x.shape[1:], lambda x: (1,) + x.shape),
             _Rule(qkv, ("head.attention.in_proj_weight",), lambda w: tuple(t.T for t in np.split(w, 3, 0)),
                   lambda q, k, v: (_cat([q.T, k.T, v.T], 0),)),
             _Rule(qkv_b, ("head.attention.in_proj_bias",), lambda b: tuple(np.split(b, 3, 0)),
                   lambda q, k, v: (_cat([q, k, v], 0),))]
            + _linear("head/attn/out", "head.attention.out_proj") + _norm("head/norm", "head.layernorm")
            + _linear("head/mlp/fc1", "head.mlp.fc1") + _linear("head/mlp/fc2", "head.mlp.fc2"))


# ---------------------------------------------------------------------------------------------------------
# State plumbing


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _flat(state) -> tuple[dict[str, nnx.Variable], Any, list]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)
    paths = ["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p)
             for p, _ in leaves]
    return dict(zip(paths, (v for _, v in leaves))), treedef, paths


def _state_and_family(model_or_state, family: str | None):
    if isinstance(model_or_state, nnx.Module):
        fam = getattr(model_or_state, "family", None)
        if family is not None and fam is not None and family != fam:
            raise ValueError(f"convert_hf: family={family!r} but the model is a {fam!r} ViT")
        return nnx.state(model_or_state), family or fam
    return model_or_state, family


def _active_rules(flat: Mapping[str, nnx.Variable], family: str) -> list[_Rule]:
    rules = _rules(family) + (_head_rules() if "head/probe" in flat else [])
    ours = {p for rule in rules for p in rule.ours}
    extra = sorted(set(flat) - ours)
    if extra:
        raise ValueError(f"convert_hf: model variables {extra} have no HF counterpart for family {family!r} "
                         "(is this a ViT of that family?)")
    absent = sorted(p for p in ours if p not in flat)
    if absent:
        raise ValueError(f"convert_hf: the model lacks variables {absent} expected for family {family!r}")
    return rules


def _shape(v: nnx.Variable) -> tuple[int, ...]:
    return tuple(v.get_value().shape)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor (bf16 has no numpy dtype)
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _find_prefix(sd: Mapping[str, Any], family: str) -> str:
    anchor = _ANCHOR[family]
    hits = sorted(k[: -len(anchor)] for k in sd if k.endswith(anchor))
    if not hits:
        raise ValueError(f"from_hf_state_dict: no key ending in {anchor!r} in the state_dict: not a {family!r} "
                         f"vision tower (first keys: {sorted(sd)[:8]})")
    if len(hits) > 1:
        raise ValueError(f"from_hf_state_dict: several {family!r} towers in the state_dict (prefixes {hits})")
    return hits[0]


def from_hf_state_dict(model_or_abstract, sd: Mapping[str, Any], family: str | None = None):
    """HF PyTorch state_dict -> (nnx.State for ``model_or_abstract``, report).

    ``model_or_abstract``: a ViT (real or from ``nnx.eval_shape``; frozen or not) or its (abstract) State; the
    result has the same structure, variable types and dtypes. Raises ValueError listing every missing key or
    wrong shape with the expected (HF) shape. report: 'prefix', 'loaded' (HF keys used), 'ignored' (other
    keys), 'renamed_legacy' (count), 'defaulted' (optional HF tensors absent, left as initialised).
    """
    state, family = _state_and_family(model_or_abstract, family)
    if family is None:
        raise ValueError("from_hf_state_dict: pass family= ('dinov2' | 'dinov2_reg' | 'siglip2') with a State")
    flat, treedef, paths = _flat(state)
    rules = _active_rules(flat, family)
    prefix = _find_prefix(sd, family)
    renamed = 0
    table: dict[str, Any] = {}
    ignored = []
    for k, v in sd.items():
        if not k.startswith(prefix):
            ignored.append(k)
            continue
        name = k[len(prefix):]
        for old, new in _LEGACY_RENAMES.get(family, ()):
            if old in "." + name:
                name = ("." + name).replace(old, new)[1:]
                renamed += 1
        table[name] = v
    if any(".mlp.weights_in." in k or ".mlp.gate_proj." in k for k in table):
        raise ValueError("from_hf_state_dict: SwiGLU FFN checkpoints (dinov2-giant, use_swiglu_ffn=True) are not "
                         "supported by ViT")
    depth = _shape(flat["blocks/layers/norm1/scale"])[0]
    values: dict[str, Any] = {}
    missing, bad, used, defaulted = [], [], set(), []
    for rule in rules:
        want = [jax.ShapeDtypeStruct(_shape(flat[p])[1:] if rule.per_layer else _shape(flat[p]), jnp.float32)
                for p in rule.ours]
        hf_shapes = [tuple(s.shape) for s in jax.eval_shape(rule.to_hf, *want)]
        layers = range(depth) if rule.per_layer else [None]
        per_layer_out = []
        for i in layers:
            keys = [k.format(i=i) if i is not None else k for k in rule.hf]
            absent = [k for k in keys if k not in table]
            if absent:
                if rule.optional:
                    defaulted += absent
                else:
                    missing += [f"{prefix}{k} {s}" for k, s in zip(keys, hf_shapes) if k in absent]
                per_layer_out = None
                continue
            arrs = [_to_numpy(table[k]) for k in keys]
            wrong = [f"{prefix}{k}: got {a.shape}, expected {s}" for k, a, s in zip(keys, arrs, hf_shapes)
                     if tuple(a.shape) != s]
            if wrong:
                bad += wrong
                per_layer_out = None
                continue
            used.update(keys)
            if per_layer_out is not None:
                per_layer_out.append(rule.to_ours(*arrs))
        if not per_layer_out:
            continue
        for j, p in enumerate(rule.ours):
            parts = [np.asarray(o[j]) for o in per_layer_out]
            values[p] = np.stack(parts) if rule.per_layer else parts[0]
    if missing or bad:
        msg = [f"from_hf_state_dict ({family}, transformers {HF_TRANSFORMERS_VERSION} names, prefix {prefix!r}):"]
        if missing:
            msg.append(f"missing keys (expected shape): {missing}")
        if bad:
            msg.append(f"wrong shapes: {bad}")
        raise ValueError("\n".join(msg))
    leaves = []
    for p in paths:
        v = flat[p]
        if p in values:
            dtype = v.get_value().dtype
            v = v.replace(jnp.asarray(values[p], dtype=dtype))
        leaves.append(v)
    new_state = jax.tree_util.tree_unflatten(treedef, leaves)
    report = {"prefix": prefix, "loaded": sorted(prefix + k for k in used),
              "ignored": sorted(ignored + [prefix + k for k in table if k not in used]),
              "renamed_legacy": renamed, "defaulted": sorted(prefix + k for k in defaulted)}
    return new_state, report


def to_hf_state_dict(model_or_state, family: str | None = None, *, prefix: str = "") -> dict[str, np.ndarray]:
    """ViT (or its State) -> HF PyTorch state_dict as float32 numpy arrays, transformers 5.23 key names.

    Load it with ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    state, family = _state_and_family(model_or_state, family)
    if family is None:
        raise ValueError("to_hf_state_dict: pass family= ('dinov2' | 'dinov2_reg' | 'siglip2') with a State")
    flat, _, _ = _flat(state)
    rules = _active_rules(flat, family)
    depth = _shape(flat["blocks/layers/norm1/scale"])[0]
    out: dict[str, np.ndarray] = {}
    for rule in rules:
        arrs = [np.asarray(jax.device_get(flat[p].get_value()), np.float32) for p in rule.ours]
        for i in (range(depth) if rule.per_layer else [None]):
            parts = [a[i] for a in arrs] if i is not None else arrs
            for k, t in zip(rule.hf, rule.to_hf(*parts)):
                out[prefix + (k.format(i=i) if i is not None else k)] = np.ascontiguousarray(np.asarray(t))
    return out


def hf_key_shapes(model_or_abstract, family: str | None = None, *, prefix: str = "") -> dict[str, tuple]:
    """{HF key: shape} that :func:`to_hf_state_dict` would write, computed abstractly (works on an
    ``nnx.eval_shape`` model: nothing is allocated)."""
    state, family = _state_and_family(model_or_abstract, family)
    if family is None:
        raise ValueError("hf_key_shapes: pass family= ('dinov2' | 'dinov2_reg' | 'siglip2') with a State")
    flat, _, _ = _flat(state)
    depth = _shape(flat["blocks/layers/norm1/scale"])[0]
    out = {}
    for rule in _active_rules(flat, family):
        want = [jax.ShapeDtypeStruct(_shape(flat[p])[1:] if rule.per_layer else _shape(flat[p]), jnp.float32)
                for p in rule.ours]
        shapes = [tuple(s.shape) for s in jax.eval_shape(rule.to_hf, *want)]
        for i in (range(depth) if rule.per_layer else [None]):
            for k, shp in zip(rule.hf, shapes):
                out[prefix + (k.format(i=i) if i is not None else k)] = shp
    return out


def read_hf_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``*.safetensors`` / ``pytorch_model.bin`` file, or a folder of them (sharded checkpoints), as numpy."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            files = sorted(f for f in os.listdir(path) if re.fullmatch(r"pytorch_model.*\.bin", f))
        if not files:
            raise FileNotFoundError(f"read_hf_checkpoint: no *.safetensors or pytorch_model*.bin in {path}")
        out: dict[str, np.ndarray] = {}
        for f in files:
            out.update(read_hf_checkpoint(os.path.join(path, f)))
        return out
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_hf_checkpoint: {path} does not exist")
    import torch  # lazy: only for reading PyTorch checkpoints
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _to_numpy(v) for k, v in sd.items()}


def load_vit(variant: str | None, source, **vit_kwargs) -> tuple[ViT, dict]:
    """ViT ``variant`` (and ``vit_kwargs``) with HF weights from ``source`` (a state_dict or a checkpoint path).

    The model is built abstractly (``nnx.eval_shape``), so no random initialisation is materialised.
    Returns (model, report).
    """
    sd = source if isinstance(source, Mapping) else read_hf_checkpoint(source)
    abstract = nnx.eval_shape(lambda: ViT(variant, rngs=nnx.Rngs(0), **vit_kwargs))
    graphdef, _ = nnx.split(abstract)
    state, report = from_hf_state_dict(abstract, sd)
    return nnx.merge(graphdef, state), report
