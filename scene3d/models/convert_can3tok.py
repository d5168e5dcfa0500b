"""Official Can3Tok PyTorch state_dict <-> our :class:`~scene3d.models.can3tok.Can3Tok` NNX state.

The official keys are ``AlignedShapeAsLatentPLModule.state_dict()`` names (``shape_model.`` prefix), as
``gs_can3tok.py`` saves them. Layout differences handled here:

- torch Linear weights are (out, in); our kernels are (in, out).
- ``c_qkv`` (3W, W) / ``c_kv`` (2W, W_data) are split per head: rows are (heads, [q|k|v], head_dim). Our q, k, v
  kernels are (in, heads * head_dim) each.
- per-layer ``resblocks.{i}`` weights are stacked along the leading 'layers' axis of our scanned Stack.
- ``geo_decoder.*`` (an occupancy decoder the Gaussian path never runs) has no counterpart: it is ignored on
  import (kept in the report so that an export can pass it through) and, on export, omitted or written as
  zeros (``unused='zeros'``) so that the official code loads the file with strict key checking.

A model built with ``head_layout='correct'`` exports to the same keys, but the official code (flash path)
would compute a different function with those weights; ``config_from_official`` gives the release layout.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models.can3tok import Can3Tok, config_from_official
from scene3d.models.convert_common import ImportReport, Path, flatten, is_abstract, load_state_dict, set_path

PREFIX = "shape_model."
IGNORED_PREFIXES = ("geo_decoder.",)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One official tensor <-> one or more of our arrays.

    kind: 'copy' | 'linear' (kernel = weight.T) | 'split_w' / 'split_b' (per-head [q|k|v] or [k|v] parts).
    ours: one (path, layer) per part; layer indexes the stacked 'layers' axis (None: not stacked).
    """
    official: str
    kind: str
    ours: tuple[tuple[Path, int | None], ...]
    heads: int = 1


# ---------------------------------------------------------------------------------------------------- mapping


def _linear(off: str, ours: Path, layer=None, bias=True) -> Iterator[Entry]:
    yield Entry(off + ".weight", "linear", ((ours + ("kernel",), layer),))
    if bias:
        yield Entry(off + ".bias", "copy", ((ours + ("bias",), layer),))


def _norm(off: str, ours: Path, layer=None) -> Iterator[Entry]:
    yield Entry(off + ".weight", "copy", ((ours + ("scale",), layer),))
    yield Entry(off + ".bias", "copy", ((ours + ("bias",), layer),))


def _split(off: str, ours: Path, parts: tuple[str, ...], heads: int, bias: bool, layer=None) -> Iterator[Entry]:
    yield Entry(off + ".weight", "split_w", tuple((ours + (p, "kernel"), layer) for p in parts), heads)
    if bias:
        yield Entry(off + ".bias", "split_b", tuple((ours + (p, "bias"), layer) for p in parts), heads)


def _mlp(off: str, ours: Path, layer=None) -> Iterator[Entry]:
    yield from _linear(off + ".c_fc", ours + ("fc1",), layer)
    yield from _linear(off + ".c_proj", ours + ("fc2",), layer)


def _resblocks(off: str, ours: Path, depth: int, heads: int, qkv_bias: bool) -> Iterator[Entry]:
    for i in range(depth):
        o, p = f"{off}.resblocks.{i}", ours + ("layers",)
        yield from _split(o + ".attn.c_qkv", p + ("attn",), ("q", "k", "v"), heads, qkv_bias, i)
        yield from _linear(o + ".attn.c_proj", p + ("attn", "out"), i)
        yield from _norm(o + ".ln_1", p + ("norm1",), i)
        yield from _norm(o + ".ln_2", p + ("norm2",), i)
        yield from _mlp(o + ".mlp", p + ("mlp",), i)


