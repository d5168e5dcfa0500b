"""scene3d.metrics."""
