"""Registers the Pallas flash-attention kernels with the attention dispatcher.

``impl='pallas'`` picks the backend for the platform (Mosaic GPU on Hopper for 16-bit inputs, Triton on other
GPUs, Mosaic TPU on TPU, Triton in interpret mode on CPU); ``'pallas_triton'``, ``'pallas_mosaic_gpu'`` and
``'pallas_mosaic_tpu'`` pin one. The kernels live in :mod:`scene3d.kernels.flash`. ``impl='auto'`` resolves to one
of the pinned names (see :func:`scene3d.kernels.attention.resolve_auto`); the plan for the Triton lowering's
deprecation from JAX 0.11 (A100: Triton while it imports, then cuDNN; Mosaic GPU pre-Hopper or tokamax once
benchmarks/gpu_check.py shows them correct and at least as fast) is in :mod:`scene3d.kernels`'s docstring.
"""
from __future__ import annotations

import functools
import logging

import jax

from scene3d.kernels.attention import register_impl
from scene3d.kernels.flash import (BACKENDS, BlockSizes, default_backend, flash_attention, reference_attention,
                                   unsupported_reason)

logger = logging.getLogger(__name__)
_LOGGED: set = set()

__all__ = ["BlockSizes", "flash_attention", "pallas_attention", "reference_attention", "unsupported_reason"]


def pallas_attention(q, k, v, *, mask=None, kv_lengths=None, scale=None, return_lse=False, backend=None):
    """The dispatcher's ``fn(q, k, v, *, mask, kv_lengths, scale, return_lse)`` over :func:`flash_attention`."""
    backend = backend or default_backend(q.dtype, q.shape[-1])
    key = (backend, tuple(q.shape), tuple(k.shape), str(q.dtype))
    if key not in _LOGGED:
        _LOGGED.add(key)
        interp = jax.default_backend() == "cpu"
        logger.info("pallas flash attention: backend=%r%s q%s k%s %s", backend, " (interpret mode)" if interp else "",
                    tuple(q.shape), tuple(k.shape), q.dtype)
    return flash_attention(q, k, v, mask=mask, kv_lengths=kv_lengths, scale=scale, return_lse=return_lse,
                           backend=backend)


register_impl("pallas", pallas_attention, override=True)
for _b in BACKENDS:
    register_impl(f"pallas_{_b}", functools.partial(pallas_attention, backend=_b), override=True)
