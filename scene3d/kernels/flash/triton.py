"""Flash attention through Pallas' Triton lowering (A100 and H100; any CUDA GPU Triton supports).

Forward: grid (q tiles, batch, heads); each program keeps its q tile in registers and streams k/v tiles with an
online softmax (fp32 max / sum / accumulator), writing the output tile and lse2. Backward: two kernels, dK/dV
(grid over key tiles, loop over query tiles) and dQ (grid over query tiles, loop over key tiles), recomputing
p = exp2(s2 - lse2) from the saved lse; delta = rowsum(o * do) - dlse is computed outside (one fused XLA pass).

JAX marks the Triton lowering deprecated from 0.11 on. Pinned 0.10.2 runs it; a move to a newer JAX needs either
the ``jax-triton`` package / the JAX version that still ships ``jax.experimental.pallas.triton`` (the kernels use
only ``pl.pallas_call``, ``pl.BlockSpec``, ``pl.dot``, ref slicing and ``plgpu.CompilerParams(num_warps,
num_stages)``), or porting A100 to Mosaic GPU once it supports sm_80 (it targets sm_90+ today).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from scene3d.kernels.flash.common import LOG2E, M_INIT, MASK_VALUE, BlockSizes, dot_precision


def _fwd_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, *, scale, block_k, precision):
    bq, d = q_ref.shape
    lk = k_ref.shape[0]
    q = q_ref[...]
    scale2 = scale * LOG2E

    def body(j, carry):
        acc, m, l = carry
        sl = pl.ds(j * block_k, block_k)
        k = k_ref[sl, :]
        s = pl.dot(q, k, trans_b=True, precision=precision) * scale2  # (bq, bk) fp32, base-2 logits
        if valid_ref is not None:
            s = jnp.where(valid_ref[sl][None, :] != 0, s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l = l * alpha + jnp.sum(p, axis=1)
        v = v_ref[sl, :]
        acc = acc * alpha[:, None] + pl.dot(p.astype(v.dtype), v, precision=precision)
        return acc, m_new, l

    init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), M_INIT, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(0, lk // block_k, body, init)
    empty = l == 0.0  # no visible key in this row
    o_ref[...] = (acc / jnp.where(empty, 1.0, l)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log2(jnp.where(empty, 1.0, l)))


def _specs(b, h, hk, hm):
    """Index maps (program ids (tile, batch, head)) for q-like, kv-like, validity and per-row arrays."""
    g = h // hk
    hv = (lambda hh: hh) if hm > 1 else (lambda hh: 0)
    return dict(q=lambda i, bb, hh: (bb, i, hh, 0), kv=lambda i, bb, hh: (bb, 0, hh // g, 0),
                kv_tile=lambda j, bb, hh: (bb, j, hh // g, 0), valid=lambda i, bb, hh: (bb, hv(hh), 0, 0),
                valid_tile=lambda j, bb, hh: (bb, hv(hh), 0, j), row=lambda i, bb, hh: (bb, hh, i))


def forward(q, k, v, valid, *, scale: float, blocks: BlockSizes, interpret: bool = False):
    """Padded (B, Lq, H, D), (B, Lk, Hk, D) x2, validity (B, Hm, 1, Lk) int32 | None -> (out, lse2 (B, H, Lq))."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    bq, bk = blocks.block_q, blocks.block_k
    hm = 1 if valid is None else valid.shape[1]
    ix = _specs(b, h, hk, hm)
    kernel = functools.partial(_fwd_kernel, scale=scale, block_k=bk, precision=dot_precision(q.dtype))
    in_specs = [pl.BlockSpec((None, bq, None, d), ix["q"]), pl.BlockSpec((None, lk, None, d), ix["kv"]),
                pl.BlockSpec((None, lk, None, d), ix["kv"]),
                None if valid is None else pl.BlockSpec((None, None, None, lk), ix["valid"])]
    out, lse2 = pl.pallas_call(
        kernel, grid=(lq // bq, b, h), in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, bq, None, d), ix["q"]), pl.BlockSpec((None, None, bq), ix["row"])],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32)],
        compiler_params=pltriton.CompilerParams(num_warps=blocks.num_warps or (4 if d <= 64 else 8),
                                                num_stages=blocks.num_stages),
        interpret=interpret, name="scene3d_flash_fwd_triton",
    )(q, k, v, valid)
    return out, lse2


def _dkv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale, block_q,
                precision):
    bk, d = k_ref.shape
    lq = q_ref.shape[0]
    k, v = k_ref[...], v_ref[...]
    scale2 = scale * LOG2E
    valid = None if valid_ref is None else valid_ref[...][None, :] != 0

    def body(i, carry):
        dk, dv = carry
        sl = pl.ds(i * block_q, block_q)
        q, do = q_ref[sl, :], do_ref[sl, :]
        s = pl.dot(q, k, trans_b=True, precision=precision) * scale2  # (bq, bk)
        if valid is not None:
            s = jnp.where(valid, s, MASK_VALUE)
        p = jnp.exp2(s - lse_ref[sl][:, None])
        dv = dv + pl.dot(p.astype(do.dtype), do, trans_a=True, precision=precision)
        dp = pl.dot(do, v, trans_b=True, precision=precision)
        ds = p * (dp - delta_ref[sl][:, None])
        dk = dk + pl.dot(ds.astype(q.dtype), q, trans_a=True, precision=precision)
        return dk, dv

    zeros = jnp.zeros((bk, d), jnp.float32)
    dk, dv = lax.fori_loop(0, lq // block_q, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale, block_k, precision):
    bq, d = q_ref.shape
    lk = k_ref.shape[0]
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    scale2 = scale * LOG2E

    def body(j, dq):
        sl = pl.ds(j * block_k, block_k)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = pl.dot(q, k, trans_b=True, precision=precision) * scale2
        if valid_ref is not None:
            s = jnp.where(valid_ref[sl][None, :] != 0, s, MASK_VALUE)
        p = jnp.exp2(s - lse[:, None])
        dp = pl.dot(do, v, trans_b=True, precision=precision)
        ds = p * (dp - delta[:, None])
        return dq + pl.dot(ds.astype(k.dtype), k, precision=precision)

    dq = lax.fori_loop(0, lk // block_k, body, jnp.zeros((bq, d), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def backward(q, k, v, valid, do, lse2, delta, *, scale: float, blocks: BlockSizes, dkv_dtype,
             interpret: bool = False):
    """Padded inputs, lse2 / delta (B, H, Lq) fp32 -> dq (B, Lq, H, D), dk, dv per q head (B, Lk, H, D)."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    hm = 1 if valid is None else valid.shape[1]
    ix = _specs(b, h, hk, hm)
    prec = dot_precision(q.dtype)
    params = pltriton.CompilerParams(num_warps=blocks.num_warps or (4 if d <= 64 else 8), num_stages=blocks.num_stages)
    full_q = pl.BlockSpec((None, lq, None, d), lambda j, bb, hh: (bb, 0, hh, 0))
    full_row = pl.BlockSpec((None, None, lq), lambda j, bb, hh: (bb, hh, 0))
    bkd = blocks.block_k_dkv
    vspec = None if valid is None else pl.BlockSpec((None, None, None, bkd), ix["valid_tile"])
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, block_q=blocks.block_q_dkv, precision=prec),
        grid=(lk // bkd, b, h),
        in_specs=[full_q, pl.BlockSpec((None, bkd, None, d), ix["kv_tile"]),
                  pl.BlockSpec((None, bkd, None, d), ix["kv_tile"]), vspec, full_q, full_row, full_row],
        out_specs=[pl.BlockSpec((None, bkd, None, d), lambda j, bb, hh: (bb, j, hh, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct((b, lk, h, d), dkv_dtype)] * 2,
        compiler_params=params, interpret=interpret, name="scene3d_flash_bwd_dkv_triton",
    )(q, k, v, valid, do, lse2, delta)

    bqd = blocks.block_q_dq
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=blocks.block_k_dq, precision=prec),
        grid=(lq // bqd, b, h),
        in_specs=[pl.BlockSpec((None, bqd, None, d), ix["q"]), pl.BlockSpec((None, lk, None, d), ix["kv"]),
                  pl.BlockSpec((None, lk, None, d), ix["kv"]),
                  None if valid is None else pl.BlockSpec((None, None, None, lk), ix["valid"]),
                  pl.BlockSpec((None, bqd, None, d), ix["q"]), pl.BlockSpec((None, None, bqd), ix["row"]),
                  pl.BlockSpec((None, None, bqd), ix["row"])],
        out_specs=pl.BlockSpec((None, bqd, None, d), ix["q"]),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params, interpret=interpret, name="scene3d_flash_bwd_dq_triton",
    )(q, k, v, valid, do, lse2, delta)
    return dq, dk, dv


def check_supported(q_shape, k_shape, dtype, blocks: BlockSizes, lq_pad: int, lk_pad: int) -> None:
    """Raise ValueError for tiles Triton cannot use (powers of two >= 16: tensor-core dots, pow-2 tensors)."""
    for f in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq", "block_k_dq"):
        v = getattr(blocks, f)
        if v < 16 or v & (v - 1):
            raise ValueError(f"flash_attention(backend='triton'): BlockSizes.{f} must be a power of two >= 16, "
                             f"got {v}")
