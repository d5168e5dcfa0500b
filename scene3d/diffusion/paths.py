"""Flow-matching (rectified flow) path: x_t = (1 - t) x0 + t eps, t = 1 is pure noise, target v = eps - x0.

``t`` is per example: shape ``(B,)`` (or a scalar), broadcast over the trailing axes of ``x``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_t(t: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a scalar or ``(B,)`` time against ``x`` of shape ``(B, ...)``."""
    t = jnp.asarray(t, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"time t has shape {t.shape}; expected a scalar or ({x.shape[0]},) for x of shape {x.shape}")
    return t.reshape(t.shape + (1,) * (x.ndim - 1))


def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t eps."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 {x0.shape} and eps {eps.shape} must have the same shape")
    tt = expand_t(t, x0)
    return (1 - tt) * x0 + tt * eps


def target_velocity(x0: jax.Array, eps: jax.Array) -> jax.Array:
    """v = d x_t / dt = eps - x0."""
    return eps - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """Data estimate from a velocity: x0 = x_t - t v."""
    return x_t - expand_t(t, x_t) * v


def eps_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """Noise estimate from a velocity: eps = x_t + (1 - t) v."""
    return x_t + (1 - expand_t(t, x_t)) * v


def velocity_loss(pred: jax.Array, x0: jax.Array, eps: jax.Array, weights: jax.Array | None = None,
                  mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error between ``pred`` and ``eps - x0``; a scalar.

    Per example the error is averaged over the (masked) elements; ``mask`` has the shape of ``pred`` or a
    prefix of it (e.g. ``(B, N)`` token mask for ``(B, N, D)``), 1 = counted. ``weights`` ``(B,)`` scale the
    per-example losses, which are then averaged over the batch.
    """
    if not (pred.shape == x0.shape == eps.shape):
        raise ValueError(f"velocity_loss: pred {pred.shape}, x0 {x0.shape} and eps {eps.shape} must match")
    err = jnp.square(pred.astype(jnp.float32) - target_velocity(x0, eps).astype(jnp.float32))
    axes = tuple(range(1, err.ndim))
    if mask is None:
        per_example = jnp.mean(err, axis=axes)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != pred.shape[:mask.ndim]:
            raise ValueError(f"velocity_loss: mask {mask.shape} must be a leading part of pred's shape {pred.shape}")
        m = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim)), err.shape).astype(jnp.float32)
        per_example = jnp.sum(err * m, axis=axes) / jnp.maximum(jnp.sum(m, axis=axes), 1.0)
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        if weights.shape not in ((), (pred.shape[0],)):
            raise ValueError(f"velocity_loss: weights {weights.shape} must be a scalar or ({pred.shape[0]},)")
        per_example = per_example * weights
    return jnp.mean(per_example)
