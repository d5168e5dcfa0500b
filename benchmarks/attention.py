"""Attention kernels on the current device: forward / forward+backward time, peak memory, TFLOP/s.

    python benchmarks/attention.py [--impls xla,cudnn,pallas] [--shapes B,Lq,Lk,H,D;...] [--dtype bf16] [--smoke]

Prints one row per (impl, shape): median fwd ms and fwd+bwd ms (wall clock after compile, --repeats runs,
fresh random inputs), peak temp memory from ``compiled.memory_analysis()`` of the fwd+bwd program, and TFLOP/s
(4 B H Lq Lk D for the forward, 2.5x that for the backward). Impls that cannot run on this device (cuDNN
off GPU, ...) are listed with the reason. On CPU the Pallas kernels run in interpret mode, so --smoke uses
tiny shapes: it checks that the script works, not kernel speed.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from scene3d import kernels

DEFAULT_SHAPES = "4,1024,1024,16,64;2,4096,4096,16,128;8,1024,256,16,64"
SMOKE_SHAPES = "1,40,17,2,64"


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def bench(impl, shape, dtype, repeats, seed=0):
    b, lq, lk, h, d = shape
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(s, np.float32), dtype)
               for s in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d)))
    fwd = jax.jit(lambda q, k, v: kernels.attention(q, k, v, impl=impl))

    def loss(q, k, v):
        return jnp.sum(kernels.attention(q, k, v, impl=impl).astype(jnp.float32) ** 2)
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    row = dict(impl=impl, shape=shape)
    try:
        compiled = bwd.lower(q, k, v).compile()
    except Exception as e:  # noqa: BLE001 - report why an impl cannot run here
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
        return row
    mem = compiled.memory_analysis()
    row["peak_mib"] = None if mem is None else (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
    flops = 4.0 * b * h * lq * lk * d
    row["fwd_ms"] = _time(fwd, (q, k, v), repeats)
    row["bwd_ms"] = _time(compiled, (q, k, v), repeats)
    row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
    row["bwd_tflops"] = 3.5 * flops / row["bwd_ms"] / 1e9  # fwd + bwd (2.5x fwd)
    return row


def format_table(rows) -> str:
    head = f"{'impl':<8} {'B,Lq,Lk,H,D':<22} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'fwd TF/s':>9} " \
           f"{'f+b TF/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = ",".join(map(str, r["shape"]))
        if "error" in r:
            lines.append(f"{r['impl']:<8} {s:<22} unavailable: {r['error']}")
            continue
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"{r['impl']:<8} {s:<22} {r['fwd_ms']:>9.3f} {r['bwd_ms']:>11.3f} {peak:>9} "
                     f"{r['fwd_tflops']:>9.3f} {r['bwd_tflops']:>9.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default="xla,cudnn,pallas")
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
        impls = [i for i in impls if i != "cudnn"]
    rows = [bench(i, tuple(int(x) for x in s.split(",")), dtype, repeats)
            for s in shapes.split(";") for i in impls]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {a.dtype}")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
