"""Official SceneGen (SceneTok's scene generator, ``scene_generator.*``) state_dict <-> our :class:`SceneGen` state.

Layout differences handled here: torch Linear (out, in) -> our kernels (in, out); conv patch embeddings
(D, C, p, p) -> our patch kernels (p * p * C, D) with rows (py, px, c); fused self-attention ``qkv`` (3D, D) -> q, k,
v; SwiGLU ``w12`` (2H, D) -> w_gate (first H rows), w_up; per-block tensors stacked on the scanned 'layers' axis;
``pos_embed`` (1, K, D) / ``null_tokens`` (1, 1, D) squeezed; the diffusers sin-cos buffers (1, M*M, D) kept as
(M, M, D) :class:`~scene3d.models.scenegen.Buffer` variables. Real checkpoints were loaded by the authors with
``load_strict=false``; unknown keys are reported (``strict=False``) or rejected.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models.convert_common import ImportReport, flatten, load_state_dict, set_path
from scene3d.models.scenegen import VARIANTS, Buffer, SceneGen

PREFIX = "scene_generator."


def config_from_official(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Fixture config.json or release manifest (``model.scene_generator``, ``constructor_args``) -> SceneGen kwargs."""
    if not isinstance(config, Mapping):
        with open(config) as f:
            config = json.load(f)
    sg = config["model.scene_generator"]
    kw, cam = sg["kwargs"], sg["camera"]
    emb = cam.get("embedding") or {}
    checks = {"use_qknorm": True, "use_swiglu": True, "use_rmsnorm": True, "wo_shift": False,
              "use_rope": False, "learn_sigma": False}
    bad = {k: kw[k] for k, want in checks.items() if k in kw and kw[k] != want}
    if cam.get("name") != "plucker" or cam.get("origin_first") or not cam.get("normalize", True):
        bad["camera"] = cam.get("name"), cam.get("origin_first"), cam.get("normalize")
    if emb.get("name") != "patch_embed" or emb.get("in_channels", 6) != 6 or not emb.get("bias", True):
        bad["camera.embedding"] = emb
    if sg.get("camera_type", "avg_raymap") != "avg_raymap" or sg.get("use_rope_1d", False):
        bad["camera_type/use_rope_1d"] = sg.get("camera_type"), sg.get("use_rope_1d")
    if list(cam.get("scale", [1.0, 1.0])) != [1.0, 1.0]:
        bad["camera.scale"] = cam["scale"]
    if bad:
        raise ValueError(f"config_from_official: unsupported SceneGen options {bad}")
    ctor = config["constructor_args"]
    sched = config.get("model.scene_scheduler", {}).get("kwargs", {})
    return dict(hidden=int(kw["hidden_size"]), depth=int(kw["depth"]), heads=int(kw["num_heads"]),
                mlp_ratio=float(kw.get("mlp_ratio", 4.0)), num_tokens=int(ctor["num_scene_tokens"]),
                token_dim=int(ctor["cond_dim"]), latent_channels=int(kw["in_channels"]),
                latent_patch=int(kw.get("patch_size", 1)), camera_size=tuple(int(s) for s in cam["input_shape"]),
                camera_patch=int(emb["patch_size"]), freq_dim=int(kw.get("frequency_embedding_size", 256)),
                token_scale=float(sg.get("scale_factor", 1.0)), shift=float(sched.get("timestep_shift") or 4.0),
                camera_dropout=float(emb.get("dropout_prob", 0.0)))


# ---------------------------------------------------------------------------------------------------- mapping
# An entry: official key -> (kind, [our paths]); a path ending in an int layer index reads a stacked slice.


def _lin(out, off, path, bias=True):
    out[off + ".weight"] = ("linear", [path + ("kernel",)])
    if bias:
        out[off + ".bias"] = ("copy", [path + ("bias",)])


