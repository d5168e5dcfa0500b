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
        row["error"] = f"{type(e).__name__}: {first_line(e, 90)}"
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
    peak, rows = run_table(a.impls, a.shapes, a.dtype, a.repeats, smoke=a.smoke)
    print(format_table(rows, peak))
    return rows


def run_table(impls: str, shapes: str | None, dtype: str = "bf16", repeats: int = 10, *, smoke: bool = False,
              deadline: float | None = None, log=print):
    """The measured matmul peak (TFLOP/s) and one :func:`bench` row per (shape, impl), as ``main`` prints them.

    ``impls`` / ``shapes`` as the command line's; ``deadline`` (a ``time.time()``): rows not started by then are
    reported as skipped. A row whose run raises is reported with the exception's first line (the other rows go
    on); benchmarks/gpu_check.py calls this for its attention table."""
    dt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    shapes = shapes or (SMOKE_SHAPES if smoke else DEFAULT_SHAPES)
    impls = impls.split(",") if isinstance(impls, str) else list(impls)
    repeats = 1 if smoke else repeats
    if smoke and jax.default_backend() == "cpu":
        impls = [i for i in impls if i not in ("cudnn", "pallas_mosaic_gpu")]
    peak = matmul_peak_tflops(dt, repeats, n=256 if smoke else None)
    log(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {dtype}, "
        f"measured matmul peak {peak:.2f} TFLOP/s")
    rows = []
    for s in shapes.split(";"):
        shape = tuple(int(x) for x in s.split(","))
        for i in impls:
            if deadline is not None and time.time() > deadline:
                rows.append(dict(impl=i, shape=shape, error="skipped: deadline reached"))
                continue
            try:
                rows.append(bench(i, shape, dt, repeats))
            except Exception as e:  # noqa: BLE001 - one failing row must not lose the table
                rows.append(dict(impl=i, shape=shape, error=f"{type(e).__name__}: {first_line(e)}"))
    return peak, rows


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters."""
    lines = [x for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else "")[:limit]


if __name__ == "__main__":
    main()
