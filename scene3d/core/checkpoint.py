"""One orbax CheckpointManager per run: train state + grain iterator state + a JSON meta dict per step.

Layout of ``directory/<step>/``: ``state/`` (the train-state pytree, sharded arrays written per shard),
``data/`` (grain iterator state, one JSON file per process), ``meta/`` (small JSON dict). Orbax writes each
step into a temporary ``<step>.orbax-checkpoint-tmp-*`` folder and renames it only once complete, so an
interrupted save is never listed as a step.

Restoring takes an abstract state (``jax.ShapeDtypeStruct`` with shardings for the *current* mesh), so a
checkpoint written on one mesh restores onto any other.
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from scene3d.core import tree as tree_lib

STATE_ITEM = "state"  # the train-state item of a step (read back by scene3d.core.runs)
_STATE, _DATA, _META = STATE_ITEM, "data", "meta"


class _StateAdapter:
    """Gives an object with ``get_state()``/``set_state()`` (bytes, str or JSON-able) the bytes interface that
    grain's checkpoint handler uses for non-``DatasetIterator`` items. State is captured at save time."""

    def __init__(self, obj, captured: bytes | None = None):
        self._obj = obj
        self._captured = captured

    @classmethod
    def capture(cls, obj) -> "_StateAdapter":
        state = obj.get_state()
        if isinstance(state, bytes):
            payload = {"kind": "bytes", "state": state.decode("latin-1")}
        elif isinstance(state, str):
            payload = {"kind": "str", "state": state}
        else:
            payload = {"kind": "json", "state": state}
        try:
            return cls(obj, json.dumps(payload).encode())
        except TypeError as e:
            raise ValueError(f"data_iter.get_state() of {type(obj).__name__} returned a value that is neither "
                             f"bytes nor JSON-serialisable: {e}") from None

    def get_state(self) -> bytes:
        return self._captured

    def set_state(self, state: bytes):
        payload = json.loads(state.decode())
        value = payload["state"]
        if payload["kind"] == "bytes":
            value = value.encode("latin-1")
        self._obj.set_state(value)

    def start_prefetch(self):
        if hasattr(self._obj, "start_prefetch"):
            self._obj.start_prefetch()


def _is_grain_iterator(x) -> bool:
    return isinstance(x, (grain.DatasetIterator, grain.DataLoaderIterator))


def _check_data_iter(data_iter):
    if not (hasattr(data_iter, "get_state") and hasattr(data_iter, "set_state")):
        raise ValueError(f"data_iter of type {type(data_iter).__name__} has no get_state()/set_state(); pass a "
                         "grain iterator (iter(dataset) / iter(DataLoader)) or an object with those methods")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    return x


