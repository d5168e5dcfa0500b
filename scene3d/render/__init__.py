"""scene3d.render."""