def mapping(model: Can3Tok) -> list[Entry]:
    """The official key <-> our state correspondence for ``model``'s configuration (without prefix)."""
    c = model.config
    h, qb = c["heads"], c["qkv_bias"]
    if not c["shape_token"]:
        raise ValueError("convert_can3tok: the official model always has the shape token (shape_token=True)")
    if c["input_offset"] != 4 or c["anchor_grid"]:
        raise ValueError("convert_can3tok: the official layout reads 18-channel rows (input_offset=4) without the "
                         f"voxel-anchor encoding (anchor_grid=0); got input_offset={c['input_offset']}, "
                         f"anchor_grid={c['anchor_grid']}")
    out = [Entry("encoder.query", "copy", ((("queries",), None),))]
    out += _linear("encoder.input_proj", ("input_proj",))
    x = "encoder.cross_attn"
    out += _linear(x + ".attn.c_q", ("encoder_cross", "cross", "q"), bias=qb)
    out += _split(x + ".attn.c_kv", ("encoder_cross", "cross"), ("k", "v"), h, qb)
    out += _linear(x + ".attn.c_proj", ("encoder_cross", "cross", "out"))
    out += _norm(x + ".ln_1", ("encoder_cross", "norm_latents"))
    out += _norm(x + ".ln_2", ("encoder_cross", "norm_inputs"))
    out += _norm(x + ".ln_3", ("encoder_cross", "norm_mlp"))
    out += _mlp(x + ".mlp", ("encoder_cross", "mlp"))
    out += _resblocks("encoder.self_attn", ("encoder_blocks",), c["encoder_depth"], h, qb)
    if c["use_ln_post"]:
        out += _norm("encoder.ln_post", ("ln_post",))
    out += _linear("pre_kl", ("pre_kl",))
    out += _linear("post_kl", ("post_kl",))
    out += _linear("kl_emb_proj_mean", ("kl_mean",))
    out += _linear("kl_emb_proj_var", ("kl_logvar",))
    out += _resblocks("transformer", ("decoder_blocks",), c["decoder_depth"], h, qb)
    out += _linear("GS_decoder.pts_linears.0", ("head_in",))
    for j in range(c["head_depth"] - 1):
        out += _linear(f"GS_decoder.pts_linears.{1 + 3 * j}", ("head_hidden", j, "linear"))
        out += _norm(f"GS_decoder.pts_linears.{2 + 3 * j}", ("head_hidden", j, "norm"))
    out += _linear("GS_decoder.output_linear", ("head_out",))
    return out


def unused_official_shapes(model: Can3Tok) -> dict[str, tuple[int, ...]]:
    """Shapes of the official ``geo_decoder.*`` tensors (built by the release, never run on the GS path)."""
    c = model.config
    w, fdim = c["width"], 3 * (2 * c["num_bands"] + 1)
    d = "geo_decoder."
    s = {d + "query_proj.weight": (w, fdim), d + "query_proj.bias": (w,)}
    x = d + "cross_attn_decoder."
    s[x + "attn.c_q.weight"] = (w, w)
    s[x + "attn.c_kv.weight"] = (2 * w, w)
    if c["qkv_bias"]:
        s[x + "attn.c_q.bias"], s[x + "attn.c_kv.bias"] = (w,), (2 * w,)
    s[x + "attn.c_proj.weight"], s[x + "attn.c_proj.bias"] = (w, w), (w,)
    for n in ("ln_1", "ln_2", "ln_3"):
        s[x + n + ".weight"] = s[x + n + ".bias"] = (w,)
    s[x + "mlp.c_fc.weight"], s[x + "mlp.c_fc.bias"] = (4 * w, w), (4 * w,)
    s[x + "mlp.c_proj.weight"], s[x + "mlp.c_proj.bias"] = (w, 4 * w), (w,)
    s[d + "ln_post.weight"] = s[d + "ln_post.bias"] = (w,)
    s[d + "output_proj.weight"], s[d + "output_proj.bias"] = (1, w), (1,)
    return s


# ---------------------------------------------------------------------------------------------------- helpers


def _to_official(entry: Entry, arrays: list, xp=np) -> Any:
    """Our arrays (one per part) -> the official tensor (``xp`` = np, or jnp to trace under eval_shape)."""
    if entry.kind == "copy":
        return arrays[0]
    if entry.kind == "linear":
        return xp.transpose(arrays[0])
    h = entry.heads
    if entry.kind == "split_w":  # kernels (in, h * d) -> weight (h * parts * d, in)
        parts = [xp.transpose(a).reshape(h, -1, a.shape[0]) for a in arrays]
        st = xp.stack(parts, axis=1)
        return st.reshape(-1, st.shape[-1])
    if entry.kind == "split_b":
        return xp.stack([a.reshape(h, -1) for a in arrays], axis=1).reshape(-1)
    raise ValueError(f"unknown entry kind {entry.kind!r}")


