"""Input embeddings: Fourier features, patch embedding (+ pure patchify/unpatchify), timestep embedding."""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.nn.linear import constrain_tokens, dense


# ---------------------------------------------------------------------------------------------------------
# Fourier features


def fourier_dim(in_dim: int, num_bands: int, include_input: bool = True) -> int:
    """Output width of :func:`fourier_features`: in_dim * (2 * num_bands + include_input)."""
    return in_dim * (2 * num_bands + int(include_input))


def fourier_features(x: jax.Array, num_bands: int, include_input: bool = True, include_pi: bool = False,
                     logspace: bool = True) -> jax.Array:
    """[x, sin(x_i f_j), cos(x_i f_j)] over the last axis, i-major (Michelangelo/3DShape2VecSet layout).

    Frequencies f_j = 2^j, j < num_bands (``logspace``; else linspace(1, 2^(num_bands-1))), times pi with
    ``include_pi``. For 3D points with 8 bands and include_input: 3 + 3 * 2 * 8 = 51 dims (Can3Tok's recipe).
    Computed in fp32; returns fp32.
    """
    x = jnp.asarray(x, jnp.float32)
    if logspace:
        freqs = 2.0 ** jnp.arange(num_bands, dtype=jnp.float32)
    else:
        freqs = jnp.linspace(1.0, 2.0 ** (num_bands - 1), num_bands, dtype=jnp.float32)
    if include_pi:
        freqs = freqs * jnp.pi
    emb = (x[..., None] * freqs).reshape(x.shape[:-1] + (x.shape[-1] * num_bands,))
    parts = ([x] if include_input else []) + [jnp.sin(emb), jnp.cos(emb)]
    return jnp.concatenate(parts, axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Patches


def _pair(p) -> tuple[int, int]:
    return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))


def patchify(x: jax.Array, patch: int | Sequence[int]) -> jax.Array:
    """(..., H, W, C) -> (..., (H/ph) * (W/pw), ph * pw * C); patches row-major, features (py, px, c)."""
    ph, pw = _pair(patch)
    if x.ndim < 3:
        raise ValueError(f"patchify: x must be (..., H, W, C), got {x.shape}")
    *lead, h, w, c = x.shape
    if h % ph or w % pw:
        raise ValueError(f"patchify: image size (H, W) = {(h, w)} must be divisible by the patch {(ph, pw)}")
    gh, gw = h // ph, w // pw
    x = x.reshape(*lead, gh, ph, gw, pw, c)
    n = len(lead)
    x = jnp.moveaxis(x, n + 2, n + 1)  # (..., gh, gw, ph, pw, c)
    return x.reshape(*lead, gh * gw, ph * pw * c)


def unpatchify(tokens: jax.Array, patch: int | Sequence[int], size: Sequence[int]) -> jax.Array:
    """Inverse of :func:`patchify`: (..., N, ph * pw * C) -> (..., H, W, C) for image ``size`` = (H, W)."""
    ph, pw = _pair(patch)
    h, w = int(size[0]), int(size[1])
    if h % ph or w % pw:
        raise ValueError(f"unpatchify: image size {(h, w)} must be divisible by the patch {(ph, pw)}")
    gh, gw = h // ph, w // pw
    *lead, n, f = tokens.shape
    if n != gh * gw or f % (ph * pw):
        raise ValueError(f"unpatchify: tokens must be (..., {gh * gw}, {ph}*{pw}*C) for image {(h, w)} and patch "
                         f"{(ph, pw)}, got {tokens.shape}")
    c = f // (ph * pw)
    x = tokens.reshape(*lead, gh, gw, ph, pw, c)
    k = len(lead)
    x = jnp.moveaxis(x, k + 2, k + 1)  # (..., gh, ph, gw, pw, c)
    return x.reshape(*lead, h, w, c)


class PatchEmbed(nnx.Module):
    """Non-overlapping patch embedding (a stride-p conv written as patchify + linear).

    (..., H, W, C) -> (..., (H/p) * (W/p), dim) for any H, W divisible by the patch. The kernel is
    (ph * pw * C, dim) with rows ordered (py, px, c): a PyTorch conv weight (dim, C, ph, pw) maps to it by
    ``w.transpose(2, 3, 1, 0).reshape(-1, dim)``.
    """

    def __init__(self, in_channels: int, dim: int, patch: int | Sequence[int], *, use_bias: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_channels, self.dim, self.patch = in_channels, dim, _pair(patch)
        ph, pw = self.patch
        self.proj = dense(ph * pw * in_channels, dim, ("patch", "embed"), use_bias=use_bias, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch[0], width // self.patch[1]

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"PatchEmbed: expected (..., H, W, {self.in_channels}) input, got {x.shape}")
        return constrain_tokens(self.proj(patchify(x, self.patch)), "act_embed")


# ---------------------------------------------------------------------------------------------------------
# Timesteps


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """DiT sinusoidal embedding [cos(t f), sin(t f)], f_i = max_period^(-i / (dim/2)); (B,) -> (B, dim) fp32."""
    t = jnp.asarray(t, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
    return emb


class TimestepEmbedder(nnx.Module):
    """t -> MLP(timestep_embedding(t * t_scale)) (DiT). t in [0, 1] is scaled by ``t_scale`` (1000 = DiT)."""

    def __init__(self, dim: int, *, freq_dim: int = 256, t_scale: float = 1000.0, max_period: float = 10000.0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.freq_dim, self.t_scale, self.max_period = freq_dim, t_scale, max_period
        init = nnx.initializers.normal(0.02)
        kw = dict(kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = dense(freq_dim, dim, ("cond", "embed"), **kw)
        self.fc2 = dense(dim, dim, ("embed", "cond"), **kw)

    def __call__(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if t.ndim > 1:
            raise ValueError(f"TimestepEmbedder: t must be a scalar or (B,), got shape {t.shape}")
        emb = timestep_embedding(jnp.atleast_1d(t) * self.t_scale, self.freq_dim, self.max_period)
        return self.fc2(jax.nn.silu(self.fc1(emb)))
