"""Parity of our ports with an official-release fixture folder: ``python -m scene3d.convert.parity FIXTURE_DIR``.

A fixture folder (as in ``../shared/fixtures/*/*``) holds ``config.json`` (the official architecture values),
``weights.safetensors`` (the official state_dict, release key names), ``inputs.safetensors`` and
``outputs.safetensors`` (what the official code computed from them: outputs and named intermediates). The command
builds our model from ``config.json`` with the family's importer (``scene3d.convert.<family>``), imports the
weights, runs the jitted forward on the inputs (float32, on the CPU) and prints, for every tensor in
``outputs.safetensors``: its shape, the max abs error, the max |reference|, the relative error (max abs error / max
|reference|), the tolerance (relative, same scale) and whether it is within it; then ``PASS n outputs`` or
``FAIL k of n``. Exit status: 0 all within tolerance, 1 some are not (or were not computed), 2 the folder cannot be
checked: not a fixture (a file is missing), no family recognises it, or the family's importer cannot read its
config.json / weights (the message says which).

Tolerances: float32 outputs 1e-4 of the tensor's max |value| (``--tol``; measured on CPU: <= 2e-5). The SceneTok /
SceneGen releases round the camera embedding to bfloat16 even in float32 runs; the outputs from there on (marked
``bf16``) get 1e-2 (``--bf16-tol``): a float32 difference of ~1e-7 (another CPU's rounding) flips a value that sits
on a rounding boundary by one bfloat16 step, up to 2^-8 = 3.9e-3 of the max |value| (seen: 1.2e-3 on scenetok/b).

Families (``FAMILIES``; detected from the weights' key names, ``--family`` overrides):

- ``can3tok``: ``shape_model.*`` (Can3Tok VAE): the sampled forward with the stored noises, the posterior-mode
  forward (``det.*``) and the encoder / bottleneck / decoder intermediates.
- ``scenetok``: ``compressor.*`` + ``denoiser.*`` (SceneTok autoencoder): the compressor on the context latents,
  one denoiser call on the stored noisy target latents, conditioned on the stored ``compressor.scene_tokens``
  (each part checked on its own inputs), and per-block intermediates.
- ``scenegen``: ``scene_generator.*`` (SceneGen DiT): one velocity call and its intermediates.
- ``videodc``: ``encoder.project_in.*`` (Open-Sora v2 Video DC-AE): encode / decode with every hooked intermediate,
  SceneTok's latent scaling (``pipeline.*``), the one-latent edge case (``edge.*``) and the release's tiled paths
  (``tiled_t.*``, ``tiled_s.*``, with the tile sizes the fixture's config.json records).
- ``wan_vae``: ``encoder.conv1.weight`` with top-level ``conv1`` / ``conv2`` (Wan 2.2 VAE), see ``_run_wan_vae``.

``--cases=a,b`` runs only some cases: an output belongs to case ``X`` when its name starts with ``X.`` and ``X`` is
one of its family's cases (``det``, ``pipeline``, ``edge``, ``tiled_t``, ``tiled_s``), otherwise to ``main``.
``--json=OUT`` also writes the table as JSON. The same steps are available as functions: :func:`load_fixture`,
:func:`run_fixture` (our values, in the fixture's layout), :func:`compare` and :func:`main`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping

import numpy as np

FILES = ("config.json", "weights.safetensors", "inputs.safetensors", "outputs.safetensors")
F32, BF16 = "float32", "bf16"
DEFAULT_TOL = {F32: 1e-4, BF16: 1e-2}


# ------------------------------------------------------------------------------------------------ fixture folder


class Fixture:
    """A fixture folder: config (parsed config.json), weight_keys (read from the safetensors header) and, loaded on
    first use, weights / inputs / outputs ({name: numpy array})."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a folder (a fixture folder holds {', '.join(FILES)})")
        for name in FILES:
            if not (self.path / name).is_file():
                raise ValueError(f"{self.path / name}: missing; a fixture folder holds {', '.join(FILES)}")
        try:
            self.config = json.loads((self.path / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path / 'config.json'}: not valid JSON ({e})") from None
        from safetensors import safe_open
        try:
            with safe_open(self.path / "weights.safetensors", framework="np") as f:
                self.weight_keys = frozenset(f.keys())
        except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
            raise ValueError(f"{self.path / 'weights.safetensors'}: not a safetensors file ({e})") from None

    @property
    def config_path(self) -> pathlib.Path:
        return self.path / "config.json"

    @property
    def weights_path(self) -> pathlib.Path:
        return self.path / "weights.safetensors"

    def _load(self, name: str) -> dict[str, np.ndarray]:
        from scene3d.convert import engine
        try:
            return engine.load_state_dict(self.path / f"{name}.safetensors")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{self.path / (name + '.safetensors')}: cannot be read ({e})") from None

    @functools.cached_property
    def weights(self) -> dict[str, np.ndarray]:
        return self._load("weights")

    @functools.cached_property
    def inputs(self) -> dict[str, np.ndarray]:
        return self._load("inputs")

    @functools.cached_property
    def outputs(self) -> dict[str, np.ndarray]:
        return self._load("outputs")

    def input(self, name: str) -> np.ndarray:
        if name not in self.inputs:
            raise ValueError(f"{self.path / 'inputs.safetensors'}: no tensor {name!r} (has {sorted(self.inputs)})")
        return self.inputs[name]


def load_fixture(path: str | os.PathLike | Fixture) -> Fixture:
    """A :class:`Fixture` for ``path``; ValueError naming the first missing file."""
    return path if isinstance(path, Fixture) else Fixture(path)


# ------------------------------------------------------------------------------------------------ families


@dataclasses.dataclass
class Run:
    """What a family's runner computed: ``values`` {output name: our array in the fixture's layout}, ``kinds``
    {output name: 'float32' | 'bf16'} (which tolerance applies), the model, its import report and ``extras``
    (the family's raw results in our own layout, e.g. the forward's aux dict, for tests that check more)."""
    family: str
    values: dict[str, np.ndarray]
    kinds: dict[str, str]
    model: Any = None
    report: Any = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Fixture], bool]
    run: Callable[[Fixture, frozenset], Run]  # (fixture, cases to run) -> Run
    cases: tuple[str, ...] = ()  # output-name prefixes that form a case of their own (besides 'main')