def _from_official(entry: Entry, t: np.ndarray) -> list[np.ndarray]:
    """Official tensor -> our arrays (one per part); numpy, exact."""
    if entry.kind == "copy":
        return [t]
    if entry.kind == "linear":
        return [np.ascontiguousarray(t.T)]
    n, h = len(entry.ours), entry.heads
    if entry.kind == "split_w":
        r = t.reshape(h, n, -1, t.shape[-1])  # (h, parts, d, in)
        return [np.ascontiguousarray(r[:, j].reshape(-1, t.shape[-1]).T) for j in range(n)]
    if entry.kind == "split_b":
        r = t.reshape(h, n, -1)
        return [np.ascontiguousarray(r[:, j].reshape(-1)) for j in range(n)]
    raise ValueError(f"unknown entry kind {entry.kind!r}")


# ---------------------------------------------------------------------------------------------------- export


def export_official(model: Can3Tok, state: nnx.State | None = None, *, prefix: str = PREFIX,
                    unused: str = "omit", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy array (fp32 as stored)}.

    state: the parameters to export (an nnx.State or its pure dict; default ``nnx.state(model, nnx.Param)``);
    an abstract model or state
    (``nnx.eval_shape``) gives {key: jax.ShapeDtypeStruct} without allocating anything.
    unused: 'omit' | 'zeros' - whether to write the official ``geo_decoder.*`` tensors (zeros; see module doc).
    extra: tensors passed through unchanged (e.g. ``ImportReport.ignored_tensors``), keys without ``prefix``;
    they take precedence over ``unused='zeros'``.
    """
    if unused not in ("omit", "zeros"):
        raise ValueError(f"export_official: unused must be 'omit' or 'zeros', got {unused!r}")
    entries = mapping(model)
    if state is None:
        state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    flat = flatten(pure)
    missing = sorted({p for e in entries for p, _ in e.ours} - set(flat), key=str)
    if missing:
        raise ValueError(f"export_official: the state lacks {['/'.join(map(str, p)) for p in missing]}")
    zeros = unused_official_shapes(model) if unused == "zeros" else {}

    def convert(flat_arrays, xp):
        out = {}
        for e in entries:
            arrays = [flat_arrays[p] if layer is None else flat_arrays[p][layer] for p, layer in e.ours]
            out[e.official] = _to_official(e, arrays, xp)
        for k, shape in zeros.items():
            out[k] = xp.zeros(shape, np.float32)
        return out

    if is_abstract(pure):
        out = jax.eval_shape(lambda f: convert(f, jnp), flat)
    else:
        out = {k: np.ascontiguousarray(v) for k, v in convert({p: np.asarray(a) for p, a in flat.items()},
                                                                np).items()}
    for k, v in (extra or {}).items():
        out[k] = v
    return {prefix + k: v for k, v in out.items()}


def official_shapes(model: Can3Tok, *, unused: str = "omit") -> dict[str, tuple[int, ...]]:
    """{official key without prefix: shape} expected for ``model``'s configuration (nothing allocated)."""
    pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    out = {k: tuple(v.shape) for k, v in export_official(model, pure, prefix="", unused="omit").items()}
    if unused == "zeros":
        out.update(unused_official_shapes(model))
    return out


# ---------------------------------------------------------------------------------------------------- import


