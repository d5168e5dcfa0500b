"""scene3d.nn."""
