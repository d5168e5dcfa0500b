"""Inference time of the released SceneTok / SceneGen RE10K pipeline (random weights of the released shapes).

    python benchmarks/render_release.py [--stages encode,render,generate] [--steps 25] [--scenegen_steps 150]
                                        [--frames 32] [--context 12] [--size 256]
                                        [--repeats 3] [--warmup 1] [--dcae_dtype float32|bfloat16]
                                        [--scenegen_cfg 1.0] [--attn_impl xla|cudnn|pallas|auto]
                                        [--decode_frames N] [--generate_without_render] [--init rngs|fast] [--quick]

Stages (batch 1, the release's RE10K evaluation settings, ``scene3d.models.scenetok_release``):

- ``encode``: ``--context`` views (``--size`` px) -> VA-VAE f16d32 posterior sample -> SceneTok compressor
  (``SceneTok('re10k')``, 12 x 64 image tokens -> 512 x 64 scene tokens, posterior sample).
- ``render``: ``--frames`` target cameras (``--frames / 4`` Video DC-AE latents of 8 x 8 x 128) sampled by the SceneTok
  decoder from the scene tokens with the release's sliding window (8 latents per call, 4 clean after the first
  window), ``--steps`` Euler steps per latent (release: 25), then Video DC-AE ``dc-ae-f32t4c128`` decode (release
  tiling: 32-frame / 256 px tiles) to frames in [0, 1].
- ``generate``: SceneGen ``re10k`` (1.26 B) draws scene tokens with ``--scenegen_steps`` Euler steps (release: 150,
  time shift 4) conditioned on 3 VA-VAE-encoded views (the first one kept, as the release's
  ``num_condition_views=1`` of ``max_cond_number=3``) and 12 anchor cameras, then the ``render`` stage renders them.
  The release reports 26 s for generation + rendering; the aim here is under 3 s for 32 frames on one H100.

Precision per stage, following the release (Lightning ``precision: bf16-mixed``, i.e. ``torch.autocast(bf16)``
around its test step, fp32 weights). Here: fp32 parameters, ``dtype=bfloat16`` compute where the release autocasts:

- VA-VAE encode: bf16. The release calls ``encode(inputs.bfloat16())`` inside the autocast (its convolutions run in
  bf16; GroupNorm statistics in fp32, as ours).
- SceneTok compressor and decoder, SceneGen: bf16 (autocast; the release also rounds the camera embeddings to bf16,
  which our modules do too).
- Video DC-AE decode: fp32 by default. The release builds it as ``DCAE_HF`` (fp32 weights; the bf16 default of
  ``DC_AE(...)`` / the latent precompute scripts is not the path its renderer uses) and decodes under
  ``torch.autocast(enabled=False)``: fp32 (TF32 convolutions on Ampere+ by PyTorch's cudnn default, whereas our
  convolutions ask for ``Precision.HIGHEST``). ``--dcae_dtype bfloat16`` times the bf16 decode, what we would ship.
- SceneGen classifier-free guidance: off, as the release's default (``use_cfg: False``; ``scene_cfg_scale: 3`` is
  only read when it is on). ``--scenegen_cfg 3`` doubles the generator's cost per step.

Timing: each component is a jitted program, AOT-compiled ("compile s" = trace + lower + compile), run ``--warmup``
times, then timed ``--repeats`` times (median, ``block_until_ready``). "GFLOP" is XLA's cost analysis of the
same function lowered with an unrolled (``scan=False``) abstract twin of the model: per call, or per step of a
sampling loop (XLA counts a loop body once: one decoder window call, one SceneGen step, both branches with guidance);
"TFLOP @release" multiplies it by the calls at the release's settings, "TFLOP/s" divides that by "est. s".
Sampling components run ``--steps`` / ``--scenegen_steps`` steps; "s/step" is the measured time divided by them, and
"est. s" scales it to the release's step count (25 / 150) -- EXTRAPOLATED whenever the step count differs from the
release's, marked with ``*``; ``--decode_frames N`` likewise decodes only the first N frames' latents and scales the
time linearly to ``--frames`` (the DC-AE is convolutional with linear attention; below 32 frames no temporal tiling
happens either way). "prog MiB" is the compiled program's arguments + outputs + temporaries
(``memory_analysis``); "peak MiB" is the device's ``peak_bytes_in_use`` when the backend reports it, else the
process's peak RSS (cumulative over the run). Frames/s = frames / est. s of the stage. ``--quick``: tiny variants (a
smoke test; timings are meaningless).

Random weights are built one model at a time (``--init rngs``: the modules' initialisers with nnx.Rngs; ``--init
fast``: numpy-filled, no XLA compiles, for slow CPUs and ``--quick``); SceneGen is freed after the generate stage.
Memory at the release sizes (fp32 params): SceneTok 3.2 GB, SceneGen 5.0 GB, Video DC-AE 1.8 GB, VA-VAE 0.3 GB.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.diffusion import windows
from scene3d.models import scenegen as scenegen_lib
from scene3d.models import scenetok as scenetok_lib
from scene3d.models import scenetok_release as rel
from scene3d.models.image_vae import ImageVAE
from scene3d.models.video_dcae import VideoDCAE

STAGES = ("encode", "render", "generate")
RELEASE_STEPS = 25            # SceneTok decoder Euler steps per latent (model.scheduler.num_inference_steps)
RELEASE_SCENEGEN_STEPS = 150  # SceneGen Euler steps (model.scene_scheduler.num_inference_steps)
RELEASE_GEN_SECONDS = 26.0    # the release's generation + rendering time
AIM_SECONDS = 3.0             # our aim on one H100 for 32 frames
COND_VIEWS = 3                # SceneGen conditioning views (max_cond_number), of which 1 is kept
ANCHOR_VIEWS = 12             # SceneGen anchor cameras (12 views along the target trajectory)
RELEASE_WINDOW, RELEASE_CLEAN = 8, 4  # decoder sliding window: latents per call, clean ones after the first

FULL = dict(vavae="f16c32", scenetok="re10k", dcae="dc-ae-f32t4c128", scenegen="re10k", stats=True, scenegen_kw={})
# --quick: 32 px views (2 x 2 VA-VAE latents, 1 x 1 Video DC-AE latents), SceneGen's camera grid to match
QUICK = dict(vavae="tiny", scenetok="fixture_a", dcae="tiny", scenegen="tiny", stats=False,
             scenegen_kw=dict(camera_size=(8, 8)))
QUICK_ARGS = dict(size=32, context=COND_VIEWS, frames=8, steps=2, scenegen_steps=2, repeats=1, warmup=0, init="fast")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ------------------------------------------------------------------------------------------------- models


def fast_init(ctor: Callable[[], nnx.Module], seed: int) -> nnx.Module:
    """``ctor()``'s module with every array filled from numpy instead of its initialisers: N(0, 1 / fan_in) for
    matrices / kernels, ones for vectors (norm scales, biases), zeros for integers, key(seed) for PRNG keys. No XLA
    program is compiled (eager initialisers compile one small program per distinct parameter shape: minutes on a
    busy 2-core CPU); the values only have to be finite for timing."""
    graph, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)

    def fill(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jax.device_put(np.zeros(x.shape, x.dtype))
        if len(x.shape) < 2:
            return jax.device_put(np.ones(x.shape, x.dtype))
        a = rng.standard_normal(x.shape, dtype=np.float32)
        a *= np.float32(1.0 / np.sqrt(np.prod(x.shape[:-1])))
        return jax.device_put(a.astype(x.dtype, copy=False))

    return nnx.merge(graph, jax.tree.map(fill, state))


def _make(ctor, seed: int, init: str):
    return ctor() if init == "rngs" else fast_init(ctor, seed)


def build_release(kinds: dict, dcae_dtype, seed: int = 0, init: str = "rngs", attn_impl: str = "xla",
                  scan: bool = True) -> rel.ReleaseSceneTok:
    """ReleaseSceneTok with random weights: VA-VAE, SceneTok (bf16 compute) and Video DC-AE (``dcae_dtype``), built
    one after the other (``init``: 'rngs' the modules' initialisers with nnx.Rngs, 'fast' :func:`fast_init`)."""
    bf16 = jnp.bfloat16
    stats = rel.vavae_stats() if kinds["stats"] else {}
    vavae = _make(lambda: ImageVAE(kinds["vavae"], dtype=bf16, attn_impl=attn_impl, rngs=nnx.Rngs(seed), **stats),
                  seed, init)
    tok = _make(lambda: scenetok_lib.SceneTok(variant=kinds["scenetok"], dtype=bf16, attn_impl=attn_impl, scan=scan,
                                              rngs=nnx.Rngs(seed + 1)), seed + 1, init)
    dcae = _make(lambda: VideoDCAE(kinds["dcae"], dtype=dcae_dtype, rngs=nnx.Rngs(seed + 2)), seed + 2, init)
    return rel.ReleaseSceneTok(tok, vavae, dcae, "videodc")


def build_scenegen(kinds: dict, seed: int = 0, init: str = "rngs", attn_impl: str = "xla",
                   scan: bool = True) -> scenegen_lib.SceneGen:
    return _make(lambda: scenegen_lib.SceneGen(kinds["scenegen"], dtype=jnp.bfloat16, attn_impl=attn_impl, scan=scan,
                                               rngs=nnx.Rngs(seed + 3), **kinds["scenegen_kw"]), seed + 3, init)


def trajectory(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A forward-moving, slowly turning camera path: c2w (1, n, 4, 4), normalised intrinsics (1, n, 4)."""
    s = np.linspace(0.0, 1.0, n, dtype=np.float32)
    yaw = 0.4 * s + 0.02 * np.random.default_rng(seed).normal(size=n).astype(np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (1, n, 1, 1))
    c, s_ = np.cos(yaw), np.sin(yaw)
    c2w[0, :, 0, 0], c2w[0, :, 0, 2], c2w[0, :, 2, 0], c2w[0, :, 2, 2] = c, s_, -s_, c
    c2w[0, :, :3, 3] = np.stack([0.3 * np.sin(2 * s), 0.05 * s, 2.0 * s], -1)
    k = np.tile(np.array([0.86, 0.86, 0.5, 0.5], np.float32), (1, n, 1))
    return c2w, k


# ------------------------------------------------------------------------------------------------- timing


def peak_mib() -> tuple[float, str]:
    """(peak MiB, 'device' | 'RSS'): the device's peak_bytes_in_use when reported, else the process's peak RSS."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory stats raise)
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "RSS"


def lowered_gflop(fn: Callable, args: tuple) -> float:
    """XLA's FLOP count of ``fn(*args)`` (lowered, not compiled; args may be abstract). A loop body counts once."""
    try:
        cost = jax.jit(fn).lower(*args).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) / 1e9
    except Exception:  # noqa: BLE001  (a backend without cost analysis)
        return float("nan")


def run_component(name: str, fn: Callable, args: tuple, *, repeats: int, warmup: int, steps: int | None = None,
                  release_steps: int | None = None, cache: dict | None = None, key=None) -> tuple[dict, Any]:
    """AOT-compile ``fn(*args)``, warm up, time; -> (row, last output). With ``cache`` a program compiled before
    under the same ``key`` is reused (its compile time reported as 0)."""
    t0 = time.perf_counter()
    if cache is not None and key in cache:
        compiled = cache[key]
    else:
        compiled = jax.jit(fn).lower(*args).compile()
        if cache is not None:
            cache[key] = compiled
    compile_s = time.perf_counter() - t0
    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    run_s = float(np.median(times))
    mem = compiled.memory_analysis()
    prog = (float("nan") if mem is None else
            (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - mem.alias_size_in_bytes) / 2**20)
    row = dict(component=name, compile_s=compile_s, run_s=run_s, steps=steps, release_steps=release_steps,
               prog_mib=prog)
    if steps:
        row["s_per_step"] = run_s / steps
        row["est_s"] = row["s_per_step"] * release_steps
        row["extrapolated"] = steps != release_steps
    else:
        row["est_s"], row["extrapolated"] = run_s, False
    row["peak_mib"], row["peak_kind"] = peak_mib()
    print(f"#   {name}: compile {compile_s:.1f} s, run {run_s:.3f} s", file=sys.stderr, flush=True)
    return row, out


def total_row(rows: list[dict], name: str, frames: int | None = None) -> dict:
    est = sum(r["est_s"] for r in rows)
    tflop = sum(r["tflop"] for r in rows)
    row = dict(component=name, compile_s=sum(r["compile_s"] for r in rows), run_s=sum(r["run_s"] for r in rows),
               est_s=est, extrapolated=any(r["extrapolated"] for r in rows), steps=None, gflop=float("nan"),
               tflop=tflop, tflops=tflop / est, prog_mib=max(r["prog_mib"] for r in rows), total=True)
    row["peak_mib"], row["peak_kind"] = peak_mib()
    if frames:
        row["frames_per_s"] = frames / est
    return row


# ------------------------------------------------------------------------------------------------- stages


class Bench:
    """The models (graphdef + state, the state passed to the jitted programs as an argument), their unrolled
    abstract twins (``scan=False``, for FLOP counts) and the inputs."""

    def __init__(self, a, kinds: dict):
        self.a, self.kinds = a, kinds
        self.model = build_release(kinds, DTYPES[a.dcae_dtype], a.seed, a.init, a.attn_impl)
        self.graph, self.state = nnx.split(self.model)
        self.flat = nnx.split(nnx.eval_shape(
            lambda: build_release(kinds, DTYPES[a.dcae_dtype], a.seed, "rngs", a.attn_impl, scan=False)))
        rng = np.random.default_rng(a.seed)
        n_ctx, n_tgt = a.context, a.frames
        ctx_c2w, ctx_k = trajectory(n_ctx, a.seed)
        tgt_c2w, tgt_k = trajectory(n_tgt, a.seed + 1)
        cams = rel.release_cameras(ctx_c2w, ctx_k, tgt_c2w, tgt_k)
        self.ctx_c2w, self.ctx_k = cams["context_c2w"], cams["context_intrinsics"]
        self.tgt_c2w, self.tgt_k = cams["target_c2w"], cams["target_intrinsics"]
        self.images = jnp.asarray(rng.uniform(0, 1, (1, n_ctx, a.size, a.size, 3)), jnp.float32)
        self.key = jax.random.key(a.seed)
        self.tokens = None
        self.cache = {}

    def run(self, name: str, fn: Callable, args: tuple, *, graph=None, state=None, flat=None, release_calls=1.0,
            **kw) -> tuple[dict, Any]:
        """Time ``fn(model, *args)``; its FLOPs from the unrolled twin ``flat`` (graphdef, abstract state): per call,
        or per step of a sampling loop (the loop body counts once); ``release_calls``: calls / loop iterations at
        the release's settings."""
        graph = self.graph if graph is None else graph
        state = self.state if state is None else state
        flat = self.flat if flat is None else flat
        key = (fn.__code__, str(jax.tree.map(lambda x: (getattr(x, "shape", None), str(getattr(x, "dtype", ""))),
                                             args)))
        row, out = run_component(name, lambda st, *xs: fn(nnx.merge(graph, st), *xs), (state,) + tuple(args),
                                 repeats=self.a.repeats, warmup=self.a.warmup, cache=self.cache, key=key, **kw)
        fg, fs = flat
        row["gflop"] = lowered_gflop(lambda st, *xs: fn(nnx.merge(fg, st), *xs), (fs,) + tuple(args))
        row["tflop"] = row["gflop"] * release_calls / 1e3
        row["tflops"] = row["tflop"] / row["est_s"]
        return row, out

    # --- encode
    def vae_encode(self, images, name) -> tuple[dict, jax.Array]:
        """VA-VAE posterior samples of (1, V, H, W, 3) images (one program per V; reused when V repeats)."""
        def enc(m, images, key):
            return m.context_latents(images, key)

        return self.run(name, enc, (images, self.key))

    def encode(self) -> list[dict]:
        a = self.a
        r0, lat = self.vae_encode(self.images, f"VA-VAE encode ({a.context} views)")

        def compress(m, lat, c2w, k, key):
            return m.scenetok.encode(lat, c2w, k, rng=key)[0]

        n_tok = self.model.scenetok.compressor.config["num_tokens"]
        r1, self.tokens = self.run(f"compressor ({a.context} views -> {n_tok} tokens)", compress,
                                   (lat, self.ctx_c2w, self.ctx_k, self.key))
        rows = [r0, r1]
        return rows + [total_row(rows, "encode total")]

    def _ensure_tokens(self):
        if self.tokens is None:
            shape = self.model.scenetok.compressor.token_shape
            self.tokens = jax.random.normal(self.key, (1,) + shape, jnp.float32)

    # --- render
    def render_components(self, tokens) -> list[dict]:
        a, m = self.a, self.model
        latent_size = m.latent_size((a.size, a.size))
        steps = a.steps

        def sample(m, tokens, c2w, k, key):
            return m.render_latents(tokens, c2w, k, key, latent_size=latent_size, num_steps=steps,
                                    window=RELEASE_WINDOW, clean=RELEASE_CLEAN)

        n_lat = m.num_latents(a.frames)
        n_frames = m.num_frames(n_lat)
        # model calls at the release's 25 steps: the sliding window's global steps (8 latents per call, 4 clean)
        calls = windows.schedule(n_lat, RELEASE_STEPS, RELEASE_WINDOW, RELEASE_CLEAN).num_steps
        r1, lat = self.run(f"decoder sampling ({n_lat} latents)", sample, (tokens, self.tgt_c2w, self.tgt_k, self.key),
                           steps=a.steps, release_steps=RELEASE_STEPS, release_calls=calls)

        def decode(m, lat):
            return m.frames(lat)

        n_dec = m.num_latents(a.decode_frames)
        part = "" if n_dec == n_lat else f"{m.num_frames(n_dec)} of "
        r2, frames = self.run(f"Video DC-AE decode ({part}{n_frames} frames, {a.dcae_dtype})", decode,
                              (lat[:, :n_dec],), release_calls=n_lat / n_dec)
        if frames.shape[1] != m.num_frames(n_dec):
            raise RuntimeError(f"render: decoded {frames.shape[1]} frames, expected {m.num_frames(n_dec)}")
        if n_dec != n_lat:  # the decoder is convolutional (linear attention): time linear in the frames
            r2.update(est_s=r2["run_s"] * n_lat / n_dec, extrapolated=True)
            r2["tflops"] = r2["tflop"] / r2["est_s"]
        self.n_frames = n_frames
        return [r1, r2]

    def render(self) -> list[dict]:
        self._ensure_tokens()
        rows = self.render_components(self.tokens)
        self.render_rows = rows
        return rows + [total_row(rows, "render total", self.n_frames)]

    # --- generate
    def generate(self) -> list[dict]:
        a = self.a
        gen = build_scenegen(self.kinds, a.seed, a.init, a.attn_impl)
        g_graph, g_state = nnx.split(gen)
        g_flat = nnx.split(nnx.eval_shape(lambda: build_scenegen(self.kinds, a.seed, "rngs", a.attn_impl, scan=False)))
        idx = np.linspace(0, a.frames - 1, ANCHOR_VIEWS).round().astype(int)  # the release: 12 anchors on the path
        anchor_c2w, anchor_k = self.tgt_c2w[:, idx], self.tgt_k[:, idx]
        cond_idx = np.array([0, a.context - 1, a.context - 1])               # the release's cond views [0, -1, -1]
        cond_images = self.images[:, cond_idx]
        cond_c2w, cond_k = self.ctx_c2w[:, cond_idx], self.ctx_k[:, cond_idx]
        cond_mask = jnp.asarray([[True] + [False] * (COND_VIEWS - 1)])

        r0, lat = self.vae_encode(cond_images, f"VA-VAE encode ({COND_VIEWS} cond views)")
        steps, cfg_scale = a.scenegen_steps, a.scenegen_cfg

        def sample(g, lat, anchor_c2w, anchor_k, cond_c2w, cond_k, mask, key):
            return g.sample(key, lat, anchor_c2w, anchor_k, cond_c2w, cond_k, cond_mask=mask, num_steps=steps,
                            cfg_scale=cfg_scale)

        cfg = "" if cfg_scale == 1.0 else f", cfg {cfg_scale:g}"
        r1, tokens = self.run(f"SceneGen sampling{cfg}", sample,
                              (lat, anchor_c2w, anchor_k, cond_c2w, cond_k, cond_mask, self.key),
                              graph=g_graph, state=g_state, flat=g_flat, steps=steps,
                              release_steps=RELEASE_SCENEGEN_STEPS, release_calls=RELEASE_SCENEGEN_STEPS)
        del gen, g_state  # free the 1.26 B generator before rendering
        gc.collect()
        rows = [r0, r1]
        if a.generate_without_render:
            return rows + [total_row(rows, "generation only (rendering: see the render stage)")]
        # Rendering the generated tokens costs what the render stage costs (same programs, same shapes).
        rrows = getattr(self, "render_rows", None) or self.render_components(tokens)
        rows += [dict(r, component="render: " + r["component"]) for r in rrows]
        return rows + [total_row(rows, "generation + rendering", self.n_frames)]


# ------------------------------------------------------------------------------------------------- output


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def print_table(stage: str, rows: list[dict], header: str):
    print(f"\n## {stage}  ({header})")
    kind = rows[-1]["peak_kind"]
    cols = ["component", "compile s", "run s", "steps", "s/step", "est. s", "frames/s", "GFLOP", "TFLOP @release",
            "TFLOP/s", "prog MiB", f"peak {kind} MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + " --- |" * len(cols))
    for r in rows:
        steps = "-" if not r.get("steps") else f"{r['steps']}/{r['release_steps']}"
        est = _fmt(r["est_s"], ".2f") + ("*" if r["extrapolated"] else "")
        name = f"**{r['component']}**" if r.get("total") else r["component"]
        print(f"| {name} | {_fmt(r['compile_s'], '.1f')} | {_fmt(r['run_s'], '.3f')} | {steps} | "
              f"{_fmt(r.get('s_per_step'), '.3f')} | {est} | {_fmt(r.get('frames_per_s'), '.2f')} | "
              f"{_fmt(r['gflop'], '.4g')} | {_fmt(r['tflop'], '.3g')} | {_fmt(r['tflops'], '.3g')} | "
              f"{_fmt(r['prog_mib'], '.0f')} | {_fmt(r['peak_mib'], '.0f')} |")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--steps", type=int, default=None, help=f"decoder Euler steps (release {RELEASE_STEPS})")
    p.add_argument("--scenegen_steps", type=int, default=None,
                   help=f"SceneGen Euler steps (release {RELEASE_SCENEGEN_STEPS})")
    p.add_argument("--frames", type=int, default=None, help="target frames (a multiple of 4; default 32)")
    p.add_argument("--decode_frames", type=int, default=None,
                   help="Video DC-AE: decode only the first N frames (a multiple of 4, >= 8) and extrapolate its "
                        "time linearly to --frames (default: all)")
    p.add_argument("--context", type=int, default=None, help="context views (default 12)")
    p.add_argument("--size", type=int, default=None, help="image size in px (default 256)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs after compiling (default 1)")
    p.add_argument("--dcae_dtype", choices=sorted(DTYPES), default="float32",
                   help="Video DC-AE compute dtype (release: float32)")
    p.add_argument("--attn_impl", default="xla", choices=("auto", "xla", "cudnn", "pallas"),
                   help="attention kernel of SceneTok, SceneGen and the VA-VAE (scene3d.kernels.attention)")
    p.add_argument("--scenegen_cfg", type=float, default=1.0, help="SceneGen guidance scale (release: off, 1)")
    p.add_argument("--generate_without_render", action="store_true",
                   help="the generate stage times generation only (slow CPUs: add the render stage's figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("rngs", "fast"), default=None,
                   help="random weights: the modules' initialisers (rngs; default) or numpy-filled (fast; --quick)")
    p.add_argument("--quick", action="store_true", help="tiny variants, tiny sizes (smoke test)")
    a = p.parse_args(argv)
    defaults = dict(steps=RELEASE_STEPS, scenegen_steps=RELEASE_SCENEGEN_STEPS, frames=32, context=12, size=256,
                    repeats=3, warmup=1, init="rngs")
    if a.quick:
        defaults.update(QUICK_ARGS)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = set(a.stages) - set(STAGES)
    if bad or not a.stages:
        p.error(f"--stages: unknown {sorted(bad)}; choose from {','.join(STAGES)}")
    if a.frames % 4 or a.frames < 4:
        p.error(f"--frames must be a positive multiple of 4 (Video DC-AE latents of 4 frames), got {a.frames}")
    if a.decode_frames is None:
        a.decode_frames = a.frames
    if a.decode_frames % 4 or not (8 <= a.decode_frames <= a.frames or a.decode_frames == a.frames):
        p.error(f"--decode_frames must be a multiple of 4 in [8, --frames] (one latent decodes to ONE frame), "
                f"got {a.decode_frames}")
    if a.context < 1 or a.steps < 1 or a.scenegen_steps < 1:
        p.error("--context, --steps and --scenegen_steps must be >= 1")
    return a


def main(argv=None) -> dict[str, list[dict]]:
    """Run the stages; print one table per stage; return {stage: rows}."""
    a = parse(argv)
    kinds = QUICK if a.quick else FULL
    dev = jax.devices()[0]
    print(f"# render_release: {dev.platform} {dev.device_kind} x{jax.device_count()}; "
          f"{'QUICK (tiny variants) ' if a.quick else ''}{a.context} context views, {a.frames} frames, "
          f"{a.size}px; decoder {a.steps} steps (release {RELEASE_STEPS}), SceneGen {a.scenegen_steps} steps "
          f"(release {RELEASE_SCENEGEN_STEPS}); bf16 compute (fp32 params) except Video DC-AE {a.dcae_dtype}; "
          f"attention {a.attn_impl}; "
          f"repeats {a.repeats}, warm-up {a.warmup}")
    t0 = time.perf_counter()
    bench = Bench(a, kinds)
    print(f"# models built in {time.perf_counter() - t0:.1f} s")
    headers = dict(encode=f"{a.context} views -> scene tokens",
                   render=f"{a.frames} frames, {a.steps} of {RELEASE_STEPS} decoder steps",
                   generate=f"SceneGen {a.scenegen_steps} of {RELEASE_SCENEGEN_STEPS} steps + render; release "
                            f"{RELEASE_GEN_SECONDS:g} s, aim < {AIM_SECONDS:g} s on one H100")
    out = {}
    for stage in STAGES:
        if stage in a.stages:
            out[stage] = getattr(bench, stage)()
            print_table(stage, out[stage], headers[stage])
    print("\n* extrapolated: s/step x the release's step count (+ the other components' measured times)")
    return out


if __name__ == "__main__":
    main()
