"""The prepared accelerator check: one command, under 8 minutes on one H100 / H200 (A100; the TPU parts on a TPU
host), one results file.

    python benchmarks/gpu_check.py --out=/tmp/gpu_check.json            # on the lent device
    python benchmarks/gpu_check.py --smoke --out=/tmp/gpu_check.json    # CPU, well under a minute (CI runs it)

Parts (``--parts``, in this order; each guarded: a failing case is recorded with the exception's first line and
the check goes on):

- ``kernels``: every Pallas flash-attention kernel of this platform (GPU: Triton, and Mosaic GPU on Hopper; TPU:
  Mosaic TPU) compiled for real, forward (out, lse) and the dq / dk / dv of the backward against the einsum reference
  (``scene3d.kernels.reference``, fp32 on the same inputs, full-precision products) at the model shapes: DiT
  self-attention, Perceiver / Can3Tok cross-attention, fp32 and bf16, key masks and kv lengths, odd lengths, grouped
  kv heads, rows with no visible key. Pass / fail per case with the errors (||x - ref|| / ||ref||, and the max
  absolute error) and the tolerances (the kernel tests': fp32 2e-5 on out / lse, 1e-4 on grads; bf16 1e-2 and
  2e-2). Also which kernels ``attn_impl='auto'`` puts in each case's fwd + bwd program (on a GPU it must never be
  the einsum: issue 19).
- ``attention``: the table of benchmarks/attention.py (its ``run_table``): xla, cudnn, our Pallas kernels, tokamax
  when installed, at the model shapes in bf16, with the bf16 matmul peak measured in the same run.
- ``train``: one train step per family's large config in bf16 on ONE device, through the trainer's own builder
  (``scene3d.train.setup`` + ``compile_train_step``: params, Adam, EMA, the skip guards) on a synthetic batch of the
  config's shapes: init s, compile s, steps/s, examples/s, FLOPs per step, MFU against the measured peak, peak device
  memory (``device.memory_stats()``) and the compiled program's memory. FLOPs (benchmarks/flops.py): ``model_flops``
  is the step traced with attn_impl='xla' and no remat, counted on its jaxpr with every scan's body x its length
  (the model's arithmetic: kernels counted as their einsum, remat recomputation is not model work, scanned layers
  counted per layer); ``compiled_flops`` is the compiled program's ``cost_analysis()`` as it runs (kernels
  uncounted, recomputation counted; ``compiled_flops_xla``) times ``compiled_loop_factor``, the correction for XLA
  counting a while loop's body once. MFU = model_flops x steps/s / peak.
  ``--remat`` per family (default in ``FAMILIES``); a compile that runs out of memory is retried once with
  remat='full' when time is left.
- ``render``: the splat rasteriser (benchmarks/render_splat.py's ``time_render``) forward and backward at 1080p
  (1920 x 1080) for 100k and 1M synthetic Gaussians.

On a device every part (and every family) runs in its own child process (``--isolate``, the default off ``--smoke``):
a crash, a hang or an out-of-memory in one cannot take the others down, each family's peak memory is its own, and a
time cap kills what overruns (``--part_cap_s`` per part, ``--family_cap_s`` per family, the rest of the global
``--deadline_s``). Parts not started before the deadline are recorded as skipped with a note. The results file is
rewritten (atomically) after every part, so an interrupted check still leaves what it measured; ``complete`` says
whether it ran to the end. The children share a persistent compilation cache (``--cache_dir``; '' disables it), so
a second run on the same machine skips most compiles (compile times then measure the cache, the file says so).

``--smoke``: tiny kernel shapes in Pallas interpret mode (Triton and Mosaic TPU; the Mosaic GPU interpreter is too
slow for a smoke run, tests/kernels covers it), the attention table's smoke shapes, the ``runlocal`` config of
Can3Tok (``--families=...`` for others: each compiles its train step for 20-180 s on 2 CPU cores) at batch 2, a
64 x 64 render of 300 Gaussians; in one process by default.

``--preflight``: before the day, on any machine (CPU is fine, nothing is allocated): every family's large config
builds abstractly and its synthetic batch goes through the task's transforms and loss (about 30 s for all).

The synthetic batches (``synthetic_batch``) have the shapes the config's dataset gives the task (posed views,
Gaussian rows with captions / images / labels, the procedural shapes), random values, so a loss value says
nothing; the figures are throughput. ``FAMILIES`` holds each family's large config, one-device batch, remat and
overrides (rae3d: LPIPS off, its VGG weights are files the device does not have).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
PARTS = ("kernels", "attention", "train", "render")

# ------------------------------------------------------------------------------------------------- tables

# Kernel cases at the model shapes, and their --smoke shapes (odd lengths, same head dims, masks and dtypes).
# name: ((B, Lq, Lk, H, Hk, D) real, (B, Lq, Lk, H, Hk, D) smoke, dtype, mask kind, scale)
# mask kinds: lengths (kv_lengths, odd and short), key_mask (B, 1, 1, Lk), head_mask (B, H, 1, Lk),
# empty (batch 1 sees no key, and the last head of batch 0 neither).
KERNEL_CASES = {
    "dit_self_bf16": ((4, 1024, 1024, 16, 16, 64), (1, 32, 32, 2, 2, 64), "bfloat16", None, None),
    "dit_self_fp32": ((2, 1024, 1024, 16, 16, 64), (1, 17, 17, 2, 2, 64), "float32", None, None),
    "dit_self_d128_bf16": ((2, 4096, 4096, 16, 16, 128), (1, 48, 48, 2, 2, 128), "bfloat16", None, None),
    "perceiver_cross_lengths_bf16": ((2, 1024, 16384, 16, 16, 64), (2, 24, 200, 2, 2, 64), "bfloat16", "lengths",
                                     None),
    "can3tok_cross_keymask_fp32": ((2, 512, 4096, 12, 12, 64), (1, 16, 70, 2, 2, 64), "float32", "key_mask", None),
    "odd_gqa_headmask_bf16": ((2, 1000, 4099, 12, 4, 128), (2, 33, 77, 4, 2, 128), "bfloat16",
                              "lengths+head_mask", 0.3),
    "odd_gqa_lengths_fp32": ((1, 333, 1234, 8, 2, 64), (2, 21, 45, 4, 2, 64), "float32", "lengths+key_mask", None),
    "empty_rows_bf16": ((2, 77, 300, 4, 4, 64), (2, 9, 40, 2, 2, 64), "bfloat16", "empty", None),
}
# Relative-norm tolerances (out and lse / dq, dk, dv), as tests/kernels/test_flash_attention.py.
KERNEL_TOL = {"float32": dict(out=2e-5, grad=1e-4), "bfloat16": dict(out=1e-2, grad=2e-2)}
# The Pallas backends that compile on each platform; --smoke on CPU runs these in interpret mode.
PLATFORM_BACKENDS = {"gpu": ("triton", "mosaic_gpu"), "tpu": ("mosaic_tpu",), "cpu": ("triton", "mosaic_tpu")}

# Families: large config (bf16) with its one-device batch and remat, and the --smoke config with its batch.
# The large batches are per-device guesses that should fit an 80 GB H100 with the given remat; --batch / --remat
# change them on the day.
FAMILIES = {
    "can3tok": dict(config="configs/can3tok.py:variant=release,bf16", batch=8, remat="full",
                    smoke="configs/can3tok.py:runlocal,bf16"),
    "can3tok_ldm": dict(config="configs/can3tok_ldm.py:stage1=release,variant=XL,bf16", batch=32, remat="none",
                        smoke="configs/can3tok_ldm.py:runlocal,bf16"),
    # LPIPS off: the card's recipe trains with it, but its VGG weights are files the device machine does not have.
    "rae3d": dict(config="configs/rae3d.py:card=dino2,bf16", batch=8, remat="none",
                  smoke="configs/rae3d.py:runlocal,bf16", overrides={"loss.lpips": 0.0}),
    "dit3d": dict(config="configs/dit3d.py:card=dino2,bf16", batch=32, remat="none",
                  smoke="configs/dit3d.py:runlocal,bf16"),
    "scenetok": dict(config="configs/scenetok.py:variant=re10k,bf16", batch=4, remat="full",
                     smoke="configs/scenetok.py:runlocal,bf16"),
    "scenegen": dict(config="configs/scenegen.py:variant=re10k,bf16", batch=8, remat="full",
                     smoke="configs/scenegen.py:runlocal,bf16"),
    "flow_shapes": dict(config="configs/flow_shapes.py:variant=L,res=64,bf16", batch=64, remat="none",
                        smoke="configs/flow_shapes.py:runlocal,bf16"),
}
DEFAULT_FAMILIES = ("can3tok", "can3tok_ldm", "rae3d", "dit3d", "scenetok", "scenegen")
SMOKE_FAMILIES = ("can3tok",)  # the main job; every family's runlocal step compiles for 20-180 s on 2 CPU cores
SMOKE_BATCH = 2

RENDER_CASES = ((100_000, 1080, 1920), (1_000_000, 1080, 1920))
RENDER_SMOKE = ((300, 64, 64),)


# ------------------------------------------------------------------------------------------------- helpers

class CapReached(Exception):
    """A job's time cap (or the global deadline) was reached between two of its stages."""