def _reject_typed_keys(state):
    for path, x in tree_lib.flatten_with_paths(state).items():
        dtype = getattr(x, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise ValueError(f"checkpoint state leaf {path!r} is a typed PRNG key array; store "
                             "jax.random.key_data(key) in the state and wrap it back with jax.random.wrap_key_data")


class Checkpointer:
    """Async, keep-N checkpoints of (train state, grain iterator, meta) in ``directory``."""

    def __init__(self, directory: str | os.PathLike, *, keep: int | None = 3, async_save: bool = True,
                 save_interval_steps: int = 1):
        if keep is not None and keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1 or None (keep all), got {keep}")
        if save_interval_steps < 1:
            raise ValueError(f"Checkpointer: save_interval_steps must be >= 1, got {save_interval_steps}")
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler(),
                           _DATA: grain.checkpoint.CheckpointHandler()})

    # -- queries ---------------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """Newest fully written step (None if there is none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    # -- save ------------------------------------------------------------------------------------------------
    def save(self, step: int, state, *, data_iter=None, meta: dict | None = None, force: bool = False) -> bool:
        """Start saving ``state`` (any pytree of arrays), the iterator's state and ``meta`` at ``step``.

        Returns whether a checkpoint was started: unless ``force``, the first save is always taken, later ones
        only at multiples of ``save_interval_steps`` and past the latest saved step.
        The call blocks only until device arrays are copied and the iterator state is captured; the write
        continues in the background (``wait()`` to block).
        """
        step = int(step)
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        _reject_typed_keys(state)
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise ValueError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
        items = {_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(_jsonable(meta))}
        if data_iter is not None:
            _check_data_iter(data_iter)
            item = data_iter if _is_grain_iterator(data_iter) else _StateAdapter.capture(data_iter)
            items[_DATA] = grain.checkpoint.CheckpointSave(item)
        return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=force))

    # -- restore ---------------------------------------------------------------------------------------------
    def restore(self, step: int | None = None, *, abstract_state, data_iter=None, require_data: bool = True
                ) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into ``abstract_state``'s structure/shardings.

        ``abstract_state``: pytree of ``jax.ShapeDtypeStruct`` (or arrays) whose shardings are those wanted now;
        leaves without a sharding go to the first local device. ``data_iter`` (if given) is set to the saved
        iterator position in place; a checkpoint without one (e.g. weights imported by ``scene3d.export``) is an
        error unless ``require_data=False``, which leaves ``data_iter`` at its start (with a warning).
        """
        self.wait()  # a save of this manager may still be in flight
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        step = int(step)
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"checkpoint step {step} not found in {self.directory} "
                                    f"(available: {self.all_steps()})")
        metadata = self._manager.item_metadata(step)
        saved_items = set(metadata.keys())
        self._check_structure(step, metadata[_STATE], abstract_state)
        abstract = jax.tree.map(_as_abstract, abstract_state)
        items = {_STATE: ocp.args.StandardRestore(abstract)}
        if _META in saved_items:
            items[_META] = ocp.args.JsonRestore()
        if data_iter is not None and _DATA not in saved_items and not require_data:
            logging.warning("checkpoint step %d in %s holds no data iterator state: the data starts from the "
                            "beginning", step, self.directory)
            data_iter = None
        if data_iter is not None:
            if _DATA not in saved_items:
                raise ValueError(f"checkpoint step {step} in {self.directory} holds no data iterator state, "
                                 "but a data_iter was given to restore")
            _check_data_iter(data_iter)
            item = data_iter if _is_grain_iterator(data_iter) else _StateAdapter(data_iter)
            items[_DATA] = grain.checkpoint.CheckpointRestore(item)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        meta = restored[_META] if _META in items else {}
        return restored[_STATE], dict(meta or {})

    def _check_structure(self, step: int, saved_meta, abstract_state):
        saved_tree = getattr(saved_meta, "tree", saved_meta)
        saved = tree_lib.flatten_with_paths(saved_tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
        wanted = tree_lib.flatten_with_paths(abstract_state)
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        shapes = sorted(f"{k}: saved {tuple(saved[k].shape)}, expected {tuple(wanted[k].shape)}"
                        for k in set(saved) & set(wanted)
                        if hasattr(saved[k], "shape") and hasattr(wanted[k], "shape")
                        and tuple(saved[k].shape) != tuple(wanted[k].shape))
        if missing or extra or shapes:
            lines = [f"checkpoint step {step} in {self.directory} does not match the expected state tree:"]
            if missing:
                lines.append(f"  missing in checkpoint ({len(missing)}): {_preview(missing)}")
            if extra:
                lines.append(f"  unexpected in checkpoint ({len(extra)}): {_preview(extra)}")
            if shapes:
                lines.append(f"  shape mismatches ({len(shapes)}): {_preview(shapes)}")
            raise ValueError("\n".join(lines))

    # -- lifecycle -------------------------------------------------------------------------------------------
    def wait(self):
        """Block until any background save has finished."""
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _preview(names: list[str], n: int = 10) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n} more)" if len(names) > n else "")


def _as_abstract(x):
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    dtype = getattr(x, "dtype", None)
    if dtype is None:  # python scalars
        x = np.asarray(x)
        dtype = x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise ValueError("abstract_state holds a typed PRNG key; checkpoints store jax.random.key_data(key)")
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)
