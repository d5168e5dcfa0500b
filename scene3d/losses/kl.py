"""KL divergence of a diagonal Gaussian posterior to N(0, I), and the KL-weight (beta) annealing schedule."""
from __future__ import annotations

import jax.numpy as jnp


def diagonal_gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last axis, in float32: shape mean.shape[:-1]."""
    if mean.shape != logvar.shape:
        raise ValueError(f"KL: mean and logvar must have equal shapes, got {mean.shape} and {logvar.shape}")
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def kl_loss(mean, logvar):
    """Mean over the batch (leading axes) of the per-example KL summed over the latent axis."""
    return jnp.mean(diagonal_gaussian_kl(mean, logvar))


def kl_weight(step, beta: float, anneal_steps: int = 0):
    """beta * min(1, step / anneal_steps): linear warm-up of the KL weight; anneal_steps <= 0 (or step None)
    gives the constant beta."""
    if anneal_steps is None or int(anneal_steps) <= 0 or step is None:
        return jnp.asarray(beta, jnp.float32)
    frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(anneal_steps))
    return jnp.float32(beta) * frac