def _check_cap(deadline: float, row: dict) -> None:
    if time.time() > deadline:
        raise CapReached(f"time cap reached after stage {row.get('stage', '?')}")


def first_line(e: BaseException, limit: int = 200) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:limit]}"


def _load_bench(name: str):
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    mod_name = f"scene3d_bench_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    spec.loader.exec_module(mod)
    return mod


def _jsonable(x):
    """NaN / inf -> None, numpy scalars -> Python, tuples -> lists: strict JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write_results(path: str, results: dict) -> None:
    from scene3d.core import io as io_lib
    io_lib.write_json(path, _jsonable(results), indent=1, allow_nan=False)


def device_info() -> dict:
    import jax
    d = jax.devices()[0]
    info = dict(platform=jax.default_backend(), kind=d.device_kind, count=jax.device_count(), jax=jax.__version__)
    cc = getattr(d, "compute_capability", None)
    if cc is not None:
        info["compute_capability"] = str(cc)
    stats = _memory_stats(d)
    if stats and stats.get("bytes_limit"):
        info["memory_gib"] = stats["bytes_limit"] / 2**30
    return info


def _memory_stats(device):
    try:
        return device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None


def _time_ms(fn, repeats: int) -> float:
    import jax
    ts = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def custom_call_counts(hlo_text: str) -> dict:
    """Custom-call targets of a compiled (optimised) HLO module and how often each occurs: the Pallas kernels
    ('__gpu$xla.gpu.triton', 'mosaic_gpu*', 'tpu_custom_call'), cuDNN attention, ..."""
    counts: dict = {}
    for target in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
        counts[target] = counts.get(target, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------- part (a)

def _kernel_inputs(shape, dtype, mask_kind, seed):
    import jax.numpy as jnp
    b, lq, lk, h, hk, d = shape
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    q, k, v = (jnp.asarray(rng.standard_normal(s, np.float32), dt)
               for s in ((b, lq, h, d), (b, lk, hk, d), (b, lk, hk, d)))
    kw = {}
    kinds = set((mask_kind or "").split("+")) - {""}
    if "lengths" in kinds:
        lengths = np.array([lk - 1 - 2 * (lk // 7), lk // 3 + 1][:b] + [lk] * max(0, b - 2), np.int32)
        kw["kv_lengths"] = jnp.asarray(lengths)
    if kinds & {"key_mask", "head_mask"}:
        m = rng.random((b, h if "head_mask" in kinds else 1, 1, lk)) < 0.7
        m[..., 0] = True  # every row keeps a key (the empty case is its own)
        kw["mask"] = m
    if "empty" in kinds:
        kw["kv_lengths"] = jnp.asarray(np.array([lk - 3, 0][:b] + [lk] * max(0, b - 2), np.int32))
        m = rng.random((b, h, 1, lk)) < 0.8
        m[:, -1] = False  # the last head sees no key
        m[:, 0, 0, 0] = True
        kw["mask"] = m
    w = rng.standard_normal((b, lq, h, d)).astype(np.float32)
    wl = rng.standard_normal((b, lq, h)).astype(np.float32)
    return (q, k, v), kw, (jnp.asarray(w), jnp.asarray(wl))


def _fwd_and_grads(attn, w, wl):
    """jit(q, k, v -> ((out, lse), (dq, dk, dv))) with loss sum(out * w) + sum(finite lse * wl): the lse's gradient
    is checked too."""
    import jax
    import jax.numpy as jnp

    def loss(q, k, v):
        out, lse = attn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * wl)
    return jax.jit(lambda q, k, v: (attn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))


def _rel_err(x, ref) -> tuple[float, float]:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    diff = x - ref
    return float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30)), float(np.max(np.abs(diff), initial=0.0))


def _compare(got, want, dtype) -> dict:
    """Errors of (out, lse), (dq, dk, dv) against the reference; lse compared where finite, -inf where empty."""
    (out, lse), grads = got
    (rout, rlse), rgrads = want
    tol = KERNEL_TOL[dtype]
    errs, problems = {}, []
    empty = np.isneginf(rlse)
    if not np.array_equal(np.isneginf(lse), empty):
        problems.append("lse is -inf on other rows than the reference's (rows with no visible key)")
    if np.any(np.asarray(out, np.float32)[empty] != 0):
        problems.append("rows with no visible key are not 0")
    named = [("out", out, rout, tol["out"]), ("lse", np.where(empty, 0, lse), np.where(empty, 0, rlse), tol["out"])]
    named += [(n, g, r, tol["grad"]) for n, g, r in zip(("dq", "dk", "dv"), grads, rgrads)]
    for name, x, r, t in named:
        x = np.asarray(x, np.float32)
        if x.shape != np.shape(r):
            problems.append(f"{name} shape {x.shape} != reference {np.shape(r)}")
            continue
        if not np.all(np.isfinite(x)):
            problems.append(f"{name} has non-finite values")
        rel, mx = _rel_err(x, r)
        errs[name] = dict(rel=rel, max_abs=mx, tol=t)
        if not rel <= t:
            problems.append(f"{name} rel error {rel:.3g} > {t:g}")
    return dict(errors=errs, problems=problems)


def run_kernels(smoke: bool, deadline: float, report, log=print, backends: tuple[str, ...] | None = None) -> dict:
    """Part (a): every Pallas kernel of this platform (or of ``backends``) vs the reference, per case; plus the
    kernels of 'auto' dispatch."""
    import jax
    import jax.numpy as jnp

    from scene3d import kernels
    from scene3d.kernels import flash
    from scene3d.kernels.reference import reference_attention
    kernel_counts = _load_bench("attention").kernel_counts

    platform = jax.default_backend()
    interpret = platform == "cpu"
    backends = backends or PLATFORM_BACKENDS.get(platform, ())
    res = dict(platform=platform, interpret=interpret, cases=[], auto=[])
    for name, (real, small, dtype, mask_kind, scale) in KERNEL_CASES.items():
        shape = small if smoke else real
        (q, k, v), kw, (w, wl) = _kernel_inputs(shape, dtype, mask_kind, seed=len(res["cases"]) + 11)
        sc = 1.0 / math.sqrt(shape[-1]) if scale is None else scale
        up = lambda t: t.astype(jnp.float32)  # noqa: E731 - the reference on the same (rounded) inputs, in fp32
        want = None
        for backend in backends:
            row = dict(case=name, backend=backend, dtype=dtype, shape=list(shape), mask=mask_kind or "none",
                       interpret=interpret, tol=KERNEL_TOL[dtype])
            res["cases"].append(row)
            reason = _backend_skip(backend, dtype, smoke, platform)
            if reason:
                row.update(status="skipped", note=reason)
                continue
            if time.time() > deadline:
                row.update(status="skipped", note="part deadline reached")
                continue
            t0 = time.perf_counter()
            try:
                fl = functools.partial(flash.flash_attention, backend=backend, interpret=interpret, scale=sc,
                                       return_lse=True, **kw)
                compiled = _fwd_and_grads(fl, w, wl).lower(q, k, v).compile()
                row["compile_s"] = time.perf_counter() - t0
                got = jax.tree.map(np.asarray, compiled(q, k, v))
                if not interpret:
                    row["fwd_bwd_ms"] = _time_ms(lambda: compiled(q, k, v), 3)
                if want is None:
                    ref = lambda q, k, v: reference_attention(up(q), up(k), up(v), scale=sc,  # noqa: E731
                                                              return_lse=True, **kw)
                    with jax.default_matmul_precision("highest"):
                        want = jax.tree.map(np.asarray, _fwd_and_grads(ref, w, wl)(q, k, v))
                cmp = _compare(got, want, dtype)
                row.update(cmp, status="pass" if not cmp["problems"] else "fail")
            except Exception as e:  # noqa: BLE001 - recorded, the other cases go on
                row.update(status="error", error=first_line(e))
            log(f"  kernel {name:<30} {backend:<11} {row['status']}"
                + (f"  {row.get('error') or '; '.join(row.get('problems', []))}" if row["status"] != "pass" else ""))
            report(res)
        # Which kernels 'auto' picks for this case (lowering only): on GPU / TPU never the einsum.
        if not interpret and time.time() < deadline:
            try:
                f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(kernels.attention(q, k, v, impl="auto", **kw)
                                                            .astype(jnp.float32)), argnums=(0, 1, 2)))
                counts = kernel_counts(f.lower(q, k, v).as_text())
                supported = flash.unsupported_reason(q, k, v, kw.get("mask")) is None
                ok = counts != "-" or not supported
                res["auto"].append(dict(case=name, kernels=counts, status="pass" if ok else "fail",
                                        note="" if ok else "attn_impl='auto' fell back to the einsum reference"))
            except Exception as e:  # noqa: BLE001
                res["auto"].append(dict(case=name, status="error", error=first_line(e)))
    res["passed"] = sum(c["status"] == "pass" for c in res["cases"])
    res["failed"] = sum(c["status"] in ("fail", "error") for c in res["cases"])
    res["skipped"] = sum(c["status"] == "skipped" for c in res["cases"])
    return res


def _backend_skip(backend: str, dtype: str, smoke: bool, platform: str) -> str | None:
    if backend == "mosaic_gpu":
        if dtype != "bfloat16":
            return "Mosaic GPU kernels take 16-bit inputs"
        if platform == "cpu":
            return "the Mosaic GPU interpreter is too slow for --smoke (tests/kernels runs one case)"
        from scene3d.kernels import flash
        cc = flash._gpu_capability()
        if cc[0] != 9:
            return f"Mosaic GPU kernels target Hopper (sm_90), this GPU is sm_{cc[0]}{cc[1]}"
    return None


# ------------------------------------------------------------------------------------------------- part (b)

def run_attention(smoke: bool, deadline: float, report, log=print) -> dict:
    """Part (b): benchmarks/attention.py's table (xla, cudnn, ours, tokamax) with the measured bf16 peak."""
    bench = _load_bench("attention")
    impls = "xla,cudnn,pallas_mosaic_gpu,pallas_triton,tokamax"
    if smoke:
        impls = "xla,pallas_triton"
    else:
        import jax
        if jax.default_backend() == "tpu":
            impls = "xla,pallas_mosaic_tpu,tokamax"
    peak, rows = bench.run_table(impls, None, "bf16", 10, smoke=smoke, deadline=deadline, log=log)
    table = bench.format_table(rows, peak)
    log(table)
    for r in rows:
        if "fwd_tflops" in r and peak:
            r["fwd_peak_fraction"] = r["fwd_tflops"] / peak
            r["fwd_bwd_peak_fraction"] = r["bwd_tflops"] / peak
        r["shape"] = list(r["shape"])
    return dict(peak_tflops=peak, rows=rows, table=table)


