"""LayerNorm and RMSNorm over the last axis, statistics in fp32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import param_init


def _param(init, shape, names, param_dtype):
    return nnx.Param(param_init(init, names)(jax.random.key(0), shape, param_dtype))


class LayerNorm(nnx.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (``dim``)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True, use_bias: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.dim, self.eps, self.dtype = dim, eps, dtype
        self.scale = _param(nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype) if use_scale else None
        self.bias = _param(nnx.initializers.zeros_init(), (dim,), ("norm",), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm: expected last axis {self.dim}, got input shape {x.shape}")
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale (+ bias) over the last axis (``dim``)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True, use_bias: bool = False,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.dim, self.eps, self.dtype = dim, eps, dtype
        self.scale = _param(nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype) if use_scale else None
        self.bias = _param(nnx.initializers.zeros_init(), (dim,), ("norm",), param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: expected last axis {self.dim}, got input shape {x.shape}")
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def make_norm(kind: str, dim: int, **kwargs) -> LayerNorm | RMSNorm:
    """'layer' -> LayerNorm, 'rms' -> RMSNorm (kwargs forwarded)."""
    if kind not in NORMS:
        raise ValueError(f"make_norm: unknown norm {kind!r}; expected one of {sorted(NORMS)}")
    return NORMS[kind](dim, **kwargs)
