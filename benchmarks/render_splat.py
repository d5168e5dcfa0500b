"""Gaussian-splat rasteriser throughput: forward (and optionally backward) time per render.

    python benchmarks/render_splat.py [--ply ../shared/data/fox_3dgs/fox.ply] [--sizes 128,256,512] [--grad]

Without --ply it renders a synthetic scene of --num Gaussians. Prints a table: resolution, Gaussians, compile s,
median forward ms, (median grad ms), dropped overlaps. Timings are wall clock after compile (median of --repeats).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from scene3d.geometry import cameras, gaussians as gs
from scene3d.render import splat


def synthetic(n: int, seed: int = 0) -> gs.Gaussians:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    return gs.Gaussians(xyz=xyz, f_dc=rng.normal(size=(n, 3)).astype(np.float32),
                        opacity=rng.normal(size=(n,)).astype(np.float32),
                        scale=np.full((n, 3), -3.5, np.float32) + rng.normal(0, 0.3, (n, 3)).astype(np.float32),
                        rot=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)))


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def camera_for(g: gs.Gaussians):
    """A camera looking at the scene's centre from 2.5 x its 90th-percentile radius: (c2w (4, 4), intrinsics (4,))."""
    centre = np.asarray(g.xyz).mean(0)
    radius = 2.5 * float(np.percentile(np.linalg.norm(np.asarray(g.xyz) - centre, axis=1), 90))
    c2w = cameras.look_at(centre + np.array([0.0, -radius, 0.3 * radius]), centre, np.array([0.0, 0.0, 1.0]))
    return c2w, jnp.array([0.9, 0.9, 0.5, 0.5], jnp.float32)


def time_render(g: gs.Gaussians, c2w, intr, height: int, width: int, repeats: int, grad: bool) -> dict:
    """One table row: compile s (first forward call), median forward ms, median grad ms (NaN without ``grad``;
    the backward's compile is not timed), dropped overlaps."""
    fwd = jax.jit(lambda g: splat.render(g, c2w, intr, height, width))
    t0 = time.perf_counter()
    out = jax.block_until_ready(fwd(g))
    compile_s = time.perf_counter() - t0
    f_ms = 1e3 * _time(lambda: fwd(g)["rgb"], repeats)
    g_ms = float("nan")
    if grad:
        loss = jax.jit(jax.grad(lambda g: jnp.mean(splat.render(g, c2w, intr, height, width)["rgb"])))
        jax.block_until_ready(loss(g))
        g_ms = 1e3 * _time(lambda: loss(g).xyz, repeats)
    return dict(height=height, width=width, num=int(g.xyz.shape[0]), compile_s=compile_s, fwd_ms=f_ms,
                grad_ms=g_ms, dropped=int(out["dropped"]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ply", default=None)
    p.add_argument("--num", type=int, default=50_000)
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--grad", action="store_true")
    a = p.parse_args()
    if a.ply:
        from scene3d.data.splat_io import read_ply
        g = read_ply(a.ply, repair=True)
    else:
        g = synthetic(a.num)
    g = jax.tree.map(jnp.asarray, g)
    c2w, intr = camera_for(g)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  gaussians: {g.xyz.shape[0]}")
    header = f"{'res':>6} {'N':>7} {'compile s':>10} {'fwd ms':>8} {'grad ms':>8} {'dropped':>8}"
    print(header)
    print("-" * len(header))
    for s in [int(x) for x in a.sizes.split(",")]:
        r = time_render(g, c2w, intr, s, s, a.repeats, a.grad)
        print(f"{s:>6} {r['num']:>7} {r['compile_s']:>10.1f} {r['fwd_ms']:>8.1f} {r['grad_ms']:>8.1f} "
              f"{r['dropped']:>8}")

if __name__ == "__main__":
    main()