def load_official(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors state_dict file (or a torch checkpoint's ``state_dict``) -> {key: numpy array}."""
    return load_state_dict(path)


def _detect_prefix(keys, model_keys) -> str:
    if any(k in model_keys for k in keys):
        return ""
    if all(k.startswith(PREFIX) for k in keys):
        return PREFIX
    for k in keys:
        for mk in model_keys:
            if k.endswith("." + mk):
                return k[:-len(mk)]
    return PREFIX


def official_to_state(model: Can3Tok, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, ImportReport]:
    """Official state_dict -> (our nnx.State of Params for ``model``'s configuration, report).

    Every official key must be consumed or explicitly ignored (``geo_decoder.*``; with ``strict=False`` also
    unknown keys, which the report lists). Missing keys and shape mismatches raise ValueError naming the keys
    and the expected shapes. ``prefix``: the key prefix (default: detected, usually 'shape_model.').
    """
    entries = mapping(model)
    expected = official_shapes(model)
    keys = list(state_dict)
    if prefix is None:
        prefix = _detect_prefix(keys, expected)
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    ignored = {k: "outside the model prefix " + repr(prefix) for k in keys if not k.startswith(prefix)}
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"{name}: missing {len(missing)} official keys for this Can3Tok configuration: "
                         + ", ".join(f"{prefix}{k} (expected shape {expected[k]})" for k in missing))
    bad = [k for k in expected if tuple(np.shape(sd[k])) != expected[k]]
    if bad:
        raise ValueError(f"{name}: shape mismatch for " + ", ".join(
            f"{prefix}{k}: expected {expected[k]}, got {tuple(np.shape(sd[k]))}" for k in bad)
            + " (build the model with config_from_official(config.json))")
    ignored_tensors = {}
    unexpected = []
    for k in sd:
        if k in expected:
            continue
        if k.startswith(IGNORED_PREFIXES):
            ignored[prefix + k] = "unused by the Gaussian-splat path"
            ignored_tensors[k] = np.asarray(sd[k])
        else:
            unexpected.append(prefix + k)
    if unexpected and strict:
        raise ValueError(f"{name}: {len(unexpected)} keys that this Can3Tok configuration does not use: "
                         f"{unexpected} (pass strict=False to ignore them)")
    for k in unexpected:
        ignored[k] = "unexpected key (strict=False)"
        ignored_tensors[k[len(prefix):]] = np.asarray(sd[k[len(prefix):]])

    abstract = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(abstract)
    flat = flatten(pure)
    stacked: dict[Path, dict[int, np.ndarray]] = {}
    new: dict[Path, np.ndarray] = {}
    for e in entries:
        for (path, layer), arr in zip(e.ours, _from_official(e, np.asarray(sd[e.official]))):
            if layer is None:
                new[path] = arr
            else:
                stacked.setdefault(path, {})[layer] = arr
    for path, layers in stacked.items():
        new[path] = np.stack([layers[i] for i in range(len(layers))])
    for path, target in flat.items():
        if path not in new:
            raise ValueError(f"{name}: no official tensor maps to our parameter {'/'.join(map(str, path))}")
        if tuple(new[path].shape) != tuple(target.shape):
            raise ValueError(f"{name}: our parameter {'/'.join(map(str, path))} expects {tuple(target.shape)}, "
                             f"the mapping produced {new[path].shape}")
        set_path(pure, path, jnp.asarray(new[path], dtype=target.dtype))
    nnx.replace_by_pure_dict(abstract, pure)
    report = ImportReport(prefix=prefix, consumed=sorted(prefix + e.official for e in entries), ignored=ignored,
                          passthrough=ignored_tensors)
    return abstract, report


def import_official(model: Can3Tok, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> ImportReport:
    """Load an official state_dict (dict or safetensors path) into ``model`` in place; returns the report."""
    name = "state_dict"
    if not isinstance(state_dict, Mapping):
        name, state_dict = os.fspath(state_dict), load_official(state_dict)
    state, report = official_to_state(model, state_dict, name=name, **kwargs)
    nnx.update(model, state)
    return report


def model_from_official(config_json, weights, **model_kwargs) -> tuple[Can3Tok, ImportReport]:
    """Build a Can3Tok from an official config.json / manifest and load its weights (dict or safetensors path).

    The model is built abstractly (``nnx.eval_shape``): no random initialisation is computed, only the imported
    arrays are allocated. model_kwargs override the official config (e.g. attn_impl, scan, remat, dtype).
    """
    kwargs = dict(config_from_official(config_json), **model_kwargs)
    abstract = nnx.eval_shape(lambda: Can3Tok(rngs=nnx.Rngs(0), **kwargs))
    name = "state_dict"
    if not isinstance(weights, Mapping):
        name, weights = os.fspath(weights), load_official(weights)
    params, report = official_to_state(abstract, weights, name=name)
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model_from_official: Can3Tok has non-parameter state {rest}")
    return nnx.merge(graphdef, params, rest), report
