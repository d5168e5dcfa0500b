"""Flash attention for Hopper (sm_90) as Mosaic GPU Pallas kernels, FlashAttention-3 style, forward and backward.

Every kernel runs one CTA of three warpgroups: two compute warpgroups, each owning one 64-row tile (the wgmma M
dimension) held in shared memory for the whole kernel, and one memory warpgroup (registers lowered to 40 via
setmaxnreg) that streams the other operand's tiles into a ``max_concurrent_steps``-deep ring of swizzled
shared-memory buffers with TMA copies, refilling a slot once both compute warpgroups have arrived on its
'consumed' barrier. Products are warpgroup MMAs (wgmma) with fp32 register accumulators (WGMMA layout); the
softmax is in base 2 (exp2) in registers. Key validity (padding, key masks, kv lengths) is an additive fp32 bias
row per key tile (0 or MASK_VALUE), copied by TMA. Every TMA copy signals its own barrier.

- forward: grid (heads, Lq / 128, batch); a compute warpgroup owns a q tile, streams k/v tiles (``block_k``),
  keeps the online softmax and writes out + lse2.
- dK/dV: grid (heads, Lk / 128, batch); a compute warpgroup owns a 64-key tile (``block_k_dkv``) of k and v and
  streams q / dO tiles (``block_q_dkv`` rows) with their lse2 / delta rows: s^T = K Q^T, p^T = exp2(s^T - lse2),
  dV += p^T dO, dp^T = V dO^T, ds^T = p^T (dp^T - delta), dK += ds^T Q. dK/dV come out per q head (in the input
  dtype; grouped kv heads are summed by the caller).
- dQ: grid (heads, Lq / 128, batch); a compute warpgroup owns a 64-row q tile (``block_q_dq``) and its dO, lse2,
  delta and streams k/v tiles (``block_k_dq``): s = Q K^T, dp = dO V^T, ds = p (dp - delta), dQ += ds K.
  Two kernels, so no dQ atomics. (FA3 proper accumulates fp32 dQ from the dK/dV kernel with atomic adds; the
  0.10.2 API could do that with a TMA reduce-add, ``copy_smem_to_gmem(..., reduction_op="add")``; not done here.)

Constraints: bf16/fp16 inputs (wgmma has no fp32 operand mode short of tf32), head_dim 64 or 128, block_q =
block_q_dq = block_k_dkv = 64, block_k / block_k_dq in {64, 128, 192, 256}, block_q_dkv in {64, 128}; Lq padded to
lcm(128, block_q_dkv), Lk padded to lcm(128, block_k, block_k_dq).

Interpret mode (CPU, ``interpret=True``) runs these same kernels in JAX's Mosaic GPU interpreter
(``jax._src.pallas.mosaic_gpu.interpret``): TMA copies, barriers, the slot ring, warpgroup threads and all the
softmax arithmetic run as written. Only the matrix products go through :func:`_mma`, which on hardware issues
wgmma and in interpret mode computes the same product as a register ``jnp.dot`` from the same shared-memory
slots, because the 0.10.2 interpreter lacks ``run_state`` (accumulating into a pre-initialised wgmma
accumulator), wgmma operands in registers and transposed (``transpose_ref``) operands. Row vectors are read with
``layout_cast(ref[...])`` (the same lowering as ``plgpu.load``, which the interpreter also lacks).

JAX >= 0.11: the Pallas changelog (docs.jax.dev, pallas/CHANGELOG) marks the Triton backend deprecated with 0.11.0
("will be removed in a future version"); the pinned 0.10.2 site-packages carry no deprecation warning for it. On
Hopper nothing here uses Triton any more (fwd + bwd are these three Mosaic GPU kernels); the 'triton' backend
(scene3d.kernels.flash.triton) stays for A100 and needs its own move (see its docstring; after 0.11 Mosaic GPU
gains a pre-Hopper ``cp.async`` copy path, where ``copy_gmem_to_smem`` takes no barrier). This file uses only
``plgpu.kernel`` (not the deprecated ``core_map``), ``out_type`` / ``scratch_types`` (the 0.10 names), SMEM /
Barrier / ACC scratch, ``copy_gmem_to_smem`` / ``copy_smem_to_gmem``, ``barrier_wait`` / ``barrier_arrive``,
``wgmma``, ``transpose_ref`` (not ``TransposeTransform``, removed after 0.11), ``layout_cast``,
``set_max_registers``, and the private ``jax._src.pallas.mosaic_gpu.interpret.params.InterpretGPUParams``
(re-check that import first). If a newer interpreter gains ``run_state`` / register and transposed wgmma operands
/ ``layout_cast``, drop the interpret branches of :func:`_mma` and :func:`_cast`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax._src.state import types as state_types
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from scene3d.kernels.flash.common import LOG2E, M_INIT, MASK_VALUE, BlockSizes

COMPUTE_WGS = 2
_SWIZZLE = 128  # bytes: one 64-element row of a 16-bit tile


def unsupported_reason(dtype, head_dim: int) -> str | None:
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"Mosaic GPU flash attention takes bf16/fp16 inputs, got {jnp.dtype(dtype).name}"
    if head_dim not in (64, 128):
        return f"Mosaic GPU flash attention takes head_dim 64 or 128, got {head_dim}"
    return None


def check_supported(q_shape, k_shape, dtype, blocks: BlockSizes, lq_pad: int, lk_pad: int) -> None:
    """Raise ValueError for inputs / tiles these kernels do not handle."""
    where = "flash_attention(backend='mosaic_gpu')"
    reason = unsupported_reason(dtype, q_shape[-1])
    if reason is not None:
        raise ValueError(f"{where}: {reason}; use backend='triton'")
    for f in ("block_q", "block_q_dq", "block_k_dkv"):  # one wgmma M-tile per compute warpgroup
        if getattr(blocks, f) != 64:
            raise ValueError(f"{where}: BlockSizes.{f} must be 64 (one wgmma M-tile per compute warpgroup), "
                             f"got {getattr(blocks, f)}")
    for f in ("block_k", "block_k_dq"):
        v = getattr(blocks, f)
        if v % 64 or v > 256:
            raise ValueError(f"{where}: BlockSizes.{f} must be 64, 128, 192 or 256, got {v}")
    if blocks.block_q_dkv not in (64, 128):
        raise ValueError(f"{where}: BlockSizes.block_q_dkv must be 64 or 128, got {blocks.block_q_dkv}")
    if blocks.max_concurrent_steps < 1:
        raise ValueError(f"{where}: BlockSizes.max_concurrent_steps must be >= 1")
    if lq_pad % q_multiple(blocks):
        raise ValueError(f"{where}: padded q length {lq_pad} must be a multiple of {q_multiple(blocks)}")
    if lk_pad % k_multiple(blocks):
        raise ValueError(f"{where}: padded kv length {lk_pad} must be a multiple of {k_multiple(blocks)}")


def q_multiple(blocks: BlockSizes) -> int:
    """Lq is padded to a multiple of this: a CTA covers COMPUTE_WGS q tiles (forward, dQ); dK/dV q tiles."""
    return math.lcm(COMPUTE_WGS * blocks.block_q, COMPUTE_WGS * blocks.block_q_dq, blocks.block_q_dkv)


def k_multiple(blocks: BlockSizes) -> int:
    """Lk is padded to a multiple of this: a dK/dV CTA covers COMPUTE_WGS key tiles; streamed k tiles."""
    return math.lcm(COMPUTE_WGS * blocks.block_k_dkv, blocks.block_k, blocks.block_k_dq)


def smem_bytes(blocks: BlockSizes, head_dim: int, itemsize: int = 2) -> int:
    """Shared memory of the largest of the three kernels (resident tiles, TMA rings, row vectors)."""
    depth, d = blocks.max_concurrent_steps, head_dim
    fwd = (COMPUTE_WGS * blocks.block_q * d * itemsize + 2 * depth * blocks.block_k * d * itemsize
           + depth * blocks.block_k * 4 + COMPUTE_WGS * blocks.block_q * 4)
    dq = (2 * COMPUTE_WGS * blocks.block_q_dq * d * itemsize + 2 * depth * blocks.block_k_dq * d * itemsize
          + depth * blocks.block_k_dq * 4 + 2 * COMPUTE_WGS * blocks.block_q_dq * 4)
    dkv = (2 * COMPUTE_WGS * blocks.block_k_dkv * d * itemsize + 2 * depth * blocks.block_q_dkv * d * itemsize
           + 2 * depth * blocks.block_q_dkv * 4 + COMPUTE_WGS * blocks.block_k_dkv * 4)
    return max(fwd, dq, dkv)


# ---------------------------------------------------------------------------------------------------------------
# Pieces shared by the kernels


def _mma(acc, a, b, *, trans_b: bool = False, interpret: bool = False):
    """``acc + a @ b`` (``acc`` None: just the product) as one wgmma, fp32 (M, N) result in the WGMMA layout.

    a: (M, K) 16-bit shared-memory ref, or a register array in the WGMMA layout; b: (K, N) shared-memory ref,
    or with ``trans_b`` an (N, K) ref used transposed. Interpret mode: the same product as a register dot.
    """
    m = a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if interpret:
        av = a if _is_array(a) else a[...]
        bv = b[...]
        prod = jnp.dot(av, bv.T if trans_b else bv, preferred_element_type=jnp.float32)
        return prod if acc is None else acc + prod
    bb = plgpu.transpose_ref(b, (1, 0)) if trans_b else b
    if acc is None:
        def product(acc_ref):
            plgpu.wgmma(acc_ref, a, bb)
            return acc_ref[...]
        return pl.run_scoped(product, plgpu.ACC((m, n), jnp.float32))
    return pl.run_state(lambda acc_ref: plgpu.wgmma(acc_ref, a, bb))(plgpu.ACC.init(acc))


def _is_array(x) -> bool:
    """A register value (not a Ref / transformed Ref)."""
    return not isinstance(x, state_types.TransformedRef) and not isinstance(jax.typeof(x), state_types.AbstractRef)


def _cast(x, layout, interpret: bool):
    """``plgpu.layout_cast`` (a register-layout hint; the interpreter has no rule for it, so skipped there)."""
    return x if interpret else plgpu.layout_cast(x, layout)


def _rows(ref, layout, interpret: bool):
    """A 1-D shared-memory row vector in a register ``layout`` (lowered like ``plgpu.load``)."""
    return _cast(ref[...], layout, interpret)


def _zeros_acc(shape, interpret: bool):
    return _cast(jnp.zeros(shape, jnp.float32), plgpu.Layout.WGMMA, interpret)


def _tile_transforms(dtype):
    return (plgpu.TilingTransform((8, _SWIZZLE // jnp.dtype(dtype).itemsize)), plgpu.SwizzleTransform(_SWIZZLE))


def _drain(steps: int, depth: int, *done_barriers):
    """Memory warpgroup, after its refill loop: wait until the last ``depth`` steps are consumed, so that it
    observes every phase of the 'consumed' barriers it waits on (free on hardware; the interpreter checks it)."""
    for t in range(max(0, steps - depth), steps):
        for bar in done_barriers:
            plgpu.barrier_wait(bar.at[t % depth])


def _stream_kv(k_ref, v_ref, bias_ref, k_smem, v_smem, bias_smem, k_bar, v_bar, kb_bar, k_done, v_done, *, bb, hh,
               groups: int, block_k: int, steps: int, depth: int, v_first: bool):
    """Memory warpgroup of the kernels that stream key / value tiles (forward, dQ) through a ``depth``-slot ring.

    Key tile t (of kv head hh // groups, with its bias row when ``bias_ref`` is set) lands in ``k_smem`` slot
    t % depth and signals ``k_bar`` (bias: ``kb_bar``); value tile t in ``v_smem``, signalling ``v_bar``. The ring
    is filled with tiles 0..depth-1 (k then v); then slot t % depth is refilled with tile t + depth once the compute
    warpgroups release it (``k_done`` / ``v_done``), waiting in the order they release them: v before k when
    ``v_first`` (the dQ step is done with v first), else k before v; finally the ring is drained."""
    kvh = hh if groups == 1 else lax.div(hh, jnp.int32(groups))
    bh = hh if bias_ref is not None and bias_ref.shape[1] > 1 else 0

    def fetch_k(t, slot):
        plgpu.copy_gmem_to_smem(k_ref.at[bb, pl.ds(t * block_k, block_k), kvh], k_smem.at[slot], k_bar.at[slot])
        if bias_ref is not None:
            plgpu.copy_gmem_to_smem(bias_ref.at[bb, bh, pl.ds(t * block_k, block_k)], bias_smem.at[slot],
                                    kb_bar.at[slot])

    def fetch_v(t, slot):
        plgpu.copy_gmem_to_smem(v_ref.at[bb, pl.ds(t * block_k, block_k), kvh], v_smem.at[slot], v_bar.at[slot])

    for i in range(depth):  # fill the ring
        fetch_k(i, i)
        fetch_v(i, i)
    order = ((v_done, fetch_v), (k_done, fetch_k)) if v_first else ((k_done, fetch_k), (v_done, fetch_v))

    @pl.loop(0, steps - depth)
    def _refill(t):
        slot = lax.rem(t, jnp.int32(depth))
        for done, fetch in order:
            plgpu.barrier_wait(done.at[slot])
            fetch(t + depth, slot)

    _drain(steps, depth, *(done for done, _ in order))


def _bias(valid):
    """Validity (B, Hm, 1, Lk) int32 | None -> additive fp32 bias (B, Hm, Lk): 0 visible, MASK_VALUE masked."""
    if valid is None:
        return None
    return jnp.where(valid[:, :, 0, :] != 0, 0.0, MASK_VALUE).astype(jnp.float32)


def _interpret_params(interpret):
    if isinstance(interpret, bool) or interpret is None:
        if not interpret:
            return None
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        return InterpretGPUParams()
    return interpret


def _call(body, args, out_type, scratch: dict, grid, grid_names, interpret, name):
    """plgpu.kernel over ``args`` (None entries dropped) with named scratch (None entries dropped); the body gets
    refs for every arg / output / scratch name, None for the dropped ones."""
    present = [a is not None for a in args]
    names = [n for n in scratch if scratch[n] is not None]
    n_out = len(out_type) if isinstance(out_type, (list, tuple)) else 1

    def entry(*refs):
        it = iter(refs)
        ins = [next(it) if p else None for p in present]
        outs = [next(it) for _ in range(n_out)]
        scr = {n: None for n in scratch}
        scr.update(zip(names, it))
        body(*ins, *outs, **scr)

    call = plgpu.kernel(
        entry, out_type=out_type, scratch_types=[scratch[n] for n in names], grid=grid, grid_names=grid_names,
        num_threads=COMPUTE_WGS + 1, thread_name="wg", compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=_interpret_params(interpret), kernel_name=name)
    return call(*[a for a in args if a is not None])


# ---------------------------------------------------------------------------------------------------------------
# Forward


def _fwd_kernel(q_ref, k_ref, v_ref, bias_ref, out_ref, lse_ref, *, qo_smem2, k_smem, v_smem, bias_smem, lse_smem2,
                q_bar, k_bar, kb_bar, v_bar, k_done, v_done, scale, block_q, block_k, steps, depth, groups, head_dim,
                interpret):
    bb, hh, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    dtype = q_ref.dtype
    scale2 = scale * LOG2E
    mma = functools.partial(_mma, interpret=interpret)
    rows_of = functools.partial(_rows, interpret=interpret)

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]
        q_base = lax.axis_index("q_seq") * (COMPUTE_WGS * block_q) + wg * block_q
        plgpu.copy_gmem_to_smem(q_ref.at[bb, pl.ds(q_base, block_q), hh], qo_smem, q_bar.at[wg])
        plgpu.barrier_wait(q_bar.at[wg])
        rows = plgpu.Layout.WGMMA.reduce(1)
        m = _cast(jnp.full((block_q,), M_INIT, jnp.float32), rows, interpret)
        l = _cast(jnp.zeros((block_q,), jnp.float32), rows, interpret)
        acc = _zeros_acc((block_q, head_dim), interpret)

        def step(t, carry):
            acc, m, l = carry
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(k_bar.at[slot])
            s = mma(None, qo_smem, k_smem.at[slot], trans_b=True) * scale2
            if bias_smem is not None:  # 0 for visible keys, MASK_VALUE for masked / padded ones
                plgpu.barrier_wait(kb_bar.at[slot])
                bias = rows_of(bias_smem.at[slot], plgpu.Layout.WGMMA.reduce(0))
                s = s + lax.broadcast_in_dim(bias, s.shape, [1])
            plgpu.barrier_arrive(k_done.at[slot])  # k tile (and its bias) may be refilled
            m_new = jnp.maximum(m, s.max(axis=1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
            l = l * alpha + p.sum(axis=1)
            acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
            plgpu.barrier_wait(v_bar.at[slot])
            acc = mma(acc, p.astype(dtype), v_smem.at[slot])
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
        _stream_kv(k_ref, v_ref, bias_ref, k_smem, v_smem, bias_smem, k_bar, v_bar, kb_bar, k_done, v_done, bb=bb,
                   hh=hh, groups=groups, block_k=block_k, steps=steps, depth=depth, v_first=False)


def forward(q, k, v, valid, *, scale: float, blocks: BlockSizes, interpret=False):
    """Padded (B, Lq, H, D), (B, Lk, Hk, D) x2, validity (B, Hm, 1, Lk) | None -> (out, lse2 (B, H, Lq))."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    bq, bk = blocks.block_q, blocks.block_k
    steps = lk // bk
    depth = max(1, min(blocks.max_concurrent_steps, steps))
    bias = _bias(valid)
    tr = _tile_transforms(q.dtype)
    scratch = dict(
        qo_smem2=plgpu.SMEM((COMPUTE_WGS, bq, d), q.dtype, transforms=tr),
        k_smem=plgpu.SMEM((depth, bk, d), k.dtype, transforms=tr),
        v_smem=plgpu.SMEM((depth, bk, d), v.dtype, transforms=tr),
        bias_smem=None if bias is None else plgpu.SMEM((depth, bk), jnp.float32),
        lse_smem2=plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        q_bar=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        k_bar=plgpu.Barrier(num_barriers=depth),
        kb_bar=None if bias is None else plgpu.Barrier(num_barriers=depth),
        v_bar=plgpu.Barrier(num_barriers=depth),
        k_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
        v_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
    )
    body = functools.partial(_fwd_kernel, scale=scale, block_q=bq, block_k=bk, steps=steps, depth=depth,
                             groups=h // hk, head_dim=d, interpret=bool(interpret))
    out_type = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lq), jnp.float32))
    return _call(body, (q, k, v, bias), out_type, scratch, grid=(h, lq // (COMPUTE_WGS * bq), b),
                 grid_names=("heads", "q_seq", "batch"), interpret=interpret, name="scene3d_flash_fwd_mgpu")


# ---------------------------------------------------------------------------------------------------------------
# Backward: dK/dV kernel (key tiles resident, q / dO tiles streamed)


def _dkv_kernel(q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, k_smem2, v_smem2,
                kbias_smem2, q_smem, do_smem, lse_smem, delta_smem, k_bar2, v_bar2, kb_bar2, q_bar, lse_bar, do_bar,
                delta_bar, q_done, do_done, scale,
                block_q, block_k, steps, depth, groups, head_dim, interpret):
    bb, hh, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    dtype = q_ref.dtype
    scale2 = scale * LOG2E
    mma = functools.partial(_mma, interpret=interpret)
    rows_of = functools.partial(_rows, interpret=interpret)

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
        k_base = lax.axis_index("kv_seq") * (COMPUTE_WGS * block_k) + wg * block_k
        kvh = hh if groups == 1 else lax.div(hh, jnp.int32(groups))
        plgpu.copy_gmem_to_smem(k_ref.at[bb, pl.ds(k_base, block_k), kvh], k_smem, k_bar2.at[wg])
        plgpu.copy_gmem_to_smem(v_ref.at[bb, pl.ds(k_base, block_k), kvh], v_smem, v_bar2.at[wg])
        if bias_ref is not None:
            bh = hh if bias_ref.shape[1] > 1 else 0
            plgpu.copy_gmem_to_smem(bias_ref.at[bb, bh, pl.ds(k_base, block_k)], kbias_smem2.at[wg], kb_bar2.at[wg])
        plgpu.barrier_wait(k_bar2.at[wg])
        plgpu.barrier_wait(v_bar2.at[wg])
        kbias = None
        if bias_ref is not None:  # one value per key = per row of s^T
            plgpu.barrier_wait(kb_bar2.at[wg])
            kbias = rows_of(kbias_smem2.at[wg], plgpu.Layout.WGMMA.reduce(1))
        cols = plgpu.Layout.WGMMA.reduce(0)  # one value per query = per column of s^T

        def step(t, carry):
            dk, dv = carry
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(q_bar.at[slot])
            st = mma(None, k_smem, q_smem.at[slot], trans_b=True) * scale2  # (bk, bq) = s^T
            if kbias is not None:
                st = st + lax.broadcast_in_dim(kbias, st.shape, [0])
            plgpu.barrier_wait(lse_bar.at[slot])
            lse = rows_of(lse_smem.at[slot], cols)
            pt = jnp.exp2(st - lax.broadcast_in_dim(lse, st.shape, [1]))
            plgpu.barrier_wait(do_bar.at[slot])
            dv = mma(dv, pt.astype(dtype), do_smem.at[slot])
            dpt = mma(None, v_smem, do_smem.at[slot], trans_b=True)  # (bk, bq) = (dO V^T)^T
            plgpu.barrier_wait(delta_bar.at[slot])
            delta = rows_of(delta_smem.at[slot], cols)
            plgpu.barrier_arrive(do_done.at[slot])
            dst = pt * (dpt - lax.broadcast_in_dim(delta, dpt.shape, [1]))
            dk = mma(dk, dst.astype(dtype), q_smem.at[slot])
            plgpu.barrier_arrive(q_done.at[slot])
            return dk, dv

        zeros = _zeros_acc((block_k, head_dim), interpret)
        dk, dv = lax.fori_loop(0, steps, step, (zeros, zeros))
        k_smem[...] = (dk * scale).astype(dtype)  # k / v tiles are no longer read: reuse them for dK / dV
        v_smem[...] = dv.astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[bb, pl.ds(k_base, block_k), hh])
        plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[bb, pl.ds(k_base, block_k), hh])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")

        def fetch_q(t, slot):
            rows = pl.ds(t * block_q, block_q)
            plgpu.copy_gmem_to_smem(q_ref.at[bb, rows, hh], q_smem.at[slot], q_bar.at[slot])
            plgpu.copy_gmem_to_smem(lse_ref.at[bb, hh, rows], lse_smem.at[slot], lse_bar.at[slot])

        def fetch_do(t, slot):
            rows = pl.ds(t * block_q, block_q)
            plgpu.copy_gmem_to_smem(do_ref.at[bb, rows, hh], do_smem.at[slot], do_bar.at[slot])
            plgpu.copy_gmem_to_smem(delta_ref.at[bb, hh, rows], delta_smem.at[slot], delta_bar.at[slot])

        for i in range(depth):
            fetch_q(i, i)
            fetch_do(i, i)

        @pl.loop(0, steps - depth)
        def _refill(t):
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(do_done.at[slot])
            fetch_do(t + depth, slot)
            plgpu.barrier_wait(q_done.at[slot])
            fetch_q(t + depth, slot)

        _drain(steps, depth, do_done, q_done)