# ------------------------------------------------------------------------------------------------- part (c)

def _set_everywhere(config, key: str, value) -> None:
    """Set ``key`` in every (nested) ConfigDict section of ``config`` that has it (e.g. attn_impl, remat of the
    model and of a frozen stage-1 model)."""
    import ml_collections
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        for k in list(config.keys()):
            v = config[k]
            if isinstance(v, ml_collections.ConfigDict):
                _set_everywhere(v, key, value)
            elif k == key:
                config[k] = value


def _apply_transform(fn, example, rng):
    import grain
    if isinstance(fn, grain.transforms.RandomMap):
        return fn.random_map(example, rng)
    if isinstance(fn, grain.transforms.Map):
        return fn.map(example)
    return fn(example)


def synthetic_example(config, task, rng: np.random.Generator, index: int) -> dict:
    """One example of the shapes the config's dataset hands to the task's transforms (after the dataset's own
    transforms): posed views (``data.views``), Gaussian rows (``data.gaussians``) or the procedural shapes images.
    Values are random (images in [-1, 1], cameras on a circle looking at the origin); Gaussian examples also carry
    the per-scene ``caption`` / ``cond_image`` / ``label`` that stage-2 tasks read from files."""
    from scene3d.geometry import cameras
    data = config.data
    if data.get("name") == "shapes":
        from scene3d.data import get_source
        return dict(get_source(data, "train")[index])
    if "views" in data:
        h, w = (int(x) for x in data.views.resolution)
        out = {"scene_id": f"synthetic_{index}"}
        for part, n in (("context", int(data.views.num_context)), ("target", int(data.views.num_target))):
            ang = rng.uniform(0, 2 * np.pi) + np.linspace(0, 0.6, n)
            eye = np.stack([2 * np.cos(ang), 2 * np.sin(ang), 0.3 + 0.1 * rng.standard_normal(n)], -1)
            out[part] = {"images": rng.uniform(-1, 1, (n, h, w, 3)).astype(np.float32),
                         "c2w": cameras.look_at(eye, np.zeros(3)).astype(np.float32),
                         "intrinsics": np.tile(np.array([1.0, 1.0, 0.5, 0.5], np.float32), (n, 1))}
        return out
    if "gaussians" in data:
        n = int(data.gaussians.num_gaussians)
        channels = getattr(task, "channels", None) or task.output_shape[1]
        width = int(getattr(task, "offset", 0)) + int(channels)
        # the per-scene fields a stage-2 task reads with cond.source='file' (a caption, a conditioning image, a label)
        return {"gaussians": rng.standard_normal((n, width)).astype(np.float32), "scene_id": f"synthetic_{index}",
                "caption": "a bright scene, mostly grey and some blue", "label": np.int32(index % 2),
                "cond_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}
    raise ValueError(f"gpu_check: no synthetic batch for config.data.name={data.get('name')!r} (it needs "
                     "data.views, data.gaussians or the 'shapes' dataset)")


def synthetic_batch(config, task, batch_size: int, seed: int = 0) -> dict:
    """``batch_size`` synthetic examples through the task's own ``data_transforms('train')``, stacked."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(batch_size):
        e = synthetic_example(config, task, rng, i)
        for fn in task.data_transforms("train"):
            e = _apply_transform(fn, e, rng)
        examples.append(e)
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]
            if np.asarray(examples[0][k]).dtype.kind in "biuf"}


def _flops():
    """benchmarks/flops.py: the one FLOP counter of both benchmark scripts."""
    return _load_bench("flops")


def _model_flops(config, s, state, gbatch) -> float:
    """The model FLOPs of the train step: traced (not compiled) with attn_impl='xla' and no remat and counted on
    its jaxpr with every scan's body x its length (``flops.step_flops``): the model's arithmetic, kernels included,
    recomputation excluded, scanned layer stacks counted in full (XLA's cost analysis takes a loop body once)."""
    cx = copy.deepcopy(config)
    _set_everywhere(cx, "attn_impl", "xla")
    _set_everywhere(cx, "remat", "none")
    return _flops().step_flops(cx, s, state, gbatch).flops


def _compiled_loop_factor(s, state, gbatch) -> float:
    """``flops.loop_factor`` of the step as compiled (its config's attention and remat): what XLA's
    ``cost_analysis()`` of the compiled step is multiplied by so that scanned layers count once per layer."""
    import jax

    from scene3d import train
    from scene3d.core import sharding as sh
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), gbatch)
    with sh.use_mesh(s.mesh, s.rules):
        return _flops().loop_factor(s.step_fn, train.abstract_like(state), abstract)


