"""scene3d.tasks: what the trainer calls (build_model / loss / evaluate / images / data_transforms).

A task is chosen by ``config.task``. Stage-1 tokenizers live in ``autoencode``; latent generators in ``generate``.
"""
from __future__ import annotations

_TASKS = {
    "generate": ("scene3d.tasks.generate", "GenerateTask"),
    "autoencode": ("scene3d.tasks.autoencode", "AutoencodeTask"),
    "rae3d": ("scene3d.tasks.rae3d", "RAE3DTask"),
    "dit3d": ("scene3d.tasks.dit3d", "DiT3DTask"),
    "scenetok": ("scene3d.tasks.scenetok", "make_task"),  # SceneTokTask, or ReleaseSceneTokTask (layout)
    "scenegen": ("scene3d.tasks.scenegen", "SceneGenTask"),
    "image_to_gs": ("scene3d.tasks.image_to_gs", "ImageToGSTask"),  # image -> Can3Tok latent -> Gaussians
}


def get_task(config):
    name = config.task
    if name not in _TASKS:
        raise ValueError(f"config.task: unknown task {name!r} (known: {sorted(_TASKS)})")
    import importlib
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(module), cls)(config)  # a task class or a factory
