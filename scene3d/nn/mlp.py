"""Feed-forward blocks: Mlp (fc1 -> act -> fc2) and SwiGLU."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.nn.linear import constrain_tokens, dense
from scene3d.nn.options import choose

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def get_activation(name: str):
    return choose(ACTIVATIONS, name, "activation")


class Mlp(nnx.Module):
    """fc2(act(fc1(x))); ``act`` in ACTIVATIONS ('gelu_tanh' is DiT's tanh-approximate GELU)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *, act: str = "gelu_tanh",
                 use_bias: bool = True, zero_init_out: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        get_activation(act)  # validate
        self.act = act
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = dense(dim, hidden_dim, ("embed", "mlp"), **kw)
        self.fc2 = dense(hidden_dim, out_dim or dim, ("mlp", "embed"), zero_init=zero_init_out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain_tokens(get_activation(self.act)(self.fc1(x)), "act_mlp")
        return constrain_tokens(self.fc2(h), "act_embed")


class SwiGLU(nnx.Module):
    """w_down(silu(w_gate(x)) * w_up(x)) (Shazeer 2020)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *, use_bias: bool = False,
                 zero_init_out: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.w_gate = dense(dim, hidden_dim, ("embed", "mlp"), **kw)
        self.w_up = dense(dim, hidden_dim, ("embed", "mlp"), **kw)
        self.w_down = dense(hidden_dim, out_dim or dim, ("mlp", "embed"), zero_init=zero_init_out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain_tokens(jax.nn.silu(self.w_gate(x)) * self.w_up(x), "act_mlp")
        return constrain_tokens(self.w_down(h), "act_embed")


def make_mlp(kind: str, dim: int, hidden_dim: int, **kwargs) -> Mlp | SwiGLU:
    """'gelu_tanh' | 'gelu' | 'silu' | 'relu' -> Mlp with that activation; 'swiglu' -> SwiGLU."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, **kwargs)
    return Mlp(dim, hidden_dim, act=kind, **kwargs)
