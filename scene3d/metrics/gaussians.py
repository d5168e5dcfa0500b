"""Can3Tok reconstruction metrics over raw Gaussian channels.

- per-scene L2 error: the Frobenius norm of (prediction - target) over one scene's (N, C) raw channels;
- the paper's batch figure, as the public evaluation computes it: the Frobenius norm over the whole batch
  (B, N, C) divided by the batch size (not the mean of the per-scene norms);
- failure rate: the share of scenes whose per-scene L2 error exceeds a threshold (1000 in the paper).

Over a whole split the batch figure depends on how the scenes are batched; ``batch_l2_from_scenes`` gives it from
the per-scene values (a batch's Frobenius norm is the root of its scenes' summed squared L2 errors).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DEFAULT_FAILURE_THRESHOLD = 1000.0


def _check(pred, target):
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"Gaussian metrics need pred and target of equal shape (B, N, C); got {pred.shape} and "
                         f"{target.shape}")


def per_scene_l2(pred, target):
    """(B,) Frobenius norm of the raw-channel difference of each scene."""
    _check(pred, target)
    d = (pred - target).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(d), axis=(1, 2)))


def batch_l2(pred, target):
    """The public evaluation's figure: ||pred - target||_F over the batch / batch size."""
    _check(pred, target)
    d = (pred - target).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(d))) / pred.shape[0]


def failure_rate(pred, target, threshold: float = DEFAULT_FAILURE_THRESHOLD):
    """Share of scenes with per-scene L2 error above ``threshold``."""
    return jnp.mean((per_scene_l2(pred, target) > threshold).astype(jnp.float32))


def gaussian_metrics(pred, target, threshold: float = DEFAULT_FAILURE_THRESHOLD) -> dict:
    l2 = per_scene_l2(pred, target)
    return {"l2_mean": jnp.mean(l2), "l2_batch": batch_l2(pred, target),
            "failure_rate": jnp.mean((l2 > threshold).astype(jnp.float32))}


def batch_l2_from_scenes(l2, batch_size: int) -> float:
    """The release's batch figure over a split, from its per-scene L2 errors (N,) in order: the scenes are taken
    in consecutive batches of ``batch_size`` (the last may be smaller), each batch's figure is
    sqrt(sum of its squared per-scene errors) / its size, and the batches' figures are averaged (equal weights,
    as a loop over a data loader averages them)."""
    l2 = np.asarray(l2, np.float64).reshape(-1)
    if batch_size < 1 or l2.size == 0:
        raise ValueError(f"batch_l2_from_scenes: need batch_size >= 1 and at least one scene, got {batch_size} "
                         f"and {l2.size} scenes")
    figures = [np.sqrt(np.sum(np.square(l2[i:i + batch_size]))) / len(l2[i:i + batch_size])
               for i in range(0, l2.size, batch_size)]
    return float(np.mean(figures))
