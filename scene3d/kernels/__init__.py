"""scene3d.kernels."""
