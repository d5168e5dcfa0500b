"""Dense layers with logical axis names, and activation annotations for token tensors."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import constrain, param_init

default_kernel_init = nnx.initializers.xavier_uniform()


def dense(in_features: int, out_features: int, names: Sequence[str | None], *, use_bias: bool = True,
          zero_init: bool = False, kernel_init=None, dtype=jnp.float32, param_dtype=jnp.float32,
          rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` whose kernel carries logical names ``names`` = (in, out) and bias (out,).

    ``zero_init`` zero-initialises kernel and bias (adaLN-Zero, DiT final layers); otherwise the kernel is
    xavier-uniform (or ``kernel_init``) and the bias zero.
    """
    if len(names) != 2:
        raise ValueError(f"dense: names must be (in_name, out_name), got {names}")
    kinit = nnx.initializers.zeros_init() if zero_init else (kernel_init or default_kernel_init)
    return nnx.Linear(in_features, out_features, use_bias=use_bias,
                      kernel_init=param_init(kinit, tuple(names)),
                      bias_init=param_init(nnx.initializers.zeros_init(), (names[1],)),
                      dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def constrain_tokens(x: jax.Array, feature_name: str | None) -> jax.Array:
    """Annotate (B, L, F) as ('batch', 'length', feature_name); (B, F) as ('batch', feature_name); else no-op."""
    if x.ndim == 3:
        return constrain(x, ("batch", "length", feature_name))
    if x.ndim == 2:
        return constrain(x, ("batch", feature_name))
    return x