def case_of(family: Family, output: str) -> str:
    head = output.split(".", 1)[0]
    return head if "." in output and head in family.cases else "main"


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _channels_first(x, axis: int = 1) -> np.ndarray:
    """Our channels-last array -> the release's layout (channels moved from the last axis to ``axis``)."""
    return np.moveaxis(_np(x), -1, axis)


def _channels_last(x, axis: int = 1):
    import jax.numpy as jnp
    return jnp.asarray(np.moveaxis(np.asarray(x, np.float32), axis, -1))


def _layer_outputs(stack, x, *args, **kwargs) -> list:
    """Each layer's output of an ``nn.Stack`` run on ``x`` (the same per-layer slices its un-scanned path uses)."""
    import jax
    from flax import nnx
    graphdef, state = nnx.split(stack.layers)
    outs = []
    for i in range(stack.num_layers):
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))(x, *args, **kwargs)
        outs.append(x)
    return outs


def _build(fx: Fixture, family: str, model_from_official: Callable, *args, **kwargs):
    """``model_from_official(config.json, *args)`` with a config or weights this family cannot read reported as a
    ValueError naming the folder's files (e.g. a --family that does not match the fixture)."""
    try:
        return model_from_official(fx.config_path, *args, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{fx.config_path} / {fx.weights_path.name}: cannot build a {family} model from them "
                         f"({type(e).__name__}: {e})") from e


def _jit_call(model, fn: Callable, *args, **static):
    """nnx.jit(fn)(model, *args) with ``static`` keyword arguments bound; one jitted function per (fn, static), so a
    program is compiled once per architecture and input shapes and shared by every call in the process."""
    return _jitted(fn, tuple(sorted(static.items())))(model, *args)


@functools.cache
def _jitted(fn: Callable, static: tuple):
    from flax import nnx
    return nnx.jit(functools.partial(fn, **dict(static)) if static else fn)


# ---- Can3Tok


