"""Wan 2.2 VAE (16x spatial, 4x causal temporal compression, 48 latent channels) in NNX, as SceneTok's DL3DV va-wan
model uses it (``AutoencoderWan`` -> ``WanVAE_.encode`` / ``decode``, no autocast wrapper, no clamp).

Channels-last video: ``encode(x (B, T, H, W, 3) in [-1, 1]) -> (B, 1 + (T-1)//4, H/16, W/16, 48)`` normalised
latents (the trailing (T-1) % 4 frames are dropped, as the release does); ``decode(z (B, t, h, w, 48)) ->
(B, 1 + 4(t-1), 16h, 16w, 3)`` (no clamp). SceneTok's wrappers: :meth:`WanVAE.scenetok_encode` (images in [0, 1])
and :meth:`WanVAE.scenetok_decode` (groups of 5 latents decoded independently, then mapped to [0, 1]).

The release runs the encoder on chunks (frame 0, then 4 frames at a time) and the decoder on one latent frame at a
time, each causal conv reading the last two input frames of the previous chunks from a cache. This port computes
the whole sequence at once with the rules that make the two equal:

- every CausalConv3d is a conv over the whole sequence with 2 zero frames in front (``2 * padding_t``), none behind;
- 'downsample3d' (after its per-frame spatial conv): frame 0 passes untouched, frame j >= 1 is the stride-2 time
  conv of frames (2j-2, 2j-1, 2j); the AvgDown3D shortcut pads ONE zero frame in front (frame 0 averages with 0);
- 'upsample3d': frame 0 passes untouched (one frame), frames 1.. are their own causal stream (2 zero frames in
  front) through a time conv to 2C channels, interleaved into two frames each; then the per-frame spatial part;
  the DupUp3D shortcut drops its first ft - 1 output frames.

Other rules of the release: patchify channel order c*4 + r*2 + q (r the COLUMN offset, q the row offset);
RMS_norm = x / max(||x||_2, 1e-12) * sqrt(C) * gamma over channels (no bias); spatial downsampling pads right /
bottom only; nearest x2 upsampling; single-head attention over the H*W tokens of each frame in the middle blocks;
the encoder's last level keeps an identity shortcut, the decoder's last level has none; latents are normalised
with the 48 released means and fp32 reciprocal stds (multiply on encode, divide on decode), log_var discarded.

The module tree mirrors the official state_dict names (``encoder.downsamples.{i}.downsamples.{j}.residual.{2,6}``,
``...resample.1``, ``...time_conv``, ``middle.1.{norm,to_qkv,proj}``, ``head.{0,2}``, ``conv1``, ``conv2``), with
parameter-free placeholders at the release's SiLU / Dropout / pad / upsample positions, so the importer
(``scene3d.convert.wan_vae``) renames ``kernel`` to ``weight`` and converts layouts. Every forward accepts
``capture``: a dict filled with named intermediates (the official module names) for parity checks.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.core.config import check_keys
from scene3d.core.sharding import param_init
from scene3d.specs.wan_vae import (IN_CHANNELS, PATCH_SIZE, SCENETOK_GROUP_SIZE, SCENETOK_SCALING_FACTOR, VARIANTS,
                                   derived)

_HI = jax.lax.Precision.HIGHEST
_DN3 = ("NDHWC", "DHWIO", "NDHWC")
_DN2 = ("NHWC", "HWIO", "NHWC")


def _put(capture, name, value):
    if capture is not None:
        capture[name] = value


# ------------------------------------------------------------------------------------------- layers


class CausalConv3d(nnx.Module):
    """The release's CausalConv3d over a whole sequence: ``padding`` (pt, ph, pw) -> 2 pt zero frames in FRONT of T
    (none behind), ph / pw zeros on both sides of H / W. Kernel (kt, kh, kw, cin, cout), channels-last."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] | int = 3, *, stride: Sequence[int] = (1, 1, 1),
                 padding: Sequence[int] | int = 1, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(int(v) for v in kernel)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(int(v) for v in padding)
        self.kernel_size, self.padding, self.stride, self.dtype = k, p, tuple(int(s) for s in stride), dtype
        names = (None, None, None, "conv_in", "conv_out")
        self.kernel = nnx.Param(param_init(nnx.initializers.lecun_normal(), names)(
            rngs.params(), k + (cin, cout), param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), ("conv_out",))(
            rngs.params(), (cout,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        kern = self.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        if self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1):
            y = jnp.einsum("...i,io->...o", x, kern[0, 0, 0], precision=_HI)
        else:
            pt, ph, pw = self.padding
            y = jax.lax.conv_general_dilated(x, kern, self.stride, [(2 * pt, 0), (ph, ph), (pw, pw)],
                                             dimension_numbers=_DN3, precision=_HI)
        return y + self.bias[...].astype(self.dtype)


class Conv2d(nnx.Module):
    """Per-frame torch Conv2d (kernel (kh, kw, cin, cout)) on (B, T, H, W, C); ``padding`` ((top, bottom), (left,
    right)) zeros."""

    def __init__(self, cin: int, cout: int, k: int = 3, *, stride: int = 1, padding=((1, 1), (1, 1)),
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.stride, self.padding, self.dtype = int(stride), tuple(tuple(p) for p in padding), dtype
        names = (None, None, "conv_in", "conv_out")
        self.kernel = nnx.Param(param_init(nnx.initializers.lecun_normal(), names)(
            rngs.params(), (k, k, cin, cout), param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), ("conv_out",))(
            rngs.params(), (cout,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t = x.shape[:2]
        y = jax.lax.conv_general_dilated(x.astype(self.dtype).reshape((b * t,) + x.shape[2:]),
                                         self.kernel[...].astype(self.dtype), (self.stride,) * 2, self.padding,
                                         dimension_numbers=_DN2, precision=_HI)
        return (y + self.bias[...].astype(self.dtype)).reshape((b, t) + y.shape[1:])


class Dense(nnx.Module):
    """A 1x1 Conv2d as a channel matmul (kernel (cin, cout))."""

    def __init__(self, cin: int, cout: int, *, zero_init: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(param_init(init, ("conv_in", "conv_out"))(rngs.params(), (cin, cout), param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), ("conv_out",))(
            rngs.params(), (cout,), param_dtype))

    def __call__(self, x):
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype), precision=_HI)
        return y + self.bias[...].astype(self.dtype)


class RMSNorm(nnx.Module):
    """The release's RMS_norm: x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma (fp32 statistics)."""

    def __init__(self, c: int, *, images: bool = False, dtype=jnp.float32, param_dtype=jnp.float32):
        self.images, self.dtype, self.scale = bool(images), dtype, math.sqrt(c)
        self.gamma = nnx.Param(param_init(nnx.initializers.ones_init(), ("norm",))(jax.random.key(0), (c,),
                                                                                  param_dtype))

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        n = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        y = xf / jnp.maximum(n, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
        return y.astype(self.dtype)


class _Op(nnx.Module):
    """A parameter-free layer at the position the release's nn.Sequential has one (SiLU, Dropout(0), ZeroPad2d,
    Upsample): keeps our list indices equal to the official ones."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, x):
        if self.kind == "silu":
            return jax.nn.silu(x)
        if self.kind == "pad_right_bottom":
            return jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
        if self.kind == "nearest2x":
            return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        return x  # identity (dropout 0)


# ------------------------------------------------------------------------------------------- blocks


class ResidualBlock(nnx.Module):
    """shortcut(x) + conv(SiLU(norm(conv(SiLU(norm(x)))))); ``residual`` indices as the release's Sequential."""

    def __init__(self, cin: int, cout: int, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.residual = nnx.List([RMSNorm(cin, **kw), _Op("silu"),
                                  CausalConv3d(cin, cout, 3, padding=1, rngs=rngs, **kw),
                                  RMSNorm(cout, **kw), _Op("silu"), _Op("dropout"),
                                  CausalConv3d(cout, cout, 3, padding=1, rngs=rngs, **kw)])
        self.shortcut = CausalConv3d(cin, cout, 1, padding=0, rngs=rngs, **kw) if cin != cout else None

    def __call__(self, x, capture=None, name=""):
        h = x if self.shortcut is None else self.shortcut(x)
        for layer in self.residual:
            x = layer(x)
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head softmax attention over the H*W tokens of each frame (scale 1/sqrt(C)), plus the input."""

    def __init__(self, c: int, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype
        self.norm = RMSNorm(c, images=True, **kw)
        self.to_qkv = Dense(c, 3 * c, rngs=rngs, **kw)
        self.proj = Dense(c, c, zero_init=True, rngs=rngs, **kw)  # zero-initialised by the release too

    def __call__(self, x, capture=None, name=""):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, t, h * w, 3 * c)
        q, k, v = (a.astype(jnp.float32) for a in jnp.split(qkv, 3, axis=-1))
        s = jnp.einsum("btqc,btkc->btqk", q, k, precision=_HI) / math.sqrt(c)
        o = jnp.einsum("btqk,btkc->btqc", jax.nn.softmax(s, axis=-1), v, precision=_HI)
        return self.proj(o.astype(self.dtype).reshape(b, t, h, w, c)) + x


def _interleave_time(y: jax.Array) -> jax.Array:
    """(B, t, H, W, 2C) -> (B, 2t, H, W, C): frame 2j = channels [0:C] at j, frame 2j+1 = channels [C:2C]."""
    b, t, h, w, c2 = y.shape
    return y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)


class Resample(nnx.Module):
    """The release's Resample: 'downsample2d' / 'downsample3d' (pad right/bottom, 3x3 stride-2 conv per frame; 3d:
    then the causal stride-2 time conv, frame 0 untouched) and 'upsample2d' / 'upsample3d' (3d: first the time conv
    to 2C channels on frames 1.., interleaved; then nearest x2 + 3x3 conv per frame)."""

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, c: int, mode: str, *, dtype, param_dtype, rngs):
        if mode not in self.MODES:
            raise ValueError(f"Resample mode {mode!r}; known {self.MODES}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        if mode.startswith("down"):
            self.resample = nnx.List([_Op("pad_right_bottom"), Conv2d(c, c, 3, stride=2, padding=((0, 0), (0, 0)),
                                                                      **kw)])
        else:
            self.resample = nnx.List([_Op("nearest2x"), Conv2d(c, c, 3, padding=((1, 1), (1, 1)), **kw)])
        if mode == "downsample3d":
            self.time_conv = CausalConv3d(c, c, (3, 1, 1), stride=(2, 1, 1), padding=0, **kw)
        elif mode == "upsample3d":
            self.time_conv = CausalConv3d(c, 2 * c, (3, 1, 1), padding=(1, 0, 0), **kw)
        else:
            self.time_conv = None

    def __call__(self, x, capture=None, name=""):
        if self.mode == "upsample3d" and x.shape[1] > 1:
            x = jnp.concatenate([x[:, :1], _interleave_time(self.time_conv(x[:, 1:])).astype(x.dtype)], axis=1)
        for layer in self.resample:
            x = layer(x)
        if self.mode == "downsample3d" and x.shape[1] > 1:
            x = jnp.concatenate([x[:, :1], self.time_conv(x).astype(x.dtype)], axis=1)
        return x


def avg_down(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
    """The release's AvgDown3D on a whole sequence: pad T in front to a multiple of ``ft``, (t, y, x) sub-positions to
    channels (c*ft*fs*fs + it*fs*fs + iy*fs + ix), mean over consecutive groups of channels down to ``cout``."""
    b, t, h, w, c = x.shape
    if (c * ft * fs * fs) % cout:
        raise ValueError(f"avg_down: {c} channels x {ft * fs * fs} positions not divisible into {cout} groups")
    pad = (-t) % ft
    if pad:
        x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0), (0, 0), (0, 0)))
        t += pad
    x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, t // ft, h // fs, w // fs, cout, c * ft * fs * fs // cout)
    return jnp.mean(x.astype(jnp.float32), axis=-1).astype(x.dtype)


def dup_up(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
    """The release's DupUp3D on a whole sequence (the inverse layout of :func:`avg_down`, channels repeated), minus
    the first ``ft - 1`` frames (what the release drops from its first chunk)."""
    b, t, h, w, c = x.shape
    f = ft * fs * fs
    if (cout * f) % c:
        raise ValueError(f"dup_up: {cout} x {f} not a multiple of {c} channels")
    x = jnp.repeat(x, cout * f // c, axis=-1).reshape(b, t, h, w, cout, ft, fs, fs)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, cout)
    return x[:, ft - 1:]


class DownBlock(nnx.Module):
    """The release's Down_ResidualBlock: ResidualBlocks (+ Resample) + the AvgDown3D shortcut of the input."""

    def __init__(self, cin, cout, num_blocks, temporal, down, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cout, self.ft, self.fs = cout, 2 if temporal else 1, 2 if down else 1
        blocks = [ResidualBlock(cin if j == 0 else cout, cout, **kw) for j in range(num_blocks)]
        if down:
            blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d", **kw))
        self.downsamples = nnx.List(blocks)

    def __call__(self, x, capture=None, name=""):
        s = avg_down(x, self.cout, self.ft, self.fs)
        _put(capture, name + ".avg_shortcut", s)
        for j, m in enumerate(self.downsamples):
            x = m(x, capture, f"{name}.downsamples.{j}")
            _put(capture, f"{name}.downsamples.{j}", x)
        return x + s


class UpBlock(nnx.Module):
    """The release's Up_ResidualBlock: ResidualBlocks (+ Resample) (+ the DupUp3D shortcut of the input)."""

    def __init__(self, cin, cout, num_blocks, temporal, up, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cout, self.ft, self.fs, self.up = cout, 2 if temporal else 1, 2 if up else 1, bool(up)
        blocks = [ResidualBlock(cin if j == 0 else cout, cout, **kw) for j in range(num_blocks)]
        if up:
            blocks.append(Resample(cout, "upsample3d" if temporal else "upsample2d", **kw))
        self.upsamples = nnx.List(blocks)

    def __call__(self, x, capture=None, name=""):
        s = dup_up(x, self.cout, self.ft, self.fs) if self.up else None
        if s is not None:
            _put(capture, name + ".avg_shortcut", s)
        for j, m in enumerate(self.upsamples):
            x = m(x, capture, f"{name}.upsamples.{j}")
            _put(capture, f"{name}.upsamples.{j}", x)
        return x if s is None else x + s


def _middle(c, kw):
    return nnx.List([ResidualBlock(c, c, **kw), AttentionBlock(c, **kw), ResidualBlock(c, c, **kw)])


def _head(cin, cout, kw):
    return nnx.List([RMSNorm(cin, dtype=kw["dtype"], param_dtype=kw["param_dtype"]), _Op("silu"),
                     CausalConv3d(cin, cout, 3, padding=1, **kw)])


def _run(layers, x, capture, name):
    for j, m in enumerate(layers):
        x = m(x) if isinstance(m, (RMSNorm, _Op, CausalConv3d)) else m(x, capture, f"{name}.{j}")
        _put(capture, f"{name}.{j}", x)
    return x


class Encoder3d(nnx.Module):
    def __init__(self, hp, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = derived(hp)["encoder_dims"]
        n = len(hp["dim_mult"])
        self.conv1 = CausalConv3d(PATCH_SIZE * PATCH_SIZE * IN_CHANNELS, dims[0], 3, padding=1, **kw)
        self.downsamples = nnx.List([
            DownBlock(dims[i], dims[i + 1], hp["num_res_blocks"], i < n - 1 and hp["temporal_downsample"][i],
                      i != n - 1, **kw) for i in range(n)])
        self.middle = _middle(dims[-1], kw)
        self.head = _head(dims[-1], 2 * hp["z_dim"], kw)

    def __call__(self, x, capture=None, name="encoder"):
        _put(capture, name + ".__input__", x)
        x = self.conv1(x)
        _put(capture, name + ".conv1", x)
        for i, blk in enumerate(self.downsamples):
            x = blk(x, capture, f"{name}.downsamples.{i}")
            _put(capture, f"{name}.downsamples.{i}", x)
        x = _run(self.middle, x, capture, name + ".middle")
        return _run(self.head, x, capture, name + ".head")


class Decoder3d(nnx.Module):
    def __init__(self, hp, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = derived(hp)["decoder_dims"]
        n = len(hp["dim_mult"])
        up = tuple(hp["temporal_downsample"])[::-1]
        self.conv1 = CausalConv3d(hp["z_dim"], dims[0], 3, padding=1, **kw)
        self.middle = _middle(dims[0], kw)
        self.upsamples = nnx.List([
            UpBlock(dims[i], dims[i + 1], hp["num_res_blocks"] + 1, i < n - 1 and up[i], i != n - 1, **kw)
            for i in range(n)])
        self.head = _head(dims[-1], PATCH_SIZE * PATCH_SIZE * IN_CHANNELS, kw)

    def __call__(self, x, capture=None, name="decoder"):
        x = self.conv1(x)
        _put(capture, name + ".conv1", x)
        x = _run(self.middle, x, capture, name + ".middle")
        for i, blk in enumerate(self.upsamples):
            x = blk(x, capture, f"{name}.upsamples.{i}")
            _put(capture, f"{name}.upsamples.{i}", x)
        return _run(self.head, x, capture, name + ".head")


def patchify(x: jax.Array, p: int = PATCH_SIZE) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H/p, W/p, C*p*p), channel c*p*p + r*p + q with r the COLUMN (w) offset and q the
    row (h) offset (the release's "b c f (h q) (w r) -> b (c r q) f h w")."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int = PATCH_SIZE) -> jax.Array:
    """The inverse of :func:`patchify`."""
    b, t, h, w, cpp = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, t, h, w, c, p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, c)


# ------------------------------------------------------------------------------------------- the model


class WanVAE(nnx.Module):
    """Wan 2.2 VAE. kwargs override ``VARIANTS[variant]`` (see :func:`scene3d.specs.wan_vae.config_from_dict` for
    fixture / release configs). ``dtype``: compute dtype (norm statistics, attention softmax and the latent
    normalisation in fp32); ``encode`` / ``decode`` return float32."""

    def __init__(self, variant: str = "wan2.2", *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 **overrides: Any):
        if variant not in VARIANTS:
            raise ValueError(f"WanVAE variant {variant!r}; known: {sorted(VARIANTS)}")
        hp = dict(VARIANTS[variant])
        check_keys(overrides, hp, "WanVAE options")
        hp.update(overrides)
        n = len(hp["dim_mult"])
        if len(hp["temporal_downsample"]) != n - 1:
            raise ValueError(f"WanVAE: temporal_downsample has {len(hp['temporal_downsample'])} entries for {n - 1} "
                             "resampling levels")
        z = int(hp["z_dim"])
        if len(hp["latent_mean"]) != z or len(hp["latent_std"]) != z:
            raise ValueError(f"WanVAE: latent_mean / latent_std need {z} entries, got {len(hp['latent_mean'])} / "
                             f"{len(hp['latent_std'])}")
        self.config = hp
        self.z_dim = z
        self.latent_channels = z
        d = derived(hp)
        self.spatial_compression, self.temporal_compression = d["spatial_compression"], d["temporal_compression"]
        self.dtype = dtype
        # Wan2_2_VAE.scale = [mean, 1 / std]: constants of the configuration, not state (the file has no buffers).
        self.latent_mean = tuple(float(m) for m in hp["latent_mean"])
        self.latent_std = tuple(float(s) for s in hp["latent_std"])
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder3d(hp, **kw)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1, padding=0, **kw)
        self.conv2 = CausalConv3d(z, z, 1, padding=0, **kw)
        self.decoder = Decoder3d(hp, **kw)

    # ------------------------------------------------------------------ model-level API (WanVAE_.encode / decode)

    def _scale(self):
        """(mean, 1 / std) as fp32 numpy constants, the reciprocal taken in fp32 as the release."""
        return np.asarray(self.latent_mean, np.float32), np.float32(1.0) / np.asarray(self.latent_std, np.float32)

    def frames_used(self, t: int) -> int:
        """How many leading frames of a T-frame clip ``encode`` reads: 1 + 4 * ((T - 1) // 4)."""
        return 1 + self.temporal_compression * ((t - 1) // self.temporal_compression)

    def encode(self, x: jax.Array, capture: dict | None = None) -> jax.Array:
        """(B, T, H, W, 3) in [-1, 1] -> normalised latents (B, 1 + (T-1)//4, H/16, W/16, z_dim), float32; the last
        (T-1) % 4 frames are ignored. ``capture`` also gets ``mu_raw`` and ``logvar_unused``."""
        f = self.spatial_compression
        if x.ndim != 5 or x.shape[-1] != IN_CHANNELS or x.shape[1] < 1 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"WanVAE.encode: x must be (B, T >= 1, H, W, {IN_CHANNELS}) with H, W multiples of {f}, "
                             f"got {tuple(x.shape)}")
        x = patchify(x[:, :self.frames_used(x.shape[1])])
        out = self.conv1(self.encoder(x, capture))
        mu, logvar = out[..., :self.z_dim], out[..., self.z_dim:]
        _put(capture, "conv1", out)
        _put(capture, "mu_raw", mu)
        _put(capture, "logvar_unused", logvar)
        mean, inv_std = self._scale()
        return (mu.astype(jnp.float32) - mean) * inv_std

    def decode(self, z: jax.Array, capture: dict | None = None) -> jax.Array:
        """Normalised latents (B, t, h, w, z_dim) -> frames (B, 1 + 4(t-1), 16h, 16w, 3), float32, not clamped."""
        if z.ndim != 5 or z.shape[-1] != self.z_dim or z.shape[1] < 1:
            raise ValueError(f"WanVAE.decode: z must be (B, t >= 1, h, w, {self.z_dim}), got {tuple(z.shape)}")
        mean, inv_std = self._scale()
        x = self.conv2(z.astype(jnp.float32) / inv_std + mean)
        _put(capture, "conv2", x)
        return unpatchify(self.decoder(x, capture)).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ SceneTok's wrappers (src/model/diffusion.py)

    def scenetok_encode(self, images: jax.Array) -> jax.Array:
        """first_stage_encode: images (B, V, H, W, 3) in [0, 1] -> latents (B, 1 + (V-1)//4, H/16, W/16, z_dim)
        = encode(2 img - 1) * 1.0 (the whole clip at once)."""
        return self.encode(images * 2.0 - 1.0) * SCENETOK_SCALING_FACTOR

    def scenetok_decode(self, latents: jax.Array, group_size: int = SCENETOK_GROUP_SIZE) -> jax.Array:
        """last_stage_decode: latents (B, V, h, w, z_dim) -> images (B, g * (1 + 4(V/g - 1)), 16h, 16w, 3) in [0, 1],
        with g = ceil(V / group_size) equal groups of latents, EACH decoded independently (its first latent is a
        first frame again); then img / 2 + 0.5 clamped. V must be divisible by g."""
        if latents.ndim != 5 or latents.shape[-1] != self.z_dim:
            raise ValueError(f"WanVAE.scenetok_decode: latents must be (B, V, h, w, {self.z_dim}), got "
                             f"{tuple(latents.shape)}")
        b, v = latents.shape[:2]
        g = -(-v // group_size)
        if v % g:
            raise ValueError(f"WanVAE.scenetok_decode: {v} latents cannot be cut into {g} equal groups (at most "
                             f"{group_size} each), as SceneTok's decode requires")
        z = latents.reshape((b * g, v // g) + latents.shape[2:]) * (1.0 / SCENETOK_SCALING_FACTOR)
        img = self.decode(z)
        img = img.reshape((b, g * img.shape[1]) + img.shape[2:])
        return jnp.clip(img / 2 + 0.5, 0.0, 1.0)
