"""Pallas flash attention (online softmax, no materialised score matrix), forward and backward.

Backends (``backend=``): 'triton' (Pallas Triton lowering: A100, H100, any CUDA GPU), 'mosaic_gpu' (Hopper:
warpgroup MMA + TMA pipelining, FlashAttention-3 style), 'mosaic_tpu' (TPU). ``None`` picks by platform
(:func:`default_backend`). On CPU the kernels run in Pallas interpret mode.

:func:`flash_attention` has the dispatcher's layout and semantics (see :mod:`scene3d.kernels.attention`) for a
key-padding ``mask`` (broadcastable to (B, H, 1, Lk)) and/or ``kv_lengths``; per-query masks raise ValueError.
The reference is :func:`reference_attention` (einsum, fp32 softmax), re-exported here.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from scene3d.kernels.flash.common import (BACKENDS, LN2, LOG2E, BlockSizes, check_inputs, key_mask_shape_error,
                                          key_validity, pad_axis, round_up)
from scene3d.kernels.reference import reference_attention

__all__ = ["BACKENDS", "BlockSizes", "default_backend", "flash_attention", "reference_attention",
           "unsupported_reason"]


def _backend_module(name: str):
    if name not in BACKENDS:
        raise ValueError(f"flash_attention: unknown backend {name!r}; expected one of {BACKENDS}")
    return importlib.import_module(f"scene3d.kernels.flash.{name}")


def _gpu_capability() -> tuple[int, int]:
    try:
        cc = str(getattr(jax.devices()[0], "compute_capability", "0.0"))
        major, minor = (int(x) for x in cc.split(".")[:2])
        return major, minor
    except (ValueError, IndexError):
        return 0, 0


def default_backend(q_dtype=jnp.bfloat16, head_dim: int = 128, platform: str | None = None) -> str:
    """'mosaic_gpu' on Hopper (sm_90) for 16-bit inputs, 'triton' on other GPUs (and for fp32), 'mosaic_tpu' on
    TPU, 'triton' (interpret mode) on CPU. ``platform`` defaults to ``jax.default_backend()``."""
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "mosaic_tpu"
    if platform == "gpu" and _gpu_capability()[0] == 9:
        from scene3d.kernels.flash import mosaic_gpu
        if mosaic_gpu.unsupported_reason(jnp.dtype(q_dtype), head_dim) is None:
            return "mosaic_gpu"
    return "triton"


def unsupported_reason(q, k, v, mask=None) -> str | None:
    """None if :func:`flash_attention` handles these inputs, else why not (the dispatcher then falls back)."""
    try:
        check_inputs(q, k, v)
    except ValueError as e:
        return str(e)
    if mask is not None:
        b, lq, h, _ = q.shape
        return key_mask_shape_error(np.shape(mask), b, h, lq, k.shape[1])
    return None


@dataclasses.dataclass(frozen=True)
class _Config:
    backend: str
    scale: float
    blocks: BlockSizes
    interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, valid, cfg: _Config):
    return _forward(q, k, v, valid, cfg)


def _forward(q, k, v, valid, cfg):
    mod = _backend_module(cfg.backend)
    return mod.forward(q, k, v, valid, scale=cfg.scale, blocks=cfg.blocks, interpret=cfg.interpret)


def _flash_fwd(q, k, v, valid, cfg):
    out, lse2 = _forward(q, k, v, valid, cfg)
    return (out, lse2), (q, k, v, valid, out, lse2)


def _flash_bwd(cfg, res, cts):
    q, k, v, valid, out, lse2 = res
    do, dlse2 = cts
    h, hk = q.shape[2], k.shape[2]
    # d lse / d s = p (natural logits s, lse = lse2 ln 2), so the lse cotangent folds into delta:
    # ds = p * (dp - (rowsum(o * do) - dlse)) with dlse = dlse2 * log2(e).
    delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
    delta = delta - dlse2.astype(jnp.float32) * LOG2E
    lse_bwd = jnp.where(jnp.isneginf(lse2), jnp.inf, lse2)  # rows with no visible key: p = 0
    mod = _backend_module(cfg.backend)
    dkv_dtype = k.dtype if h == hk else jnp.float32
    dq, dk, dv = mod.backward(q, k, v, valid, do.astype(q.dtype), lse_bwd, delta, scale=cfg.scale,
                              blocks=cfg.blocks, dkv_dtype=dkv_dtype, interpret=cfg.interpret)
    if h != hk:  # grouped kv heads: the kernels give per-q-head dk/dv, sum each group
        b, lk, _, d = k.shape
        dk = dk.reshape(b, lk, hk, h // hk, d).sum(3).astype(k.dtype)
        dv = dv.reshape(b, lk, hk, h // hk, d).sum(3).astype(v.dtype)
    dvalid = None if valid is None else np.zeros(valid.shape, jax.dtypes.float0)
    return dq, dk, dv, dvalid


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, *, mask=None, kv_lengths=None, scale: float | None = None, return_lse: bool = False,
                    backend: str | None = None, block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None):
    """Flash attention; q (B, Lq, H, D), k/v (B, Lk, Hk, D), D in {64, 128}, fp32/bf16/fp16.

    Args:
      mask: boolean key-padding mask broadcastable to (B, H, 1, Lk); True = attend.
      kv_lengths: int (B,); keys at index >= kv_lengths[b] are masked.
      scale: logit scale, default 1/sqrt(D).
      return_lse: also return the natural-log log-sum-exp (B, Lq, H) fp32 (differentiable).
      backend: 'triton' | 'mosaic_gpu' | 'mosaic_tpu' | None (:func:`default_backend`).
      block_sizes: tiles; default ``BlockSizes.get_default(backend, Lq, Lk, D, dtype)``.
      interpret: run in Pallas interpret mode; default: True on CPU.

    Returns (B, Lq, H, D) in q's dtype (and the lse). Rows with no visible key give 0 (lse -inf).
    """
    check_inputs(q, k, v)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    backend = backend or default_backend(q.dtype, d)
    mod = _backend_module(backend)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    blocks = block_sizes or BlockSizes.get_default(backend, lq, lk, d, q.dtype)
    scale = float(1.0 / np.sqrt(d) if scale is None else scale)
    qm = mod.q_multiple(blocks) if hasattr(mod, "q_multiple") else blocks.q_multiple
    km = mod.k_multiple(blocks) if hasattr(mod, "k_multiple") else blocks.k_multiple
    lq_pad, lk_pad = round_up(lq, qm), round_up(lk, km)
    mod.check_supported(q.shape, k.shape, q.dtype, blocks, lq_pad, lk_pad)
    valid, _ = key_validity(mask, kv_lengths, b, h, lq, lk, lk_pad)
    qp, kp, vp = pad_axis(q, 1, lq_pad), pad_axis(k, 1, lk_pad), pad_axis(v, 1, lk_pad)
    out, lse2 = _flash(qp, kp, vp, valid, _Config(backend, scale, blocks, bool(interpret)))
    out = out[:, :lq]
    if not return_lse:
        return out
    return out, (lse2[:, :, :lq] * LN2).transpose(0, 2, 1)
