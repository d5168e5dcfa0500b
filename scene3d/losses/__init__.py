"""scene3d.losses."""
