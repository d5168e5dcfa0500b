"""Perceiver read (latents cross-attend to inputs) and process (self-attention over latents) modules."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import param_init
from scene3d.nn.attention import Attention, RopeFn, blockwise_attention
from scene3d.nn.linear import constrain_tokens
from scene3d.nn.mlp import make_mlp
from scene3d.nn.norm import make_norm
from scene3d.nn.transformer import Block, Stack


class PerceiverRead(nnx.Module):
    """latents += cross(norm(latents), norm(inputs)); latents += mlp(norm(latents)) (pre-norm).

    With ``num_latents`` the module owns learned latents (num_latents, dim) ('queries', 'embed'), used when the
    call gets ``latents=None``. Inputs may carry a key mask (B, Lin) bool (True = valid) or kv_lengths (B,).
    """

    def __init__(self, dim: int, num_heads: int, *, input_dim: int | None = None, num_latents: int | None = None,
                 mlp_ratio: float = 4.0, mlp: str = "gelu_tanh", norm: str = "layer", norm_eps: float = 1e-6,
                 qk_norm: bool | str = False, qkv_bias: bool = True, impl: str = "xla", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.dim, self.input_dim = dim, input_dim or dim
        init = param_init(nnx.initializers.normal(0.02), ("queries", "embed"))
        self.latents = (None if num_latents is None
                        else nnx.Param(init(rngs.params(), (num_latents, dim), param_dtype)))
        self.norm_latents = make_norm(norm, dim, eps=norm_eps, **kw)
        self.norm_inputs = make_norm(norm, self.input_dim, eps=norm_eps, **kw)
        self.cross = Attention(dim, num_heads, kv_dim=self.input_dim, qk_norm=qk_norm, qkv_bias=qkv_bias,
                               impl=impl, norm_eps=norm_eps, rngs=rngs, **kw)
        self.norm_mlp = make_norm(norm, dim, eps=norm_eps, **kw)
        self.mlp = make_mlp(mlp, dim, int(dim * mlp_ratio), rngs=rngs, **kw)

    def __call__(self, inputs: jax.Array, latents: jax.Array | None = None, *, mask=None, kv_lengths=None,
                 q_rope: RopeFn | None = None, k_rope: RopeFn | None = None) -> jax.Array:
        """inputs (B, Lin, input_dim); latents (B, K, dim) or None (learned) -> (B, K, dim).

        mask: (B, Lin) key mask, or anything broadcastable to (B, H, K, Lin)."""
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"PerceiverRead: inputs must be (B, L, {self.input_dim}), got {inputs.shape}")
        latents = self._latents(latents, inputs.shape[0], inputs.dtype)
        if mask is not None and jnp.ndim(mask) == 2:
            if tuple(jnp.shape(mask)) != inputs.shape[:2]:
                raise ValueError(f"PerceiverRead: key mask must be (B, Lin) = {inputs.shape[:2]}, got "
                                 f"{jnp.shape(mask)}")
            mask = jnp.asarray(mask)[:, None, None, :]
        return self._finish(latents, self.cross(self.norm_latents(latents), self.norm_inputs(inputs), q_rope=q_rope,
                                                k_rope=k_rope, mask=mask, kv_lengths=kv_lengths))

    def blockwise(self, groups: Sequence[tuple[jax.Array, jax.Array | None]], latents: jax.Array | None = None
                  ) -> jax.Array:
        """``self(concat(inputs), latents, mask=concat(masks))`` read one block of inputs at a time.

        groups: [(inputs (n, B, L, input_dim), masks (n, B, L) bool or None)], scanned over n with an online
        softmax (:func:`scene3d.nn.attention.blockwise_attention`): memory of one block, cost linear in the
        number of blocks, equal to the one-shot read up to float rounding."""
        if not groups:
            raise ValueError("PerceiverRead.blockwise: groups is empty; pass [(inputs (n, B, L, input_dim), masks)]")
        latents = self._latents(latents, groups[0][0].shape[1], groups[0][0].dtype)
        return self._finish(latents, blockwise_attention(self.cross, self.norm_latents(latents), groups,
                                                         prepare=self.norm_inputs))

    def _latents(self, latents: jax.Array | None, batch: int, dtype) -> jax.Array:
        if latents is not None:
            return latents
        if self.latents is None:
            raise ValueError("PerceiverRead: pass latents (B, K, dim) or build with num_latents=K")
        return jnp.broadcast_to(self.latents[...].astype(dtype), (batch,) + self.latents.shape)

    def _finish(self, latents: jax.Array, attended: jax.Array) -> jax.Array:
        x = latents + attended
        x = x + self.mlp(self.norm_mlp(x))
        return constrain_tokens(x, "act_embed")


class PerceiverProcess(nnx.Module):
    """``depth`` pre-norm self-attention :class:`Block` s over the latents (a :class:`Stack`)."""

    def __init__(self, dim: int, num_heads: int, depth: int, *, scan: bool = True, remat: str = "none",
                 rngs: nnx.Rngs, **block_kwargs):
        self.blocks = Stack(lambda r: Block(dim, num_heads, rngs=r, **block_kwargs), depth, rngs=rngs,
                            scan=scan, remat=remat)

    def __call__(self, latents: jax.Array, *, rope: RopeFn | None = None, mask=None) -> jax.Array:
        return self.blocks(latents, rope=rope, mask=mask)
