"""Adaptive LayerNorm (DiT): ``modulate`` and the zero-initialised ``AdaLNZero`` projection."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.nn.linear import dense


def _expand(c: jax.Array, x: jax.Array, name: str) -> jax.Array:
    if c.ndim > x.ndim or c.shape[0] != x.shape[0] or c.shape[-1] != x.shape[-1]:
        raise ValueError(f"modulate: {name} must be per-sample (B, D) or per-token (B, ..., D) for x of shape "
                         f"{x.shape}, got {c.shape}")
    if c.ndim < x.ndim:
        c = c.reshape(c.shape[:1] + (1,) * (x.ndim - c.ndim) + c.shape[1:])
    return c


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x * (1 + scale) + shift; shift/scale are per-sample (B, D) or per-token (B, L, D) for x (B, L, D)."""
    return x * (1 + _expand(scale, x, "scale")) + _expand(shift, x, "shift")


class AdaLNZero(nnx.Module):
    """Linear(silu(c)) split into ``num_chunks`` tensors of width ``dim``; weights and bias start at zero.

    ``c`` is (B, cond_dim) or per-token (B, L, cond_dim); each chunk has c's leading shape and width ``dim``.
    """

    def __init__(self, cond_dim: int, dim: int, num_chunks: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.cond_dim, self.dim, self.num_chunks = cond_dim, dim, num_chunks
        self.proj = dense(cond_dim, num_chunks * dim, ("cond", "embed"), zero_init=True, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)

    def __call__(self, c: jax.Array) -> tuple[jax.Array, ...]:
        if c.shape[-1] != self.cond_dim:
            raise ValueError(f"AdaLNZero: condition must have last axis {self.cond_dim}, got shape {c.shape}")
        return tuple(jnp.split(self.proj(jax.nn.silu(c)), self.num_chunks, axis=-1))
