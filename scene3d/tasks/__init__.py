"""scene3d.tasks."""
