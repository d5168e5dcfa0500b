"""3DRAE encoder scaling with the number of input views: encode time and peak memory at fixed K; decode time per view.

    python benchmarks/views_scaling.py                       # the real size: card dino2 (DINOv2-B, 224 px, K=1024)
    python benchmarks/views_scaling.py --views 2,4 --repeats 1   # a quick check
    python benchmarks/views_scaling.py --card "" --encoder dinov2-S --variant S --tokens 256 --resolution 112
    python benchmarks/views_scaling.py --smoke               # tiny shapes (the CI check that the script runs)

Default: ``configs/rae3d.py:card=dino2`` (frozen DINOv2-B tower, perceiver / decoder 'B', K = 1024 tokens of width
768) on 224 x 224 views, V = 2, 4, 8, 16, 32. ``--card`` picks another released variant (``dino2-256``, ``siglip2``;
its resolution unless --resolution is given); ``--card ""`` with --encoder / --variant / --tokens / --latent_dim
any other size. Weights are random (timings do not depend on them).

For each V: the jitted encoder (frozen tower + blockwise perceiver read, batch 1) is AOT-compiled; "args" and
"temp" are ``compiled.memory_analysis()`` argument and temporary sizes (deterministic on CPU), "peak" their sum;
time is the median wall clock of --repeats calls after a warm-up (``block_until_ready``). The per-view columns
(ms / view; MiB / view of the temporaries; dMiB / dview: the peak's growth per added view above the first row) stay
flat when the cost is linear in V. The decoder row times rendering ``view_chunk`` target views from the tokens, per
view. --smoke: tiny shapes (weights random, timings meaningless there).
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


def card_settings(card: str) -> dict:
    """encoder / variant / tokens / latent_dim / resolution of a released variant (``configs/rae3d.py:card=``)."""
    from configs import rae3d as rae3d_config
    c = rae3d_config.get_config(f"card={card}")
    return dict(encoder=c.model.encoder, variant=c.model.variant, tokens=c.model.num_tokens,
                latent_dim=c.model.latent_dim, resolution=int(c.data.views.resolution[0]))


def run(encoder="dinov2-B", variant="B", tokens=1024, resolution=224, views=(2, 4, 8, 16, 32), view_chunk=4,
        repeats=3, seed=0, latent_dim=None):
    """Rows of dicts (one per V, then one 'decode' row); also printed as a table. Parameters are created by one
    jitted init (a real-size model initialises in seconds)."""
    kw = dict(encoder=encoder, num_tokens=tokens, view_chunk=view_chunk)
    if latent_dim:
        kw["latent_dim"] = int(latent_dim)
    model = nnx.jit(lambda: rae3d.RAE3D(variant, rngs=nnx.Rngs(seed), **kw))()
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
        row["temp_mib_per_view"] = row["temp_mib"] / v
        row["ms"] = _time(compiled, (state, im, c2w, k), repeats)
        rows.append(row)
    tok = jnp.asarray(rng.normal(size=(1,) + model.latent_shape), jnp.float32)
    c2w, k = _cameras(rng, 1, view_chunk)

    def decode(st, t, c, kk):
        return nnx.merge(graphdef, st).decode(t, c, kk, (resolution, resolution))["rgb"]

    dec = jax.jit(decode).lower(state, tok, c2w, k).compile()
    rows.append(dict(views="decode", ms_per_view=_time(dec, (state, tok, c2w, k), repeats) / view_chunk))
    _print(rows, encoder, variant, model.latent_shape, resolution, view_chunk)
    return rows


def _print(rows, encoder, variant, latent_shape, resolution, view_chunk):
    enc = [r for r in rows if r["views"] != "decode"]
    base = enc[0]
    print(f"# 3DRAE encode: tower {encoder}, perceiver {variant}, tokens {latent_shape[0]} x {latent_shape[1]}, "
          f"{resolution}x{resolution} views, view_chunk={view_chunk}, batch 1, {jax.devices()[0].platform}")
    print(f"{'views':>6} {'ms':>10} {'ms/view':>9} {'args MiB':>9} {'temp MiB':>9} {'peak MiB':>9} "
          f"{'temp MiB/view':>13} {'dMiB/dview':>10}")
    for r in enc:
        dv = r["views"] - base["views"]
        slope = (r["peak_mib"] - base["peak_mib"]) / dv if dv else float("nan")
        print(f"{r['views']:>6} {r['ms']:>10.2f} {r['ms'] / r['views']:>9.3f} {r['args_mib']:>9.2f} "
              f"{r['temp_mib']:>9.2f} {r['peak_mib']:>9.2f} {r['temp_mib_per_view']:>13.3f} {slope:>10.3f}")
    d = [r for r in rows if r["views"] == "decode"][0]
    print(f"decode: {d['ms_per_view']:.2f} ms per target view ({view_chunk} views per call)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card", default="dino2", help="dino2 | dino2-256 | siglip2 (configs/rae3d.py), '' for none")
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--latent_dim", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--views", default="2,4,8,16,32")
    ap.add_argument("--view_chunk", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (tests)")
    a = ap.parse_args(argv)
    if a.smoke:
        return run("tiny-dinov2", "tiny", 16, 28, (2, 4, 8), 2, 1)
    settings = card_settings(a.card) if a.card else dict(encoder="dinov2-B", variant="B", tokens=1024,
                                                          latent_dim=None, resolution=224)
    for key in ("encoder", "variant", "tokens", "latent_dim", "resolution"):
        if getattr(a, key) is not None:
            settings[key] = getattr(a, key)
    return run(settings["encoder"], settings["variant"], settings["tokens"], settings["resolution"],
               tuple(int(v) for v in a.views.split(",")), a.view_chunk, a.repeats, latent_dim=settings["latent_dim"])


if __name__ == "__main__":
    main()
