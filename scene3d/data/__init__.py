"""scene3d.data: sources (procedural, built-in rendered scenes, real-format readers), grain pipelines.

``get_source(data_config, split)`` is the one place a config's ``data.name`` is turned into a random-access source.
"""
from __future__ import annotations


def get_source(data_config, split: str):
    """Random-access source (``__len__``/``__getitem__`` -> dict of numpy arrays) for ``split`` ('train'|'eval')."""
    name = data_config.name
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if name == "shapes":
        from scene3d.data.procedural_shapes import ShapesSource
        n = data_config.num_train if split == "train" else data_config.num_eval
        # Disjoint seeds keep the eval split out of training.
        return ShapesSource(n, size=data_config.size, seed=data_config.get("seed", 0) + (0 if split == "train" else 10_000))
    raise ValueError(f"config.data.name: unknown dataset {name!r} (known: shapes)")
