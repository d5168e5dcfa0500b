"""Flow-matching (rectified flow) path: x_t = (1 - t) x0 + t eps, t = 1 is pure noise, target v = eps - x0.

``t`` is a scalar, per example ``(B,)`` or per example and view ``(B, V)`` (any leading part of ``x``'s shape),
broadcast over the remaining trailing axes of ``x``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_t(t: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a scalar, ``(B,)`` or ``(B, V, ...)`` time (a leading part of ``x``'s shape) against ``x``."""
    t = jnp.asarray(t, dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    if t.ndim == 0:
        return t
    if t.ndim > x.ndim or t.shape != x.shape[:t.ndim]:
        raise ValueError(f"time t has shape {t.shape}; expected a scalar, ({x.shape[0]},) or another leading part of "
                         f"x's shape {x.shape}")
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


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


def velocity_from_x0(x_t: jax.Array, x0: jax.Array, t: jax.Array, t_min: float = 0.0) -> jax.Array:
    """The velocity of an x-prediction: v = (x_t - x0) / max(t, t_min) (``t_min`` keeps it finite near t = 0)."""
    return (x_t - x0) / expand_t(jnp.maximum(t, t_min), x_t)


def squared_error(pred: jax.Array, x0: jax.Array, eps: jax.Array, name: str = "velocity_loss") -> jax.Array:
    """Elementwise float32 ``(pred - (eps - x0))^2``; the three shapes must match."""
    if not (pred.shape == x0.shape == eps.shape):
        raise ValueError(f"{name}: pred {pred.shape}, x0 {x0.shape} and eps {eps.shape} must match")
    return jnp.square(pred.astype(jnp.float32) - target_velocity(x0, eps).astype(jnp.float32))


def per_example_mean(err: jax.Array, mask: jax.Array | None = None, weights: jax.Array | None = None,
                     name: str = "velocity_loss") -> jax.Array:
    """``(B,)`` means of ``err`` ``(B, ...)`` over its (masked) elements, times ``weights`` (a scalar or ``(B,)``).

    ``mask`` has the shape of ``err`` or a leading part of it (e.g. ``(B, N)`` token mask for ``(B, N, D)``),
    1 = counted; an example with nothing counted gives 0.
    """
    axes = tuple(range(1, err.ndim))
    if mask is None:
        per_example = jnp.mean(err, axis=axes)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != err.shape[:mask.ndim]:
            raise ValueError(f"{name}: mask {mask.shape} must be a leading part of pred's shape {err.shape}")
        m = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (err.ndim - mask.ndim)), err.shape).astype(jnp.float32)
        per_example = jnp.sum(err * m, axis=axes) / jnp.maximum(jnp.sum(m, axis=axes), 1.0)
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        if weights.shape not in ((), (err.shape[0],)):
            raise ValueError(f"{name}: weights {weights.shape} must be a scalar or ({err.shape[0]},)")
        per_example = per_example * weights
    return per_example


def velocity_loss(pred: jax.Array, x0: jax.Array, eps: jax.Array, weights: jax.Array | None = None,
                  mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error between ``pred`` and ``eps - x0``; a scalar.

    Per example the error is averaged over the (masked) elements; ``mask`` has the shape of ``pred`` or a
    prefix of it (e.g. ``(B, N)`` token mask for ``(B, N, D)``), 1 = counted. ``weights`` ``(B,)`` scale the
    per-example losses, which are then averaged over the batch.
    """
    return jnp.mean(per_example_mean(squared_error(pred, x0, eps), mask, weights))
