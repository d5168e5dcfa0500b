"""Official SceneTok PyTorch state_dict <-> our :class:`~scene3d.models.scenetok.SceneTok` (the table, and
``config_from_official``).

Official keys are the released Lightning checkpoints' ``state_dict`` names: ``compressor.*`` (MVAECompressor)
and ``denoiser.*`` (LightningDiT wrapper). Besides Linear transposes, Conv2d patch embeddings and the per-layer
stacking of ``aggregate.{i}`` / ``model.blocks.{i}``: fused ``qkv`` and SwiGLU ``w12`` rows split into q / k / v and
gate / up; the compressor's last block (no norm3 / mlp1) is our ``last_block``; ``compressor.scene_tokens``
(1, K, D) is our (K, D) ``scene_queries``.

- ``compressor.feat_rope.freqs_cos/sin`` are deterministic 2D-RoPE tables (computed on the fly here): an import
  checks them against ours and keeps them in the report (``passthrough``) so an export can write them back
  bit-exactly; otherwise the export recomputes them.
- ``denoiser.null_tokens`` (1, 1, D) exists only in checkpoints trained with CFG: when absent, our null token is
  zeros (the release's init) and the report says so; the export writes it with ``null_tokens=True``.
- Other keys (a real checkpoint's extras) are ignored and listed, like the authors' ``load_strict=false``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from scene3d.convert import engine
from scene3d.convert.engine import entry, fused, linear, norm
from scene3d.models.scenetok import SceneTok, eva_rope_tables
from scene3d.specs import scenetok as specs

ROPE_KEYS = ("compressor.feat_rope.freqs_cos", "compressor.feat_rope.freqs_sin")
NULL_KEY = "denoiser.null_tokens"
ROPE_ATOL = 1e-5


def config_from_official(config_json: str | os.PathLike | Mapping) -> dict[str, dict[str, Any]]:
    """{'compressor': kwargs, 'decoder': kwargs} of the official model described by a fixture ``config.json`` or a
    ``manifest_*.json`` (path or parsed dict; a manifest nests the same fields under 'config')."""
    src = str(config_json) if not isinstance(config_json, Mapping) else "<dict>"
    cfg = config_json
    if not isinstance(cfg, Mapping):
        with open(cfg) as f:
            cfg = json.load(f)
    cfg = cfg.get("config", cfg)
    need = ("model.compressor", "model.denoiser", "constructor_args")
    if any(k not in cfg for k in need):
        raise ValueError(f"config_from_official({src}): expected fields {need}, got {sorted(cfg)}")
    c, d, ctor = cfg["model.compressor"], cfg["model.denoiser"], cfg["constructor_args"]
    ck, dk = c["kwargs"], d["kwargs"]
    for name, part in (("compressor", c), ("denoiser", d)):
        cam = part["camera"]
        if cam["name"] != "ray" or cam["embedding"]["name"] != "lvsm" or cam["normalize"] or cam["origin_first"]:
            raise ValueError(f"config_from_official({src}): {name} camera {cam} is not the release's LVSM ray map")
        if tuple(cam.get("scale", (1.0, 1.0))) != (1.0, 1.0):
            raise ValueError(f"config_from_official({src}): {name} camera scale {cam['scale']} != [1, 1]")
    if not (c["camera_conditioning"] == d["camera_conditioning"] == "adaLN") or c["scene_token_projection"] != "kl":
        raise ValueError(f"config_from_official({src}): only adaLN camera conditioning and the KL token head exist")
    if not (ck["use_rope_2d"] and ck["use_swiglu"] and ck["use_rmsnorm"] and not ck["use_qknorm"]
            and dk["use_rope_3d"] and dk["use_qknorm"] and dk["use_swiglu"] and dk["use_rmsnorm"]
            and not dk["wo_shift"] and not ck["wo_shift"]):
        raise ValueError(f"config_from_official({src}): unsupported compressor/denoiser kwargs {ck} / {dk}")
    grid_c = [s // ck["patch_size"] for s in c["input_shape"]]
    grid_r = [s // c["camera"]["embedding"]["patch_size"] for s in c["camera"]["input_shape"]]
    grid_d = [s // dk["patch_size"] for s in d["input_shape"]]
    grid_dr = [s // d["camera"]["embedding"]["patch_size"] for s in d["camera"]["input_shape"]]
    if grid_c != grid_r or grid_d != grid_dr:
        raise ValueError(f"config_from_official({src}): ray-map token grids {grid_r}/{grid_dr} differ from the "
                         f"latent token grids {grid_c}/{grid_d}")
    frames = ctor.get("denoiser_forward_temporal_downsample", 4)
    kl = c.get("kl_weights", [0.0])
    for name, part in (("compressor", c), ("denoiser", d)):
        if part["input_shape"][0] != part["input_shape"][1]:
            raise ValueError(f"config_from_official({src}): {name} input_shape {part['input_shape']} is not square")
    compressor = dict(
        specs.COMPRESSOR_BASE, input_size=c["input_shape"][0], in_channels=ctor["compressor"]["in_channels"],
        width=ck["hidden_size"], depth=ck["depth"], heads=ck["num_heads"], patch=ck["patch_size"],
        mlp_ratio=float(ck["mlp_ratio"]),
        num_tokens=c["num_scene_tokens"], token_dim=c["token_dim"], ray_patch=c["camera"]["embedding"]["patch_size"],
        kl_weight=float(kl[0]), query_init_std=5.0 if c.get("init_large", True) else 0.02)
    decoder = dict(
        specs.DECODER_BASE, input_size=d["input_shape"][0], in_channels=dk["in_channels"], width=dk["hidden_size"],
        depth=dk["depth"], heads=dk["num_heads"], patch=dk["patch_size"], mlp_ratio=float(dk.get("mlp_ratio", 4.0)),
        token_dim=ctor["denoiser"]["cond_dim"], ray_patch=d["camera"]["embedding"]["patch_size"],
        freq_dim=dk.get("frequency_embedding_size", 256), temporal_downsample=frames,
        num_target_split=d["num_target_split"], force_incorrect=bool(cfg.get("model.force_incorrect", False)),
        wan_pose_padding=bool(ctor["denoiser"].get("using_wan", False)))
    if d["camera"]["embedding"]["in_channels"] != 6 * frames:
        raise ValueError(f"config_from_official({src}): denoiser camera in_channels "
                         f"{d['camera']['embedding']['in_channels']} != 6 x {frames} frames")
    return dict(compressor=compressor, decoder=decoder)


def _swiglu(off: str, ours: tuple, index: tuple) -> list[engine.Entry]:
    return fused(off + ".w12", ours, ("w_gate", "w_up"), index) + linear(off + ".w3", ours + ("w_down",), index)


def _perceiver_block(off: str, ours: tuple, index: tuple, last: bool) -> list[engine.Entry]:
    out = []
    for att in ("attn1", "attn2"):
        out += fused(f"{off}.{att}.qkv", ours + (att,), "qkv", index)
        out += linear(f"{off}.{att}.proj", ours + (att, "out"), index)
    for name, part in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj", "out")):
        out += linear(f"{off}.attn3.{name}", ours + ("attn3", part), index)
    for n in ("norm1", "norm2", "norm4") if last else ("norm1", "norm2", "norm3", "norm4"):
        out += norm(f"{off}.{n}", ours + (n,), index, bias=False)
    if not last:
        out += _swiglu(off + ".mlp1", ours + ("mlp1",), index)
    return out + _swiglu(off + ".mlp2", ours + ("mlp2",), index) + linear(off + ".adaLN_modulation.1",
                                                                          ours + ("adaln", "proj"), index)


def _denoiser_block(off: str, ours: tuple, index: tuple) -> list[engine.Entry]:
    out = fused(off + ".attn.qkv", ours + ("attn",), "qkv", index)
    out += linear(off + ".attn.proj", ours + ("attn", "out"), index)
    for name, part in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj", "out")):
        out += linear(f"{off}.attn2.{name}", ours + ("cross", part), index)
    for att, our_att in (("attn", "attn"), ("attn2", "cross")):
        for n in ("q_norm", "k_norm"):
            out += norm(f"{off}.{att}.{n}", ours + (our_att, n), index, bias=False)
    out += norm(off + ".norm1", ours + ("norm1",), index, bias=False) + norm(off + ".norm2", ours + ("norm2",), index,
                                                                             bias=False)
    return out + _swiglu(off + ".mlp", ours + ("mlp",), index) + linear(off + ".adaLN_modulation.1",
                                                                        ours + ("adaln", "proj"), index)


def rope_tables(model: SceneTok) -> dict[str, np.ndarray]:
    """The official 2D-RoPE buffers for ``model``'s configuration (grid = input_size / patch)."""
    cc = model.compressor.config
    cos, sin = eva_rope_tables(cc["width"] // cc["heads"], cc["input_size"] // cc["patch"], cc["rope_theta"])
    return dict(zip(ROPE_KEYS, (cos, sin)))


def _rope_kind(model: SceneTok) -> engine.Kind:
    """The RoPE buffers: computed on export; on import checked against ours (the model computes them itself)."""
    tables = rope_tables(model)

    def check(tensors, shapes):
        for k, t in zip(ROPE_KEYS, tensors):
            err = float(np.max(np.abs(t - tables[k])))
            if err > ROPE_ATOL:
                raise ValueError(f"{k} differs from the 2D-RoPE table of this configuration by {err:.3g} "
                                 f"(> {ROPE_ATOL}); the model computes RoPE on the fly and would not match")
        return []

    return engine.Kind("rope_tables", lambda arrays, xp: [tables[k] for k in ROPE_KEYS], check)


class SceneTokLayout(engine.Layout):
    what = "SceneTok"
    strict = False  # the release loads with load_strict=false
    hint = "build the model with config_from_official(config.json) or the matching variant"

    def table(self, model: SceneTok, null_tokens: bool | None = None) -> list[engine.Entry]:
        """``null_tokens``: write ``denoiser.null_tokens`` (True), never (False) or read it when present (None)."""
        cc, dc = model.compressor.config, model.decoder.config
        c, d = ("compressor",), ("decoder",)
        out = [entry("compressor.scene_tokens", c + ("scene_queries",), engine.reshape(lambda s: (1,) + s)),
               *linear("compressor.y_embed.proj", c + ("image_embed", "proj"), kind=engine.patch(cc["in_channels"]))]
        for i in range(cc["depth"]):
            last = i == cc["depth"] - 1
            ours, index = (c + ("last_block",), ()) if last else (c + ("blocks", "layers"), (i,))
            out += _perceiver_block(f"compressor.aggregate.{i}", ours, index, last)
        out += linear("compressor.pose_embed.model.model.1", c + ("ray_embed", "proj"), bias=False)
        out += linear("compressor.out_proj.0", c + ("out_proj",))
        out.append(engine.Entry(ROPE_KEYS, (), _rope_kind(model)))
        out += linear("denoiser.pose_embed.model.model.1", d + ("ray_embed", "proj"), bias=False)
        out += linear("denoiser.model.x_embedder.proj", d + ("x_embed", "proj"), kind=engine.patch(dc["in_channels"]))
        out += linear("denoiser.model.t_embedder.mlp.0", d + ("t_embed", "fc1"))
        out += linear("denoiser.model.t_embedder.mlp.2", d + ("t_embed", "fc2"))
        for i in range(dc["depth"]):
            out += _denoiser_block(f"denoiser.model.blocks.{i}", d + ("blocks", "layers"), (i,))
        f = "denoiser.model.final_layer"
        out += norm(f + ".norm_final", d + ("final", "norm"), bias=False)
        out += linear(f + ".linear", d + ("final", "linear"))
        out += linear(f + ".adaLN_modulation.1", d + ("final", "adaln", "proj"))
        out += linear("denoiser.cnd_proj", d + ("cond_proj",))
        if null_tokens is not False:
            out.append(entry(NULL_KEY, d + ("null_token",), engine.reshape(lambda s: (1, 1) + s),
                             optional=null_tokens is None))
        return out

    def to_state_dict(self, model, *, extra=None):
        null = model.decoder.null_token.get_value()
        written = not isinstance(null, jax.ShapeDtypeStruct) and bool(np.any(np.asarray(null) != 0))
        return export_official(model, null_tokens=written or NULL_KEY in (extra or {}), extra=extra)


LAYOUT = SceneTokLayout()


def export_official(model: SceneTok, state: nnx.State | Mapping | None = None, *, null_tokens: bool = False,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy float32 array} (RoPE buffers included); an abstract
    model or state gives {key: jax.ShapeDtypeStruct}. null_tokens: also write ``denoiser.null_tokens`` (the
    release code never creates it; CFG-trained checkpoints carry it). extra: tensors written as given (e.g.
    ``Report.passthrough``), overriding computed ones."""
    return LAYOUT.export(model, state, table=LAYOUT.table(model, null_tokens), extra=extra)


def official_shapes(model: SceneTok, *, null_tokens: bool = False) -> dict[str, tuple[int, ...]]:
    """{official key: shape} expected for ``model``'s configuration (nothing allocated)."""
    return LAYOUT.shapes(model, table=LAYOUT.table(model, null_tokens))


def official_to_state(model: SceneTok, state_dict: Mapping[str, Any], *, strict: bool = False,
                      name: str = "state_dict") -> tuple[nnx.State, engine.Report]:
    """Official state_dict -> (our nnx.State of Params for ``model``'s configuration, report). Keys the model does
    not use are ignored and reported (``strict=True`` makes them an error); ``denoiser.null_tokens`` is imported
    when present, else our null token is zeros (reported under ``initialised``)."""
    return LAYOUT.to_state(model, state_dict, prefix="", strict=strict, name=name)


def import_official(model: SceneTok, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> engine.Report:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    return LAYOUT.import_into(model, state_dict, prefix="", **kwargs)


load_official = engine.load_state_dict


def model_from_official(config_json, weights, **model_kwargs) -> tuple[SceneTok, engine.Report]:
    """A SceneTok built abstractly from an official config.json / manifest, holding ``weights`` (dict or file).
    model_kwargs: SceneTok arguments (attn_impl, scan, remat, dtype, or compressor= / decoder= overrides merged
    over the official values)."""
    cfg = config_from_official(config_json)
    comp = dict(cfg["compressor"], **model_kwargs.pop("compressor", {}))
    dec = dict(cfg["decoder"], **model_kwargs.pop("decoder", {}))
    return LAYOUT.build(lambda: SceneTok(compressor=comp, decoder=dec, rngs=nnx.Rngs(0), **model_kwargs), weights,
                        prefix="")
