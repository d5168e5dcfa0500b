"""One orbax CheckpointManager per run: train state + grain iterator state + a JSON meta dict per step.

Layout of ``directory/<step>/``: ``state/`` (the train-state pytree, sharded arrays written per shard),
``data/`` (grain iterator state, one JSON file per process), ``meta/`` (small JSON dict). Orbax writes each
step into a temporary ``<step>.orbax-checkpoint-tmp-*`` folder and renames it only once complete, so an
interrupted save is never listed as a step.

Restoring takes an abstract state (``jax.ShapeDtypeStruct`` with shardings for the *current* mesh), so a
checkpoint written on one mesh restores onto any other.

Integrity. Each item folder (``state/``, ``data/``, ``meta/``) carries ``sha256.json``: the size and SHA-256 of
every file orbax wrote into it. It is written by our item handlers' ``finalize`` (orbax calls it on the primary
process once every process has written its shards, before the step folder is renamed into place), through a
temporary file and a rename, so it is complete before the step becomes visible and is committed with it. A step is
*good* only when every item has a manifest and every file it lists is there with that size and hash
(:meth:`Checkpointer.verify`): a truncated or bit-flipped array file, a truncated metadata file, a missing manifest
of one item (a file removed or a step assembled by hand) each make the step damaged (:class:`CorruptCheckpointError`, a one-line message naming the step and the file). ``restore`` verifies
before reading; :meth:`Checkpointer.restore_latest_good` (how a run resumes) logs one line per damaged step, moves
it aside into ``directory/corrupt/`` and restores the newest good one. A step with no manifest in any item was
written before checkpoints carried checksums (orbax renames a step into place only after the manifests are written,
so a cut-short save never looks like one): it is restored unverified, with a warning. Files orbax adds after the manifest
(``commit_success.txt``) and the step's own ``_CHECKPOINT_METADATA`` are not covered; verification reads every
array file once more, on each process.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from typing import Any

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.serialization import type_handler_registry as _orbax_type_handlers
from jax.experimental import multihost_utils

from scene3d.core import io as io_lib
from scene3d.core import tree as tree_lib

STATE_ITEM = "state"  # the train-state item of a step (read back by scene3d.core.runs)
_STATE, _DATA, _META = STATE_ITEM, "data", "meta"
MANIFEST = "sha256.json"  # inside each item folder of a step: {file: [size, sha256]} of the files orbax wrote
QUARANTINE = "corrupt"  # damaged steps are moved into directory/corrupt/<step> by restore_latest_good
_MANIFEST_FORMAT = "scene3d-checkpoint-sha256/1"
_CHUNK = 1 << 20


class CorruptCheckpointError(ValueError):
    """A checkpoint step whose files do not match its manifest (or that has none). ``str()`` is one line naming
    the step, its folder and the first file found wrong."""

    def __init__(self, directory, step: int, reason: str):
        self.directory, self.step, self.reason = os.fspath(directory), int(step), reason
        super().__init__(f"checkpoint step {self.step} in {self.directory} is damaged: {reason}")


class NoGoodCheckpointError(ValueError):
    """Every step of a checkpoint folder is damaged (nothing was moved)."""


# -- integrity manifests -------------------------------------------------------------------------------------


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_under(folder: str) -> list[str]:
    """Relative paths ('/'-separated) of the regular files under ``folder`` (symlinks are not followed)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, folder).replace(os.sep, "/"))
    return out


def write_manifest(item_dir: str | os.PathLike) -> dict:
    """Hash every file of a finished item folder into ``item_dir/sha256.json`` (atomically). Returns the dict."""
    item_dir = os.fspath(item_dir)
    files = {rel: [os.path.getsize(os.path.join(item_dir, rel)), _sha256(os.path.join(item_dir, rel))]
             for rel in _files_under(item_dir) if rel != MANIFEST}
    manifest = {"format": _MANIFEST_FORMAT, "files": files}
    io_lib.write_json(os.path.join(item_dir, MANIFEST), manifest, indent=1, sort_keys=True)
    return manifest


