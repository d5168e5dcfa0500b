"""Classifier-free guidance: training-time condition dropout and guided velocities at sampling time."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from scene3d.diffusion.paths import expand_t


def cfg(v_cond: jax.Array, v_uncond: jax.Array, scale) -> jax.Array:
    """v_uncond + scale (v_cond - v_uncond); scale 1 gives v_cond. ``scale`` may be a scalar or ``(B,)``."""
    return v_uncond + expand_t(scale, v_cond) * (v_cond - v_uncond)


def in_interval(t: jax.Array, interval: tuple[float, float] | None) -> jax.Array:
    """Boolean mask ``t_lo <= t <= t_hi`` (all True when ``interval`` is None)."""
    t = jnp.asarray(t)
    if interval is None:
        return jnp.ones(t.shape, bool)
    lo, hi = interval
    if lo > hi:
        raise ValueError(f"guidance interval {interval}: t_lo must be <= t_hi")
    return (t >= lo) & (t <= hi)


def guided(cond_fn: Callable[[jax.Array, jax.Array], jax.Array],
           uncond_fn: Callable[[jax.Array, jax.Array], jax.Array],
           scale, *, interval: tuple[float, float] | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A ``model_fn(x, t)`` that returns ``cfg(cond, uncond, scale)`` where t lies in ``interval`` = [t_lo, t_hi]
    and the conditional velocity elsewhere. The unconditional model is not evaluated when no example of the
    batch is inside the interval (``lax.cond``); ``t`` is ``(B,)``.
    """

    def model_fn(x, t):
        v_cond = cond_fn(x, t)
        if interval is None:
            return cfg(v_cond, uncond_fn(x, t), scale)
        inside = in_interval(t, interval)

        def with_guidance(_):
            g = cfg(v_cond, uncond_fn(x, t), scale)
            mask = inside.reshape(inside.shape + (1,) * (v_cond.ndim - inside.ndim))
            return jnp.where(mask, g, v_cond)

        return jax.lax.cond(jnp.any(inside), with_guidance, lambda _: v_cond, None)

    return model_fn


def drop_mask(rng: jax.Array, batch_size: int, p: float) -> jax.Array:
    """``(B,)`` bool, True where the condition is dropped (probability ``p`` each)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must be in [0, 1], got {p}")
    return jax.random.bernoulli(rng, p, (batch_size,))


def drop_condition(rng: jax.Array, cond: Any, p: float, null: Any) -> Any:
    """Replace each example's condition by ``null`` with probability ``p`` (one draw per example, shared by all
    leaves when ``cond`` is a pytree). ``null`` is a scalar, an array broadcastable to one example
    (``cond.shape[1:]``, e.g. a learned null embedding), or a pytree of those matching ``cond``.
    """
    leaves = jax.tree.leaves(cond)
    if not leaves:
        return cond
    b = leaves[0].shape[0]
    for leaf in leaves:
        if leaf.ndim < 1 or leaf.shape[0] != b:
            raise ValueError(f"drop_condition: every condition leaf needs batch size {b} first, got {leaf.shape}")
    drop = drop_mask(rng, b, p)
    null_tree = null if jax.tree.structure(null) == jax.tree.structure(cond) else jax.tree.map(lambda _: null, cond)

    def apply(c, n):
        n = jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape[1:])
        return jnp.where(drop.reshape((b,) + (1,) * (c.ndim - 1)), n[None], c)

    return jax.tree.map(apply, cond, null_tree)
