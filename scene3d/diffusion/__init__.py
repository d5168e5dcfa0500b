"""scene3d.diffusion."""
