"""Shared pieces of the Pallas flash-attention kernels: tile sizes, shape checks, masks, padding, constants.

Conventions shared by every backend (``triton``, ``mosaic_gpu``, ``mosaic_tpu``):

- Kernels see padded inputs: Lq and Lk are rounded up to multiples of their block sizes; padded keys are masked
  through the per-key validity array, padded query rows are sliced off by the caller.
- Logits are kept in base 2: ``s2 = (q . k) * scale * log2(e)``, so softmax uses ``exp2``; the kernels return
  ``lse2 = log2(sum(exp2(s2)))`` (B, H, Lq) fp32 and the public lse is ``lse2 * ln(2)``.
- Masked logits are set to the finite ``MASK_VALUE``; the running max starts at ``M_INIT`` (above it), so a
  masked key contributes ``exp2(MASK_VALUE - m) = 0`` and a row with no visible key ends with l = 0 (output 0,
  lse -inf). The backward pass gets lse2 = +inf for such rows, so p = exp2(s2 - lse2) = 0 there.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
M_INIT = 0.5 * MASK_VALUE
SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
BACKENDS = ("triton", "mosaic_gpu", "mosaic_tpu")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the flash-attention kernels (rows of q / keys per tile), forward and backward.

    ``block_q, block_k``: forward. ``block_q_dkv, block_k_dkv``: the dK/dV kernel (one key tile per program,
    looping over query tiles). ``block_q_dq, block_k_dq``: the dQ kernel. Backend knobs: ``num_warps`` /
    ``num_stages`` (Triton), ``max_concurrent_steps`` (Mosaic GPU TMA pipeline depth).
    Use :meth:`get_default` for per-backend, per-shape defaults.
    """
    block_q: int
    block_k: int
    block_q_dkv: int
    block_k_dkv: int
    block_q_dq: int
    block_k_dq: int
    num_warps: int | None = None
    num_stages: int = 2
    max_concurrent_steps: int = 2

    def __post_init__(self):
        for f in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq", "block_k_dq"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"BlockSizes.{f} must be a positive int, got {v!r}")

    @property
    def q_multiple(self) -> int:
        """Lq is padded to a multiple of this (every q block size divides it)."""
        return math.lcm(self.block_q, self.block_q_dkv, self.block_q_dq)

    @property
    def k_multiple(self) -> int:
        """Lk is padded to a multiple of this (every k block size divides it)."""
        return math.lcm(self.block_k, self.block_k_dkv, self.block_k_dq)

    @classmethod
    def get_default(cls, backend: str, lq: int, lk: int, head_dim: int, dtype=jnp.bfloat16) -> "BlockSizes":
        """Default tiles for ``backend`` and shape, shrunk for short sequences (less padding)."""
        itemsize = jnp.dtype(dtype).itemsize
        if backend == "triton":
            # Triton tiles are powers of two, >= 16 (tensor-core dot). Bigger head dims / fp32 use smaller k tiles
            # so that q, k, v tiles and the (bq, bk) logits fit in registers / shared memory (A100: 164 KiB).
            def fit(n, cap):
                return max(16, min(cap, next_pow2(n)))
            big = head_dim > 64 or itemsize > 2
            return cls(block_q=fit(lq, 128), block_k=fit(lk, 64 if big else 128),
                       block_q_dkv=fit(lq, 32 if big else 64), block_k_dkv=fit(lk, 64),
                       block_q_dq=fit(lq, 64), block_k_dq=fit(lk, 32 if big else 64),
                       num_warps=4 if head_dim <= 64 else 8, num_stages=2 if big else 3)
        if backend == "mosaic_tpu":
            # q tiles on sublanes (multiple of 8 for 32-bit, 16 for bf16), k tiles on lanes (multiple of 128).
            sub = 16 if itemsize == 2 else 8
            def fq(n, cap):
                return min(cap, round_up(n, sub))
            def fk(n, cap):
                return min(cap, round_up(n, 128))
            return cls(block_q=fq(lq, 512), block_k=fk(lk, 512), block_q_dkv=fq(lq, 256), block_k_dkv=fk(lk, 512),
                       block_q_dq=fq(lq, 512), block_k_dq=fk(lk, 256))
        if backend == "mosaic_gpu":
            # One compute warpgroup owns a 64-row tile (wgmma M = 64); two compute warpgroups per CTA.
            # block_q here is per warpgroup, the CTA covers 2 * block_q query rows.
            bk = 128 if head_dim <= 128 else 64
            return cls(block_q=64, block_k=bk if lk > 64 else 64, block_q_dkv=64, block_k_dkv=64,
                       block_q_dq=64, block_k_dq=64, max_concurrent_steps=2)
        raise ValueError(f"BlockSizes.get_default: unknown backend {backend!r}; expected one of {BACKENDS}")


