"""The interface every task implements; the trainer knows nothing else about models or data."""
from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
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
