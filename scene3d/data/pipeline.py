"""grain pipelines -> global jax.Arrays.

``make_batch_iterator`` turns any random-access source (``__len__``/``__getitem__`` returning dicts of numpy
arrays) into a resumable iterator of per-process batches: shuffled with a seed (reshuffled every epoch), repeated,
mapped through per-example transforms, batched and sliced across processes: process p gets the p-th contiguous
block of each global batch, the rows its devices hold, so a global batch is the same, row for row, whatever the
process count. Transforms are attached before the process slice (MapDataset is lazy: each process still computes
only its own elements), so a ``grain.transforms.RandomMap`` gets a generator seeded by (seed, global element
index): the same whatever the process count, and reproduced exactly after a state restore. ``to_global``
assembles the per-process batches into global arrays sharded along the mesh's batch axes. The iterator supports
``get_state``/``set_state`` and is saved in the same orbax checkpoint as the model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import grain
import jax
import numpy as np

from scene3d.core import sharding as sh


def make_batch_iterator(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                        transforms: Sequence[Callable[[dict], dict] | grain.transforms.RandomMap] = (),
                        num_epochs: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, drop_remainder: bool = True,
                        read_options: grain.ReadOptions | None = None):
    """A resumable iterator over this process's share of each global batch.

    transforms: callables / ``grain.transforms.Map`` (``ds.map``) or ``grain.transforms.RandomMap``
    (``ds.random_map`` seeded with ``seed``). read_options: grain threads / prefetch (grain's default: 16
    threads, 500 batches).
    """
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
    for fn in transforms:
        ds = ds.random_map(fn, seed=seed) if isinstance(fn, grain.transforms.RandomMap) else ds.map(fn)
    # Process p holds the p-th contiguous block of every global batch (rows p*B/P .. (p+1)*B/P), the rows its
    # devices own in ``to_global``: the global batch, row for row, does not depend on the process count.
    per_process = global_batch_size // process_count
    if num_epochs is not None and drop_remainder:  # finite: every process gets the same number of batches
        ds = ds[:len(ds) // global_batch_size * global_batch_size]
    ds = ds.batch(per_process, drop_remainder=drop_remainder)
    ds = ds[process_index::process_count]
    return iter(ds.to_iter_dataset(read_options))


def _numeric(x) -> bool:
    return np.asarray(x).dtype.kind in "biufc"


def to_global(batch: dict, mesh=None) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded on the 'batch' logical axis.

    Non-numeric leaves (strings such as ``scene_id``) stay per-process numpy arrays.
    """
    mesh = sh.current_mesh() if mesh is None else mesh
    if mesh is None:
        return jax.tree.map(lambda x: jax.numpy.asarray(x) if _numeric(x) else np.asarray(x), batch)

    def put(x):
        x = np.asarray(x)
        if not _numeric(x):
            return x
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = sh.batch_sharding(x.ndim, mesh, shape=global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)
