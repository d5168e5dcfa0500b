"""Multi-head attention module (self or cross) over the ``scene3d.kernels.attention`` dispatcher."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import constrain
from scene3d.kernels import attention as attention_kernel
from scene3d.nn.linear import constrain_tokens, dense
from scene3d.nn.norm import LayerNorm, RMSNorm

RopeFn = Callable[[jax.Array], jax.Array]


class Attention(nnx.Module):
    """Multi-head attention: q from ``x``; k, v from ``context`` (cross) or ``x`` (self).

    Args:
      dim: width of x. num_heads: query heads. kv_dim: width of context (default dim).
      head_dim: per-head width (default dim // num_heads). num_kv_heads: grouped kv heads (default num_heads).
      out_dim: output width (default dim). qk_norm: False | True (= 'rms') | 'rms' | 'layer', per head over
      head_dim. qkv_bias / out_bias: biases of the projections. zero_init_out: zero the output projection.
      impl: the kernel implementation ('xla', 'cudnn', 'pallas', 'auto').
      head_layout: 'correct' (default) or 'release': the attention result (B, H, Lq, D) is read straight as
      (B, Lq, H * D) without transposing back (mixes heads and tokens; Michelangelo/Can3Tok flash path).
    """

    def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None, head_dim: int | None = None,
                 num_kv_heads: int | None = None, out_dim: int | None = None, qk_norm: bool | str = False,
                 qkv_bias: bool = True, out_bias: bool = True, zero_init_out: bool = False, impl: str = "xla",
                 norm_eps: float = 1e-6, head_layout: str = "correct", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if head_layout not in ("correct", "release"):
            raise ValueError(f"Attention: head_layout must be 'correct' or 'release', got {head_layout!r}")
        self.head_layout = head_layout
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}; pass head_dim")
            head_dim = dim // num_heads
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"Attention: num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        self.dim, self.kv_dim = dim, dim if kv_dim is None else kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.impl, self.dtype = impl, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q = dense(dim, num_heads * head_dim, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.k = dense(self.kv_dim, num_kv_heads * head_dim, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.v = dense(self.kv_dim, num_kv_heads * head_dim, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.out = dense(num_heads * head_dim, out_dim or dim, ("heads", "embed"), use_bias=out_bias,
                         zero_init=zero_init_out, **kw)
        if qk_norm is True:
            qk_norm = "rms"
        if qk_norm not in (False, None, "rms", "layer"):
            raise ValueError(f"Attention: qk_norm must be False, True, 'rms' or 'layer', got {qk_norm!r}")
        norm_cls = {"rms": RMSNorm, "layer": LayerNorm}.get(qk_norm) if qk_norm else None
        nkw = dict(eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = norm_cls(head_dim, **nkw) if norm_cls else None
        self.k_norm = norm_cls(head_dim, **nkw) if norm_cls else None

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, q_rope: RopeFn | None = None,
                 k_rope: RopeFn | None = None, mask=None, kv_lengths=None) -> jax.Array:
        """x (B, Lq, dim), context (B, Lk, kv_dim) or None -> (B, Lq, out_dim).

        q_rope / k_rope map (B, L, H, head_dim) -> same (applied after qk_norm); in self-attention k_rope
        defaults to q_rope. mask / kv_lengths: as in ``scene3d.kernels.attention``.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention: x must be (B, L, {self.dim}), got {x.shape}")
        if context is None:
            if self.kv_dim != self.dim:
                raise ValueError(f"Attention: built with kv_dim={self.kv_dim} != dim={self.dim}; pass context")
            context = x
            k_rope = q_rope if k_rope is None else k_rope
        elif context.ndim != 3 or context.shape[-1] != self.kv_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"Attention: context must be ({x.shape[0]}, Lk, {self.kv_dim}), got {context.shape}")
        b, lq, _ = x.shape
        lk = context.shape[1]
        q = self.q(x).reshape(b, lq, self.num_heads, self.head_dim)
        k = self.k(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        v = self.v(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if q_rope is not None:
            q = q_rope(q)
        if k_rope is not None:
            k = k_rope(k)
        names = ("batch", "length", "act_heads", "act_kv")
        kv_names = ("batch", "kv_length", "act_heads", "act_kv")
        q, k, v = constrain(q, names), constrain(k, kv_names), constrain(v, kv_names)
        o = attention_kernel(q, k, v, impl=self.impl, mask=mask, kv_lengths=kv_lengths)
        o = constrain(o, names)
        if self.head_layout == "release":
            o = jnp.swapaxes(o, 1, 2)  # (B, H, Lq, D) memory read as (B, Lq, H * D)
        o = o.reshape(b, lq, self.num_heads * self.head_dim)
        return constrain_tokens(self.out(o), "act_embed")
