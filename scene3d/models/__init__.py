"""scene3d.models."""