def family_config(family: str, smoke: bool, batch: int, remat: str):
    """The family's config (large or smoke) for a one-device run at ``batch`` with ``remat``, plus its
    ``FAMILIES`` overrides."""
    from scene3d.core.config import load_config
    spec = FAMILIES[family]
    config = load_config(spec["smoke" if smoke else "config"])
    with config.unlocked():
        config.global_batch_size = int(batch)
        config.mesh = dict(data=1, fsdp=1, tensor=1)
        for key, value in spec.get("overrides", {}).items():
            *path, leaf = key.split(".")
            node = config
            for name in path:
                node = node[name]
            node[leaf] = value
    _set_everywhere(config.model, "remat", remat)
    return config


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "Out of memory" in text


def run_family(family: str, smoke: bool, deadline: float, report, *, batch: int | None = None,
               remat: str | None = None, steps: int | None = None, peak_tflops: float | None = None,
               log=print) -> dict:
    """Part (c) for one family: setup, compile, timed steps, memory, FLOPs, MFU (see the module docstring)."""
    import jax

    from scene3d import train
    from scene3d.core import sharding as sh
    from scene3d.data import pipeline

    spec = FAMILIES[family]
    cfg_arg = spec["smoke" if smoke else "config"]
    batch = int(batch or (SMOKE_BATCH if smoke else spec["batch"]))
    remat = remat or ("none" if smoke else spec["remat"])
    steps = int(steps or (2 if smoke else 10))
    row = dict(family=family, config=cfg_arg, batch=batch, remat=remat, stage="config")
    report(row)
    config = family_config(family, smoke, batch, remat)
    row["overrides"] = dict(spec.get("overrides", {}))
    row["dtype"] = config.model.get("dtype")
    row["attn_impl"] = config.model.get("attn_impl")
    device = jax.devices()[0]
    mesh = sh.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=[device])

    row["stage"] = "setup"
    report(row)
    t0 = time.perf_counter()
    s, state = train.setup(config, mesh)
    jax.block_until_ready(state)
    row["init_s"] = time.perf_counter() - t0
    row["params_m"] = sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6
    _check_cap(deadline, row)
    host = synthetic_batch(config, s.task, batch, seed=0)
    gbatch = pipeline.to_global(host, mesh)

    row["stage"] = "compile"
    report(row)
    while True:
        t0 = time.perf_counter()
        try:
            compiled = train.compile_train_step(s, state, gbatch)
            break
        except Exception as e:  # noqa: BLE001 - out of memory: once more with full remat if time is left
            if not _is_oom(e) or row["remat"] == "full" or time.time() > deadline - 30:
                raise
            log(f"  {family}: compile ran out of memory with remat={row['remat']!r}, retrying with remat='full'")
            row["remat_retry"] = f"{row['remat']} -> full ({first_line(e, 120)})"
            row["remat"] = "full"
            _set_everywhere(config.model, "remat", "full")
            s, state = train.setup(config, mesh)
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
        row["program_mib"] = dict(args=mem.argument_size_in_bytes / 2**20, temps=mem.temp_size_in_bytes / 2**20,
                                  outputs=mem.output_size_in_bytes / 2**20,
                                  alias=getattr(mem, "alias_size_in_bytes", 0) / 2**20)
    cost = compiled.cost_analysis() or {}
    row["compiled_flops"] = row["compiled_flops_xla"] = float(cost.get("flops", float("nan")))  # loop bodies once
    row["custom_calls"] = custom_call_counts(compiled.as_text())
    _check_cap(deadline, row)

    row["stage"] = "steps"
    report(row)
    t0 = time.perf_counter()
    state, metrics = compiled(state, gbatch)  # the first step (transfers, allocation): not timed
    jax.block_until_ready(metrics)
    row["first_step_s"] = time.perf_counter() - t0
    times = []
    while len(times) < steps and time.time() < deadline - 5:
        t0 = time.perf_counter()
        state, metrics = compiled(state, gbatch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    if times:
        step_s = float(np.median(times))
        row.update(timed_steps=len(times), step_ms=1e3 * step_s, steps_per_s=1.0 / step_s,
                   examples_per_s=batch / step_s)
    metrics = jax.device_get(metrics)
    row["loss"] = float(metrics["loss"])
    row["skipped_steps"] = int(jax.device_get(state["skipped"]))
    stats = _memory_stats(device)
    if stats:
        row["peak_gib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
        row["limit_gib"] = stats.get("bytes_limit", float("nan")) / 2**30

    row["stage"] = "flops"
    report(row)
    if time.time() < deadline - 10:
        try:
            row["model_flops"] = _model_flops(config, s, state, gbatch)
            row["compiled_loop_factor"] = _compiled_loop_factor(s, state, gbatch)
            row["compiled_flops"] = row["compiled_flops_xla"] * row["compiled_loop_factor"]
        except Exception as e:  # noqa: BLE001 - MFU then falls back to the compiled count
            row["model_flops_error"] = first_line(e)
    else:
        row["model_flops_error"] = "skipped: family time cap reached"
    flops = row.get("model_flops") or row.get("compiled_flops")
    if peak_tflops and flops and "steps_per_s" in row:
        row["achieved_tflops"] = flops * row["steps_per_s"] / 1e12
        row["mfu"] = row["achieved_tflops"] / peak_tflops
        row["mfu_flops"] = "model_flops" if row.get("model_flops") else "compiled_flops"
    row["stage"] = "done"
    return row


def preflight_family(family: str, smoke: bool = False) -> dict:
    """The family's config, task, abstract model (nothing allocated) and a synthetic batch of 1 through the task's
    transforms and loss, traced on this host: catches a config or batch error before device time is spent."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from scene3d import tasks
    t0 = time.perf_counter()
    config = family_config(family, smoke, 1, "none")
    task = tasks.get_task(config)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    batch = synthetic_batch(config, task, 1)
    loss, _ = jax.eval_shape(lambda m, b: task.loss(m, b, jax.random.key(0), step=jnp.int32(0)), model, batch)
    if loss.shape != ():
        raise ValueError(f"{family}: the task's loss has shape {loss.shape}, expected a scalar")
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return dict(family=family, config=FAMILIES[family]["smoke" if smoke else "config"], status="pass",
                params_m=params / 1e6, batch_shapes={k: list(v.shape) for k, v in batch.items()},
                seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------- part (d)

def run_render(smoke: bool, deadline: float, report, log=print) -> dict:
    """Part (d): the splat rasteriser forward and backward at 1080p, 100k and 1M Gaussians."""
    import jax
    import jax.numpy as jnp
    rs = _load_bench("render_splat")
    res = dict(rows=[])
    for n, h, w in (RENDER_SMOKE if smoke else RENDER_CASES):
        row = dict(num=n, height=h, width=w)
        res["rows"].append(row)
        if time.time() > deadline:
            row.update(status="skipped", note="part deadline reached")
            continue
        try:
            g = jax.tree.map(jnp.asarray, rs.synthetic(n))
            c2w, intr = rs.camera_for(g)
            row.update(rs.time_render(g, c2w, intr, h, w, 1 if smoke else 3, grad=True), status="done")
        except Exception as e:  # noqa: BLE001
            row.update(status="error", error=first_line(e))
        log(f"  render {n:>9} Gaussians {w}x{h}: {row.get('status')} fwd {row.get('fwd_ms', float('nan')):.1f} ms "
            f"grad {row.get('grad_ms', float('nan')):.1f} ms {row.get('error', '')}")
        report(res)
    return res


# ------------------------------------------------------------------------------------------------- markdown

def _f(x, fmt="{:.3g}", none="-"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return fmt.format(x)


def markdown(results: dict) -> str:
    dev = results.get("device") or {}
    elapsed = _f(results.get("elapsed_s"), "{:.0f}")
    lines = [f"gpu_check {results.get('date', '')}: {dev.get('kind', '?')} ({dev.get('platform', '?')}), "
             f"jax {dev.get('jax', '?')}, smoke={results.get('smoke')}, elapsed {elapsed} s"
             + ("" if results.get("complete") else " (INCOMPLETE)"), ""]
    parts = results.get("parts", {})
    for name in PARTS:
        p = parts.get(name)
        if p is None:
            continue
        if p.get("status") not in ("done", None) or p.get("note"):
            lines.append(f"**{name}**: {p.get('status')} {p.get('note', '')} {p.get('error', '')}".rstrip())
            lines.append("")
    k = parts.get("kernels") or {}
    if k.get("cases"):
        lines += ["| case | backend | dtype | B,Lq,Lk,H,Hk,D | mask | status | out | lse | dq | dk | dv | tol out/grad "
                  "| compile s |", "| --- " * 13 + "|"]
        for c in k["cases"]:
            e = c.get("errors", {})
            errs = [_f(e.get(n, {}).get("rel")) for n in ("out", "lse", "dq", "dk", "dv")]
            status = c["status"] + (f" ({c.get('note') or c.get('error') or '; '.join(c.get('problems', []))})"
                                    if c["status"] != "pass" else "")
            lines.append(f"| {c['case']} | {c['backend']} | {c['dtype']} | {','.join(map(str, c['shape']))} | "
                         f"{c['mask']} | {status} | " + " | ".join(errs) +
                         f" | {c['tol']['out']:g}/{c['tol']['grad']:g} | {_f(c.get('compile_s'), '{:.1f}')} |")
        if k.get("auto"):
            lines += ["", "attn_impl='auto' fwd+bwd kernels: " + ", ".join(
                f"{a['case']}: {a.get('kernels', a.get('error'))} ({a['status']})" for a in k["auto"])]
        lines.append("")
    a = parts.get("attention") or {}
    if a.get("table"):
        lines += [f"attention (bf16; measured matmul peak {_f(a.get('peak_tflops'), '{:.1f}')} TFLOP/s):", "```",
                  a["table"], "```", ""]
    t = parts.get("train") or {}
    if t.get("families"):
        lines += ["| family | config | batch | remat | params M | init s | compile s | step ms | steps/s | "
                  "examples/s | model GFLOP/step | compiled GFLOP/step | MFU | peak GiB | status |",
                  "| --- " * 15 + "|"]
        for r in t["families"]:
            status = r.get("status", "?") + (f" ({r.get('note') or r.get('error')})" if r.get("status") != "done"
                                              else "")
            lines.append(
                f"| {r['family']} | `{r.get('config', '')}` | {r.get('batch', '')} | {r.get('remat', '')} | "
                f"{_f(r.get('params_m'), '{:.0f}')} | {_f(r.get('init_s'), '{:.1f}')} | "
                f"{_f(r.get('compile_s'), '{:.1f}')} | {_f(r.get('step_ms'), '{:.1f}')} | "
                f"{_f(r.get('steps_per_s'), '{:.2f}')} | {_f(r.get('examples_per_s'), '{:.1f}')} | "
                f"{_f((r.get('model_flops') or 0) / 1e9 or None, '{:.1f}')} | "
                f"{_f((r.get('compiled_flops') or 0) / 1e9 or None, '{:.1f}')} | "
                f"{_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('peak_gib'), '{:.1f}')} | {status} |")
        lines.append("")
    r = parts.get("render") or {}
    if r.get("rows"):
        lines += ["| Gaussians | W x H | compile s | forward ms | backward ms | dropped | status |",
                  "| --- " * 7 + "|"]
        for x in r["rows"]:
            lines.append(f"| {x['num']:,} | {x['width']} x {x['height']} | {_f(x.get('compile_s'), '{:.1f}')} | "
                         f"{_f(x.get('fwd_ms'), '{:.1f}')} | {_f(x.get('grad_ms'), '{:.1f}')} | "
                         f"{x.get('dropped', '-')} | {x.get('status')} {x.get('error', x.get('note', ''))} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- driver

def _job_list(a) -> list[tuple[str, str | None]]:
    jobs = []
    for part in a.parts.split(","):
        if part not in PARTS:
            raise ValueError(f"--parts: unknown part {part!r} (known: {', '.join(PARTS)})")
        if part == "train":
            jobs += [("train", f) for f in a.families.split(",")]
        else:
            jobs.append((part, None))
    for part, fam in jobs:
        if fam is not None and fam not in FAMILIES:
            raise ValueError(f"--families: unknown family {fam!r} (known: {', '.join(FAMILIES)})")
    return jobs


def _per_family(option: str, text: str, cast) -> dict:
    """'can3tok=4,scenetok=2' -> {family: value}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        fam, sep, val = item.partition("=")
        if not sep or fam not in FAMILIES:
            raise ValueError(f"{option}: expected FAMILY=VALUE items with FAMILY in {sorted(FAMILIES)}, got {item!r}")
        out[fam] = cast(val)
    return out


def run_job(part: str, family: str | None, a, deadline: float, report, peak_tflops=None, log=print) -> dict:
    """One job in this process (the child's body, or the in-process path)."""
    if part == "kernels":
        return run_kernels(a.smoke, deadline, report, log,
                           backends=tuple(a.kernel_backends.split(",")) if a.kernel_backends else None)
    if part == "attention":
        return run_attention(a.smoke, deadline, report, log)
    if part == "render":
        return run_render(a.smoke, deadline, report, log)
    if peak_tflops is None:
        import jax.numpy as jnp
        peak_tflops = _load_bench("attention").matmul_peak_tflops(jnp.bfloat16, 3, n=256 if a.smoke else None)
    return run_family(family, a.smoke, deadline, report, batch=_per_family("--batch", a.batch, int).get(family),
                      remat=_per_family("--remat", a.remat, str).get(family), steps=a.steps,
                      peak_tflops=peak_tflops, log=log)


def _child_main(a) -> int:
    """``--_job``: run one job, writing its (partial, then final) result to ``--_job_out`` after every stage."""
    part, _, family = a._job.partition(":")
    out = a._job_out

    def report(partial):
        write_results(out, dict(status="running", device=device_info(), result=partial))
    try:
        res = run_job(part, family or None, a, a._deadline, report, peak_tflops=a.peak_tflops)
        write_results(out, dict(status="done", device=device_info(), result=res))
        return 0
    except Exception as e:  # noqa: BLE001 - the parent records it
        if not isinstance(e, CapReached):
            traceback.print_exc()
        prev = {}
        with contextlib.suppress(Exception):
            prev = json.loads(pathlib.Path(out).read_text()).get("result", {})
        status = "timed_out" if isinstance(e, CapReached) else "error"
        write_results(out, dict(status=status, error=first_line(e), device=device_info(), result=prev))
        return 1


def _run_child(part, family, a, deadline: float, log) -> tuple[dict, dict | None]:
    """Run one job in a child process, killed at ``deadline`` (+ a short grace: it checks the deadline itself
    between stages). Returns (result dict with status, device info or None)."""
    fd, out = tempfile.mkstemp(prefix="gpu_check_job_", suffix=".json")
    os.close(fd)
    os.unlink(out)
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--_job={part}:{family or ''}", f"--_job_out={out}",
           f"--_deadline={deadline}", f"--batch={a.batch}", f"--remat={a.remat}"]
    cmd += ["--smoke"] if a.smoke else []
    cmd += [f"--steps={a.steps}"] if a.steps else []
    cmd += [f"--peak_tflops={a.peak_tflops}"] if a.peak_tflops else []
    cmd += [f"--kernel_backends={a.kernel_backends}"] if a.kernel_backends else []
    env = dict(os.environ)
    if a.cache_dir:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser(a.cache_dir))
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    left = max(1.0, deadline - time.time())
    timeout = left + max(2.0, min(15.0, left / 4))  # grace: the child checks its deadline between stages
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        output, _ = proc.communicate()
    for line in output.splitlines():
        if line.startswith("  ") or line.startswith("device:") or "|" in line or line.startswith("-"):
            log(line)
    got = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        got = json.loads(pathlib.Path(out).read_text())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    res = dict(got.get("result") or {})
    if timed_out:
        res.update(status="timed_out", note=f"killed after {time.time() - t0:.0f} s (time cap) in stage "
                                            f"{res.get('stage', '?')}")
    elif got.get("status") == "done":
        res["status"] = "done"
    elif got.get("status") == "timed_out":
        res.update(status="timed_out", note=f"stopped after {time.time() - t0:.0f} s (time cap): {got.get('error')}")
    else:
        tail = [x for x in output.splitlines() if x.strip()][-1:] or ["no output"]
        res.update(status="error", error=got.get("error") or f"exit status {proc.returncode}: {tail[0][:200]}")
    return res, got.get("device")


