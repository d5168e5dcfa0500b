"""scene3d.geometry."""
