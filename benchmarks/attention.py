"""Attention kernels on the current device: forward / forward+backward time, peak memory, TFLOP/s.

    python benchmarks/attention.py [--impls xla,cudnn,pallas_mosaic_gpu,pallas_triton,tokamax]
                                   [--shapes B,Lq,Lk,H,D;...] [--dtype bf16] [--smoke]

Prints one row per (impl, shape): median fwd ms and fwd+bwd ms (wall clock after compile, --repeats runs,
fresh random inputs), peak temp memory from ``compiled.memory_analysis()`` of the fwd+bwd program, and TFLOP/s
(4 B H Lq Lk D for the forward, 2.5x that for the backward). Impls that cannot run on this device (cuDNN
off GPU, the Mosaic GPU kernels off Hopper, ...) are listed with the reason. Impls: any name the attention
dispatcher takes; 'pallas' is what it picks on this device, 'pallas_mosaic_gpu' pins our FlashAttention-3 style
Hopper kernels (Mosaic GPU forward and dK/dV + dQ backward), 'pallas_triton' the Triton ones. On CPU the Pallas
kernels run in interpret mode, so --smoke uses tiny shapes (and skips cuDNN and the much slower Mosaic GPU
interpreter): it checks that the script works, not kernel speed.

The default shapes are the ones our models run: Perceiver cross-attention from 1024 queries to 4k / 16k / 64k
multi-view keys, and DiT self-attention over 1024 and 4096 tokens, heads 12-16, head dims 64 / 128. Before the
table the script measures the dense bf16 matmul peak of the device in the same run (median of a square matmul),
and each row reports its forward TFLOP/s as a fraction of that peak. 'tokamax' is timed when the package is
installed (its `dot_product_attention`), else listed as unavailable.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from scene3d import kernels

DEFAULT_SHAPES = ("2,1024,4096,16,64;2,1024,16384,16,64;1,1024,65536,16,64;"
                  "8,1024,1024,12,64;2,4096,4096,16,128;2,4096,4096,16,64")
SMOKE_SHAPES = "1,40,17,2,64"


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def matmul_peak_tflops(dtype, repeats: int, n: int | None = None) -> float:
    """Measured dense matmul throughput (TFLOP/s) of an n x n x n product in ``dtype`` on this device."""
    n = n or (8192 if jax.default_backend() != "cpu" else 512)
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    ms = _time(f, (a, a), max(repeats, 3))
    return 2.0 * n ** 3 / ms / 1e9


def _attention_fn(impl):
    if impl == "tokamax":
        import tokamax  # optional: listed as unavailable when not installed
        return lambda q, k, v: tokamax.dot_product_attention(q, k, v)
    return lambda q, k, v: kernels.attention(q, k, v, impl=impl)


def bench(impl, shape, dtype, repeats, seed=0):
    b, lq, lk, h, d = shape
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(s, np.float32), dtype)
               for s in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d)))
    row = dict(impl=impl, shape=shape)
    try:
        attn = _attention_fn(impl)
    except ImportError as e:
        row["error"] = f"not installed ({e.name})"
        return row
    fwd = jax.jit(attn)

    def loss(q, k, v):
        return jnp.sum(attn(q, k, v).astype(jnp.float32) ** 2)
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    try:
        lowered = bwd.lower(q, k, v)
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - report why an impl cannot run here
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
        return row
    row["kernels"] = kernel_counts(lowered.as_text())
    mem = compiled.memory_analysis()
    row["peak_mib"] = None if mem is None else (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
    flops = 4.0 * b * h * lq * lk * d
    row["fwd_ms"] = _time(fwd, (q, k, v), repeats)
    row["bwd_ms"] = _time(compiled, (q, k, v), repeats)
    row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
    row["bwd_tflops"] = 3.5 * flops / row["bwd_ms"] / 1e9  # fwd + bwd (2.5x fwd)
    return row


def kernel_counts(hlo_text: str) -> str:
    """Pallas kernels in a lowered fwd+bwd program: 'mgpu:3' (Mosaic GPU), 'triton:2', 'tpu:3', or '-'."""
    counts = {"mgpu": hlo_text.count("custom_call @mosaic_gpu"),
              "triton": hlo_text.count("custom_call @__gpu$xla.gpu.triton"),
              "tpu": hlo_text.count("custom_call @tpu_custom_call")}
    return " ".join(f"{k}:{n}" for k, n in counts.items() if n) or "-"


def format_table(rows, peak_tflops: float | None = None) -> str:
    head = f"{'impl':<17} {'B,Lq,Lk,H,D':<22} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'fwd TF/s':>9} " \
           f"{'f+b TF/s':>9} {'fwd/peak':>9}  kernels (fwd+bwd)"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = ",".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"{r['impl']:<17} {s:<22} unavailable: {r['error']}")
            continue
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        frac = "n/a" if not peak_tflops else f"{100 * r['fwd_tflops'] / peak_tflops:.1f}%"
        lines.append(f"{r['impl']:<17} {s:<22} {r['fwd_ms']:>9.3f} {r['bwd_ms']:>11.3f} {peak:>9} "
                     f"{r['fwd_tflops']:>9.3f} {r['bwd_tflops']:>9.3f} {frac:>9}  {r['kernels']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default="xla,cudnn,pallas_mosaic_gpu,pallas_triton,tokamax")
    p.add_argument("--shapes", default=None, help="';'-separated B,Lq,Lk,H,D")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 repeat (CPU: xla + pallas interpret)")
    a = p.parse_args(argv)
    dtype = jnp.bfloat16 if a.dtype == "bf16" else jnp.float32
    shapes = a.shapes or (SMOKE_SHAPES if a.smoke else DEFAULT_SHAPES)
    impls = a.impls.split(",")
    repeats = 1 if a.smoke else a.repeats
    if a.smoke and jax.default_backend() == "cpu":
        impls = [i for i in impls if i not in ("cudnn", "pallas_mosaic_gpu")]
    peak = matmul_peak_tflops(dtype, repeats, n=256 if a.smoke else None)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {a.dtype}, "
          f"measured matmul peak {peak:.2f} TFLOP/s")
    rows = [bench(i, tuple(int(x) for x in s.split(",")), dtype, repeats)
            for s in shapes.split(";") for i in impls]
    print(format_table(rows, peak))
    return rows


if __name__ == "__main__":
    main()
