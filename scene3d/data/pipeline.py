"""grain pipelines -> global jax.Arrays.

``make_batch_iterator`` turns any random-access source (``__len__``/``__getitem__`` returning dicts of numpy
arrays) into a resumable iterator of per-process batches: shuffled with a seed, repeated forever, sliced across
processes, mapped through per-example transforms and batched. ``to_global`` assembles the per-process batches into
global arrays sharded along the mesh's batch axes. The iterator supports ``get_state``/``set_state`` and is saved
in the same orbax checkpoint as the model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import grain
import jax
import numpy as np

from scene3d.core import sharding as sh


def make_batch_iterator(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                        transforms: Sequence[Callable[[dict], dict]] = (), num_epochs: int | None = None,
                        process_index: int | None = None, process_count: int | None = None,
                        drop_remainder: bool = True):
    """A resumable iterator over this process's share of each global batch."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by {process_count} processes")
    if len(source) < global_batch_size:
        raise ValueError(f"dataset has {len(source)} examples, fewer than one global batch ({global_batch_size})")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    # Each process takes every process_count-th example: the global batch is the union over processes.
    ds = ds[process_index::process_count]
    for fn in transforms:
        ds = ds.map(fn)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=drop_remainder)
    return iter(ds.to_iter_dataset())


def to_global(batch: dict, mesh=None) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded on the 'batch' logical axis."""
    mesh = sh.current_mesh() if mesh is None else mesh
    if mesh is None:
        return jax.tree.map(jax.numpy.asarray, batch)

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = sh.batch_sharding(x.ndim, mesh, shape=global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)
