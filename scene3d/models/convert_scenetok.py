"""Official SceneTok PyTorch state_dict <-> our :class:`~scene3d.models.scenetok.SceneTok` NNX state.

Official keys are the released Lightning checkpoints' ``state_dict`` names: ``compressor.*`` (MVAECompressor)
and ``denoiser.*`` (LightningDiT wrapper). Layout differences handled here:

- torch Linear weights are (out, in); our kernels are (in, out). Conv2d patch embeddings (D, C, p, p) are our
  (p * p * C, D) kernels with rows ordered (py, px, c).
- fused ``qkv`` (3D, D) and SwiGLU ``w12`` (2h, D) weights are split row-wise into q / k / v and gate / up.
- ``aggregate.{i}`` / ``model.blocks.{i}`` are stacked along the leading 'layers' axis of our scanned Stacks;
  the compressor's last block (no norm3 / mlp1) is our ``last_block``.
- ``compressor.scene_tokens`` (1, K, D) is our (K, D) ``scene_queries``.
- ``compressor.feat_rope.freqs_cos/sin`` are deterministic 2D-RoPE tables (computed on the fly here): on import
  they are checked against ours and kept in the report (``passthrough``) so an export can write them back
  bit-exactly; otherwise the export recomputes them.
- ``denoiser.null_tokens`` (1, 1, D) exists only in checkpoints trained with CFG: when absent, our null token
  is zero-initialised (the release's init) and the report says so; the export writes it with ``null_tokens=True``.
- Other keys (a real checkpoint's extras) are ignored and listed, like the authors' ``load_strict=false``;
  missing keys and shape mismatches raise ValueError naming the keys and the expected shapes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models.convert_common import ImportReport, Path, flatten, is_abstract, load_state_dict, set_path
from scene3d.models.scenetok import SceneTok, config_from_official, eva_rope_tables

ROPE_KEYS = ("compressor.feat_rope.freqs_cos", "compressor.feat_rope.freqs_sin")
NULL_KEY = "denoiser.null_tokens"
ROPE_ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Entry:
    """One official tensor <-> one or more of our arrays.

    kind: 'copy' | 'reshape' | 'linear' (kernel = weight.T) | 'conv' (patch embedding) | 'rows_w' / 'rows_b'
    (fused rows split into equal parts). ours: one (path, layer) per part; layer indexes the stacked axis.
    """
    official: str
    kind: str
    ours: tuple[tuple[Path, int | None], ...]
    shape: tuple[int, ...] | None = None  # official shape for 'reshape' and 'conv'


# ---------------------------------------------------------------------------------------------------- mapping


def _linear(off: str, ours: Path, layer=None, bias=True) -> Iterator[Entry]:
    yield Entry(off + ".weight", "linear", ((ours + ("kernel",), layer),))
    if bias:
        yield Entry(off + ".bias", "copy", ((ours + ("bias",), layer),))


def _rows(off: str, ours: Path, parts: tuple[str, ...], layer=None) -> Iterator[Entry]:
    yield Entry(off + ".weight", "rows_w", tuple((ours + (p, "kernel"), layer) for p in parts))
    yield Entry(off + ".bias", "rows_b", tuple((ours + (p, "bias"), layer) for p in parts))


def _copy(off: str, ours: Path, layer=None) -> Entry:
    return Entry(off, "copy", ((ours, layer),))


def _swiglu(off: str, ours: Path, layer=None) -> Iterator[Entry]:
    yield from _rows(off + ".w12", ours, ("w_gate", "w_up"), layer)
    yield from _linear(off + ".w3", ours + ("w_down",), layer)


def _perceiver_block(off: str, ours: Path, layer, last: bool) -> Iterator[Entry]:
    yield from _rows(off + ".attn1.qkv", ours + ("attn1",), ("q", "k", "v"), layer)
    yield from _linear(off + ".attn1.proj", ours + ("attn1", "out"), layer)
    yield from _rows(off + ".attn2.qkv", ours + ("attn2",), ("q", "k", "v"), layer)
    yield from _linear(off + ".attn2.proj", ours + ("attn2", "out"), layer)
    for name, part in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj", "out")):
        yield from _linear(f"{off}.attn3.{name}", ours + ("attn3", part), layer)
    norms = ("norm1", "norm2", "norm4") if last else ("norm1", "norm2", "norm3", "norm4")
    for n in norms:
        yield _copy(f"{off}.{n}.weight", ours + (n, "scale"), layer)
    if not last:
        yield from _swiglu(off + ".mlp1", ours + ("mlp1",), layer)
    yield from _swiglu(off + ".mlp2", ours + ("mlp2",), layer)
    yield from _linear(off + ".adaLN_modulation.1", ours + ("adaln", "proj"), layer)


def _denoiser_block(off: str, ours: Path, layer) -> Iterator[Entry]:
    yield from _rows(off + ".attn.qkv", ours + ("attn",), ("q", "k", "v"), layer)
    yield from _linear(off + ".attn.proj", ours + ("attn", "out"), layer)
    for name, part in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj", "out")):
        yield from _linear(f"{off}.attn2.{name}", ours + ("cross", part), layer)
    for att, our_att in (("attn", "attn"), ("attn2", "cross")):
        for n in ("q_norm", "k_norm"):
            yield _copy(f"{off}.{att}.{n}.weight", ours + (our_att, n, "scale"), layer)
    for n in ("norm1", "norm2"):
        yield _copy(f"{off}.{n}.weight", ours + (n, "scale"), layer)
    yield from _swiglu(off + ".mlp", ours + ("mlp",), layer)
    yield from _linear(off + ".adaLN_modulation.1", ours + ("adaln", "proj"), layer)


def mapping(model: SceneTok, *, null_tokens: bool = False) -> list[Entry]:
    """The official key <-> our state correspondence for ``model``'s configuration (rope buffers excluded)."""
    cc, dc = model.compressor.config, model.decoder.config
    w, k = cc["width"], cc["num_tokens"]
    c, d = ("compressor",), ("decoder",)
    out = [Entry("compressor.scene_tokens", "reshape", ((c + ("scene_queries",), None),), (1, k, w)),
           Entry("compressor.y_embed.proj.weight", "conv", ((c + ("image_embed", "proj", "kernel"), None),),
                 (w, cc["in_channels"], cc["patch"], cc["patch"])),
           _copy("compressor.y_embed.proj.bias", c + ("image_embed", "proj", "bias"))]
    depth = cc["depth"]
    for i in range(depth):
        last = i == depth - 1
        ours = c + ("last_block",) if last else c + ("blocks", "layers")
        out += _perceiver_block(f"compressor.aggregate.{i}", ours, None if last else i, last)
    out += _linear("compressor.pose_embed.model.model.1", c + ("ray_embed", "proj"), bias=False)
    out += _linear("compressor.out_proj.0", c + ("out_proj",))
    out += _linear("denoiser.pose_embed.model.model.1", d + ("ray_embed", "proj"), bias=False)
    out += [Entry("denoiser.model.x_embedder.proj.weight", "conv", ((d + ("x_embed", "proj", "kernel"), None),),
                  (dc["width"], dc["in_channels"], dc["patch"], dc["patch"])),
            _copy("denoiser.model.x_embedder.proj.bias", d + ("x_embed", "proj", "bias"))]
    out += _linear("denoiser.model.t_embedder.mlp.0", d + ("t_embed", "fc1"))
    out += _linear("denoiser.model.t_embedder.mlp.2", d + ("t_embed", "fc2"))
    for i in range(dc["depth"]):
        out += _denoiser_block(f"denoiser.model.blocks.{i}", d + ("blocks", "layers"), i)
    f = "denoiser.model.final_layer"
    out += [_copy(f + ".norm_final.weight", d + ("final", "norm", "scale"))]
    out += _linear(f + ".linear", d + ("final", "linear"))
    out += _linear(f + ".adaLN_modulation.1", d + ("final", "adaln", "proj"))
    out += _linear("denoiser.cnd_proj", d + ("cond_proj",))
    if null_tokens:
        out.append(Entry(NULL_KEY, "reshape", ((d + ("null_token",), None),), (1, 1, dc["width"])))
    return out