def _preflight_main(a) -> dict:
    rows = []
    for family in a.families.split(","):
        if family not in FAMILIES:
            raise ValueError(f"--families: unknown family {family!r} (known: {', '.join(FAMILIES)})")
        try:
            rows.append(preflight_family(family, a.smoke))
        except Exception as e:  # noqa: BLE001 - recorded, the other families go on
            rows.append(dict(family=family, status="error", error=first_line(e)))
        r = rows[-1]
        print(f"preflight {family:<12} {r['status']:<5} {_f(r.get('params_m'), '{:.0f}')} M params  "
              f"{r.get('batch_shapes', r.get('error'))}", flush=True)
    results = dict(schema=1, preflight=True, smoke=a.smoke, complete=True, families=rows,
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_results(os.path.abspath(a.out), results)
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="results file (JSON; the markdown is printed and "
                   "stored in it as 'markdown')")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, interpret mode, runlocal configs (CPU, CI)")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--families", default=None, help=f"comma-separated, default {','.join(DEFAULT_FAMILIES)} "
                   f"(--smoke: {','.join(SMOKE_FAMILIES)}; known: {','.join(FAMILIES)})")
    p.add_argument("--batch", default="", help="per-family one-device batch, e.g. can3tok=4,scenetok=2")
    p.add_argument("--remat", default="", help="per-family remat policy, e.g. dit3d=full")
    p.add_argument("--kernel_backends", default="", help="Pallas backends of the kernels part (default: this "
                   "platform's: GPU triton,mosaic_gpu; TPU mosaic_tpu; CPU, interpreted, triton,mosaic_tpu)")
    p.add_argument("--steps", type=int, default=0, help="timed train steps per family (default 10; smoke 2)")
    p.add_argument("--deadline_s", type=float, default=450.0, help="global deadline: parts not started by then "
                   "are skipped with a note, running ones are told to stop")
    p.add_argument("--part_cap_s", type=float, default=None, help="time cap of the kernels / attention / render "
                   "parts (default 90; --smoke: none but the deadline)")
    p.add_argument("--family_cap_s", type=float, default=None, help="time cap per train family (default 45; "
                   "--smoke: none but the deadline)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one child process per part / family (default: on, off with --smoke)")
    p.add_argument("--cache_dir", default="~/.cache/scene3d/jax_compilation_cache",
                   help="persistent compilation cache of the children ('' disables; an already set "
                        "JAX_COMPILATION_CACHE_DIR wins)")
    p.add_argument("--peak_tflops", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_job", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_job_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--preflight", action="store_true", help="only trace every family's config (large, or the "
                   "smoke ones with --smoke) with its synthetic batch through its loss on this host (CPU is fine, "
                   "nothing is allocated): run it before the device day")
    a = p.parse_args(argv)
    if not a.families:
        a.families = ",".join(DEFAULT_FAMILIES if a.preflight or not a.smoke else SMOKE_FAMILIES)
    if a.smoke and "jax" not in sys.modules and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        # As tests/conftest.py: --smoke checks code paths, not speed, and LLVM's optimisation passes are half of
        # an XLA:CPU compile (no effect on a GPU / TPU's own compiler). The children inherit it.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if a._job:
        sys.exit(_child_main(a))
    if a.preflight:
        return _preflight_main(a)
    isolate = (not a.smoke) if a.isolate is None else a.isolate
    if a.part_cap_s is None:
        a.part_cap_s = a.deadline_s if a.smoke else 90.0
    if a.family_cap_s is None:
        a.family_cap_s = a.deadline_s if a.smoke else 45.0
    jobs = _job_list(a)
    _per_family("--batch", a.batch, int)
    _per_family("--remat", a.remat, str)
    out = os.path.abspath(a.out)
    if not os.path.isdir(os.path.dirname(out)):
        raise ValueError(f"--out={a.out}: folder {os.path.dirname(out)} does not exist")

    start = time.time()
    deadline = start + a.deadline_s
    results = dict(schema=1, command=" ".join([os.path.basename(sys.argv[0])] + list(sys.argv[1:] if argv is None
                                                                                     else argv)),
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), smoke=a.smoke,
                   isolate=isolate, deadline_s=a.deadline_s, complete=False, device=None,
                   compilation_cache=(os.environ.get("JAX_COMPILATION_CACHE_DIR")
                                      or (os.path.expanduser(a.cache_dir) if a.cache_dir and isolate else None)),
                   parts={})
    parts = results["parts"]
    if not isolate:
        results["device"] = device_info()

    def save():
        results["elapsed_s"] = time.time() - start
        write_results(out, results)

    n_families = sum(1 for part, _ in jobs if part == "train")
    render_reserve = min(a.part_cap_s / 2, 45.0) if any(part == "render" for part, _ in jobs) else 0.0
    for part, family in jobs:
        now = time.time()
        label = part if family is None else f"train/{family}"
        print(f"== {label} ({now - start:.0f} s elapsed)", flush=True)
        if part == "train":
            entry = dict(family=family, config=FAMILIES[family]["smoke" if a.smoke else "config"])
            parts.setdefault("train", dict(status="done", families=[]))["families"].append(entry)
            left = deadline - now - (render_reserve if part != "render" else 0.0)
            cap = min(a.family_cap_s, left / max(1, n_families))
            n_families -= 1
        else:
            entry = parts.setdefault(part, {})
            cap = min(a.part_cap_s, deadline - now)
        if now >= deadline or cap < (5 if a.smoke else 15):
            entry.update(status="skipped", note=f"--deadline_s={a.deadline_s:g} reached after {now - start:.0f} s")
            save()
            continue
        job_deadline = now + cap
        if isolate:
            res, dev = _run_child(part, family, a, job_deadline, print)
            results["device"] = results["device"] or dev
        else:
            partial = {}  # the job's own result dict, which it keeps filling in: what it measured before a failure
            try:
                res = run_job(part, family, a, job_deadline, lambda r: partial.update(last=r),
                              peak_tflops=a.peak_tflops)
                res["status"] = "done"
            except CapReached as e:
                res = dict(partial.get("last", {}), status="timed_out",
                           note=f"stopped after {time.time() - now:.0f} s: {e}")
            except Exception as e:  # noqa: BLE001 - recorded with what the job had measured, the check goes on
                traceback.print_exc()
                res = dict(partial.get("last", {}), status="error", error=first_line(e))
        res["elapsed_s"] = time.time() - now
        entry.update(res)
        if part == "attention" and res.get("peak_tflops") and not a.peak_tflops:
            a.peak_tflops = res["peak_tflops"]  # the train parts' MFU against the same measured peak
        save()
    results["peak_tflops_bf16"] = a.peak_tflops
    results["complete"] = True
    results["markdown"] = markdown(results)
    save()
    print(results["markdown"])
    print(f"results: {out}")
    return results


if __name__ == "__main__":
    main()