def _manifest_problem(item_dir: str, item: str) -> str | None:
    """Why ``item_dir`` does not match its manifest (None when it does)."""
    path = os.path.join(item_dir, MANIFEST)
    if not os.path.isfile(path):
        return f"{item}/{MANIFEST} is missing (the other items have theirs: a file was removed)"
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{item}/{MANIFEST} is unreadable ({type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
        return f"{item}/{MANIFEST} is not a {_MANIFEST_FORMAT} manifest"
    if not files:
        return f"{item}/{MANIFEST} lists no files"
    root = os.path.realpath(item_dir)
    for rel, entry in sorted(files.items()):
        ok_entry = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                    and not isinstance(entry[0], bool) and isinstance(entry[1], str))
        parts = rel.split("/") if isinstance(rel, str) else [""]
        if not ok_entry or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return f"{item}/{MANIFEST}: bad entry {rel!r}"
        full = os.path.join(item_dir, *parts)
        if os.path.commonpath([root, os.path.realpath(full)]) != root:  # a symlinked folder pointing outside
            return f"{item}/{rel} lies outside the checkpoint"
        if not os.path.isfile(full):
            return f"{item}/{rel} is missing"
        size, digest = entry
        if os.path.getsize(full) != size:
            return f"{item}/{rel} has {os.path.getsize(full)} bytes, the manifest says {size} (truncated?)"
        if _sha256(full) != digest:
            return f"{item}/{rel} does not match its SHA-256 in the manifest (bit rot or an overwritten file)"
    return None


def verify_step(directory: str | os.PathLike, step: int) -> None:
    """Check every item folder of checkpoint ``directory/<step>`` against its manifest: a
    :class:`CorruptCheckpointError` (one line: the step, the first wrong file) otherwise."""
    folder = os.path.join(os.fspath(directory), str(int(step)))
    try:
        items = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
    except OSError as e:
        raise CorruptCheckpointError(directory, step, f"its folder cannot be listed ({e.strerror})") from None
    if _STATE not in items:
        raise CorruptCheckpointError(directory, step, f"it has no {_STATE}/ folder")
    if not any(os.path.isfile(os.path.join(folder, item, MANIFEST)) for item in items):
        # No item has a manifest: a step written before checkpoints carried checksums (a save cut short cannot
        # leave this: the manifests are written before orbax renames the step into place). Restored unverified.
        logging.warning("checkpoint step %d in %s was written before checkpoints carried checksums: restored "
                        "without verification", int(step), os.fspath(directory))
        return
    for item in items:
        problem = _manifest_problem(os.path.join(folder, item), item)
        if problem:
            raise CorruptCheckpointError(directory, step, problem)


# Step numbers (as strings) whose save kills the process before sealing (fault injection for the resume tests).
_KILL_BEFORE_SEAL: dict[str, bool] = {}


class _Sealed:
    """Mixin for an orbax item handler: after orbax finalises the item folder (all processes' files are there;
    it is still the temporary folder of the step), write its manifest."""

    def finalize(self, directory):
        super().finalize(directory)
        if _KILL_BEFORE_SEAL.get(os.fspath(directory).split(os.sep)[-2].split(".")[0]):
            # Simulated preemption inside a save (tests, ``Checkpointer(kill_in_save_step=...)``): the step's files
            # are written but it is neither sealed nor renamed into place. A real SIGKILL, no cleanup.
            os.kill(os.getpid(), signal.SIGKILL)
        write_manifest(os.fspath(directory))


# Orbax saves a replicated array in slices, one per replica, and cuts each slice with a jitted program per shape:
# for a small model on many devices that is hundreds of compiles per save (a tiny model on 8 CPU devices: 2,328
# slices, 11 of a 12 s save). Only arrays whose slices reach this size are split; smaller ones are written whole.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 << 20


def _type_handler_registry():
    handlers = [(ty, handler) for ty, handler in _orbax_type_handlers._DEFAULT_TYPE_HANDLERS if ty is not jax.Array]
    array = ocp.type_handlers.ArrayHandler(
        array_metadata_store=_orbax_type_handlers.array_metadata_store_lib.Store(),
        min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)
    return ocp.type_handlers.create_type_handler_registry(*handlers, (jax.Array, array))


class _SealedStandardHandler(_Sealed, ocp.StandardCheckpointHandler):
    def __init__(self):
        super().__init__()
        # StandardCheckpointHandler's own PyTree handler, with the array handler above
        self._impl = ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handler_registry())


class _SealedJsonHandler(_Sealed, ocp.JsonCheckpointHandler):
    pass


class _SealedGrainHandler(_Sealed, grain.checkpoint.CheckpointHandler):
    pass


