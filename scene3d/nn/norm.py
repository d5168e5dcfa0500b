"""LayerNorm and RMSNorm over the last axis, statistics in fp32."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import param_init
from scene3d.nn.options import choose


def _param(init, shape, names, param_dtype):
    return nnx.Param(param_init(init, names)(jax.random.key(0), shape, param_dtype))


class _Norm(nnx.Module):
    """Normalise the last axis (``dim``) in fp32 (``_normalise``), then * scale (+ bias) if present."""

    default_bias = True

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True, use_bias: bool | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        use_bias = self.default_bias if use_bias is None else use_bias
        self.dim, self.eps, self.dtype = dim, eps, dtype
        self.scale = _param(nnx.initializers.ones_init(), (dim,), ("norm",), param_dtype) if use_scale else None
        self.bias = _param(nnx.initializers.zeros_init(), (dim,), ("norm",), param_dtype) if use_bias else None

    def _normalise(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected last axis {self.dim}, got input shape {x.shape}")
        y = self._normalise(x.astype(jnp.float32))
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class LayerNorm(_Norm):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (``dim``); bias by default."""

    def _normalise(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps)


class RMSNorm(_Norm):
    """x / sqrt(mean(x^2) + eps) * scale (+ bias) over the last axis (``dim``); no bias by default."""

    default_bias = False

    def _normalise(self, x: jax.Array) -> jax.Array:
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def make_norm(kind: str, dim: int, **kwargs) -> LayerNorm | RMSNorm:
    """'layer' -> LayerNorm, 'rms' -> RMSNorm (kwargs forwarded)."""
    return choose(NORMS, kind, "norm")(dim, **kwargs)
