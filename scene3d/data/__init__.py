"""scene3d.data."""
