"""Reference softmax attention (einsum, fp32 softmax); the 'xla' implementation of the dispatcher.

Layout: q (B, Lq, H, D), k/v (B, Lk, Hk, D) with H % Hk == 0 (grouped kv heads). ``mask`` is boolean and
broadcastable to (B, H, Lq, Lk), True = attend. Rows with no key to attend to give zeros (and lse = -inf).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def combined_mask(mask, kv_lengths, lk: int):
    """The boolean mask (rank 4, broadcastable to (B, H, Lq, Lk)) from ``mask`` and ``kv_lengths``; or None."""
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if kv_lengths is not None:
        keep = jnp.arange(lk)[None, :] < jnp.asarray(kv_lengths)[:, None]  # (B, Lk)
        keep = keep[:, None, None, :]
        mask = keep if mask is None else jnp.logical_and(mask, keep)
    return mask


def reference_attention(q, k, v, *, mask=None, kv_lengths=None, scale=None, return_lse=False):
    """softmax(q k^T * scale) v with fp32 logits and softmax; returns (B, Lq, H, D) in q's dtype.

    With ``return_lse`` also returns the log-sum-exp of the scaled, masked logits, shape (B, Lq, H), fp32.
    """
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    g = h // hk
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    qg = q.reshape(b, lq, hk, g, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.float32) * jnp.float32(scale)
    m = combined_mask(mask, kv_lengths, lk)
    if m is not None:
        if m.shape[1] == 1:
            m5 = m[:, :, None]  # (B|1, 1, 1, Lq|1, Lk|1)
        else:
            m5 = m.reshape(m.shape[0], hk, g, m.shape[2], m.shape[3])
        logits = jnp.where(m5, logits, jnp.finfo(jnp.float32).min)
        any_key = jnp.any(m5, axis=-1)  # (B|1, Hk|1, G|1, Lq|1)
    mx = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - mx)
    s = jnp.sum(e, axis=-1, keepdims=True)
    p = e / s
    if m is not None:
        p = jnp.where(any_key[..., None], p, 0.0)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out.reshape(b, lq, h, d).astype(q.dtype)
    if not return_lse:
        return out
    lse = (mx + jnp.log(s))[..., 0]  # (B, Hk, G, Lq)
    if m is not None:
        lse = jnp.where(any_key, lse, -jnp.inf)
    lse = jnp.broadcast_to(lse, (b, hk, g, lq)).reshape(b, h, lq).transpose(0, 2, 1)
    return out, lse
