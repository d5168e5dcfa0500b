"""A pluggable perceptual term between predicted and target images (channels-last, [-1, 1]).

Kinds (``perceptual_loss(kind, pred, target, feature_fn=None)``):

- ``'none'``: 0.
- ``'random_conv'``: an LPIPS-like proxy with no learned weights: a fixed, seeded random 3 x 3 conv pyramid
  (``widths`` channels, ReLU, stride-2 average pooling between levels; He-normal weights from
  ``numpy.random.default_rng(seed)``), features unit-normalised over channels at every position and level; the
  loss is the mean over levels of the mean squared difference of the normalised features (as LPIPS does with
  unit-normalised VGG activations and uniform channel weights). Random conv features respond to edges and texture
  at several scales, so the term penalises blur more than an L2 on pixels does. It is a proxy, not LPIPS.
- ``'features'``: the same normalised squared distance between ``feature_fn(pred)`` and ``feature_fn(target)``,
  where ``feature_fn`` maps images (N, H, W, 3) to features (N, h, w, C), e.g. the frozen ViT tower passed in by
  the task (losses never import models). The target's features carry no gradient.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "random_conv", "features")


def normalised_distance(a, b, eps: float = 1e-8):
    """Mean over all positions of ||a/|a| - b/|b|||^2 with norms over the last (channel) axis."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    na = a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + eps)
    nb = b / jnp.sqrt(jnp.sum(b * b, -1, keepdims=True) + eps)
    return jnp.mean(jnp.sum(jnp.square(na - nb), -1))


def random_conv_weights(widths: Sequence[int] = (16, 32, 64), seed: int = 0, in_channels: int = 3) -> list:
    """The fixed conv kernels (3, 3, Cin, Cout) float32 of the ``random_conv`` pyramid (He-normal, seeded)."""
    rng = np.random.default_rng(seed)
    out, cin = [], in_channels
    for w in widths:
        out.append((rng.standard_normal((3, 3, cin, int(w))) * np.sqrt(2.0 / (9 * cin))).astype(np.float32))
        cin = int(w)
    return out


def random_conv_features(images, widths: Sequence[int] = (16, 32, 64), seed: int = 0) -> list:
    """Images (N, H, W, 3) -> per-level features [(N, H / 2^l, W / 2^l, widths[l])] of the fixed pyramid."""
    x = images.astype(jnp.float32)
    feats = []
    for i, w in enumerate(random_conv_weights(widths, seed, x.shape[-1])):
        if i:
            n, h, ww, c = x.shape
            x = x[:, :h // 2 * 2, :ww // 2 * 2].reshape(n, h // 2, 2, ww // 2, 2, c).mean((2, 4))
        x = jax.nn.relu(jax.lax.conv_general_dilated(x, jnp.asarray(w), (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
        feats.append(x)
    return feats


def random_conv_distance(pred, target, widths: Sequence[int] = (16, 32, 64), seed: int = 0):
    """The ``random_conv`` perceptual distance (module docstring) of images (N, H, W, 3)."""
    fp = random_conv_features(pred, widths, seed)
    ft = random_conv_features(jax.lax.stop_gradient(target), widths, seed)
    return sum(normalised_distance(a, b) for a, b in zip(fp, ft)) / len(fp)


def perceptual_loss(kind: str, pred, target, *, feature_fn: Callable | None = None,
                    widths: Sequence[int] = (16, 32, 64), seed: int = 0):
    """Scalar perceptual term of ``kind`` (module docstring) for images (..., H, W, 3)."""
    if kind not in KINDS:
        raise ValueError(f"perceptual_loss: kind must be one of {KINDS}, got {kind!r}")
    if pred.shape != target.shape or pred.shape[-1:] != (3,) or pred.ndim < 3:
        raise ValueError(f"perceptual_loss: pred and target must be (..., H, W, 3) of equal shape, got "
                         f"{pred.shape} and {target.shape}")
    if kind == "none":
        return jnp.zeros((), jnp.float32)
    p = pred.reshape((-1,) + pred.shape[-3:])
    t = target.reshape((-1,) + target.shape[-3:])
    if kind == "random_conv":
        return random_conv_distance(p, t, widths, seed)
    if feature_fn is None:
        raise ValueError("perceptual_loss(kind='features'): pass feature_fn (images -> (N, h, w, C) features)")
    return normalised_distance(feature_fn(p), jax.lax.stop_gradient(feature_fn(t)))
