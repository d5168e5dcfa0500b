"""Flash attention forward for Hopper (sm_90) as a Mosaic GPU Pallas kernel, FlashAttention-3 style.

One CTA per (head, pair of q tiles, batch) runs three warpgroups: two compute warpgroups, each owning a 64-row
q tile (``block_q``) held in shared memory, and one memory warpgroup (registers lowered to 40 via setmaxnreg)
that streams key/value tiles into a ``max_concurrent_steps``-deep ring of swizzled shared-memory buffers with
TMA copies, refilling a slot once both compute warpgroups have arrived on its 'consumed' barrier. The compute
warpgroups issue QK^T and PV as warpgroup MMAs (wgmma) with fp32 register accumulators and keep the online
softmax (base 2, exp2) in registers in the WGMMA layout. Key validity (padding, key masks, kv lengths) arrives as
an additive fp32 bias row per key tile, copied by TMA with the keys.

The backward pass on Hopper reuses the Triton kernels (scene3d.kernels.flash.triton), which run on sm_90.
Constraints: bf16/fp16 inputs (wgmma has no fp32 operand mode short of tf32), head_dim 64 or 128, block_q = 64,
block_k a multiple of 64, Lq padded to 2 * block_q, Lk padded to block_k.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from scene3d.kernels.flash import triton as _triton
from scene3d.kernels.flash.common import LOG2E, M_INIT, MASK_VALUE, BlockSizes

COMPUTE_WGS = 2


def unsupported_reason(dtype, head_dim: int) -> str | None:
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"Mosaic GPU flash attention takes bf16/fp16 inputs, got {jnp.dtype(dtype).name}"
    if head_dim not in (64, 128):
        return f"Mosaic GPU flash attention takes head_dim 64 or 128, got {head_dim}"
    return None


def check_supported(q_shape, k_shape, dtype, blocks: BlockSizes, lq_pad: int, lk_pad: int) -> None:
    """Raise ValueError for inputs / tiles this kernel does not handle."""
    reason = unsupported_reason(dtype, q_shape[-1])
    if reason is not None:
        raise ValueError(f"flash_attention(backend='mosaic_gpu'): {reason}; use backend='triton'")
    if blocks.block_q != 64:
        raise ValueError(f"flash_attention(backend='mosaic_gpu'): BlockSizes.block_q must be 64 (one wgmma "
                         f"M-tile per compute warpgroup), got {blocks.block_q}")
    if blocks.block_k % 64 or blocks.block_k > 256:
        raise ValueError(f"flash_attention(backend='mosaic_gpu'): BlockSizes.block_k must be 64, 128, 192 or 256, "
                         f"got {blocks.block_k}")
    if blocks.max_concurrent_steps < 1:
        raise ValueError("flash_attention(backend='mosaic_gpu'): BlockSizes.max_concurrent_steps must be >= 1")
    if lq_pad % (COMPUTE_WGS * blocks.block_q):
        raise ValueError(f"flash_attention(backend='mosaic_gpu'): padded q length {lq_pad} must be a multiple of "
                         f"{COMPUTE_WGS * blocks.block_q}; make BlockSizes.q_multiple cover it")
    _triton.check_supported(q_shape, k_shape, dtype, blocks, lq_pad, lk_pad)  # the backward runs on Triton


def q_multiple(blocks: BlockSizes) -> int:
    """Lq is padded to a multiple of this: a CTA covers COMPUTE_WGS q tiles; the Triton backward's tiles."""
    return math.lcm(blocks.q_multiple, COMPUTE_WGS * blocks.block_q)


def smem_bytes(blocks: BlockSizes, head_dim: int, itemsize: int = 2) -> int:
    """Shared memory the forward kernel allocates (q/o tiles, k/v rings, bias ring, lse)."""
    depth = blocks.max_concurrent_steps
    return (COMPUTE_WGS * blocks.block_q * head_dim * itemsize + 2 * depth * blocks.block_k * head_dim * itemsize
            + depth * blocks.block_k * 4 + COMPUTE_WGS * blocks.block_q * 4)


