"""Multi-head attention module (self or cross) over the ``scene3d.kernels.attention`` dispatcher."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import constrain
from scene3d.kernels import attention as attention_kernel
from scene3d.nn.linear import constrain_tokens, dense
from scene3d.nn.norm import make_norm

RopeFn = Callable[[jax.Array], jax.Array]
_Q_NAMES = ("batch", "length", "act_heads", "act_kv")
_KV_NAMES = ("batch", "kv_length", "act_heads", "act_kv")


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
        nkw = dict(eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_norm = make_norm(qk_norm, head_dim, **nkw) if qk_norm else None
        self.k_norm = make_norm(qk_norm, head_dim, **nkw) if qk_norm else None

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, q_rope: RopeFn | None = None,
                 k_rope: RopeFn | None = None, mask=None, kv_lengths=None, return_lse: bool = False):
        """x (B, Lq, dim), context (B, Lk, kv_dim) or None -> (B, Lq, out_dim).

        q_rope / k_rope map (B, L, H, head_dim) -> same (applied after qk_norm); in self-attention k_rope
        defaults to q_rope. mask / kv_lengths: as in ``scene3d.kernels.attention``.
        ``return_lse=True`` returns the partial result instead: (o, lse), o (B, Lq, H, head_dim) the attention
        per head BEFORE the output projection, lse (B, Lq, H) fp32 the log-sum-exp of its scaled logits (-inf
        where no key is attended). Results over disjoint key sets combine exactly with :func:`merge_partial`;
        :meth:`project` then gives the output (:func:`blockwise_attention` does both).
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
        q = self.queries(x, q_rope)
        k, v = self.keys_values(context, k_rope)
        out = self.attend(q, k, v, mask=mask, kv_lengths=kv_lengths, return_lse=return_lse)
        return out if return_lse else self.project(out)

    def queries(self, x: jax.Array, rope: RopeFn | None = None) -> jax.Array:
        """x (B, Lq, dim) -> q (B, Lq, H, head_dim): projected, qk-normed, rotated."""
        b, lq, _ = x.shape
        q = self.q(x).reshape(b, lq, self.num_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if rope is not None:
            q = rope(q)
        return constrain(q, _Q_NAMES)

    def keys_values(self, context: jax.Array, rope: RopeFn | None = None) -> tuple[jax.Array, jax.Array]:
        """context (B, Lk, kv_dim) -> k, v (B, Lk, Hk, head_dim); k qk-normed and rotated."""
        if context.ndim != 3 or context.shape[-1] != self.kv_dim:
            raise ValueError(f"Attention: context must be (B, Lk, {self.kv_dim}), got {context.shape}")
        b, lk, _ = context.shape
        k = self.k(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        v = self.v(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if rope is not None:
            k = rope(k)
        return constrain(k, _KV_NAMES), constrain(v, _KV_NAMES)

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, *, mask=None, kv_lengths=None,
               return_lse: bool = False):
        """Softmax attention of q over k, v with this module's kernel -> o (B, Lq, H, head_dim) (and lse)."""
        out = attention_kernel(q, k, v, impl=self.impl, mask=mask, kv_lengths=kv_lengths, return_lse=return_lse)
        if return_lse:
            return constrain(out[0], _Q_NAMES), out[1]
        return constrain(out, _Q_NAMES)

    def project(self, o: jax.Array) -> jax.Array:
        """Per-head attention o (B, Lq, H, head_dim) -> output projection (B, Lq, out_dim)."""
        b, lq = o.shape[:2]
        if self.head_layout == "release":
            o = jnp.swapaxes(o, 1, 2)  # (B, H, Lq, D) memory read as (B, Lq, H * D)
        o = o.reshape(b, lq, self.num_heads * self.head_dim)
        return constrain_tokens(self.out(o), "act_embed")


def merge_partial(o_acc: jax.Array, lse_acc: jax.Array, o: jax.Array, lse: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Combine two partial attention results over disjoint key sets (online softmax).

    o_acc, o (B, L, H, D) and their log-sum-exps lse_acc, lse (B, L, H) (-inf = no key yet) -> the attention
    over the union of the key sets and its lse. Exact up to rounding; compute in fp32.
    """
    m = jax.lax.stop_gradient(jnp.maximum(lse_acc, lse))  # the result does not depend on m: no gradient needed
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    a, b = jnp.exp(lse_acc - m), jnp.exp(lse - m)
    s = a + b
    safe = jnp.where(s > 0, s, 1.0)
    out = (o_acc * a[..., None] + o * b[..., None]) / safe[..., None]
    return out, jnp.where(s > 0, m + jnp.log(safe), -jnp.inf)


def blockwise_attention(attn: Attention, x: jax.Array, groups: Sequence[tuple[jax.Array, jax.Array | None]], *,
                        prepare: nnx.Module | None = None, q_rope: RopeFn | None = None) -> jax.Array:
    """``attn(x, prepare(concat(contexts)), mask=concat(masks))`` computed one block of keys at a time.

    groups: [(contexts (n, B, L, kv_dim), masks (n, B, L) bool (True = attend) or None)]; the n blocks of a group
    are scanned (groups may differ in L). ``prepare`` (e.g. a norm) maps each context block before its keys and
    values. q is projected once; each block's partial result is merged with :func:`merge_partial` in fp32 and
    rematerialised in the backward pass, so the attention temporaries are those of one block.
    """
    b = x.shape[0]
    q = attn.queries(x, q_rope)
    h, d = attn.num_heads, attn.head_dim
    graphdef, state = nnx.split((attn,) if prepare is None else (attn, prepare))

    def body(carry, block):
        ctx, mask = block
        att, *pre = nnx.merge(graphdef, state)
        k, v = att.keys_values(pre[0](ctx) if pre else ctx)
        o, lse = att.attend(q, k, v, mask=None if mask is None else mask[:, None, None, :], return_lse=True)
        return merge_partial(*carry, o.astype(jnp.float32), lse.astype(jnp.float32)), None

    body = jax.checkpoint(body)
    carry = (jnp.zeros((b, x.shape[1], h, d), jnp.float32), jnp.full((b, x.shape[1], h), -jnp.inf, jnp.float32))
    for contexts, masks in groups:
        if contexts.ndim != 4 or contexts.shape[1] != b or contexts.shape[-1] != attn.kv_dim:
            raise ValueError(f"blockwise_attention: contexts must be (n, {b}, L, {attn.kv_dim}), got "
                             f"{contexts.shape}")
        if masks is not None and tuple(masks.shape) != contexts.shape[:3]:
            raise ValueError(f"blockwise_attention: masks must be {contexts.shape[:3]} (n, B, L), got {masks.shape}")
        carry, _ = jax.lax.scan(body, carry, (contexts, masks))
    return attn.project(carry[0].astype(x.dtype))