def _handler_registry():
    """Our sealing handlers for the three items (save and restore args of each)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, handler, save, restore in (
            (_STATE, _SealedStandardHandler(), ocp.args.StandardSave, ocp.args.StandardRestore),
            (_META, _SealedJsonHandler(), ocp.args.JsonSave, ocp.args.JsonRestore),
            (_DATA, _SealedGrainHandler(), grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore)):
        registry.add(item, save, handler)
        registry.add(item, restore, handler)
    return registry


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
                 save_interval_steps: int = 1, kill_in_save_step: int = 0):
        if keep is not None and keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1 or None (keep all), got {keep}")
        if save_interval_steps < 1:
            raise ValueError(f"Checkpointer: save_interval_steps must be >= 1, got {save_interval_steps}")
        self.directory = epath.Path(os.path.abspath(os.fspath(directory)))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())
        # kill_in_save_step: SIGKILL this process while saving that step, after orbax wrote the step's files and
        # before its manifests (tests of a preemption during a save; 0: never).
        if kill_in_save_step:
            _KILL_BEFORE_SEAL[str(int(kill_in_save_step))] = True

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

    # -- integrity -------------------------------------------------------------------------------------------
    def step_dir(self, step: int) -> str:
        return os.path.join(os.fspath(self.directory), str(int(step)))

    def verify(self, step: int) -> None:
        """Check every item of ``step`` against its manifest (:func:`verify_step`)."""
        verify_step(self.directory, step)

    def _quarantine_path(self, step: int) -> str:
        """Where a damaged step goes: ``directory/corrupt/<step>`` (``<step>.1``, ... if taken)."""
        dest_root = os.path.join(os.fspath(self.directory), QUARANTINE)
        dest, n = os.path.join(dest_root, str(step)), 0
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(dest_root, f"{step}.{n}")
        return dest

    # -- restore ---------------------------------------------------------------------------------------------
    def restore(self, step: int | None = None, *, abstract_state, data_iter=None, require_data: bool = True,
                verify: bool = True) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` at ``step`` (default: latest) into ``abstract_state``'s structure/shardings.

        ``abstract_state``: pytree of ``jax.ShapeDtypeStruct`` (or arrays) whose shardings are those wanted now;
        leaves without a sharding go to the first local device. ``data_iter`` (if given) is set to the saved
        iterator position in place; a checkpoint without one (e.g. weights imported by ``scene3d.export``) is an
        error unless ``require_data=False``, which leaves ``data_iter`` at its start (with a warning). The step's
        files are checked against their manifests first (``verify``): a damaged step raises
        :class:`CorruptCheckpointError` and nothing is read from it.
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
        if verify:
            self.verify(step)
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

    def restore_latest_good(self, *, abstract_state, data_iter=None, require_data: bool = True
                            ) -> tuple[int, Any, dict]:
        """``(step, state, meta)`` of the newest step that passes :meth:`verify` (how a run resumes).

        Each newer, damaged step is reported in one warning line naming it and moved into ``directory/corrupt/``
        (so the run can save that step again). When no step is good nothing is moved and a
        :class:`NoGoodCheckpointError` (a ValueError) says so; with no step at all, a ``FileNotFoundError``.
        """
        self.wait()
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        damaged: list[CorruptCheckpointError] = []
        good = None
        for step in reversed(steps):
            try:
                self.verify(step)
            except CorruptCheckpointError as e:
                damaged.append(e)
                continue
            good = step
            break
        if good is None:
            raise NoGoodCheckpointError(
                f"no usable checkpoint in {self.directory}: every step ({steps}) is damaged, the newest because "
                f"{damaged[0].reason}. Nothing was moved; to train from scratch, move that folder aside.")
        if damaged:
            dests = [self._quarantine_path(e.step) for e in damaged]
            _barrier("scene3d_checkpoint_verified")  # every process has checked before anything moves
            for e, dest in zip(damaged, dests):
                if jax.process_index() == 0:
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.replace(self.step_dir(e.step), dest)
                logging.warning("%s; resuming from step %d (the damaged step is moved to %s)", e, good, dest)
            _barrier("scene3d_checkpoint_quarantined")
            self._manager.reload()
        state, meta = self.restore(good, abstract_state=abstract_state, data_iter=data_iter,
                                   require_data=require_data, verify=False)
        return good, state, meta

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


def _barrier(name: str):
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
