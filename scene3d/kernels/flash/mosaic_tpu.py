"""Flash attention as Mosaic TPU Pallas kernels.

Layout inside the kernels is (B, H, L, D) (the last two dims of every block are (rows, head_dim), as the TPU
(8, 128) tiling wants). Forward: grid (batch, heads, q tiles, k tiles) with the k axis 'arbitrary' and the online
softmax state (max, sum, fp32 accumulator) in VMEM scratch, written out on the last k tile. The kv lengths are
scalar-prefetched into SMEM: key tiles past a batch's length are skipped and their DMA is clamped to the last
needed tile (no HBM traffic). Backward: a dK/dV kernel (grid ..., k tiles, q tiles) and a dQ kernel (grid ...,
q tiles, k tiles), each accumulating in VMEM scratch.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from scene3d.kernels.flash.common import LOG2E, M_INIT, MASK_VALUE, BlockSizes, dot_precision

NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _last_block(kvlen_ref, bb, block_k):
    return jnp.maximum(lax.div(kvlen_ref[bb] + block_k - 1, block_k) - 1, 0)


def _fwd_kernel(kvlen_ref, q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, scale, block_k,
                precision):
    bb, j, nk = pl.program_id(0), pl.program_id(3), pl.num_programs(3)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, M_INIT, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when(j * block_k < kvlen_ref[bb])  # tiles past the kv length are fully masked: skip them
    def _step():
        s = lax.dot_general(q_ref[...], k_ref[...], NT, precision=precision, preferred_element_type=jnp.float32)
        s = s * (scale * LOG2E)  # (bq, bk) base-2 logits
        if valid_ref is not None:
            s = jnp.where(valid_ref[...] != 0, s, MASK_VALUE)  # valid (1, bk)
        m_prev = m_sc[...]  # (bq, 1)
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        alpha = jnp.exp2(m_prev - m_new)
        p = jnp.exp2(s - m_new)
        l_sc[...] = l_sc[...] * alpha + jnp.sum(p, axis=1, keepdims=True)
        v = v_ref[...]
        acc_sc[...] = acc_sc[...] * alpha + lax.dot(p.astype(v.dtype), v, precision=precision,
                                                    preferred_element_type=jnp.float32)
        m_sc[...] = m_new

    @pl.when(j == nk - 1)
    def _finish():
        l = l_sc[...]
        empty = l == 0.0
        o_ref[...] = (acc_sc[...] / jnp.where(empty, 1.0, l)).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(empty, -jnp.inf, m_sc[...] + jnp.log2(jnp.where(empty, 1.0, l)))


def _index_maps(h, hk, hm, block_k):
    g = h // hk
    hv = (lambda hh: hh) if hm > 1 else (lambda hh: 0)

    def kvh(hh):  # kv head of q head hh (lax.div: plain integer division, hh >= 0)
        return hh if g == 1 else lax.div(hh, jnp.int32(g))

    def kclamp(j, bb, kvlen):
        return jnp.minimum(j, _last_block(kvlen, bb, block_k))
    return dict(
        # grid (b, h, q tile i, k tile j)
        q=lambda bb, hh, i, j, kv: (bb, hh, i, 0),
        k=lambda bb, hh, i, j, kv: (bb, kvh(hh), kclamp(j, bb, kv), 0),
        valid=lambda bb, hh, i, j, kv: (bb, hv(hh), 0, kclamp(j, bb, kv)),
        # grid (b, h, k tile j, q tile i) for dK/dV
        q_t=lambda bb, hh, j, i, kv: (bb, hh, i, 0),
        k_t=lambda bb, hh, j, i, kv: (bb, kvh(hh), j, 0),
        dk_t=lambda bb, hh, j, i, kv: (bb, hh, j, 0),
        valid_t=lambda bb, hh, j, i, kv: (bb, hv(hh), 0, j),
    )


def _params(ndims_parallel=3):
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * ndims_parallel + ("arbitrary",))


def forward(q, k, v, valid, *, scale: float, blocks: BlockSizes, interpret: bool = False, kv_len=None):
    """Padded (B, Lq, H, D), (B, Lk, Hk, D) x2, validity (B, Hm, 1, Lk) | None -> (out, lse2 (B, H, Lq))."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    bq, bk = blocks.block_q, blocks.block_k
    hm = 1 if valid is None else valid.shape[1]
    kv_len = _kv_len(valid, b, lk) if kv_len is None else kv_len
    ix = _index_maps(h, hk, hm, bk)
    qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1, grid=(b, h, lq // bq, lk // bk),
        in_specs=[pl.BlockSpec((None, None, bq, d), ix["q"]), pl.BlockSpec((None, None, bk, d), ix["k"]),
                  pl.BlockSpec((None, None, bk, d), ix["k"]),
                  None if valid is None else pl.BlockSpec((None, None, 1, bk), ix["valid"])],
        out_specs=[pl.BlockSpec((None, None, bq, d), ix["q"]), pl.BlockSpec((None, None, bq, 1), ix["q"])],
        scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, d), jnp.float32)])
    out, lse2 = pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, block_k=bk, precision=dot_precision(q.dtype)),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(qt.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq, 1), jnp.float32)],
        compiler_params=_params(), interpret=interpret, name="scene3d_flash_fwd_tpu",
    )(kv_len, qt, kt, vt, valid)
    return out.transpose(0, 2, 1, 3), lse2[..., 0]


