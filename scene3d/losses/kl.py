"""KL divergence of a diagonal Gaussian posterior to N(0, I), and the KL-weight (beta) annealing schedule."""
from __future__ import annotations

import jax.numpy as jnp

from scene3d.nn.gaussian import diagonal_gaussian_kl


def kl_loss(mean, logvar, axes=-1):
    """Mean over the batch (the axes not summed) of the per-example KL summed over ``axes`` (default: the latent
    axis; ``None``: every axis but the first)."""
    return jnp.mean(diagonal_gaussian_kl(mean, logvar, axes=axes))


def kl_weight(step, beta: float, anneal_steps: int = 0):
    """beta * min(1, step / anneal_steps): linear warm-up of the KL weight; anneal_steps <= 0 (or step None)
    gives the constant beta."""
    if anneal_steps is None or int(anneal_steps) <= 0 or step is None:
        return jnp.asarray(beta, jnp.float32)
    frac = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(anneal_steps))
    return jnp.float32(beta) * frac