def _can3tok_forward(m, x, eps_tokens, eps_latent):
    import jax.numpy as jnp
    recon, aux = m(x, eps_tokens=eps_tokens, eps_latent=eps_latent)
    det, det_aux = m(x, sample_posterior=False)
    # encoder stages (encode_tokens, step by step) and the bottleneck / decoder inputs
    h = m.embed_inputs(x)
    q = jnp.broadcast_to(m.queries[...].astype(h.dtype), (h.shape[0],) + m.queries.shape)
    cross = m.encoder_cross(h, q)
    self_attn = m.encoder_blocks(cross) if m.encoder_blocks is not None else cross
    tokens = aux["tokens"][:, 1:] if m.config["shape_token"] else aux["tokens"]
    b = x.shape[0]
    inter = {"encoder.input_proj.first64": m.embed_inputs(x[:, :64]), "encoder.cross_attn": cross,
             "encoder.self_attn": self_attn, "pre_kl": m.pre_kl(tokens),
             "post_kl": m.post_kl(aux["z"].reshape((b,) + m.latent_shape))}
    return recon, aux, det, det_aux, inter


def _run_can3tok(fx: Fixture, cases: frozenset) -> Run:
    from scene3d.convert import can3tok as cv
    model, report = _build(fx, "can3tok", cv.model_from_official, fx.weights)
    recon, aux, det, det_aux, inter = _jit_call(model, _can3tok_forward, fx.input("surface"),
                                                 fx.input("eps_posterior"), fx.input("eps_z"))
    b = recon.shape[0]
    v = {"UV_gs_recover": _np(recon).reshape(b, -1), "z": aux["z"], "mu": aux["mean"], "log_var": aux["logvar"],
         "posterior.mean": aux["token_mean"], "posterior.logvar": aux["token_logvar"],
         "posterior.std": np.exp(0.5 * _np(aux["token_logvar"])), "shape_embed": aux.get("shape_embed"),
         "det.z": det_aux["z"], "det.UV_gs_recover": _np(det).reshape(b, -1),
         "intermediate.encoder.ln_post": aux["tokens"], "intermediate.transformer": aux["decoder_tokens"]}
    v.update({"intermediate." + k: x for k, x in inter.items()})
    values = {k: _np(x) for k, x in v.items() if x is not None}
    return Run("can3tok", values, dict.fromkeys(values, F32), model, report,
               dict(recon=recon, aux=aux, det=det, det_aux=det_aux))


# ---- SceneTok


