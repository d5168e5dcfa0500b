"""Attention dispatcher: one entry point, several implementations chosen by name.

``attention(q, k, v, impl=...)`` validates shapes, then calls a registered implementation:

- 'xla': :func:`scene3d.kernels.reference.reference_attention` (einsum, fp32 softmax); runs everywhere.
- 'cudnn': ``jax.nn.dot_product_attention(implementation='cudnn')``; GPU only, fp16/bf16.
- 'pallas': our Pallas flash attention, registered by its module through :func:`register_impl`.
- 'pallas_triton' | 'pallas_mosaic_gpu' | 'pallas_mosaic_tpu': one Pallas backend, pinned.
- 'auto': 'xla' on CPU. On GPU / TPU a real kernel, in this order: our Pallas kernel for the platform
  ('pallas_mosaic_gpu' on Hopper for 16-bit inputs, 'pallas_triton' on other GPUs and for fp32,
  'pallas_mosaic_tpu') when the inputs suit it (head_dim 64/128, key-padding masks only) and its lowering imports
  in this JAX; else on GPU 'cudnn' when it can (bf16/fp16, head_dim <= 128, or 256 on Hopper); else 'xla' with a
  WARNING logged once per (shape, dtype, mask shape) naming why each kernel declined. 'auto' never falls back to
  the einsum silently on an accelerator, and an implementation named explicitly never falls back: it raises.
  :func:`resolve_auto` returns the choice and those reasons; the platform is read by :func:`_platform` alone (tests
  fake a GPU through it).

Every implementation has the signature ``fn(q, k, v, *, mask, kv_lengths, scale, return_lse)`` with the
layout and semantics of :func:`attention`. Which implementation ran is logged once per (impl, shape, dtype).
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scene3d.kernels.reference import reference_attention

logger = logging.getLogger(__name__)

AttentionFn = Callable[..., jax.Array]

_IMPLS: dict[str, AttentionFn] = {}
# Implementations provided by modules that register themselves when imported (imported lazily on first use).
_LAZY_MODULES = {name: "scene3d.kernels.flash_attention"
                 for name in ("pallas", "pallas_triton", "pallas_mosaic_gpu", "pallas_mosaic_tpu")}
_LOGGED: set = set()
IMPL_NAMES = ("auto", "xla", "cudnn", "pallas")


def register_impl(name: str, fn: AttentionFn, *, override: bool = False) -> None:
    """Register ``fn(q, k, v, *, mask, kv_lengths, scale, return_lse)`` under ``name``."""
    if name == "auto":
        raise ValueError("register_impl: 'auto' is reserved for the dispatcher's own choice")
    if name in _IMPLS and not override:
        raise ValueError(f"register_impl: an attention implementation {name!r} is already registered "
                         "(pass override=True to replace it)")
    _IMPLS[name] = fn


def available_impls() -> tuple[str, ...]:
    """Names of the registered implementations (lazily registered ones are imported first)."""
    for name in _LAZY_MODULES:
        _try_lazy(name)
    return tuple(sorted(_IMPLS))


def _try_lazy(name: str) -> bool:
    if name in _IMPLS:
        return True
    module = _LAZY_MODULES.get(name)
    if module is None:
        return False
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return False
    return name in _IMPLS


def _get_impl(name: str) -> AttentionFn:
    if _try_lazy(name):
        return _IMPLS[name]
    if name == "pallas":
        raise NotImplementedError(
            "attention(impl='pallas'): the Pallas flash-attention kernel is not available yet - no "
            f"implementation is registered under 'pallas' (its module {_LAZY_MODULES['pallas']} does not exist "
            "or did not call scene3d.kernels.register_impl('pallas', fn)). Use impl='xla', 'cudnn' or 'auto'.")
    raise ValueError(f"attention: unknown impl {name!r}; expected one of {sorted(set(IMPL_NAMES) | set(_IMPLS))}")


# ---------------------------------------------------------------------------------------------------------
# cuDNN


def _platform() -> str:
    """The platform of the default backend ('cpu' | 'gpu' | 'tpu'): the one place the dispatcher reads it."""
    return jax.default_backend()


def _gpu_head_dim_limit() -> int:
    try:
        major = int(str(getattr(jax.devices()[0], "compute_capability", "0")).split(".")[0])
    except (ValueError, IndexError):
        major = 0
    return 256 if major >= 9 else 128  # Hopper and later: 256


def _cudnn_supports(q, k, mask=None) -> str | None:
    """None if cuDNN flash attention can run these inputs, else the reason it cannot."""
    if _platform() != "gpu":
        return f"cuDNN attention needs a GPU, the default backend is {_platform()!r}"
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return f"cuDNN attention needs bf16/fp16 inputs, got q {q.dtype}, k {k.dtype}"
    d, limit = q.shape[-1], _gpu_head_dim_limit()
    if d > limit or d % 8:
        return f"cuDNN attention needs head_dim <= {limit} and a multiple of 8, got {d}"
    if mask is not None and (q.shape[1] % 2 or k.shape[1] % 2):
        return f"cuDNN attention with a mask needs even q/kv lengths, got {q.shape[1]}, {k.shape[1]}"
    return None


def cudnn_attention(q, k, v, *, mask=None, kv_lengths=None, scale=None, return_lse=False):
    """``jax.nn.dot_product_attention(implementation='cudnn')``, with fully-masked rows set to zero.

    The lse it returns (B, Lq, H) is fp32 but carries no gradient (cuDNN returns it as a residual)."""
    reason = _cudnn_supports(q, k, mask)
    if reason is not None:
        raise RuntimeError(f"attention(impl='cudnn'): {reason}. Use impl='xla', or impl='auto' to fall back.")
    lengths = None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32)
    m = None
    if mask is not None:
        m = jnp.asarray(mask)
        m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    out = jax.nn.dot_product_attention(q, k, v, mask=m, scale=scale, key_value_seq_lengths=lengths,
                                       implementation="cudnn", return_residual=return_lse)
    lse = None
    if return_lse:
        out, lse = out
        lse = lse.astype(jnp.float32)
    # Rows with no visible key: cuDNN's value is undefined there; make it 0 (and lse -inf), like the reference.
    any_key = None
    if m is not None:
        any_key = jnp.any(m, axis=-1).transpose(0, 2, 1)  # (B|1, Lq|1, H|1)
    if lengths is not None:
        has = (lengths > 0)[:, None, None]
        any_key = has if any_key is None else jnp.logical_and(any_key, has)
    if any_key is not None:
        out = jnp.where(any_key[..., None], out, jnp.zeros((), out.dtype))
        if lse is not None:
            lse = jnp.where(any_key, lse, -jnp.inf)
    return (out, lse) if return_lse else out


register_impl("xla", reference_attention)
register_impl("cudnn", cudnn_attention)


# ---------------------------------------------------------------------------------------------------------
# Dispatcher


def _check(q, k, v, mask, kv_lengths):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 4:
            raise ValueError(f"attention: {name} must be (batch, length, heads, head_dim), got shape {t.shape}")
    b, lq, h, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape (batch, kv_length, kv_heads, head_dim), "
                         f"got k {k.shape}, v {v.shape}")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"attention: k/v must be ({b}, kv_length, kv_heads, {d}) to match q {q.shape}, "
                         f"got {k.shape}")
    if h % k.shape[2]:
        raise ValueError(f"attention: q heads ({h}) must be a multiple of kv heads ({k.shape[2]})")
    lk = k.shape[1]
    if mask is not None:
        mshape = tuple(np.shape(mask))
        if len(mshape) > 4 or any(m not in (1, t) for m, t in zip(mshape[::-1], (lk, lq, h, b))):
            raise ValueError(f"attention: mask of shape {mshape} is not broadcastable to "
                             f"(batch, heads, q_length, kv_length) = {(b, h, lq, lk)}")
        if jnp.result_type(mask) != jnp.bool_:
            raise ValueError(f"attention: mask must be boolean (True = attend), got {jnp.result_type(mask)}")
    if kv_lengths is not None:
        if tuple(np.shape(kv_lengths)) != (b,) or not jnp.issubdtype(jnp.result_type(kv_lengths), jnp.integer):
            raise ValueError(f"attention: kv_lengths must be an integer array of shape ({b},), got "
                             f"{jnp.result_type(kv_lengths)}{tuple(np.shape(kv_lengths))}")


def _pallas_choice(q, k, mask, platform: str) -> tuple[str | None, str | None]:
    """(the pinned Pallas impl name, None) if our flash kernel serves these inputs on ``platform``, else
    (None, why not). A backend whose lowering does not import in this JAX (the Pallas Triton lowering is deprecated
    from JAX 0.11 and will be removed) declines here, so 'auto' moves on to cuDNN instead of failing at trace time."""
    if not _try_lazy("pallas"):
        return None, f"no Pallas implementation is registered ({_LAZY_MODULES['pallas']} did not import)"
    from scene3d.kernels import flash
    reason = flash.unsupported_reason(q, k, k, mask)
    if reason is not None:
        return None, f"Pallas flash attention: {reason}"
    backend = flash.default_backend(q.dtype, q.shape[-1], platform=platform)
    try:
        flash._backend_module(backend)
    except ImportError as e:  # e.g. jax.experimental.pallas.triton gone from a newer JAX
        return None, f"Pallas {backend!r} lowering unavailable in jax {jax.__version__}: {e}"
    return f"pallas_{backend}", None


def resolve_auto(q, k, mask=None) -> tuple[str, tuple[str, ...]]:
    """What ``impl='auto'`` runs for these inputs: (impl name, why each better kernel declined).

    CPU: 'xla' (the Pallas kernels would only run interpreted). GPU: Pallas, then cuDNN, then 'xla'. TPU: Pallas,
    then 'xla'. The reasons are empty unless an accelerator falls back to 'xla'."""
    platform = _platform()
    if platform not in ("gpu", "tpu"):
        return "xla", ()
    name, pallas_reason = _pallas_choice(q, k, mask, platform)
    if name is not None:
        return name, ()
    reasons = [pallas_reason]
    if platform == "gpu":
        cudnn_reason = _cudnn_supports(q, k, mask)
        if cudnn_reason is None:
            return "cudnn", ()
        reasons.append(cudnn_reason)
    return "xla", tuple(reasons)


def attention(q, k, v, *, impl: str = "xla", mask=None, kv_lengths=None, scale: float | None = None,
              return_lse: bool = False):
    """Multi-head softmax attention.

    Args:
      q: (B, Lq, H, D). k, v: (B, Lk, Hk, D) with H a multiple of Hk (grouped kv heads).
      impl: 'xla' | 'cudnn' | 'pallas' | 'auto' | any name given to :func:`register_impl`.
      mask: boolean, broadcastable to (B, H, Lq, Lk); True = attend.
      kv_lengths: int (B,); keys at index >= kv_lengths[b] are masked.
      scale: logit scale, default 1/sqrt(D).
      return_lse: also return the log-sum-exp of the scaled logits, (B, Lq, H) fp32.

    Returns (B, Lq, H, D) in q's dtype (and the lse). Softmax runs in fp32; rows with no key to attend give 0.
    """
    _check(q, k, v, mask, kv_lengths)
    name, reasons = resolve_auto(q, k, mask) if impl == "auto" else (impl, ())
    fn = _get_impl(name)
    mshape = None if mask is None else tuple(np.shape(mask))
    key = (name, impl, tuple(q.shape), tuple(k.shape), str(q.dtype), mshape)
    if key not in _LOGGED:
        _LOGGED.add(key)
        if reasons:
            logger.warning("attention: impl='auto' on %s falls back to the einsum reference ('xla', materialised "
                           "scores) for q%s k%s %s mask=%s: %s. A kernel named explicitly ('pallas', 'cudnn') "
                           "raises instead.",
                           _platform(), tuple(q.shape), tuple(k.shape), q.dtype, mshape, "; ".join(reasons))
        logger.info("attention: impl=%r (requested %r) q%s k%s %s mask=%s kv_lengths=%s", name, impl,
                    tuple(q.shape), tuple(k.shape), q.dtype, mshape, kv_lengths is not None)
    return fn(q, k, v, mask=mask, kv_lengths=kv_lengths, scale=scale, return_lse=return_lse)
