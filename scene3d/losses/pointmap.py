"""Point-map losses and errors (DUSt3R-style confidence weighting), masked to pixels with known geometry.

``confidence_point_loss``: per valid pixel ``conf * ||p - p_gt|| - alpha * log(conf)`` averaged over valid pixels,
with conf >= 1 predicted by the model (so the network can down-weight pixels it cannot place, paying alpha log conf).
``point_error``: mean Euclidean distance over valid pixels (the metric). Shapes: points (..., H, W, 3), conf and
mask (..., H, W). Everything is fp32; with no valid pixel the loss and error are 0.
"""
from __future__ import annotations

import jax.numpy as jnp


def _check(pred, target, mask, conf=None):
    if pred.shape != target.shape or pred.shape[-1:] != (3,):
        raise ValueError(f"point-map loss: pred and target must be (..., H, W, 3) of equal shape, got {pred.shape} "
                         f"and {target.shape}")
    if mask is not None and tuple(mask.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"point-map loss: mask must be {tuple(pred.shape[:-1])} (pred without its last axis), got "
                         f"{tuple(mask.shape)}")
    if conf is not None and tuple(conf.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"point-map loss: conf must be {tuple(pred.shape[:-1])}, got {tuple(conf.shape)}")


def _masked_mean(x, mask):
    if mask is None:
        return jnp.mean(x)
    m = mask.astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def point_distance(pred, target):
    """(..., H, W) Euclidean distance between point maps (..., H, W, 3) (safe gradient at 0)."""
    d = pred.astype(jnp.float32) - target.astype(jnp.float32)
    sq = jnp.sum(d * d, -1)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def point_error(pred, target, mask=None):
    """Mean Euclidean error over pixels where ``mask`` (bool) is True."""
    _check(pred, target, mask)
    return _masked_mean(point_distance(pred, target), mask)


def confidence_point_loss(pred, target, conf, mask=None, alpha: float = 0.2):
    """Mean over valid pixels of ``conf * ||pred - target|| - alpha * log(conf)`` (conf >= 1 expected)."""
    _check(pred, target, mask, conf)
    c = conf.astype(jnp.float32)
    return _masked_mean(c * point_distance(pred, target) - alpha * jnp.log(c), mask)
