"""Pick a fixed number of Gaussians by kNN region growing (fixed-size inputs for Can3Tok-style tokenizers)."""
from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

from scene3d.geometry.gaussians import Gaussians

log = logging.getLogger(__name__)


def _seed(xyz, tree, seed, n, m):
    """-> (seed indices, anchor points the trimming distance is measured to)."""
    if seed is None:
        anchors = xyz.mean(0, keepdims=True)
        return np.array([tree.query(anchors[0])[1]], dtype=np.int64), anchors
    seed = np.asarray(seed)
    if seed.dtype == bool:
        if seed.shape != (m,):
            raise ValueError(f"seed mask: expected shape ({m},) (one flag per Gaussian), got {seed.shape}")
        idx = np.flatnonzero(seed)
        if idx.size == 0:
            raise ValueError("seed mask selects no Gaussian")
        if idx.size > n:
            raise ValueError(f"seed mask selects {idx.size} Gaussians, more than n = {n}")
        return idx.astype(np.int64), xyz[idx]
    if seed.shape == (3,) and np.issubdtype(seed.dtype, np.number):
        point = seed.astype(np.float64)
        if not np.isfinite(point).all():
            raise ValueError(f"seed point must be finite, got {point}")
        return np.array([tree.query(point)[1]], dtype=np.int64), point[None]
    raise ValueError(f"seed: expected None, a boolean mask of shape ({m},) or a point of shape (3,), "
                     f"got {seed.dtype} {seed.shape}")


def knn_region_grow(xyz, n: int, seed=None, k: int = 16, pad: bool = False) -> np.ndarray:
    """Indices of exactly n Gaussians grown from a seed region over the k-nearest-neighbour graph.

    seed: None (the Gaussian nearest the mean position), a point (3,) (the Gaussian nearest to it), or a boolean
    mask (M,) of at most n Gaussians (all kept). Each step adds the k nearest neighbours of the last-added ring
    (the frontier) not yet taken; the step that would overshoot n keeps those nearest to the seed (nearest
    seed point of a mask, the point, or the mean), ties by index, so the result is connected in the kNN graph.
    If the reachable component runs out before n, the outside Gaussian nearest to the region is added and
    growth goes on from it (logged). Deterministic. Returns int64 indices (n,), in growth order, seed first.

    Fewer than n Gaussians: ValueError, or with pad=True all of them (in growth order) repeated cyclically.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz: expected shape (M, 3), got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz: non-finite positions")
    m = xyz.shape[0]
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    n, k = int(n), int(k)
    if m == 0:
        raise ValueError("xyz: empty scene")
    if m < n:
        if not pad:
            raise ValueError(f"scene has {m} Gaussians, fewer than n = {n} (pass pad=True to repeat them)")
        return np.resize(knn_region_grow(xyz, m, seed=seed, k=k), n)
    tree = cKDTree(xyz)
    region, anchors = _seed(xyz, tree, seed, n, m)
    anchor_tree = cKDTree(anchors)
    taken = np.zeros(m, dtype=bool)
    taken[region] = True
    parts, count, frontier = [region], region.size, region
    kk = min(k + 1, m)  # +1: a point is its own nearest neighbour
    while count < n:
        cand = np.empty(0, dtype=np.int64)
        if frontier.size:
            nb = tree.query(xyz[frontier], k=kk)[1].reshape(-1)
            cand = np.unique(nb[~taken[nb]]).astype(np.int64)
        if cand.size == 0:  # component exhausted: bridge to the nearest outside Gaussian
            outside = np.flatnonzero(~taken)
            d = cKDTree(xyz[taken]).query(xyz[outside])[0]
            cand = outside[[int(np.argmin(d))]]
            log.info("knn_region_grow: kNN component exhausted at %d of %d Gaussians; bridging", count, n)
        dist = anchor_tree.query(xyz[cand])[0]
        cand = cand[np.lexsort((cand, dist))][: n - count]
        taken[cand] = True
        parts.append(cand)
        count += cand.size
        frontier = cand
    return np.concatenate(parts)


def crop_gaussians(g: Gaussians, n: int, seed=None, k: int = 16, pad: bool = False) -> Gaussians:
    """`g.take(knn_region_grow(g.xyz, n, seed, k, pad))` for an unbatched numpy scene."""
    return g.take(knn_region_grow(np.asarray(g.xyz), n, seed=seed, k=k, pad=pad))