def mapping(model: SceneGen) -> dict[str, tuple[str, list[tuple]]]:
    """{official key (no prefix): (kind, our paths)} for ``model``'s configuration."""
    m: dict[str, tuple[str, list[tuple]]] = {}
    for off, ours in (("pose_embed", "pose_embed"), ("anchor_pose_embed", "anchor_pose_embed")):
        base = f"{off}.model.model."
        m[base + "pos_embed"] = ("table", [(ours, "pos_table")])
        m[base + "proj.weight"] = ("patch", [(ours, "patch_embed", "proj", "kernel")])
        m[base + "proj.bias"] = ("copy", [(ours, "patch_embed", "proj", "bias")])
    m["model.pos_embed"] = ("unsqueeze", [("pos_embed",)])
    m["model.null_tokens"] = ("unsqueeze", [("null_tokens",)])
    _lin(m, "model.x_embedder", ("x_embedder",))
    m["model.c_embedder.proj.weight"] = ("patch", [("c_embedder", "proj", "kernel")])
    m["model.c_embedder.proj.bias"] = ("copy", [("c_embedder", "proj", "bias")])
    _lin(m, "model.t_embedder.mlp.0", ("t_embedder", "fc1"))
    _lin(m, "model.t_embedder.mlp.2", ("t_embedder", "fc2"))
    depth = model.config["depth"]
    for i in range(depth):
        o, p = f"model.blocks.{i}.", ("blocks", "layers")
        m[o + "norm1.weight"] = ("copy", [p + ("norm1", "scale", i)])
        m[o + "norm2.weight"] = ("copy", [p + ("norm2", "scale", i)])
        for off, ours in (("attn", "attn"), ("attn2", "cross")):
            m[o + off + ".q_norm.weight"] = ("copy", [p + (ours, "q_norm", "scale", i)])
            m[o + off + ".k_norm.weight"] = ("copy", [p + (ours, "k_norm", "scale", i)])
            m[o + off + ".proj.weight"] = ("linear", [p + (ours, "out", "kernel", i)])
            m[o + off + ".proj.bias"] = ("copy", [p + (ours, "out", "bias", i)])
        m[o + "attn.qkv.weight"] = ("split_w", [p + ("attn", q, "kernel", i) for q in "qkv"])
        m[o + "attn.qkv.bias"] = ("split_b", [p + ("attn", q, "bias", i) for q in "qkv"])
        for q in "qkv":
            m[o + f"attn2.to_{q}.weight"] = ("linear", [p + ("cross", q, "kernel", i)])
            m[o + f"attn2.to_{q}.bias"] = ("copy", [p + ("cross", q, "bias", i)])
        m[o + "mlp.w12.weight"] = ("split_w", [p + ("mlp", "w_gate", "kernel", i), p + ("mlp", "w_up", "kernel", i)])
        m[o + "mlp.w12.bias"] = ("split_b", [p + ("mlp", "w_gate", "bias", i), p + ("mlp", "w_up", "bias", i)])
        m[o + "mlp.w3.weight"] = ("linear", [p + ("mlp", "w_down", "kernel", i)])
        m[o + "mlp.w3.bias"] = ("copy", [p + ("mlp", "w_down", "bias", i)])
        m[o + "adaLN_modulation.1.weight"] = ("linear", [p + ("adaln", "proj", "kernel", i)])
        m[o + "adaLN_modulation.1.bias"] = ("copy", [p + ("adaln", "proj", "bias", i)])
    m["model.final_layer.norm_final.weight"] = ("copy", [("final_norm", "scale")])
    _lin(m, "model.final_layer.linear", ("final_linear",))
    _lin(m, "model.final_layer.adaLN_modulation.1", ("final_adaln", "proj"))
    return m


def _split_path(path):
    return (path[:-1], path[-1]) if isinstance(path[-1], int) else (path, None)


