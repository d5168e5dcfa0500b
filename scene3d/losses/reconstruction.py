"""Reconstruction losses over raw Gaussian channels (B, N, C), computed in float32.

- ``'mse'``: mean squared error over every element (B x N x C) - the training default;
- ``'sse'``: squared error summed over a scene's N x C values, averaged over the batch;
- ``'l2_batch'``: the public Can3Tok code's ||pred - target||_F over the whole batch divided by B.
"""
from __future__ import annotations

import jax.numpy as jnp

from scene3d.specs.can3tok import RECON_LOSSES


def _diff(pred, target):
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"reconstruction loss: pred and target must both be (B, N, C), got {pred.shape} and "
                         f"{target.shape}")
    return pred.astype(jnp.float32) - target.astype(jnp.float32)


def mse(pred, target):
    """Mean over all B x N x C elements of the squared difference."""
    return jnp.mean(jnp.square(_diff(pred, target)))


def sse(pred, target):
    """Per-scene sum of squared differences, averaged over the batch."""
    return jnp.mean(jnp.sum(jnp.square(_diff(pred, target)), axis=(1, 2)))


def l2_batch(pred, target):
    """||pred - target||_F over the batch / B (the public training loss; also the paper's batch figure)."""
    d = _diff(pred, target)
    return jnp.sqrt(jnp.sum(jnp.square(d))) / d.shape[0]


def reconstruction_loss(pred, target, kind: str = "mse"):
    """One of RECON_LOSSES (module docstring)."""
    if kind not in RECON_LOSSES:
        raise ValueError(f"config.loss.recon: unknown reconstruction loss {kind!r} (known: {', '.join(RECON_LOSSES)})")
    return {"mse": mse, "sse": sse, "l2_batch": l2_batch}[kind](pred, target)


def channel_group_mse(pred, target, groups: dict) -> dict:
    """name -> mean squared error over the channels ``groups[name]`` (a slice of the last axis)."""
    d = jnp.square(_diff(pred, target))
    return {name: jnp.mean(d[..., s]) for name, s in groups.items() if d[..., s].shape[-1] > 0}