# ---------------------------------------------------------------------------------------------------------------
# Backward: dQ kernel (q tiles resident, k / v tiles streamed)


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, do_ref, lse_ref, delta_ref, dq_ref, *, q_smem2, do_smem2, lse_smem2,
               delta_smem2, k_smem, v_smem, bias_smem, q_bar2, do_bar2, lse_bar2, delta_bar2, k_bar, kb_bar, v_bar,
               k_done, v_done, scale, block_q, block_k,
               steps, depth, groups, head_dim, interpret):
    bb, hh, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
    dtype = q_ref.dtype
    scale2 = scale * LOG2E
    mma = functools.partial(_mma, interpret=interpret)
    rows_of = functools.partial(_rows, interpret=interpret)

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
        q_base = lax.axis_index("q_seq") * (COMPUTE_WGS * block_q) + wg * block_q
        rows_q = pl.ds(q_base, block_q)
        bars = (q_bar2, do_bar2, lse_bar2, delta_bar2)  # one barrier per TMA copy
        for src, dst, bar in zip((q_ref.at[bb, rows_q, hh], do_ref.at[bb, rows_q, hh], lse_ref.at[bb, hh, rows_q],
                                  delta_ref.at[bb, hh, rows_q]), (q_smem, do_smem, lse_smem2.at[wg],
                                                                  delta_smem2.at[wg]), bars):
            plgpu.copy_gmem_to_smem(src, dst, bar.at[wg])
        for bar in bars:
            plgpu.barrier_wait(bar.at[wg])
        rows = plgpu.Layout.WGMMA.reduce(1)
        lse = rows_of(lse_smem2.at[wg], rows)
        delta = rows_of(delta_smem2.at[wg], rows)

        def step(t, dq):
            slot = lax.rem(t, jnp.int32(depth))
            plgpu.barrier_wait(k_bar.at[slot])
            s = mma(None, q_smem, k_smem.at[slot], trans_b=True) * scale2  # (bq, bk)
            if bias_smem is not None:
                plgpu.barrier_wait(kb_bar.at[slot])
                bias = rows_of(bias_smem.at[slot], plgpu.Layout.WGMMA.reduce(0))
                s = s + lax.broadcast_in_dim(bias, s.shape, [1])
            p = jnp.exp2(s - lax.broadcast_in_dim(lse, s.shape, [0]))
            plgpu.barrier_wait(v_bar.at[slot])
            dp = mma(None, do_smem, v_smem.at[slot], trans_b=True)
            plgpu.barrier_arrive(v_done.at[slot])
            ds = p * (dp - lax.broadcast_in_dim(delta, dp.shape, [0]))
            dq = mma(dq, ds.astype(dtype), k_smem.at[slot])
            plgpu.barrier_arrive(k_done.at[slot])  # k tile (and its bias) may be refilled
            return dq

        dq = lax.fori_loop(0, steps, step, _zeros_acc((block_q, head_dim), interpret))
        q_smem[...] = (dq * scale).astype(dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[bb, rows_q, hh])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")
        _stream_kv(k_ref, v_ref, bias_ref, k_smem, v_smem, bias_smem, k_bar, v_bar, kb_bar, k_done, v_done, bb=bb,
                   hh=hh, groups=groups, block_k=block_k, steps=steps, depth=depth, v_first=True)