def _to_official(kind, arrays, xp):
    a = arrays[0]
    if kind == "copy":
        return a
    if kind == "linear":
        return xp.transpose(a)
    if kind == "unsqueeze":
        return a.reshape((1,) * (3 - a.ndim) + a.shape)
    if kind == "table":
        return a.reshape(1, a.shape[0] * a.shape[1], a.shape[2])
    if kind == "split_w":
        return xp.concatenate([xp.transpose(x) for x in arrays], axis=0)
    if kind == "split_b":
        return xp.concatenate(arrays, axis=0)
    raise ValueError(kind)


def _patch_to_official(kernel, channels, patch, xp):
    # (p * p * C, D) rows (py, px, c) -> torch conv (D, C, p, p)
    d = kernel.shape[-1]
    return xp.transpose(kernel.reshape(patch, patch, channels, d), (3, 2, 0, 1))


def _patch_info(model: SceneGen, path) -> tuple[int, int]:
    if path[0] == "c_embedder":
        return model.latent_channels, model.latent_patch
    return 6, model.pose_embed.patch


def export_official(model: SceneGen, state: nnx.State | None = None, *, prefix: str = PREFIX) -> dict[str, Any]:
    """Our parameters and buffers -> the official state_dict {key: numpy array}; an abstract model
    (``nnx.eval_shape``) gives {key: jax.ShapeDtypeStruct} without allocating anything."""
    state = nnx.state(model, (nnx.Param, Buffer)) if state is None else state
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    flat = flatten(pure)
    entries = mapping(model)

    def convert(f, xp):
        out = {}
        for key, (kind, paths) in entries.items():
            arrays = []
            for path in paths:
                p, layer = _split_path(path)
                arrays.append(f[p] if layer is None else f[p][layer])
            if kind == "patch":
                c, pp = _patch_info(model, paths[0])
                out[key] = _patch_to_official(arrays[0], c, pp, xp)
            else:
                out[key] = _to_official(kind, arrays, xp)
        return out

    if any(isinstance(x, jax.ShapeDtypeStruct) for x in flat.values()):
        out = jax.eval_shape(lambda f: convert(f, jnp), flat)
    else:
        out = {k: np.ascontiguousarray(v) for k, v in convert({p: np.asarray(a) for p, a in flat.items()},
                                                                np).items()}
    return {prefix + k: v for k, v in out.items()}


def official_shapes(model: SceneGen) -> dict[str, tuple[int, ...]]:
    """{official key without prefix: shape} for ``model``'s configuration (nothing allocated)."""
    pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        nnx.to_pure_dict(nnx.state(model, (nnx.Param, Buffer))))
    return {k: tuple(v.shape) for k, v in export_official(model, pure, prefix="").items()}


def _from_official(kind, arr: np.ndarray, n_out: int, model: SceneGen, path) -> list[np.ndarray]:
    if kind == "copy":
        return [arr]
    if kind == "linear":
        return [arr.T]
    if kind == "unsqueeze":
        return [arr.reshape(arr.shape[2:] if arr.shape[:2] == (1, 1) else arr.shape[1:])]
    if kind == "table":
        m = int(round(np.sqrt(arr.shape[1])))
        return [arr.reshape(m, m, arr.shape[2])]
    if kind == "patch":
        c, p = _patch_info(model, path)
        return [np.transpose(arr, (2, 3, 1, 0)).reshape(p * p * c, arr.shape[0])]
    if kind == "split_w":
        return [a.T for a in np.split(arr, n_out, axis=0)]
    if kind == "split_b":
        return list(np.split(arr, n_out, axis=0))
    raise ValueError(kind)


