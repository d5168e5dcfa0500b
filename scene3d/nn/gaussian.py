"""Diagonal Gaussian posteriors of VAEs: the reparameterised sample and the KL divergence to N(0, I)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def diagonal_gaussian_kl(mean: jax.Array, logvar: jax.Array, *, axes: int | tuple[int, ...] | None = -1) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in float32, summed over ``axes`` (default: the last axis; ``None``: every
    axis but the first, i.e. one value per example)."""
    if mean.shape != logvar.shape:
        raise ValueError(f"KL: mean and logvar must have equal shapes, got {mean.shape} and {logvar.shape}")
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    if axes is None:
        axes = tuple(range(1, kl.ndim))
    return jnp.sum(kl, axis=axes)


def reparameterize(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
    """mean + exp(logvar / 2) * eps: a posterior sample from standard-normal noise ``eps``."""
    return mean + jnp.exp(0.5 * logvar) * eps
