"""Geometry metrics of predicted depth / point maps against ground truth, masked to pixels with known geometry,
jit-friendly (JAX), one value per image or per cloud.

Depth (the standard monocular-depth protocol, e.g. MiDaS / DPT / Depth Anything evaluations): each predicted
z-depth map is aligned to its ground truth by one scale per image, the MEDIAN ratio
s = median(gt) / median(pred) over the image's valid pixels (``median scale alignment``), then

- AbsRel = mean_valid |s pred - gt| / gt,
- delta < 1.25 (``delta1``) = share of valid pixels with max(s pred / gt, gt / (s pred)) < 1.25.

Pixels count as valid where the mask is True and the ground truth is > 0 (predictions are clamped to >= ``eps``).
An image without a valid pixel gets NaN for both and ``valid`` False; averages over images should skip it.
Medians follow numpy (the mean of the two middle values for an even count).

Chamfer distance of two point clouds P and Q (each with a per-point weight, 0 = absent), the symmetric mean of
nearest-neighbour Euclidean distances (not squared):

    CD(P, Q) = 1/2 (mean_{p in P} min_{q in Q} ||p - q|| + mean_{q in Q} min_{p in P} ||q - p||),

computed exactly by brute force in chunks of ``chunk`` points (memory ``chunk x |Q|``); NaN when either cloud is
empty. ``sample_valid`` picks at most ``n`` valid entries of a mask at random (fixed shapes under ``jit``), so
large fused clouds can be scored on a random subset.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DELTA = 1.25


def masked_median(x, mask):
    """(...,) median of ``x`` (..., N) over entries where ``mask`` (..., N) is True, numpy's convention (mean of
    the two middle values for an even count); NaN where no entry is valid."""
    x = jnp.asarray(x, jnp.float32)
    mask = jnp.asarray(mask, bool)
    n = jnp.sum(mask, -1)
    s = jnp.sort(jnp.where(mask, x, jnp.inf), -1)
    lo = jnp.take_along_axis(s, jnp.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = jnp.take_along_axis(s, (n // 2)[..., None], -1)[..., 0]
    return jnp.where(n > 0, 0.5 * (lo + hi), jnp.nan)


def scale_aligned_depth(pred, gt, mask, eps: float = 1e-6) -> dict:
    """Median-scale-aligned depth metrics (module docstring) of depth maps (..., H, W) with a bool mask
    (..., H, W): ``absrel``, ``delta1`` (NaN where an image has no valid pixel), ``scale`` (the alignment factor)
    and ``valid`` (bool: the image has a valid pixel), each (...,)."""
    pred = jnp.maximum(jnp.asarray(pred, jnp.float32), eps)
    gt = jnp.asarray(gt, jnp.float32)
    if pred.shape != gt.shape or tuple(mask.shape) != tuple(gt.shape) or pred.ndim < 2:
        raise ValueError(f"scale_aligned_depth: pred, gt and mask must be (..., H, W) of one shape, got {pred.shape}, "
                         f"{gt.shape} and {tuple(mask.shape)}")
    lead = pred.shape[:-2]
    p, g = pred.reshape(lead + (-1,)), gt.reshape(lead + (-1,))
    m = jnp.asarray(mask, bool).reshape(lead + (-1,)) & (g > 0)
    scale = masked_median(g, m) / masked_median(p, m)
    a = p * scale[..., None]
    n = jnp.sum(m, -1).astype(jnp.float32)
    safe_g = jnp.where(m, g, 1.0)
    absrel = jnp.sum(jnp.where(m, jnp.abs(a - g) / safe_g, 0.0), -1) / n
    ratio = jnp.maximum(a / safe_g, safe_g / a)
    delta1 = jnp.sum(jnp.where(m, ratio < DELTA, False), -1) / n
    valid = n > 0
    return {"absrel": jnp.where(valid, absrel, jnp.nan), "delta1": jnp.where(valid, delta1, jnp.nan),
            "scale": scale, "valid": valid}


def sample_valid(rng, mask, n: int):
    """(indices (..., n) int32, taken (..., n) bool): up to ``n`` entries of ``mask`` (..., N) chosen uniformly
    at random without replacement among the valid ones (all of them when there are at most ``n``; ``taken`` is
    False for the padding). One random score per position N, shared by the leading axes, so a row's choice does
    not depend on the other rows (nor on how many there are)."""
    mask = jnp.asarray(mask, bool)
    n = min(int(n), mask.shape[-1])
    score = jnp.where(mask, jax.random.uniform(rng, mask.shape[-1:]), -1.0)
    _, idx = jax.lax.top_k(score, n)
    return idx.astype(jnp.int32), jnp.take_along_axis(mask, idx, -1)


def _nearest(a, b, wb, chunk: int):
    """(Na,) distance from each point of a (Na, 3) to its nearest point of b (Nb, 3) with weight wb > 0."""
    na = a.shape[0]
    pad = (-na) % chunk
    ap = jnp.pad(a, ((0, pad), (0, 0))).reshape(-1, chunk, 3)
    b2 = jnp.sum(b * b, -1)

    def one(x):
        # |x - y|^2 = |x|^2 - 2 x.y + |y|^2, in float32 with HIGHEST matmul precision; clamped at 0.
        sq = jnp.sum(x * x, -1)[:, None] - 2.0 * jnp.matmul(x, b.T, precision=jax.lax.Precision.HIGHEST) + b2[None]
        sq = jnp.where(wb[None] > 0, jnp.maximum(sq, 0.0), jnp.inf)
        return jnp.sqrt(jnp.min(sq, -1))

    return jax.lax.map(one, ap).reshape(-1)[:na]


def chamfer_distance(p, q, wp=None, wq=None, *, chunk: int = 1024) -> jax.Array:
    """(...,) symmetric Chamfer distance (module docstring) between clouds p (..., Np, 3) and q (..., Nq, 3)
    with optional weights wp (..., Np) / wq (..., Nq) (0 = the point is absent; default all 1)."""
    p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
    if p.shape[-1:] != (3,) or q.shape[-1:] != (3,) or p.shape[:-2] != q.shape[:-2]:
        raise ValueError(f"chamfer_distance: clouds must be (..., N, 3) with equal leading axes, got {p.shape} and "
                         f"{q.shape}")
    wp = jnp.ones(p.shape[:-1], jnp.float32) if wp is None else jnp.asarray(wp, jnp.float32)
    wq = jnp.ones(q.shape[:-1], jnp.float32) if wq is None else jnp.asarray(wq, jnp.float32)
    lead = p.shape[:-2]
    flat = lambda x, tail: x.reshape((-1,) + x.shape[len(lead):len(lead) + tail])  # noqa: E731
    chunk = max(1, min(int(chunk), max(p.shape[-2], q.shape[-2])))

    def one(args):
        a, b, wa, wb = args

        def side(x, wx, y, wy):
            d = _nearest(x, y, wy, chunk)
            return jnp.sum(jnp.where(wx > 0, d, 0.0) * wx) / jnp.sum(wx)

        both = (jnp.sum(wa) > 0) & (jnp.sum(wb) > 0)
        cd = 0.5 * (side(a, wa, b, wb) + side(b, wb, a, wa))
        return jnp.where(both, cd, jnp.nan)

    out = jax.lax.map(one, (flat(p, 2), flat(q, 2), flat(wp, 1), flat(wq, 1)))
    return out.reshape(lead)