def check_inputs(q, k, v, *, where: str = "flash_attention") -> None:
    """Raise ValueError for shapes / dtypes the Pallas kernels do not handle."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"{where}: {name} must be (batch, length, heads, head_dim), got shape {t.shape}")
    b, lq, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"{where}: k and v must both be ({b}, kv_length, kv_heads, {d}) to match q {q.shape}; "
                         f"got k {k.shape}, v {v.shape}")
    if h % k.shape[2]:
        raise ValueError(f"{where}: q heads ({h}) must be a multiple of kv heads ({k.shape[2]})")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"{where}: head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {d} (q shape {q.shape}); "
                         "use impl='xla' for other head dims")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{where}: q, k, v must share one dtype among float32/bfloat16/float16, got "
                         f"q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if lq == 0 or k.shape[1] == 0:
        raise ValueError(f"{where}: empty sequence (q length {lq}, kv length {k.shape[1]})")


def key_mask_shape_error(mask_shape, b, h, lq, lk) -> str | None:
    """None if ``mask_shape`` is a key-padding mask (broadcastable to (B, H, 1, Lk)), else the reason."""
    s = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    if len(mask_shape) > 4 or any(m not in (1, t) for m, t in zip(s, (b, h, lq, lk))):
        return f"mask of shape {tuple(mask_shape)} is not broadcastable to (batch, heads, q_length, kv_length) = " \
               f"{(b, h, lq, lk)}"
    if s[2] != 1:
        return (f"the Pallas flash kernels take key-padding masks only (broadcastable to (batch, heads, 1, kv_length) "
                f"= {(b, h, 1, lk)}), got a per-query mask of shape {tuple(mask_shape)}; use impl='xla' or 'cudnn'")
    return None


def key_validity(mask, kv_lengths, b: int, h: int, lq: int, lk: int, lk_pad: int):
    """Per-key validity as int32 (B, Hm, 1, Lk_pad) with Hm in {1, H}, or None when every key is visible.

    Folds the key-padding ``mask`` (broadcastable to (B, H, 1, Lk)), ``kv_lengths`` (B,) and the padded tail
    (keys >= Lk) into one array. Also returns the kv length per batch (B,) int32 (clipped to [0, Lk])."""
    lengths = (jnp.full((b,), lk, jnp.int32) if kv_lengths is None
               else jnp.clip(jnp.asarray(kv_lengths, jnp.int32), 0, lk))
    if mask is None and kv_lengths is None and lk_pad == lk:
        return None, lengths
    valid = jnp.arange(lk_pad, dtype=jnp.int32)[None, :] < lengths[:, None]  # (B, Lk_pad)
    valid = valid[:, None, None, :]
    if mask is not None:
        err = key_mask_shape_error(np.shape(mask), b, h, lq, lk)
        if err is not None:
            raise ValueError(f"flash_attention: {err}")
        m = jnp.asarray(mask, jnp.bool_)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
        m = jnp.pad(m, ((0, 0), (0, 0), (0, 0), (0, lk_pad - lk)))  # padded keys: False (also via lengths)
        valid = jnp.logical_and(valid, m)
    hm = valid.shape[1]
    return jnp.broadcast_to(valid, (b, hm, 1, lk_pad)).astype(jnp.int32), lengths


def pad_axis(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def dot_precision(dtype):
    """fp32 operands: full-precision products (no tf32 / bf16 passes); 16-bit operands: the default."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
