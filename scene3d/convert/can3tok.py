"""Official Can3Tok PyTorch state_dict <-> our :class:`~scene3d.models.can3tok.Can3Tok` (the table, and
``config_from_official``).

The official keys are ``AlignedShapeAsLatentPLModule.state_dict()`` names (``shape_model.`` prefix), as
``gs_can3tok.py`` saves them. Besides Linear transposes and the per-layer stacking of ``resblocks.{i}`` onto our
scanned 'layers' axis, ``c_qkv`` (3W, W) / ``c_kv`` (2W, W_data) are fused per head: rows (heads, [q|k|v], d).

``geo_decoder.*`` (an occupancy decoder the Gaussian path never runs) has no counterpart: it is ignored on import
(kept in the report's ``passthrough`` so that an export can write it back) and, on export, omitted or written as
zeros (``unused='zeros'``) so that the official code loads the file with strict key checking.

A model built with ``head_layout='correct'`` exports to the same keys, but the official code (flash path) would
compute a different function with those weights; ``config_from_official`` gives the release layout.
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
from scene3d.models.can3tok import Can3Tok
from scene3d.specs import can3tok as specs

PREFIX = "shape_model."


def config_from_official(config_json: str | os.PathLike | Mapping) -> dict[str, Any]:
    """Constructor kwargs (incl. ``head_layout``) for the official model described by ``config_json``.

    Accepts a fixture ``config.json`` or a ``manifest_*.json`` (path or parsed dict): the
    ``shape_module_cfg.params`` block and the hard-coded code constants (``code_constants*``).
    """
    src = str(config_json) if not isinstance(config_json, Mapping) else "<dict>"
    cfg = config_json
    if not isinstance(cfg, Mapping):
        with open(cfg) as f:
            cfg = json.load(f)

    p = next((cfg[k] for k in cfg if k.startswith("shape_module_cfg.params")), None)
    # A fixture records the constants it overrode under a long "code_constants (...)" key, a manifest only the
    # released ones.
    consts = [k for k in cfg if k.startswith("code_constants") and k != "code_constants_released"]
    c = cfg[consts[0]] if consts else cfg.get("code_constants_released")
    if p is None or c is None:
        raise ValueError(f"config_from_official({src}): expected fields 'shape_module_cfg.params*' and "
                         f"'code_constants*', got {sorted(cfg)}")
    flash = cfg.get("implicit_constructor_defaults", {}).get("flash", True)
    out = dict(specs.BASE, width=p["width"], heads=p["heads"], encoder_depth=p["num_encoder_layers"],
               decoder_depth=p["num_decoder_layers"], num_latents=p["num_latents"], embed_dim=p["embed_dim"],
               point_feats=p["point_feats"], num_bands=p["num_freqs"], include_pi=bool(p["include_pi"]),
               qkv_bias=bool(p["qkv_bias"]), use_ln_post=bool(p["use_ln_post"]), latent_dim=c["kl_proj_dim"],
               num_gaussians=c["num_gaussians"], gs_channels=c["gs_param_dim"], head_width=c["gs_decoder_W"],
               head_depth=c["gs_decoder_D"])
    if "decoder_tokens" in c and c["decoder_tokens"] * p["embed_dim"] != c["kl_proj_dim"]:
        raise ValueError(f"config_from_official({src}): decoder_tokens {c['decoder_tokens']} x embed_dim "
                         f"{p['embed_dim']} != kl_proj_dim {c['kl_proj_dim']}")
    out["head_layout"] = "release" if flash else "correct"
    return out


def _resblocks(off: str, ours: tuple, depth: int, heads: int, qkv_bias: bool) -> list[engine.Entry]:
    out = []
    for i in range(depth):
        o, p = f"{off}.resblocks.{i}", ours + ("layers",)
        out += fused(o + ".attn.c_qkv", p + ("attn",), "qkv", (i,), qkv_bias, heads)
        out += linear(o + ".attn.c_proj", p + ("attn", "out"), (i,))
        out += norm(o + ".ln_1", p + ("norm1",), (i,)) + norm(o + ".ln_2", p + ("norm2",), (i,))
        out += linear(o + ".mlp.c_fc", p + ("mlp", "fc1"), (i,)) + linear(o + ".mlp.c_proj", p + ("mlp", "fc2"), (i,))
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


class Can3TokLayout(engine.Layout):
    what = "Can3Tok"
    prefix = PREFIX
    ignore = {"geo_decoder.": "unused by the Gaussian-splat path"}
    passthrough = True
    hint = "build the model with config_from_official(config.json)"

    def table(self, model: Can3Tok) -> list[engine.Entry]:
        c = model.config
        h, qb = c["heads"], c["qkv_bias"]
        if not c["shape_token"]:
            raise ValueError("Can3Tok official layout: the official model always has the shape token "
                             "(shape_token=True)")
        if c["input_offset"] != 4 or c["anchor_grid"]:
            raise ValueError("Can3Tok official layout: the release reads 18-channel rows (input_offset=4) without "
                             f"the voxel-anchor encoding (anchor_grid=0); got input_offset={c['input_offset']}, "
                             f"anchor_grid={c['anchor_grid']}")
        x, cross = "encoder.cross_attn", ("encoder_cross",)
        out = [entry("encoder.query", ("queries",))]
        out += linear("encoder.input_proj", ("input_proj",))
        out += linear(x + ".attn.c_q", cross + ("cross", "q"), bias=qb)
        out += fused(x + ".attn.c_kv", cross + ("cross",), "kv", (), qb, h)
        out += linear(x + ".attn.c_proj", cross + ("cross", "out"))
        for n, ours in (("ln_1", "norm_latents"), ("ln_2", "norm_inputs"), ("ln_3", "norm_mlp")):
            out += norm(f"{x}.{n}", cross + (ours,))
        out += linear(x + ".mlp.c_fc", cross + ("mlp", "fc1")) + linear(x + ".mlp.c_proj", cross + ("mlp", "fc2"))
        out += _resblocks("encoder.self_attn", ("encoder_blocks",), c["encoder_depth"], h, qb)
        if c["use_ln_post"]:
            out += norm("encoder.ln_post", ("ln_post",))
        for off, ours in (("pre_kl", "pre_kl"), ("post_kl", "post_kl"), ("kl_emb_proj_mean", "kl_mean"),
                          ("kl_emb_proj_var", "kl_logvar")):
            out += linear(off, (ours,))
        out += _resblocks("transformer", ("decoder_blocks",), c["decoder_depth"], h, qb)
        out += linear("GS_decoder.pts_linears.0", ("head_in",))
        for j in range(c["head_depth"] - 1):
            out += linear(f"GS_decoder.pts_linears.{1 + 3 * j}", ("head_hidden", j, "linear"))
            out += norm(f"GS_decoder.pts_linears.{2 + 3 * j}", ("head_hidden", j, "norm"))
        out += linear("GS_decoder.output_linear", ("head_out",))
        return out

    def to_state_dict(self, model, *, extra=None):
        return export_official(model, unused="zeros", extra=extra)


LAYOUT = Can3TokLayout()


def export_official(model: Can3Tok, state: nnx.State | Mapping | None = None, *, prefix: str = PREFIX,
                    unused: str = "omit", extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy float32 array}; an abstract model or state
    (``nnx.eval_shape``) gives {key: jax.ShapeDtypeStruct} without allocating anything.

    unused: 'omit' | 'zeros' - whether to write the official ``geo_decoder.*`` tensors (zeros; module doc).
    extra: tensors passed through unchanged (e.g. ``Report.passthrough``), keys without ``prefix``; they take
    precedence over ``unused='zeros'``.
    """
    if unused not in ("omit", "zeros"):
        raise ValueError(f"export_official: unused must be 'omit' or 'zeros', got {unused!r}")
    out = LAYOUT.export(model, state, prefix="")
    abstract = any(isinstance(v, jax.ShapeDtypeStruct) for v in out.values())
    for k, shape in (unused_official_shapes(model) if unused == "zeros" else {}).items():
        out[k] = jax.ShapeDtypeStruct(shape, np.float32) if abstract else np.zeros(shape, np.float32)
    out.update(extra or {})
    return {prefix + k: v for k, v in out.items()}


