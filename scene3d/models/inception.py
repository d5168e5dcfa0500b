"""The FID Inception-v3 (the 2015-12-05 TensorFlow graph that FID is defined on) as an NNX module: images -> the
2048-d pool features FID and KID compare.

This is the network of pytorch-fid's ``fid_inception_v3`` (and torchmetrics' "FID Inception"): torchvision's
``Inception3`` (1008 classes, no aux head, no input transform) with the blocks that differ from torchvision's
patched as pytorch-fid's ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1`` / ``FIDInceptionE_2`` do: the
3 x 3 average pools of the A, C and first E blocks leave the zero padding out of the mean (TensorFlow's
``count_include_pad=False``) and the last E block pools with a 3 x 3 max instead. Every convolution is
``BasicConv2d``: conv (no bias), BatchNorm (eps 1e-3, running statistics), ReLU.

The module tree uses the torchvision names (``Conv2d_1a_3x3``, ``Mixed_5b.branch5x5_1``, ... each with ``conv``
and ``bn``), so the weight file's keys map one to one (``scene3d.convert.inception``). Channels-last input
(N, H, W, 3) in [-1, 1]; any size from 75 x 75 up (the network is convolutional up to a global mean; FID itself
resizes to 299 x 299 first: ``scene3d.metrics.fid.prepare_frames``). The 1008-way classifier is not built: FID
and KID need only the pool features.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

MIN_SIZE = 75  # the smallest input side every stride-2 stage still has a position for
FEATURES = 2048


def _pair(x) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, Sequence) else (int(x), int(x))


class ConvBN(nnx.Module):
    """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU: torchvision's ``BasicConv2d`` and, in
    3-D, pytorch-i3d's ``Unit3D``. ``padding``: explicit per-axis (lo, hi) pairs or 'SAME' (TensorFlow's: the
    smaller half first, as ``Unit3D`` computes it)."""

    def __init__(self, cin: int, cout: int, kernel, *, strides=1, padding="VALID", rngs: nnx.Rngs, dims: int = 2):
        kernel = tuple(kernel) if isinstance(kernel, Sequence) else (int(kernel),) * dims
        strides = tuple(strides) if isinstance(strides, Sequence) else (int(strides),) * dims
        self.conv = nnx.Conv(cin, cout, kernel, strides=strides, padding=padding, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _conv(cin, cout, kernel, rngs, strides=1, pad=0):
    """``BasicConv2d(cin, cout, kernel_size=kernel, stride=strides, padding=pad)`` (torch's symmetric padding)."""
    ph, pw = _pair(pad)
    return ConvBN(cin, cout, _pair(kernel), strides=strides, padding=((ph, ph), (pw, pw)), rngs=rngs)


def max_pool(x, window: int, stride: int, pad: int = 0):
    """torch ``max_pool2d`` (padding never wins: -inf), channels-last."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def avg_pool_3x3_excluding_pad(x):
    """3 x 3, stride 1, padding 1 average that counts only the real pixels (``count_include_pad=False``)."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    count = jax.lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, jax.lax.add, (1, 3, 3, 1),
                                  (1, 1, 1, 1), pads)
    return total / count


