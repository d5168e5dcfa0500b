"""scene3d.kernels: the attention dispatcher and its implementations."""
from scene3d.kernels.attention import attention, available_impls, cudnn_attention, register_impl
from scene3d.kernels.reference import reference_attention

__all__ = ["attention", "available_impls", "cudnn_attention", "register_impl", "reference_attention"]