def _kv_len(valid, b, lk):
    """Per-batch number of key tiles worth visiting: 1 + the last valid key index (0 if none)."""
    if valid is None:
        return jnp.full((b,), lk, jnp.int32)
    any_head = jnp.any(valid[:, :, 0, :] != 0, axis=1)  # (B, Lk)
    idx = jnp.arange(1, lk + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(any_head, idx[None, :], 0), axis=1).astype(jnp.int32)


def _dkv_kernel(kvlen_ref, q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_sc,
                dv_sc, *, scale, block_k, precision):
    bb, j, i, nq = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.num_programs(3)

    @pl.when(i == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when(j * block_k < kvlen_ref[bb])
    def _step():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = lax.dot_general(q, k, NT, precision=precision, preferred_element_type=jnp.float32) * (scale * LOG2E)
        if valid_ref is not None:
            s = jnp.where(valid_ref[...] != 0, s, MASK_VALUE)
        p = jnp.exp2(s - lse_ref[...])  # (bq, bk); lse (bq, 1)
        dv_sc[...] += lax.dot(p.astype(do.dtype).T, do, precision=precision, preferred_element_type=jnp.float32)
        dp = lax.dot_general(do, v, NT, precision=precision, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[...])
        dk_sc[...] += lax.dot(ds.astype(q.dtype).T, q, precision=precision, preferred_element_type=jnp.float32)

    @pl.when(i == nq - 1)
    def _finish():
        dk_ref[...] = (dk_sc[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(kvlen_ref, q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_sc, *, scale,
               block_k, precision):
    bb, j, nk = pl.program_id(0), pl.program_id(3), pl.num_programs(3)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when(j * block_k < kvlen_ref[bb])
    def _step():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = lax.dot_general(q, k, NT, precision=precision, preferred_element_type=jnp.float32) * (scale * LOG2E)
        if valid_ref is not None:
            s = jnp.where(valid_ref[...] != 0, s, MASK_VALUE)
        p = jnp.exp2(s - lse_ref[...])
        dp = lax.dot_general(do, v, NT, precision=precision, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[...])
        dq_sc[...] += lax.dot(ds.astype(k.dtype), k, precision=precision, preferred_element_type=jnp.float32)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (dq_sc[...] * scale).astype(dq_ref.dtype)


def backward(q, k, v, valid, do, lse2, delta, *, scale: float, blocks: BlockSizes, dkv_dtype,
             interpret: bool = False):
    """Padded inputs, lse2 / delta (B, H, Lq) fp32 -> dq (B, Lq, H, D), dk, dv per q head (B, Lk, H, D)."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    hm = 1 if valid is None else valid.shape[1]
    kv_len = _kv_len(valid, b, lk)
    prec = dot_precision(q.dtype)
    qt, kt, vt, dot_ = (x.transpose(0, 2, 1, 3) for x in (q, k, v, do))
    lse_c, delta_c = lse2[..., None], delta[..., None]  # (B, H, Lq, 1): rows on sublanes

    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    ix = _index_maps(h, hk, hm, bk)
    qspec, kspec = pl.BlockSpec((None, None, bq, d), ix["q_t"]), pl.BlockSpec((None, None, bk, d), ix["k_t"])
    rspec = pl.BlockSpec((None, None, bq, 1), ix["q_t"])
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, block_k=bk, precision=prec),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, h, lk // bk, lq // bq),
            in_specs=[qspec, kspec, kspec,
                      None if valid is None else pl.BlockSpec((None, None, 1, bk), ix["valid_t"]),
                      qspec, rspec, rspec],
            out_specs=[pl.BlockSpec((None, None, bk, d), ix["dk_t"])] * 2,
            scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32)] * 2),
        out_shape=[jax.ShapeDtypeStruct((b, h, lk, d), dkv_dtype)] * 2,
        compiler_params=_params(), interpret=interpret, name="scene3d_flash_bwd_dkv_tpu",
    )(kv_len, qt, kt, vt, valid, dot_, lse_c, delta_c)

    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    ix = _index_maps(h, hk, hm, bk)
    qspec, kspec = pl.BlockSpec((None, None, bq, d), ix["q"]), pl.BlockSpec((None, None, bk, d), ix["k"])
    rspec = pl.BlockSpec((None, None, bq, 1), ix["q"])
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=bk, precision=prec),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1, grid=(b, h, lq // bq, lk // bk),
            in_specs=[qspec, kspec, kspec,
                      None if valid is None else pl.BlockSpec((None, None, 1, bk), ix["valid"]),
                      qspec, rspec, rspec],
            out_specs=qspec, scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=_params(), interpret=interpret, name="scene3d_flash_bwd_dq_tpu",
    )(kv_len, qt, kt, vt, valid, dot_, lse_c, delta_c)
    return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)


def check_supported(q_shape, k_shape, dtype, blocks: BlockSizes, lq_pad: int, lk_pad: int) -> None:
    """Raise ValueError for tiles that break the TPU (sublane, lane) = (8, 128) tiling."""
    sub = 16 if jnp.dtype(dtype).itemsize == 2 else 8
    for f in ("block_q", "block_q_dkv", "block_q_dq"):
        if getattr(blocks, f) % sub:
            raise ValueError(f"flash_attention(backend='mosaic_tpu'): BlockSizes.{f} must be a multiple of {sub} "
                             f"for {jnp.dtype(dtype).name}, got {getattr(blocks, f)}")
    for f in ("block_k", "block_k_dkv", "block_k_dq"):
        if getattr(blocks, f) % 128:
            raise ValueError(f"flash_attention(backend='mosaic_tpu'): BlockSizes.{f} must be a multiple of 128 "
                             f"(keys lie on lanes), got {getattr(blocks, f)}")
