"""The interface every task implements; the trainer knows nothing else about models or data."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np
from flax import nnx


class Task(Protocol):
    config: Any

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The trainable model, from ``config.model`` (parameters carry logical axis names)."""

    def loss(self, model: nnx.Module, batch: dict, rng: jax.Array, step: jax.Array | None = None
             ) -> tuple[jax.Array, dict]:
        """Scalar loss and a dict of scalar metrics; pure, called under jit. ``step`` (int32 scalar) is the
        optimiser step, for schedules inside the loss (e.g. KL annealing)."""

    def evaluate(self, model: nnx.Module, batch: dict, rng: jax.Array) -> dict:
        """Dict of scalar metrics for one eval batch; averaged over batches by the trainer."""

    def images(self, model: nnx.Module, batch: dict, rng: jax.Array) -> dict:
        """Dict name -> uint8 image (H, W, 3) to write (e.g. sample grids, reconstructions)."""

    def data_transforms(self, split: str) -> list[Callable[[dict], dict]]:
        """Per-example numpy transforms applied in the grain pipeline (after the dataset's own)."""

    # Optional: ``write_outputs(model, batch, rng, out_dir)`` writes files a person opens (e.g. decoded PLY
    # scenes) at every evaluation, on the primary process only.


def training_examples(config, count: int, task_transforms=()) -> Iterator[dict]:
    """``count`` training examples made exactly as training makes them, for the trivial baselines
    (``scene3d.metrics.baselines``): the train split's data transforms then ``task_transforms``, each random choice
    drawn from a ``[seed, 7919, i]`` generator (deterministic, independent of the loader), cycling over the scenes."""
    from scene3d import data
    src = data.get_source(config.data, "train")
    transforms = list(data.get_transforms(config.data, "train")) + list(task_transforms)
    if not len(src):
        raise ValueError("config.metrics.baselines: the train split has no scenes")
    seed = int(config.get("seed", 0))
    for i in range(count):
        ex = src[i % len(src)]
        for t in transforms:
            ex = (t.random_map(ex, np.random.default_rng([seed, 7919, i])) if hasattr(t, "random_map")
                  else t.map(ex) if hasattr(t, "map") else t(ex))
        yield ex