def _kernel(q_ref, k_ref, v_ref, bias_ref, out_ref, lse_ref, qo_smem2, k_smem, v_smem, bias_smem, lse_smem2,
            q_bar, k_bar, v_bar, k_done, v_done, *, scale, block_q, block_k, steps, depth, groups, head_dim,
            bias_heads):
    bb, hh, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    dtype = q_ref.dtype
    scale2 = scale * LOG2E

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]
        q_base = lax.axis_index("q_seq") * (COMPUTE_WGS * block_q) + wg * block_q
        plgpu.copy_gmem_to_smem(q_ref.at[bb, pl.ds(q_base, block_q), hh], qo_smem, q_bar.at[wg])
        plgpu.barrier_wait(q_bar.at[wg])
        rows = plgpu.Layout.WGMMA.reduce(1)
        m = plgpu.layout_cast(jnp.full((block_q,), M_INIT, jnp.float32), rows)
        l = plgpu.layout_cast(jnp.zeros((block_q,), jnp.float32), rows)
        acc = plgpu.layout_cast(jnp.zeros((block_q, head_dim), jnp.float32), plgpu.Layout.WGMMA)

        def step(t, carry):
            acc, m, l = carry
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(k_bar.at[slot])

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, qo_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                return acc_ref[...]
            s = pl.run_scoped(qk, plgpu.ACC((block_q, block_k), jnp.float32)) * scale2
            if bias_smem is not None:  # 0 for visible keys, MASK_VALUE for masked / padded ones
                bias = plgpu.load(bias_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
                s = s + lax.broadcast_in_dim(bias, s.shape, [1])
            plgpu.barrier_arrive(k_done.at[slot])  # k tile (and its bias) may be refilled
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
            l = l * alpha + p.sum(axis=1)
            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
            plgpu.barrier_wait(v_bar.at[slot])
            acc = pl.run_state(lambda acc_ref: plgpu.wgmma(acc_ref, p.astype(dtype), v_smem.at[slot]))(
                plgpu.ACC.init(acc))
            plgpu.barrier_arrive(v_done.at[slot])
            return acc, m_new, l

        acc, m, l = lax.fori_loop(0, steps, step, (acc, m, l))
        empty = l == 0.0
        l_safe = jnp.where(empty, 1.0, l)
        qo_smem[...] = (acc / lax.broadcast_in_dim(l_safe, acc.shape, [0])).astype(dtype)
        lse_smem[...] = jnp.where(empty, -jnp.inf, m + jnp.log2(l_safe))
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[bb, pl.ds(q_base, block_q), hh])
        plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[bb, hh, pl.ds(q_base, block_q)])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")
        kvh = hh if groups == 1 else lax.div(hh, jnp.int32(groups))
        bh = (hh if bias_heads > 1 else 0)

        def fetch_k(t, slot):
            plgpu.copy_gmem_to_smem(k_ref.at[bb, pl.ds(t * block_k, block_k), kvh], k_smem.at[slot], k_bar.at[slot])
            if bias_ref is not None:
                plgpu.copy_gmem_to_smem(bias_ref.at[bb, bh, pl.ds(t * block_k, block_k)], bias_smem.at[slot],
                                        k_bar.at[slot])

        def fetch_v(t, slot):
            plgpu.copy_gmem_to_smem(v_ref.at[bb, pl.ds(t * block_k, block_k), kvh], v_smem.at[slot], v_bar.at[slot])

        for i in range(depth):  # fill the ring
            fetch_k(i, i)
            fetch_v(i, i)

        @pl.loop(0, steps - depth)
        def _refill(t):
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(k_done.at[slot])
            fetch_k(t + depth, slot)
            plgpu.barrier_wait(v_done.at[slot])
            fetch_v(t + depth, slot)


def forward(q, k, v, valid, *, scale: float, blocks: BlockSizes, interpret=False):
    """Padded (B, Lq, H, D), (B, Lk, Hk, D) x2, validity (B, Hm, 1, Lk) | None -> (out, lse2 (B, H, Lq))."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    bq, bk = blocks.block_q, blocks.block_k
    steps = lk // bk
    depth = max(1, min(blocks.max_concurrent_steps, steps))
    bias = None
    if valid is not None:
        bias = jnp.where(valid[:, :, 0, :] != 0, 0.0, MASK_VALUE).astype(jnp.float32)  # (B, Hm, Lk)
    swizzle = 128  # bytes: one 64-element row of a 16-bit tile
    transforms = (plgpu.TilingTransform((8, swizzle // q.dtype.itemsize)), plgpu.SwizzleTransform(swizzle))
    scratch = dict(
        qo_smem2=plgpu.SMEM((COMPUTE_WGS, bq, d), q.dtype, transforms=transforms),
        k_smem=plgpu.SMEM((depth, bk, d), k.dtype, transforms=transforms),
        v_smem=plgpu.SMEM((depth, bk, d), v.dtype, transforms=transforms),
        bias_smem=None if bias is None else plgpu.SMEM((depth, bk), jnp.float32),
        lse_smem2=plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        q_bar=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        k_bar=plgpu.Barrier(num_barriers=depth),
        v_bar=plgpu.Barrier(num_barriers=depth),
        k_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
        v_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
    )
    names = list(scratch)
    body = functools.partial(_kernel, scale=scale, block_q=bq, block_k=bk, steps=steps, depth=depth,
                             groups=h // hk, head_dim=d, bias_heads=1 if valid is None else valid.shape[1])

    def entry(q_ref, k_ref, v_ref, *rest):
        if bias is None:
            bias_ref, rest = None, rest
        else:
            bias_ref, rest = rest[0], rest[1:]
        out_ref, lse_ref, *scr = rest
        kw = dict(zip([n for n in names if scratch[n] is not None], scr))
        kw.setdefault("bias_smem", None)
        body(q_ref, k_ref, v_ref, bias_ref, out_ref, lse_ref, **kw)

    call = plgpu.kernel(
        entry, out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32)),
        scratch_types=[scratch[n] for n in names if scratch[n] is not None],
        grid=(h, lq // (COMPUTE_WGS * bq), b), grid_names=("heads", "q_seq", "batch"),
        num_threads=COMPUTE_WGS + 1, thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret if not isinstance(interpret, bool) else (_gpu_interpret_params() if interpret else None))
    args = (q, k, v) if bias is None else (q, k, v, bias)
    out, lse2 = call(*args)
    return out, lse2


def _gpu_interpret_params():
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()


def backward(q, k, v, valid, do, lse2, delta, *, scale: float, blocks: BlockSizes, dkv_dtype, interpret=False):
    """Hopper backward: the Triton dK/dV and dQ kernels (see module docstring)."""
    return _triton.backward(q, k, v, valid, do, lse2, delta, scale=scale, blocks=blocks, dkv_dtype=dkv_dtype,
                            interpret=bool(interpret))