def official_to_state(model: SceneGen, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, ImportReport]:
    """Official state_dict -> (nnx.State of our Params and Buffers, report).

    Missing keys and shape mismatches raise ValueError naming the key and the expected shape; keys the
    configuration does not use raise unless ``strict=False`` (then they are listed in the report).
    """
    expected = official_shapes(model)
    keys = list(state_dict)
    if prefix is None:
        prefix = "" if any(k in expected for k in keys) else PREFIX
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    ignored = {k: f"outside the prefix {prefix!r}" for k in keys if not k.startswith(prefix)}
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ValueError(f"{name}: missing {len(missing)} keys for this SceneGen configuration: "
                         + ", ".join(f"{prefix}{k} (expected shape {expected[k]})" for k in missing[:20]))
    bad = [k for k in expected if tuple(np.shape(sd[k])) != expected[k]]
    if bad:
        raise ValueError(f"{name}: shape mismatch for " + ", ".join(
            f"{prefix}{k}: expected {expected[k]}, got {tuple(np.shape(sd[k]))}" for k in bad[:20])
            + " (build the model with config_from_official(config.json))")
    unexpected = [prefix + k for k in sd if k not in expected]
    if unexpected and strict:
        raise ValueError(f"{name}: {len(unexpected)} keys this SceneGen configuration does not use: "
                         f"{unexpected[:20]} (pass strict=False to ignore them)")
    ignored.update({k: "unexpected key (strict=False)" for k in unexpected})

    state = nnx.state(model, (nnx.Param, Buffer))
    pure = nnx.to_pure_dict(state)
    flat = flatten(pure)
    new, stacked = {}, {}
    for key, (kind, paths) in mapping(model).items():
        for path, arr in zip(paths, _from_official(kind, np.asarray(sd[key], np.float32), len(paths), model,
                                                   paths[0])):
            p, layer = _split_path(path)
            if layer is None:
                new[p] = arr
            else:
                stacked.setdefault(p, {})[layer] = arr
    for p, layers in stacked.items():
        new[p] = np.stack([layers[i] for i in range(len(layers))])
    for p, target in flat.items():
        if p not in new:
            raise ValueError(f"{name}: no official tensor maps to our variable {'/'.join(map(str, p))}")
        if tuple(new[p].shape) != tuple(target.shape):
            raise ValueError(f"{name}: our variable {'/'.join(map(str, p))} expects {tuple(target.shape)}, the "
                             f"mapping produced {new[p].shape}")
        set_path(pure, p, jnp.asarray(new[p], target.dtype))
    nnx.replace_by_pure_dict(state, pure)
    return state, ImportReport(prefix=prefix, consumed=sorted(prefix + k for k in expected), ignored=ignored)


def load_official(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file, or a Lightning ``.ckpt`` (its ``state_dict``) -> {key: numpy array}."""
    path = os.fspath(path)
    return load_state_dict(path, prefix=None if path.endswith(".safetensors") else PREFIX)


def import_official(model: SceneGen, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> ImportReport:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    name = "state_dict"
    if not isinstance(state_dict, Mapping):
        name, state_dict = os.fspath(state_dict), load_official(state_dict)
    state, report = official_to_state(model, state_dict, name=name, **kwargs)
    nnx.update(model, state)
    return report


def model_from_official(config, weights, *, strict: bool = True, **model_kwargs) -> tuple[SceneGen, ImportReport]:
    """Build a SceneGen abstractly from an official config.json / manifest and load ``weights`` (dict or file);
    model_kwargs override the config (attn_impl, scan, remat, camera_dtype ...)."""
    kwargs = dict(config_from_official(config), **model_kwargs)
    abstract = nnx.eval_shape(lambda: SceneGen("tiny", rngs=nnx.Rngs(0), **kwargs))
    name = "state_dict"
    if not isinstance(weights, Mapping):
        name, weights = os.fspath(weights), load_official(weights)
    state, report = official_to_state(abstract, weights, name=name, strict=strict)
    graphdef, _, rest = nnx.split(abstract, (nnx.Param, Buffer), ...)
    return nnx.merge(graphdef, state, rest), report


def release_variant_matches(manifest: Mapping[str, Any]) -> bool:
    """Whether ``VARIANTS['re10k']`` is the configuration ``manifest`` describes."""
    cfg = config_from_official(manifest)
    return all(cfg[k] == (tuple(v) if isinstance(v, tuple) else v) for k, v in VARIANTS["re10k"].items())
