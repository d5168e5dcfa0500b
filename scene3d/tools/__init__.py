"""scene3d.tools: command-line analyses of trained runs (``python -m scene3d.tools.<name>``).

Each tool reads a run through ``scene3d.tasks.stage1.load_run`` (config.json + checkpoint) and the run's own data
config; none trains or changes a run. ``latent_analysis``: where a Can3Tok run puts rotated copies of a scene in
its latent space (the paper's Figures 7-8).
"""