def backward(q, k, v, valid, do, lse2, delta, *, scale: float, blocks: BlockSizes, dkv_dtype, interpret=False):
    """Padded inputs, dO (B, Lq, H, D), lse2 / delta (B, H, Lq) fp32 (lse2 +inf on rows with no visible key) ->
    dq (B, Lq, H, D), dk, dv per q head (B, Lk, H, D). The kernels write dK / dV in the input dtype (the tiles
    leave through 16-bit shared memory); they are cast to ``dkv_dtype`` (fp32 for grouped kv heads, which the
    caller sums)."""
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    bias = _bias(valid)
    tr = _tile_transforms(q.dtype)
    depth_of = lambda steps: max(1, min(blocks.max_concurrent_steps, steps))  # noqa: E731
    args = (q, k, v, bias, do, lse2, delta)
    common = dict(scale=scale, groups=h // hk, head_dim=d, interpret=bool(interpret))

    bq, bk = blocks.block_q_dkv, blocks.block_k_dkv
    steps = lq // bq
    depth = depth_of(steps)
    scratch = dict(
        k_smem2=plgpu.SMEM((COMPUTE_WGS, bk, d), q.dtype, transforms=tr),
        v_smem2=plgpu.SMEM((COMPUTE_WGS, bk, d), q.dtype, transforms=tr),
        kbias_smem2=None if bias is None else plgpu.SMEM((COMPUTE_WGS, bk), jnp.float32),
        q_smem=plgpu.SMEM((depth, bq, d), q.dtype, transforms=tr),
        do_smem=plgpu.SMEM((depth, bq, d), q.dtype, transforms=tr),
        lse_smem=plgpu.SMEM((depth, bq), jnp.float32),
        delta_smem=plgpu.SMEM((depth, bq), jnp.float32),
        k_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        v_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        kb_bar2=None if bias is None else plgpu.Barrier(num_barriers=COMPUTE_WGS),
        q_bar=plgpu.Barrier(num_barriers=depth),
        lse_bar=plgpu.Barrier(num_barriers=depth),
        do_bar=plgpu.Barrier(num_barriers=depth),
        delta_bar=plgpu.Barrier(num_barriers=depth),
        q_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
        do_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
    )
    dkv_shape = jax.ShapeDtypeStruct((b, lk, h, d), q.dtype)
    dk, dv = _call(functools.partial(_dkv_kernel, block_q=bq, block_k=bk, steps=steps, depth=depth, **common),
                   args, (dkv_shape, dkv_shape), scratch, grid=(h, lk // (COMPUTE_WGS * bk), b),
                   grid_names=("heads", "kv_seq", "batch"), interpret=interpret, name="scene3d_flash_bwd_dkv_mgpu")

    bq, bk = blocks.block_q_dq, blocks.block_k_dq
    steps = lk // bk
    depth = depth_of(steps)
    scratch = dict(
        q_smem2=plgpu.SMEM((COMPUTE_WGS, bq, d), q.dtype, transforms=tr),
        do_smem2=plgpu.SMEM((COMPUTE_WGS, bq, d), q.dtype, transforms=tr),
        lse_smem2=plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        delta_smem2=plgpu.SMEM((COMPUTE_WGS, bq), jnp.float32),
        k_smem=plgpu.SMEM((depth, bk, d), q.dtype, transforms=tr),
        v_smem=plgpu.SMEM((depth, bk, d), q.dtype, transforms=tr),
        bias_smem=None if bias is None else plgpu.SMEM((depth, bk), jnp.float32),
        q_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        do_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        lse_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        delta_bar2=plgpu.Barrier(num_barriers=COMPUTE_WGS),
        k_bar=plgpu.Barrier(num_barriers=depth),
        kb_bar=None if bias is None else plgpu.Barrier(num_barriers=depth),
        v_bar=plgpu.Barrier(num_barriers=depth),
        k_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
        v_done=plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=depth),
    )
    dq = _call(functools.partial(_dq_kernel, block_q=bq, block_k=bk, steps=steps, depth=depth, **common),
               args, jax.ShapeDtypeStruct(q.shape, q.dtype), scratch, grid=(h, lq // (COMPUTE_WGS * bq), b),
               grid_names=("heads", "q_seq", "batch"), interpret=interpret, name="scene3d_flash_bwd_dq_mgpu")
    return dq, dk.astype(dkv_dtype), dv.astype(dkv_dtype)
