"""scene3d.kernels: the attention dispatcher and its implementations.

``attn_impl='auto'`` (:func:`scene3d.kernels.attention.resolve_auto`) never runs the einsum reference silently on an
accelerator. On a GPU it tries, in order: our Pallas flash kernel (Mosaic GPU on Hopper for 16-bit inputs, Triton
on other GPUs and for fp32), then cuDNN (``jax.nn.dot_product_attention``), and only then the einsum with a WARNING
once per shape that names why each kernel declined. A kernel named explicitly raises instead of falling back.

JAX versions after the pinned 0.10.2 (requirements.txt). The Pallas Changelog (docs.jax.dev, pallas/CHANGELOG.md)
deprecates the Triton backend with JAX 0.11, and from 0.11 every Triton ``pallas_call`` lowering warns "The Pallas
Triton backend is deprecated and will be removed in a future JAX version." (deprecation id ``jax-pallas-triton``);
a later Pallas changelog entry makes Mosaic GPU the default GPU lowering of ``pallas_call``, Triton staying reachable
through ``pallas_call(..., backend='triton')`` until removed (flash/triton.py must then pass it). What keeps each
GPU on a real kernel:

- Hopper (sm_90), bf16/fp16: already Triton-free (``scene3d.kernels.flash.mosaic_gpu``, forward and backward).
  fp32 uses Triton on every GPU today and cuDNN takes 16-bit inputs only, so after the removal fp32 attention on a
  GPU falls to the warned einsum: train in bf16 (the configs' ``bf16`` flag).
- A100 and other pre-Hopper GPUs (sm_80/86/89): 'pallas_triton' while the lowering imports (JAX 0.11.x warns; we
  leave that warning visible). When ``jax.experimental.pallas.triton`` no longer imports, the dispatcher's
  importability check declines Pallas and 'auto' picks cuDNN (bf16/fp16, head_dim <= 128: every model config here)
  with no code change. Candidates to replace it, in the order we would adopt them: (1) Mosaic GPU's pre-Hopper
  path (newer JAX gives ``copy_gmem_to_smem`` a ``cp.async`` form without a TMA barrier, but no wgmma: the kernels
  need an mma.sync product, a port, not a flag); (2) tokamax (a Pallas kernel library with its own sm_80 attention
  configs; not installed here - ``pip index versions tokamax`` lists 0.0.1-0.0.12, ``import tokamax`` fails - and
  benchmarks/attention.py already times it when present); (3) cuDNN, the fallback that exists in every JAX.
- TPU: Mosaic TPU, unaffected.

``benchmarks/gpu_check.py`` is what decides between them on a real card: part (a) compiles every Pallas backend of
the platform and checks forward + dq/dk/dv against the reference, and records which kernels 'auto' put in each
case's fwd+bwd program (a fail if it is the einsum where a kernel was eligible); part (b) times xla, cudnn,
pallas_mosaic_gpu, pallas_triton and tokamax side by side as a fraction of the measured bf16 matmul peak. A
backend replaces Triton on A100 only when it passes (a) and is at least as fast as cuDNN in (b).
"""
from scene3d.kernels.attention import attention, available_impls, cudnn_attention, register_impl, resolve_auto
from scene3d.kernels.reference import reference_attention

__all__ = ["attention", "available_impls", "cudnn_attention", "register_impl", "reference_attention", "resolve_auto"]
