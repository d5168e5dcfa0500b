"""Rotary position embeddings on (B, L, H, D) tensors: 1D, and axial N-D (2D grids, 3D t/h/w volumes).

Pairs are rotated in the half-split layout (x[..., :d/2], x[..., d/2:]) by default (GPT-NeoX / HF Llama);
``interleaved=True`` rotates adjacent pairs (x[..., 0::2], x[..., 1::2]) instead (RoFormer / Flux).
Angles are computed in fp32; the output has x's dtype.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(dim: int, theta: float = 10000.0) -> jax.Array:
    """Inverse frequencies theta^(-2i/dim), i = 0 .. dim/2 - 1, fp32 (dim must be even)."""
    if dim % 2:
        raise ValueError(f"rope_frequencies: rotary dim must be even, got {dim}")
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def _positions_bl(positions, x, extra: tuple = ()) -> jax.Array:
    """positions (L,)+extra or (B, L)+extra -> (B|1, L)+extra fp32."""
    p = jnp.asarray(positions)
    b, length = x.shape[0], x.shape[1]
    if p.shape[p.ndim - len(extra):] != extra or p.ndim - len(extra) not in (1, 2):
        raise ValueError(f"rope: positions must be (L,){extra and ' + ' + str(extra) or ''} or (B, L)"
                         f"{extra and ' + ' + str(extra) or ''} for x of shape {x.shape}, got {p.shape}")
    if p.ndim - len(extra) == 1:
        p = p[None]
    if p.shape[1] != length or p.shape[0] not in (1, b):
        raise ValueError(f"rope: positions {p.shape} do not match x (B={b}, L={length})")
    return p.astype(jnp.float32)


def _rotate(x: jax.Array, angles: jax.Array, interleaved: bool) -> jax.Array:
    """Rotate x (B, L, H, d) by angles (B|1, L, d/2)."""
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        y = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(xf.shape)
    else:
        half = x.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        y = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return y.astype(x.dtype)


def apply_rope_1d(x: jax.Array, positions, theta: float = 10000.0, *, interleaved: bool = False) -> jax.Array:
    """RoPE over the whole head dim. x (B, L, H, D); positions (L,) or (B, L), integer or float."""
    if x.ndim != 4:
        raise ValueError(f"apply_rope_1d: x must be (B, L, H, D), got {x.shape}")
    p = _positions_bl(positions, x)
    angles = p[..., None] * rope_frequencies(x.shape[-1], theta)
    return _rotate(x, angles, interleaved)


def default_split(head_dim: int, n_axes: int) -> tuple[int, ...]:
    """Equal even split of head_dim across axes; raises if head_dim is not divisible by 2 * n_axes."""
    if head_dim % (2 * n_axes):
        raise ValueError(f"rope: head_dim {head_dim} cannot be split equally into {n_axes} even parts; pass "
                         f"split=(...) with even parts summing to {head_dim}")
    return (head_dim // n_axes,) * n_axes


def apply_rope_nd(x: jax.Array, positions, theta: float = 10000.0, split: Sequence[int] | None = None, *,
                  interleaved: bool = False) -> jax.Array:
    """Axial RoPE: head dim split into ``len(split)`` even chunks, chunk i rotated by position axis i.

    x (B, L, H, D); positions (L, n_axes) or (B, L, n_axes) (e.g. (y, x) for 2D, (t, y, x) for 3D);
    split: dims per axis, even, summing to D (default equal).
    """
    if x.ndim != 4:
        raise ValueError(f"apply_rope_nd: x must be (B, L, H, D), got {x.shape}")
    pos = jnp.asarray(positions)
    if pos.ndim not in (2, 3):
        raise ValueError(f"apply_rope_nd: positions must be (L, n_axes) or (B, L, n_axes), got {pos.shape}")
    n_axes = pos.shape[-1]
    d = x.shape[-1]
    split = default_split(d, n_axes) if split is None else tuple(int(s) for s in split)
    if len(split) != n_axes or sum(split) != d or any(s % 2 for s in split):
        raise ValueError(f"apply_rope_nd: split {split} must have {n_axes} even parts summing to head_dim {d}")
    p = _positions_bl(pos, x, extra=(n_axes,))
    out, start = [], 0
    for i, s in enumerate(split):
        chunk = x[..., start:start + s]
        out.append(_rotate(chunk, p[..., i, None] * rope_frequencies(s, theta), interleaved))
        start += s
    return jnp.concatenate(out, axis=-1)


def grid_positions_2d(height: int, width: int) -> jax.Array:
    """(height * width, 2) int32 (row, col) ids in row-major order (the order of ``patchify``)."""
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return jnp.asarray(np.stack([ii.ravel(), jj.ravel()], -1), jnp.int32)


def grid_positions_3d(t: int, height: int, width: int) -> jax.Array:
    """(t * height * width, 3) int32 (t, row, col) ids, t-major then row-major."""
    tt, ii, jj = np.meshgrid(np.arange(t), np.arange(height), np.arange(width), indexing="ij")
    return jnp.asarray(np.stack([tt.ravel(), ii.ravel(), jj.ravel()], -1), jnp.int32)


def make_rope(positions, theta: float = 10000.0, split: Sequence[int] | None = None, *,
              axial: bool | None = None, interleaved: bool = False) -> Callable[[jax.Array], jax.Array]:
    """A callable x -> rotated x for the ``q_rope``/``k_rope`` hooks of ``Attention``.

    ``axial=False``: 1D RoPE with positions (L,) or (B, L); ``axial=True``: axial RoPE with positions (L, n) or
    (B, L, n). ``axial=None`` infers it from the rank (1 -> 1D, 3 -> axial; rank 2 is ambiguous and raises).
    """
    pos = jnp.asarray(positions)
    if axial is None:
        if pos.ndim == 2:
            raise ValueError(f"make_rope: positions of shape {pos.shape} could be (B, L) or (L, n_axes); pass axial=")
        axial = pos.ndim == 3
    if axial:
        return lambda x: apply_rope_nd(x, pos, theta, split, interleaved=interleaved)
    return lambda x: apply_rope_1d(x, pos, theta, interleaved=interleaved)