class InceptionA(nnx.Module):
    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = _conv(cin, 64, 1, rngs)
        self.branch5x5_1 = _conv(cin, 48, 1, rngs)
        self.branch5x5_2 = _conv(48, 64, 5, rngs, pad=2)
        self.branch3x3dbl_1 = _conv(cin, 64, 1, rngs)
        self.branch3x3dbl_2 = _conv(64, 96, 3, rngs, pad=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, rngs, pad=1)
        self.branch_pool = _conv(cin, pool_features, 1, rngs)

    def __call__(self, x):
        return jnp.concatenate([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                                self.branch_pool(avg_pool_3x3_excluding_pad(x))], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = _conv(cin, 384, 3, rngs, strides=2)
        self.branch3x3dbl_1 = _conv(cin, 64, 1, rngs)
        self.branch3x3dbl_2 = _conv(64, 96, 3, rngs, pad=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, rngs, strides=2)

    def __call__(self, x):
        return jnp.concatenate([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                                max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = _conv(cin, 192, 1, rngs)
        self.branch7x7_1 = _conv(cin, c7, 1, rngs)
        self.branch7x7_2 = _conv(c7, c7, (1, 7), rngs, pad=(0, 3))
        self.branch7x7_3 = _conv(c7, 192, (7, 1), rngs, pad=(3, 0))
        self.branch7x7dbl_1 = _conv(cin, c7, 1, rngs)
        self.branch7x7dbl_2 = _conv(c7, c7, (7, 1), rngs, pad=(3, 0))
        self.branch7x7dbl_3 = _conv(c7, c7, (1, 7), rngs, pad=(0, 3))
        self.branch7x7dbl_4 = _conv(c7, c7, (7, 1), rngs, pad=(3, 0))
        self.branch7x7dbl_5 = _conv(c7, 192, (1, 7), rngs, pad=(0, 3))
        self.branch_pool = _conv(cin, 192, 1, rngs)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        return jnp.concatenate([self.branch1x1(x), b7, d, self.branch_pool(avg_pool_3x3_excluding_pad(x))], axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = _conv(cin, 192, 1, rngs)
        self.branch3x3_2 = _conv(192, 320, 3, rngs, strides=2)
        self.branch7x7x3_1 = _conv(cin, 192, 1, rngs)
        self.branch7x7x3_2 = _conv(192, 192, (1, 7), rngs, pad=(0, 3))
        self.branch7x7x3_3 = _conv(192, 192, (7, 1), rngs, pad=(3, 0))
        self.branch7x7x3_4 = _conv(192, 192, 3, rngs, strides=2)

    def __call__(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
    """``pool``: 'avg' (``FIDInceptionE_1``: average without the padding) or 'max' (``FIDInceptionE_2``)."""

    def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
        self.pool = pool
        self.branch1x1 = _conv(cin, 320, 1, rngs)
        self.branch3x3_1 = _conv(cin, 384, 1, rngs)
        self.branch3x3_2a = _conv(384, 384, (1, 3), rngs, pad=(0, 1))
        self.branch3x3_2b = _conv(384, 384, (3, 1), rngs, pad=(1, 0))
        self.branch3x3dbl_1 = _conv(cin, 448, 1, rngs)
        self.branch3x3dbl_2 = _conv(448, 384, 3, rngs, pad=1)
        self.branch3x3dbl_3a = _conv(384, 384, (1, 3), rngs, pad=(0, 1))
        self.branch3x3dbl_3b = _conv(384, 384, (3, 1), rngs, pad=(1, 0))
        self.branch_pool = _conv(cin, 192, 1, rngs)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = avg_pool_3x3_excluding_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
        return jnp.concatenate([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                                self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], axis=-1)


class FIDInception(nnx.Module):
    """The FID Inception-v3 up to its global average pool (module docstring). ``__call__(images (N, H, W, 3) in
    [-1, 1]) -> (N, 2048)``."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = _conv(3, 32, 3, rngs, strides=2)
        self.Conv2d_2a_3x3 = _conv(32, 32, 3, rngs)
        self.Conv2d_2b_3x3 = _conv(32, 64, 3, rngs, pad=1)
        self.Conv2d_3b_1x1 = _conv(64, 80, 1, rngs)
        self.Conv2d_4a_3x3 = _conv(80, 192, 3, rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

    def __call__(self, images):
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"FIDInception: expected images (N, H, W, 3) with H, W >= {MIN_SIZE}, got "
                             f"{images.shape}")
        x = images.astype(jnp.float32)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool(x, 3, 2)
        x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return jnp.mean(x, axis=(1, 2))