def _scenetok_forward(m, view, c2w, intr, eps, x_t, t, tc2w, tintr, tokens):
    import jax.numpy as jnp

    from scene3d import nn
    from scene3d.models import scenetok as st
    comp, dec = m.compressor, m.decoder
    tok, caux = comp(view, c2w, intr, eps=eps)
    v, daux = dec(x_t, t, tc2w, tintr, tokens)
    # compressor blocks one by one (as SceneTokCompressor.__call__ runs them)
    cc = comp.config
    b, nv = view.shape[:2]
    gh, gw = view.shape[2] // cc["patch"], view.shape[3] // cc["patch"]
    rope = nn.make_rope(st.rope_2d_positions(nv, gh, gw), cc["rope_theta"], (comp.head_dim // 2,) * 2, axial=True,
                        interleaved=True)
    x0 = jnp.broadcast_to(comp.scene_queries[...].astype(caux["image_tokens"].dtype)[None],
                          (b,) + comp.scene_queries.shape)
    carry = (x0, caux["image_tokens"])
    aggregate = _layer_outputs(comp.blocks, carry, caux["pose_embed"], rope=rope) if comp.blocks is not None else []
    carry = aggregate[-1] if aggregate else carry
    aggregate.append((comp.last_block(carry, caux["pose_embed"], rope=rope)[0], None))
    # denoiser blocks one by one (as SceneTokDecoder.__call__ runs them)
    dc = dec.config
    m_views, h, w = x_t.shape[1:4]
    gh, gw = h // dc["patch"], w // dc["patch"]
    x_embed = dec.x_embed(x_t.astype(dec.dtype)).reshape(b, m_views * gh * gw, -1)
    rope = nn.make_rope(st.rope_3d_positions(m_views, gh, gw, dc["num_target_split"]), dc["rope_theta"],
                        dec.rope_split, axial=True, interleaved=True)
    blocks = _layer_outputs(dec.blocks, x_embed, daux["cond"], daux["state"], rope=rope)
    final = dec.final(daux["features"], daux["cond"])
    pemb32 = dec.camera_embed(tc2w, tintr, m_views, (gh, gw))  # before the release's bf16 rounding
    return tok, caux, v, daux, aggregate, x_embed, blocks, final, pemb32


def _run_scenetok(fx: Fixture, cases: frozenset) -> Run:
    from scene3d.convert import scenetok as cv
    model, report = _build(fx, "scenetok", cv.model_from_official, fx.weights)
    g = fx.input
    view, x_t = _channels_last(g("compressor.view"), 2), _channels_last(g("denoiser.view"), 2)
    t = g("denoiser.t_rf")
    tokens = fx.outputs.get("compressor.scene_tokens")
    if tokens is None:
        raise ValueError(f"{fx.path / 'outputs.safetensors'}: no 'compressor.scene_tokens' (the denoiser's condition)")
    tok, caux, v, daux, aggregate, x_embed, blocks, final, pemb32 = _jit_call(
        model, _scenetok_forward, view, g("compressor.extrinsics"), g("compressor.intrinsics"),
        g("compressor.token_eps"), x_t, t, g("denoiser.extrinsics"), g("denoiser.intrinsics"), tokens)
    b, nv, h, w, _ = view.shape
    p = model.compressor.config["patch"]
    gh, gw = h // p, w // p
    dim = caux["image_tokens"].shape[-1]
    f32 = {"compressor.mean": caux["mean"], "compressor.logvar": caux["logvar"], "compressor.std": caux["std"],
           "compressor.scene_tokens": tok, "intermediate.compressor.out_proj": caux["moments"],
           "intermediate.compressor.pose_embed": _np(caux["pose_embed"]).reshape(b, nv, gh, gw, dim).transpose(
               0, 1, 4, 2, 3),
           "intermediate.compressor.y_embed": _np(caux["image_tokens"]).reshape(b * nv, gh * gw, dim),
           "denoiser.cond_state": daux["state"],
           "denoiser.flow_target": g("denoiser.noise") - g("denoiser.x0")}
    for i, (x, y) in enumerate(aggregate):
        f32[f"intermediate.compressor.aggregate.{i}.x"] = x
        if y is not None:
            f32[f"intermediate.compressor.aggregate.{i}.y"] = y
    m_views, lh, lw = x_t.shape[1:4]
    dp = model.decoder.config["patch"]
    n = (lh // dp) * (lw // dp)
    f32["intermediate.denoiser.model.x_embedder"] = _np(x_embed).reshape(b * m_views, n, -1)
    f32["intermediate.denoiser.pose_embed"] = _np(pemb32).reshape(b, m_views, lh // dp, lw // dp, -1).transpose(
        0, 1, 4, 2, 3)
    vv = _np(v)
    bf16 = {"intermediate.denoiser.pose_embed_bf16": _np(daux["pose_embed"]).reshape(
                b, m_views, lh // dp, lw // dp, -1).transpose(0, 1, 4, 2, 3),
            "intermediate.denoiser.model.t_embedder": _np(daux["cond"]).reshape(b * m_views, n, -1),
            "intermediate.denoiser.model.final_layer": final,
            "denoiser.pred_flow": _channels_first(vv, 2),
            "denoiser.pred_x0": _channels_first(_np(x_t) - t[:, :, None, None, None] * vv, 2)}
    for i, x in enumerate(blocks):
        bf16[f"intermediate.denoiser.model.blocks.{i}"] = x
    values = {k: _np(x) for k, x in {**f32, **bf16}.items()}
    return Run("scenetok", values, {**dict.fromkeys(f32, F32), **dict.fromkeys(bf16, BF16)}, model, report,
               dict(tokens=tok, compressor_aux=caux, v=v, decoder_aux=daux))


# ---- SceneGen


def _scenegen_forward(m, x, t, cond, ac, ai, cc, ci, mask):
    v, aux = m(x, t, cond, ac, ai, cc, ci, cond_mask=mask)
    x0 = aux["x_embed"] + m.pos_embed[...].astype(aux["x_embed"].dtype)
    blocks = _layer_outputs(m.blocks, x0, aux["t_embed"], aux["context"].astype(x0.dtype))
    return v, aux, blocks


def _run_scenegen(fx: Fixture, cases: frozenset) -> Run:
    from scene3d.convert import scenegen as cv
    model, report = _build(fx, "scenegen", cv.model_from_official, fx.weights)
    p = cv.PREFIX
    g = lambda k: fx.input(p + k)  # noqa: E731
    t_rf = g("t_rf")
    if not np.all(t_rf == t_rf[:, :1]):
        raise ValueError(f"{fx.path / 'inputs.safetensors'}: {p}t_rf differs across the tokens of a sample; "
                         "SceneGen takes one time per sample")
    v, aux, blocks = _jit_call(model, _scenegen_forward, g("state"), t_rf[:, 0], _channels_last(g("cond_view"), 2),
                                g("anchor_extrinsics"), g("anchor_intrinsics"), g("cond_extrinsics"),
                                g("cond_intrinsics"), g("cond_mask"))
    gh, gw = model.camera_grid

    def grid(x):  # (B, V, h*w, D) -> (B, V, D, h, w)
        x = _np(x)
        return x.reshape(x.shape[:2] + (gh, gw, x.shape[-1])).transpose(0, 1, 4, 2, 3)

    c_embed = _np(aux["c_embed"])
    t_embed = _np(aux["t_embed"])
    x = _np(g("state"))
    f32 = {f"intermediate.{p}pose_embed": grid(aux["pose_embed"]),
           f"intermediate.{p}anchor_pose_embed": grid(aux["anchor_pose_embed"]),
           f"intermediate.{p}model.x_embedder": aux["x_embed"],
           f"intermediate.{p}model.c_embedder": c_embed.reshape((-1,) + c_embed.shape[-2:]),
           f"intermediate.{p}model.t_embedder": np.broadcast_to(t_embed[:, None], (x.shape[0], x.shape[1],
                                                                                   t_embed.shape[-1])),
           p + "flow_target": g("noise") - g("x0")}
    bf16 = {f"intermediate.{p}model.blocks.{i}": h for i, h in enumerate(blocks)}
    bf16[p + "pred_flow"] = v
    values = {k: _np(x) for k, x in {**f32, **bf16}.items()}
    return Run("scenegen", values, {**dict.fromkeys(f32, F32), **dict.fromkeys(bf16, BF16)}, model, report,
               dict(v=v, aux=aux))


# ---- Video DC-AE


def _vae_encode(m, x, **kwargs):
    """(m.encode(x), its captured intermediates)."""
    cap: dict = {}
    return m.encode(x, capture=cap, **kwargs), cap


def _vae_decode(m, z, **kwargs):
    cap: dict = {}
    return m.decode(z, capture=cap, **kwargs), cap


_TILING_KEYS = ("use_spatial_tiling", "use_temporal_tiling", "spatial_tile_size", "temporal_tile_size",
                "tile_overlap_factor")


def _videodc_tiling(fx: Fixture, case: str) -> dict[str, Any]:
    """The tiling a case of the fixture was computed with (config.json: tiled_cases, else the wrapper's)."""
    src = next((c for c in fx.config.get("tiled_cases", ()) if c.get("name") == case), None)
    src = src or fx.config.get("attributes_set_by_wrapper", {})
    return {k: src[k] for k in _TILING_KEYS if k in src}


def _run_videodc(fx: Fixture, cases: frozenset) -> Run:
    from scene3d.convert import video_dcae as cv
    from scene3d.specs.video_dcae import SCENETOK_SCALING_FACTOR as scale
    models: dict = {}

    def model_for(case):
        key = tuple(sorted(_videodc_tiling(fx, case).items()))
        if key not in models:
            models[key] = _build(fx, "videodc", cv.model_from_official, fx.weights, **dict(key))
        return models[key][0]

    main = model_for("main")
    values: dict[str, Any] = {}
    if "main" in cases:
        latent, enc = _jit_call(main, _vae_encode, _channels_last(fx.input("x")))
        decoded, dec = _jit_call(main, _vae_decode, _channels_last(fx.input("z")))
        values.update(latent=latent, decoded=decoded)
        values.update({"intermediate." + k: x for k, x in {**enc, **dec}.items()})
        values = {k: _channels_first(x) for k, x in values.items()}
    if "pipeline" in cases and "pipeline.images" in fx.inputs:  # SceneTok: encode(2 img - 1) * 0.493 and back
        images = _channels_last(fx.input("pipeline.images"), 2) * 2 - 1  # (B, V, H, W, 3)
        latents = _jit_call(main, _vae_encode, images)[0] * scale
        pix = np.clip(_np(_jit_call(main, _vae_decode, latents * (1 / scale))[0]) / 2 + 0.5, 0, 1)
        values["pipeline.latents"] = _channels_first(latents, 2)
        values["pipeline.images"] = _channels_first(pix, 2)
    if "edge" in cases and "edge.x" in fx.inputs:
        values["edge.latent"] = _channels_first(_jit_call(main, _vae_encode, _channels_last(fx.input("edge.x")))[0])
        values["edge.decoded"] = _channels_first(_jit_call(main, _vae_decode,
                                                           _channels_last(fx.input("edge.z")))[0])
    for case in ("tiled_t", "tiled_s"):
        if case in cases and f"{case}.x" in fx.inputs:
            m = model_for(case)
            x = _channels_last(fx.input(f"{case}.x"))
            values[f"{case}.latent"] = _channels_first(_jit_call(m, _vae_encode, x)[0])
            values[f"{case}.latent_untiled"] = _channels_first(_jit_call(m, _vae_encode, x, tiled=False)[0])
            z = _channels_last(fx.input(f"{case}.z"))
            values[f"{case}.decoded"] = _channels_first(_jit_call(m, _vae_decode, z)[0])
    values = {k: _np(x) for k, x in values.items()}
    return Run("videodc", values, dict.fromkeys(values, F32), main, models[next(iter(models))][1])


# ---- Wan 2.2 VAE


def _run_wan_vae(fx: Fixture, cases: frozenset) -> Run:
    """Wan 2.2 VAE (``wan_vae/README.txt``) through ``scene3d.convert.wan_vae``, which must provide
    ``model_from_official(config_path, weights_path) -> (model, report)``. The model must provide
    ``encode(x, capture=dict)`` and ``decode(z, capture=dict)`` on channels-last video (B, T, H, W, C): x in [-1, 1]
    -> normalised latents (B, t, h, w, 48) and back, filling ``capture`` with the official module names
    (``encoder.conv1``, ``decoder.upsamples.0``, ``conv2``, ...) plus ``mu_raw`` and ``logvar_unused``.
    Cases: main (``x`` -> ``latent`` and the intermediates, ``z`` -> ``decoded``), ``edge`` (one frame) and
    ``pipeline`` (SceneTok's scale 1.0; ``last_stage_decode`` decodes ceil(V / 5) equal groups of latents
    independently)."""
    try:
        cv = importlib.import_module("scene3d.convert.wan_vae")
    except ModuleNotFoundError as e:
        if e.name not in ("scene3d.convert.wan_vae", "scene3d.models.wan_vae"):
            raise
        raise ValueError(f"{fx.path}: the wan_vae family needs scene3d.convert.wan_vae (model_from_official(config, "
                         f"weights) -> (model, report)), which this checkout does not have ({e})") from None
    model, report = _build(fx, "wan_vae", cv.model_from_official, fx.weights_path)
    values: dict[str, Any] = {}
    if "main" in cases:
        latent, enc = _jit_call(model, _vae_encode, _channels_last(fx.input("x")))
        decoded, dec = _jit_call(model, _vae_decode, _channels_last(fx.input("z")))
        values.update(latent=latent, decoded=decoded)
        for k, x in {**enc, **dec}.items():
            values[k if k in ("mu_raw", "logvar_unused") else "intermediate." + k] = x
        values = {k: _channels_first(x) for k, x in values.items()}
    if "edge" in cases and "edge.x" in fx.inputs:
        for name, fn, key in (("edge.latent", _vae_encode, "edge.x"), ("edge.decoded", _vae_decode, "edge.z")):
            values[name] = _channels_first(_jit_call(model, fn, _channels_last(fx.input(key)))[0])
    if "pipeline" in cases and ("pipeline.images" in fx.inputs or "pipeline.latents" in fx.inputs):
        if "pipeline.images" in fx.inputs:  # first_stage_encode: encode(2 img - 1) * 1.0
            latents = _jit_call(model, _vae_encode, _channels_last(fx.input("pipeline.images"), 2) * 2 - 1)[0]
            values["pipeline.latents"] = _channels_first(latents, 2)
        else:
            latents = _channels_last(fx.input("pipeline.latents"), 2)
        v = latents.shape[1]
        groups = -(-v // 5)
        if v % groups:
            raise ValueError(f"{fx.path}: {v} pipeline latents do not split into {groups} equal groups")
        size = v // groups
        frames = np.concatenate([_np(_jit_call(model, _vae_decode, latents[:, i * size:(i + 1) * size])[0])
                                 for i in range(groups)], axis=1)
        values["pipeline.images"] = _channels_first(np.clip(frames / 2 + 0.5, 0, 1), 2)
    values = {k: _np(x) for k, x in values.items()}
    return Run("wan_vae", values, dict.fromkeys(values, F32), model, report)


# ---- registry


def _has_prefix(*prefixes: str) -> Callable[[Fixture], bool]:
    return lambda fx: any(k.startswith(prefixes) for k in fx.weight_keys)


def _is_wan(fx: Fixture) -> bool:
    keys = fx.weight_keys
    return "encoder.conv1.weight" in keys and {"conv1.weight", "conv2.weight"} <= keys


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("can3tok", _has_prefix("shape_model."), _run_can3tok, ("det",)),
    Family("scenetok", _has_prefix("compressor.", "denoiser."), _run_scenetok),
    Family("scenegen", _has_prefix("scene_generator."), _run_scenegen),
    Family("videodc", _has_prefix("encoder.project_in."), _run_videodc, ("pipeline", "edge", "tiled_t", "tiled_s")),
    Family("wan_vae", _is_wan, _run_wan_vae, ("pipeline", "edge")),
)}


def detect_family(fx: Fixture) -> str:
    """The one family whose detector recognises the fixture's weights (ValueError otherwise)."""
    found = [name for name, f in FAMILIES.items() if f.detect(fx)]
    if len(found) != 1:
        what = "no family recognises" if not found else f"several families ({', '.join(found)}) recognise"
        raise ValueError(f"{fx.weights_path}: {what} these weights (first keys: {sorted(fx.weight_keys)[:3]}); "
                         f"pass --family= one of {', '.join(FAMILIES)}")
    return found[0]


def run_fixture(path: str | os.PathLike | Fixture, family: str | None = None,
                cases: Iterable[str] | None = None) -> Run:
    """Build, import and run our model on a fixture folder -> :class:`Run` (our values in the fixture's layout).
    ``cases``: the cases to run (default: all; see the module doc)."""
    fx = load_fixture(path)
    name = family or detect_family(fx)
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    known = ("main",) + fam.cases
    wanted = frozenset(known if cases is None else cases)
    if wanted - set(known):
        raise ValueError(f"unknown cases {sorted(wanted - set(known))} for family {name}; known: {', '.join(known)}")
    import jax
    with jax.default_device(jax.devices("cpu")[0]):
        return fam.run(fx, wanted)


# ------------------------------------------------------------------------------------------------ comparison


@dataclasses.dataclass
class Row:
    name: str
    shape: tuple
    max_abs_err: float
    max_abs_ref: float
    rel_err: float
    tol: float
    kind: str
    ok: bool
    note: str = ""


def compare(run: Run, fixture: str | os.PathLike | Fixture, *, tol: Mapping[str, float] | None = None,
            cases: Iterable[str] | None = None) -> list[Row]:
    """One :class:`Row` per stored output (of the ``cases`` run): ok iff max |ours - ref| <= tol x max |ref| (and the
    shapes agree). An output the run did not compute fails ('not computed')."""
    fx = load_fixture(fixture)
    tols = dict(DEFAULT_TOL, **(tol or {}))
    fam = FAMILIES[run.family]
    rows = []
    for name in sorted(fx.outputs):
        if cases is not None and case_of(fam, name) not in set(cases):
            continue
        ref = np.asarray(fx.outputs[name], np.float64)
        max_ref = float(np.abs(ref).max()) if ref.size else 0.0
        kind = run.kinds.get(name, F32)
        t = float(tols[kind])
        if name not in run.values:
            rows.append(Row(name, ref.shape, float("nan"), max_ref, float("nan"), t, kind, False, "not computed"))
            continue
        ours = np.asarray(run.values[name], np.float64)
        if ours.shape != ref.shape:
            rows.append(Row(name, ref.shape, float("nan"), max_ref, float("nan"), t, kind, False,
                            f"shape {ours.shape} != {ref.shape}"))
            continue
        err = float(np.abs(ours - ref).max()) if ref.size else 0.0
        scale = max_ref if max_ref > 0 else 1.0
        ok = bool(err <= t * scale)  # NaN -> False
        rows.append(Row(name, ref.shape, err, max_ref, err / scale, t, kind, ok))
    return rows


def format_table(rows: list[Row]) -> str:
    w = max([len("output")] + [len(r.name) for r in rows])
    head = f"{'output':<{w}}  {'shape':<20} {'max abs err':>11} {'max |ref|':>10} {'rel err':>9} {'tol':>8}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        tol = f"{r.tol:.0e}" + (" bf16" if r.kind == BF16 else "")
        lines.append(f"{r.name:<{w}}  {str(r.shape):<20} {r.max_abs_err:>11.3e} {r.max_abs_ref:>10.3e} "
                     f"{r.rel_err:>9.2e} {tol:>8}  {'ok' if r.ok else 'FAIL'}" + (f"  ({r.note})" if r.note else ""))
    bad = sum(not r.ok for r in rows)
    lines.append(f"PASS {len(rows)} outputs" if rows and not bad else f"FAIL {bad if rows else 0} of {len(rows)}"
                 + ("" if rows else " (no outputs compared)"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.convert.parity", description=__doc__.split("\n")[0])
    p.add_argument("fixture_dir", help="folder with config.json, weights / inputs / outputs .safetensors")
    p.add_argument("--family", choices=sorted(FAMILIES), help="skip detection")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL[F32],
                   help="float32 outputs: max abs error allowed, relative to the tensor's max |value|")
    p.add_argument("--bf16-tol", type=float, default=DEFAULT_TOL[BF16],
                   help="the same for outputs after the release's bfloat16 camera rounding")
    p.add_argument("--cases", help="comma-separated cases to run (main and the family's output prefixes)")
    p.add_argument("--json", help="also write the table to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """The command: prints the table, returns the exit status (0 pass, 1 fail, 2 not a fixture)."""
    args = parse_args(argv)
    cases = [c for c in args.cases.split(",") if c] if args.cases else None
    try:
        fx = load_fixture(args.fixture_dir)
        family = args.family or detect_family(fx)
        run = run_fixture(fx, family, cases)
    except ValueError as e:
        print(f"python -m scene3d.convert.parity: error: {e}", file=sys.stderr)
        return 2
    rows = compare(run, fx, tol={F32: args.tol, BF16: args.bf16_tol}, cases=cases)
    print(f"fixture {fx.path}  family {family}  {_import_summary(run.report)}")
    print(format_table(rows))
    failed = [r.name for r in rows if not r.ok]
    if args.json:
        finite = lambda x: x if not isinstance(x, float) or np.isfinite(x) else None  # noqa: E731 (JSON has no NaN)
        table = [{k: finite(v) for k, v in dataclasses.asdict(r).items()} for r in rows]
        with open(args.json, "w") as f:
            json.dump(dict(fixture=str(fx.path), family=family, passed=bool(rows) and not failed, failed=failed,
                           outputs=table), f, indent=1)
    return 0 if rows and not failed else 1


def _import_summary(report) -> str:
    if report is None or not hasattr(report, "consumed"):
        return ""
    out = f"(weights: {len(report.consumed)} imported, {len(report.ignored)} ignored"
    if getattr(report, "initialised", None):
        out += ", not in the file: " + ", ".join(report.initialised)
    return out + ")"


if __name__ == "__main__":
    sys.exit(main())
