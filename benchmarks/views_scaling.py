"""3DRAE encoder scaling with the number of input views: encode time and peak memory at fixed K; decode time per view.

    python benchmarks/views_scaling.py [--encoder dinov2-S] [--variant S] [--tokens 256] [--resolution 112]
                                       [--views 2,4,8,16,32,64,128] [--view_chunk 4] [--repeats 3] [--smoke]

For each V: the jitted encoder (frozen tower + blockwise perceiver read, batch 1) is AOT-compiled; "args" and
"temp" are ``compiled.memory_analysis()`` argument and temporary sizes (deterministic on CPU), "peak" their sum;
time is the median wall clock of --repeats calls after a warm-up (``block_until_ready``). The per-view columns
(ms / view, MiB / view above the V = first row) stay flat when the cost is linear in V. The decoder row times
rendering ``view_chunk`` target views from the tokens, per view. --smoke: tiny shapes (the CI check that the
script runs; weights are random, timings are meaningless there).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models import rae3d


def _cameras(rng, b, v):
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
    ang = rng.uniform(-0.5, 0.5, (b, v))
    c2w[..., 0, 0], c2w[..., 0, 2], c2w[..., 2, 0], c2w[..., 2, 2] = np.cos(ang), np.sin(ang), -np.sin(ang), np.cos(ang)
    c2w[..., :3, 3] = rng.normal(size=(b, v, 3)) * 0.3
    intr = np.tile(np.array([0.9, 0.9, 0.5, 0.5], np.float32), (b, v, 1))
    return jnp.asarray(c2w), jnp.asarray(intr)


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def run(encoder="dinov2-S", variant="S", tokens=256, resolution=112, views=(2, 4, 8, 16, 32, 64, 128),
        view_chunk=4, repeats=3, seed=0):
    """Rows of dicts (one per V, then one 'decode' row); also printed as a table."""
    model = rae3d.RAE3D(variant, rngs=nnx.Rngs(seed), encoder=encoder, num_tokens=tokens, view_chunk=view_chunk)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)

    def encode(st, im, c2w, k):
        return nnx.merge(graphdef, st).encode(im, c2w, k)

    rows = []
    for v in views:
        im = jnp.asarray(rng.uniform(-1, 1, (1, v, resolution, resolution, 3)), jnp.float32)
        c2w, k = _cameras(rng, 1, v)
        compiled = jax.jit(encode).lower(state, im, c2w, k).compile()
        mem = compiled.memory_analysis()
        row = dict(views=v, args_mib=mem.argument_size_in_bytes / 2**20 if mem else float("nan"),
                   temp_mib=mem.temp_size_in_bytes / 2**20 if mem else float("nan"))
        row["peak_mib"] = row["args_mib"] + row["temp_mib"]
        row["ms"] = _time(compiled, (state, im, c2w, k), repeats)
        rows.append(row)
    tok = jnp.asarray(rng.normal(size=(1,) + model.latent_shape), jnp.float32)
    c2w, k = _cameras(rng, 1, view_chunk)

    def decode(st, t, c, kk):
        return nnx.merge(graphdef, st).decode(t, c, kk, (resolution, resolution))["rgb"]

    dec = jax.jit(decode).lower(state, tok, c2w, k).compile()
    rows.append(dict(views="decode", ms_per_view=_time(dec, (state, tok, c2w, k), repeats) / view_chunk))
    _print(rows, encoder, variant, tokens, resolution, view_chunk)
    return rows


def _print(rows, encoder, variant, tokens, resolution, view_chunk):
    enc = [r for r in rows if r["views"] != "decode"]
    base = enc[0]
    print(f"# 3DRAE encode: tower {encoder}, perceiver {variant}, K={tokens}, {resolution}x{resolution} views, "
          f"view_chunk={view_chunk}, batch 1, {jax.devices()[0].platform}")
    print(f"{'views':>6} {'ms':>10} {'ms/view':>9} {'args MiB':>9} {'temp MiB':>9} {'peak MiB':>9} "
          f"{'dMiB/dview':>10}")
    for r in enc:
        dv = r["views"] - base["views"]
        slope = (r["peak_mib"] - base["peak_mib"]) / dv if dv else float("nan")
        print(f"{r['views']:>6} {r['ms']:>10.2f} {r['ms'] / r['views']:>9.3f} {r['args_mib']:>9.2f} "
              f"{r['temp_mib']:>9.2f} {r['peak_mib']:>9.2f} {slope:>10.3f}")
    d = [r for r in rows if r["views"] == "decode"][0]
    print(f"decode: {d['ms_per_view']:.2f} ms per target view ({view_chunk} views per call)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="dinov2-S")
    ap.add_argument("--variant", default="S")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=112)
    ap.add_argument("--views", default="2,4,8,16,32,64,128")
    ap.add_argument("--view_chunk", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (tests)")
    a = ap.parse_args()
    if a.smoke:
        return run("tiny-dinov2", "tiny", 16, 28, (2, 4, 8), 2, 1)
    return run(a.encoder, a.variant, a.tokens, a.resolution, tuple(int(v) for v in a.views.split(",")),
               a.view_chunk, a.repeats)


if __name__ == "__main__":
    main()
