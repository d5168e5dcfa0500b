"""Official SceneGen (SceneTok's scene generator, ``scene_generator.*``) state_dict <-> our
:class:`~scene3d.models.scenegen.SceneGen` (the table, and ``config_from_official``).

Besides Linear transposes, Conv2d patch embeddings and the per-layer stacking of ``model.blocks.{i}``: fused
self-attention ``qkv`` and SwiGLU ``w12`` rows split into q / k / v and gate / up; ``pos_embed`` (1, K, D) /
``null_tokens`` (1, 1, D) squeezed; the diffusers sin-cos buffers (1, M*M, D) kept as (M, M, D)
:class:`~scene3d.models.scenegen.Buffer` variables. Real checkpoints were loaded by the authors with
``load_strict=false``; unknown keys are reported (``strict=False``) or rejected.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.convert.engine import entry, fused, linear, norm
from scene3d.models.scenegen import VARIANTS, Buffer, SceneGen

PREFIX = "scene_generator."
_LEAD = engine.reshape(lambda s: (1,) * (3 - len(s)) + s, "unsqueeze")  # (K, D) -> (1, K, D), (D,) -> (1, 1, D)
_TABLE = engine.reshape(lambda s: (1, s[0] * s[1], s[2]), "sincos_table")  # (M, M, D) -> (1, M * M, D)


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


class SceneGenLayout(engine.Layout):
    what = "SceneGen"
    prefix = PREFIX
    variables = (nnx.Param, Buffer)
    hint = "build the model with config_from_official(config.json)"

    def table(self, model: SceneGen) -> list[engine.Entry]:
        out = []
        for off in ("pose_embed", "anchor_pose_embed"):
            base = f"{off}.model.model."
            out.append(entry(base + "pos_embed", (off, "pos_table"), _TABLE))
            out += linear(base + "proj", (off, "patch_embed", "proj"), kind=engine.patch(6))
        out += [entry("model.pos_embed", ("pos_embed",), _LEAD), entry("model.null_tokens", ("null_tokens",), _LEAD)]
        out += linear("model.x_embedder", ("x_embedder",))
        out += linear("model.c_embedder.proj", ("c_embedder", "proj"), kind=engine.patch(model.latent_channels))
        out += linear("model.t_embedder.mlp.0", ("t_embedder", "fc1"))
        out += linear("model.t_embedder.mlp.2", ("t_embedder", "fc2"))
        for i in range(model.config["depth"]):
            o, p, ix = f"model.blocks.{i}.", ("blocks", "layers"), (i,)
            out += norm(o + "norm1", p + ("norm1",), ix, bias=False) + norm(o + "norm2", p + ("norm2",), ix, bias=False)
            for off, ours in (("attn", "attn"), ("attn2", "cross")):
                out += norm(o + off + ".q_norm", p + (ours, "q_norm"), ix, bias=False)
                out += norm(o + off + ".k_norm", p + (ours, "k_norm"), ix, bias=False)
                out += linear(o + off + ".proj", p + (ours, "out"), ix)
            out += fused(o + "attn.qkv", p + ("attn",), "qkv", ix)
            for q in "qkv":
                out += linear(o + f"attn2.to_{q}", p + ("cross", q), ix)
            out += fused(o + "mlp.w12", p + ("mlp",), ("w_gate", "w_up"), ix)
            out += linear(o + "mlp.w3", p + ("mlp", "w_down"), ix)
            out += linear(o + "adaLN_modulation.1", p + ("adaln", "proj"), ix)
        out += norm("model.final_layer.norm_final", ("final_norm",), bias=False)
        out += linear("model.final_layer.linear", ("final_linear",))
        out += linear("model.final_layer.adaLN_modulation.1", ("final_adaln", "proj"))
        return out


LAYOUT = SceneGenLayout()


def export_official(model: SceneGen, state: nnx.State | Mapping | None = None, *,
                    prefix: str = PREFIX) -> dict[str, Any]:
    """Our parameters and buffers -> the official state_dict {key: numpy array}; an abstract model
    (``nnx.eval_shape``) gives {key: jax.ShapeDtypeStruct} without allocating anything."""
    return LAYOUT.export(model, state, prefix=prefix)


def official_shapes(model: SceneGen) -> dict[str, tuple[int, ...]]:
    """{official key without prefix: shape} for ``model``'s configuration (nothing allocated)."""
    return LAYOUT.shapes(model)


def official_to_state(model: SceneGen, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, engine.Report]:
    """Official state_dict -> (nnx.State of our Params and Buffers, report); keys the configuration does not use
    raise unless ``strict=False`` (then they are listed in the report)."""
    return LAYOUT.to_state(model, state_dict, prefix=prefix, strict=strict, name=name)


def load_official(path: str | os.PathLike) -> dict:
    """A safetensors file, or a Lightning ``.ckpt`` (its ``state_dict``, the generator's keys) -> {key: array}."""
    path = os.fspath(path)
    return engine.load_state_dict(path, prefix=None if path.endswith(".safetensors") else PREFIX)


def import_official(model: SceneGen, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> engine.Report:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    if not isinstance(state_dict, Mapping):
        state_dict = load_official(state_dict)
    return LAYOUT.import_into(model, state_dict, **kwargs)


def model_from_official(config, weights, *, strict: bool = True,
                        **model_kwargs) -> tuple[SceneGen, engine.Report]:
    """A SceneGen built abstractly from an official config.json / manifest, holding ``weights`` (dict or file);
    model_kwargs override the config (attn_impl, scan, remat, camera_dtype ...)."""
    kwargs = dict(config_from_official(config), **model_kwargs)
    if not isinstance(weights, Mapping):
        weights = load_official(weights)
    return LAYOUT.build(lambda: SceneGen("tiny", rngs=nnx.Rngs(0), **kwargs), weights, strict=strict)


def release_variant_matches(manifest: Mapping[str, Any]) -> bool:
    """Whether ``VARIANTS['re10k']`` is the configuration ``manifest`` describes."""
    cfg = config_from_official(manifest)
    return all(cfg[k] == (tuple(v) if isinstance(v, tuple) else v) for k, v in VARIANTS["re10k"].items())
