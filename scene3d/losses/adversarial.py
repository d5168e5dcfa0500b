"""Adversarial training of a decoder (VQGAN / RAE practice): hinge losses, a discriminator of trainable heads on
frozen features, the adaptive weight and delayed starts.

- :func:`hinge_d_loss`: the discriminator's loss 0.5 (mean relu(1 - D(real)) + mean relu(1 + D(fake))).
- :func:`hinge_g_loss`: the generator's (decoder's) loss -mean D(fake).
- :func:`adaptive_weight`: lambda = ||grad_w L_rec|| / (||grad_w L_gan|| + eps), clipped to [0, max_weight] and
  carrying no gradient, where w is the decoder's last layer: the GAN term is scaled so its gradient at that layer
  is as large as the reconstruction's (Esser et al. 2021, kept by RAE). :func:`losses_with_adaptive_weight` computes
  both losses and lambda from one forward pass (``jax.vjp`` with respect to the last layer only, so the two extra
  backward passes run from the losses to that layer, not through the whole network).
- :class:`FeatureDiscriminator`: per level of frozen features (N, h, w, C_l), a LayerNorm without affine and a
  two-layer MLP (leaky ReLU) give one logit per position (a patch discriminator on frozen features, as the
  DINO-feature discriminators of StyleGAN-T / RAE). The frozen feature extractor is passed in by the caller (losses
  never import models): the frozen 2D tower, or :func:`scene3d.losses.perceptual.random_conv_features`.

Delayed starts (the discriminator trains from one step, the generator's GAN term counts from a later one) are the
caller's: the rae3d task runs each part under a ``lax.cond`` on the step so nothing is computed before its start.

One optimiser for both players (the trainer optimises every ``nnx.Param``): the discriminator's parameters sit in
the model and get their gradient only from its own loss on ``stop_gradient(fake)``; the generator's GAN term calls
the discriminator with ``stop_gradient`` on its parameters (:meth:`FeatureDiscriminator.frozen_logits`). Minimising
the sum then updates each player on its own loss (simultaneous gradient descent). Learning rate, weight decay,
clipping and EMA are shared with the decoder.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d import nn


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)) (taming-transformers' ``hinge_d_loss``)."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
    """-mean D(fake): the generator raises the discriminator's score of its outputs."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def adaptive_weight(grad_rec, grad_gan, *, eps: float = 1e-4, max_weight: float = 1e4) -> jax.Array:
    """clip(||grad_rec|| / (||grad_gan|| + eps), 0, max_weight), no gradient (norms over all leaves)."""
    lam = _norm(grad_rec) / (_norm(grad_gan) + eps)
    return jax.lax.stop_gradient(jnp.clip(lam, 0.0, max_weight))


def losses_with_adaptive_weight(fn: Callable, last_layer, *, eps: float = 1e-4, max_weight: float = 1e4):
    """``fn(last_layer) -> ((rec, gan), aux)`` -> (rec, gan, lambda, aux) with lambda = :func:`adaptive_weight` of
    the gradients of rec and gan with respect to ``last_layer`` (any pytree; normally the decoder's output
    kernel). One forward pass of ``fn``; rec, gan and aux stay differentiable for an enclosing ``jax.grad``."""
    (rec, gan), vjp, aux = jax.vjp(fn, last_layer, has_aux=True)
    one, zero = jnp.ones_like(rec), jnp.zeros_like(gan)
    (g_rec,) = vjp((one, zero))
    (g_gan,) = vjp((jnp.zeros_like(rec), jnp.ones_like(gan)))
    return rec, gan, adaptive_weight(g_rec, g_gan, eps=eps, max_weight=max_weight), aux


class FeatureDiscriminator(nnx.Module):
    """Trainable heads over frozen feature levels: per level LayerNorm (no affine) -> dense(C_l, hidden) ->
    leaky ReLU (0.2) -> dense(hidden, 1): one logit per position. ``channels``: C_l of each level."""

    def __init__(self, channels: Sequence[int], hidden: int = 256, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        if not channels or min(int(c) for c in channels) < 1 or int(hidden) < 1:
            raise ValueError(f"FeatureDiscriminator: channels must be positive widths and hidden >= 1, got "
                             f"{tuple(channels)} and {hidden}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.channels = tuple(int(c) for c in channels)
        self.norms = nnx.List([nn.LayerNorm(c, use_scale=False, use_bias=False, dtype=dtype,
                                            param_dtype=param_dtype) for c in self.channels])
        self.fc1 = nnx.List([nn.dense(c, int(hidden), (None, "mlp"), **kw) for c in self.channels])
        self.fc2 = nnx.List([nn.dense(int(hidden), 1, ("mlp", None), **kw) for _ in self.channels])

    def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        """Feature levels [(N, h_l, w_l, C_l)] -> logits [(N, h_l, w_l)]."""
        if len(features) != len(self.channels) or any(f.shape[-1] != c for f, c in zip(features, self.channels)):
            raise ValueError(f"FeatureDiscriminator: expected {len(self.channels)} feature levels with channels "
                             f"{self.channels}, got {[tuple(f.shape) for f in features]}")
        out = []
        for f, norm, fc1, fc2 in zip(features, self.norms, self.fc1, self.fc2):
            h = jax.nn.leaky_relu(fc1(norm(f)), 0.2)
            out.append(fc2(h)[..., 0].astype(jnp.float32))
        return out

    def frozen_logits(self, features: Sequence[jax.Array]) -> list[jax.Array]:
        """The logits with ``stop_gradient`` on this module's parameters (the generator's GAN term): gradients
        reach the features (and through them the generator) but never the discriminator."""
        graphdef, state = nnx.split(self)
        return nnx.merge(graphdef, jax.lax.stop_gradient(state))(features)


def mean_logits(logits: Sequence[jax.Array]) -> jax.Array:
    """Mean over the levels of each level's mean logit (a scalar to log)."""
    return sum(jnp.mean(l) for l in logits) / len(logits)


def level_hinge_d_loss(real: Sequence[jax.Array], fake: Sequence[jax.Array]) -> jax.Array:
    """:func:`hinge_d_loss` averaged over feature levels."""
    return sum(hinge_d_loss(r, f) for r, f in zip(real, fake)) / len(real)


def level_hinge_g_loss(fake: Sequence[jax.Array]) -> jax.Array:
    """:func:`hinge_g_loss` averaged over feature levels."""
    return sum(hinge_g_loss(f) for f in fake) / len(fake)