def official_shapes(model: Can3Tok, *, unused: str = "omit") -> dict[str, tuple[int, ...]]:
    """{official key without prefix: shape} expected for ``model``'s configuration (nothing allocated)."""
    out = LAYOUT.shapes(model)
    if unused == "zeros":
        out.update(unused_official_shapes(model))
    return out


def official_to_state(model: Can3Tok, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, engine.Report]:
    """Official state_dict -> (our nnx.State of Params for ``model``'s configuration, report). ``prefix``: the key
    prefix (default: found from the keys, usually 'shape_model.'); unknown keys raise unless ``strict=False``."""
    return LAYOUT.to_state(model, state_dict, prefix=prefix, strict=strict, name=name)


def import_official(model: Can3Tok, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> engine.Report:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    return LAYOUT.import_into(model, state_dict, **kwargs)


load_official = engine.load_state_dict


def model_from_official(config_json, weights, **model_kwargs) -> tuple[Can3Tok, engine.Report]:
    """A Can3Tok built abstractly from an official config.json / manifest, holding ``weights`` (dict or file).
    model_kwargs override the official config (e.g. attn_impl, scan, remat, dtype)."""
    kwargs = dict(config_from_official(config_json), **model_kwargs)
    return LAYOUT.build(lambda: Can3Tok(rngs=nnx.Rngs(0), **kwargs), weights)