def rope_tables(model: SceneTok) -> dict[str, np.ndarray]:
    """The official 2D-RoPE buffers for ``model``'s configuration (grid = input_size / patch)."""
    cc = model.compressor.config
    cos, sin = eva_rope_tables(cc["width"] // cc["heads"], cc["input_size"] // cc["patch"], cc["rope_theta"])
    return dict(zip(ROPE_KEYS, (cos, sin)))


# ---------------------------------------------------------------------------------------------------- helpers


def _to_official(e: Entry, arrays: list, xp=np) -> Any:
    """Our arrays (one per part) -> the official tensor (``xp`` = np, or jnp under eval_shape)."""
    if e.kind == "copy":
        return arrays[0]
    if e.kind == "reshape":
        return xp.reshape(arrays[0], e.shape)
    if e.kind == "linear":
        return xp.transpose(arrays[0])
    if e.kind == "conv":  # (p * p * C, D) rows (py, px, c) -> (D, C, p, p)
        dim, ch, ph, pw = e.shape
        return xp.transpose(xp.reshape(arrays[0], (ph, pw, ch, dim)), (3, 2, 0, 1))
    if e.kind == "rows_w":
        return xp.concatenate([xp.transpose(a) for a in arrays], axis=0)
    if e.kind == "rows_b":
        return xp.concatenate(arrays, axis=0)
    raise ValueError(f"unknown entry kind {e.kind!r}")


def _from_official(e: Entry, t: np.ndarray) -> list[np.ndarray]:
    """Official tensor -> our arrays (one per part); numpy, exact."""
    if e.kind == "copy":
        return [t]
    if e.kind == "reshape":
        return [t.reshape(-1) if t.ndim == 3 and t.shape[:2] == (1, 1) else t.reshape(t.shape[1:])]
    if e.kind == "linear":
        return [np.ascontiguousarray(t.T)]
    if e.kind == "conv":
        return [np.ascontiguousarray(t.transpose(2, 3, 1, 0).reshape(-1, t.shape[0]))]
    n = len(e.ours)
    if e.kind == "rows_w":
        return [np.ascontiguousarray(p.T) for p in np.split(t, n, axis=0)]
    if e.kind == "rows_b":
        return [np.ascontiguousarray(p) for p in np.split(t, n, axis=0)]
    raise ValueError(f"unknown entry kind {e.kind!r}")


# ---------------------------------------------------------------------------------------------------- export


def export_official(model: SceneTok, state: nnx.State | Mapping | None = None, *, null_tokens: bool = False,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy fp32 array} (rope buffers included).

    state: the parameters (an nnx.State or its pure dict; default ``nnx.state(model, nnx.Param)``); an abstract
    state gives {key: jax.ShapeDtypeStruct} without allocating anything. null_tokens: also write
    ``denoiser.null_tokens`` (the release code never creates it; CFG-trained checkpoints carry it).
    extra: tensors written as given (e.g. ``ImportReport.passthrough``), overriding computed ones.
    """
    entries = mapping(model, null_tokens=null_tokens)
    if state is None:
        state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    flat = flatten(pure)
    missing = sorted({p for e in entries for p, _ in e.ours} - set(flat), key=str)
    if missing:
        raise ValueError(f"export_official: the state lacks {['/'.join(map(str, p)) for p in missing]}")

    def convert(f, xp):
        return {e.official: _to_official(e, [f[p] if layer is None else f[p][layer] for p, layer in e.ours], xp)
                for e in entries}

    if is_abstract(pure):
        out = jax.eval_shape(lambda f: convert(f, jnp), flat)
        out.update({k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in rope_tables(model).items()})
    else:
        out = {k: np.ascontiguousarray(v, np.float32)
               for k, v in convert({p: np.asarray(a) for p, a in flat.items()}, np).items()}
        out.update(rope_tables(model))
    for k, v in (extra or {}).items():
        out[k] = v
    return out


def official_shapes(model: SceneTok, *, null_tokens: bool = False) -> dict[str, tuple[int, ...]]:
    """{official key: shape} expected for ``model``'s configuration (nothing allocated)."""
    pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {k: tuple(v.shape) for k, v in export_official(model, pure, null_tokens=null_tokens).items()}


# ---------------------------------------------------------------------------------------------------- import


def load_official(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors state_dict file (or a torch checkpoint's ``state_dict``) -> {key: numpy array}."""
    return load_state_dict(path)


def official_to_state(model: SceneTok, state_dict: Mapping[str, Any], *, strict: bool = False,
                      name: str = "state_dict") -> tuple[nnx.State, ImportReport]:
    """Official state_dict -> (our nnx.State of Params for ``model``'s configuration, report).

    Missing keys or shape mismatches raise ValueError (with the expected shapes). Keys the model does not use
    are ignored and reported (``strict=True`` makes them an error). ``denoiser.null_tokens`` is imported when
    present, else our null token is set to zeros (reported under ``initialised``).
    """
    has_null = NULL_KEY in state_dict
    entries = mapping(model, null_tokens=has_null)
    expected = official_shapes(model, null_tokens=has_null)
    sd = dict(state_dict)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"{name}: missing {len(missing)} official keys for this SceneTok configuration: "
                         + ", ".join(f"{k} (expected shape {expected[k]})" for k in missing))
    bad = [k for k in expected if tuple(np.shape(sd[k])) != expected[k]]
    if bad:
        raise ValueError(f"{name}: shape mismatch for " + ", ".join(
            f"{k}: expected {expected[k]}, got {tuple(np.shape(sd[k]))}" for k in bad)
            + " (build the model with config_from_official(config.json) or the matching variant)")
    ignored = {k: "not used by this SceneTok configuration" for k in sd if k not in expected}
    if ignored and strict:
        raise ValueError(f"{name}: {len(ignored)} keys that this SceneTok configuration does not use: "
                         f"{sorted(ignored)} (pass strict=False to ignore them, as the release does)")
    ours_rope = rope_tables(model)
    passthrough = {}
    for k in ROPE_KEYS:
        t = np.asarray(sd[k], np.float32)
        err = float(np.max(np.abs(t - ours_rope[k])))
        if err > ROPE_ATOL:
            raise ValueError(f"{name}: {k} differs from the 2D-RoPE table of this configuration by {err:.3g} "
                             f"(> {ROPE_ATOL}); the model computes RoPE on the fly and would not match")
        passthrough[k] = t

    params = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(params)
    flat = flatten(pure)
    stacked: dict[Path, dict[int, np.ndarray]] = {}
    new: dict[Path, np.ndarray] = {}
    for e in entries:
        for (path, layer), arr in zip(e.ours, _from_official(e, np.asarray(sd[e.official], np.float32))):
            if layer is None:
                new[path] = arr
            else:
                stacked.setdefault(path, {})[layer] = arr
    for path, layers in stacked.items():
        new[path] = np.stack([layers[i] for i in range(len(layers))])
    initialised = {}
    null_path = ("decoder", "null_token")
    if not has_null:
        new[null_path] = np.zeros(flat[null_path].shape, np.float32)
        initialised[NULL_KEY] = "absent from the checkpoint (the release never creates it): zeros"
    for path, target in flat.items():
        if path not in new:
            raise ValueError(f"{name}: no official tensor maps to our parameter {'/'.join(map(str, path))}")
        if tuple(new[path].shape) != tuple(target.shape):
            raise ValueError(f"{name}: our parameter {'/'.join(map(str, path))} expects {tuple(target.shape)}, "
                             f"the mapping produced {new[path].shape}")
        set_path(pure, path, jnp.asarray(new[path], dtype=target.dtype))
    nnx.replace_by_pure_dict(params, pure)
    report = ImportReport(consumed=sorted(e.official for e in entries) + list(ROPE_KEYS), ignored=ignored,
                          initialised=initialised, passthrough=passthrough)
    return params, report


def import_official(model: SceneTok, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> ImportReport:
    """Load an official state_dict (dict or safetensors path) into ``model`` in place; returns the report."""
    name = "state_dict"
    if not isinstance(state_dict, Mapping):
        name, state_dict = os.fspath(state_dict), load_official(state_dict)
    state, report = official_to_state(model, state_dict, name=name, **kwargs)
    nnx.update(model, state)
    return report


def model_from_official(config_json, weights, **model_kwargs) -> tuple[SceneTok, ImportReport]:
    """Build a SceneTok from an official config.json / manifest and load its weights (dict or safetensors path).

    Built abstractly (``nnx.eval_shape``): only the imported arrays are allocated. model_kwargs: SceneTok
    arguments (attn_impl, scan, remat, dtype, or compressor= / decoder= overrides merged over the official values).
    """
    cfg = config_from_official(config_json)
    comp = dict(cfg["compressor"], **model_kwargs.pop("compressor", {}))
    dec = dict(cfg["decoder"], **model_kwargs.pop("decoder", {}))
    abstract = nnx.eval_shape(lambda: SceneTok(compressor=comp, decoder=dec, rngs=nnx.Rngs(0), **model_kwargs))
    name = "state_dict"
    if not isinstance(weights, Mapping):
        name, weights = os.fspath(weights), load_official(weights)
    params, report = official_to_state(abstract, weights, name=name)
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model_from_official: SceneTok has non-parameter state {rest}")
    return nnx.merge(graphdef, params, rest), report
