"""A training run's directory, read back: its config, its checkpoint steps, its model variables onto a mesh.

Layout written by ``scene3d.train``: ``<workdir>/config.json`` (the full training config) and
``<workdir>/checkpoints/`` (``scene3d.core.checkpoint.Checkpointer``: ``<step>/state`` holds the train state
``params`` / ``opt_state`` / ``ema`` (when kept) / ``frozen`` (non-trainable variables, e.g. a stage-1
tokenizer) / ``step`` / ...). This module and ``core/checkpoint.py`` are the only code that knows those paths.

- ``read_config(workdir)``: config.json as a ConfigDict (``task`` and ``model`` required; a ValueError names
  the file and the field).
- ``checkpoint_step(workdir, step)``: ``step`` if saved, else the latest (clear errors when none).
- ``restore_variables(workdir, target, ...)``: the EMA (when kept and preferred) or the raw parameters plus the
  frozen variables of one checkpoint, restored into ``target``'s structure and shardings; the optimiser state
  is never read. The step's files are checked against their checksums first (a damaged step is a
  ``checkpoint.CorruptCheckpointError``, a ValueError naming the step and the file; nothing falls back silently).
- ``restore_model(workdir, build, mesh=..., ...)``: a model built abstractly by ``build`` (the caller builds it
  from the config: core does not know tasks) with those variables placed straight onto ``mesh``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from scene3d.core import checkpoint as ckpt_lib
from scene3d.core import sharding as sh

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


def config_path(workdir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(workdir), CONFIG_FILE)


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(workdir), CHECKPOINTS)


def read_config(workdir: str | os.PathLike, required: Sequence[str] = ("task", "model")
                ) -> ml_collections.ConfigDict:
    """The config a run was trained with (``<workdir>/config.json``); each ``required`` field must be there."""
    path = config_path(workdir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"run directory {os.fspath(workdir)!r}: no {CONFIG_FILE} (expected {path}, "
                                "written by scene3d.train at the start of a run)")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    for key in required:
        if key not in cfg:
            raise ValueError(f"{path}: field {key!r} missing; not a scene3d training config")
    return ml_collections.ConfigDict(cfg)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The complete checkpoint steps of a run, ascending (a FileNotFoundError when it has no checkpoints)."""
    ckdir = checkpoint_dir(workdir)
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(f"{os.fspath(workdir)!r}: no checkpoints folder ({ckdir})")
    with ckpt_lib.Checkpointer(ckdir, async_save=False) as ckpt:
        steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"{os.fspath(workdir)!r}: no complete checkpoint in {ckdir}")
    return steps


def checkpoint_step(workdir: str | os.PathLike, step: int | None = None) -> int:
    """``step`` if the run in ``workdir`` saved it, else (None) its latest step; a clear error if there is none."""
    steps = checkpoint_steps(workdir)
    if step is None:
        return steps[-1]
    if int(step) not in steps:
        raise FileNotFoundError(f"{os.fspath(workdir)!r}: checkpoint step {step} not found (available: {steps})")
    return int(step)


def _state_dir(workdir, step: int) -> str:
    return os.path.join(checkpoint_dir(workdir), str(int(step)), ckpt_lib.STATE_ITEM)


def _saved_tree(state_dir: str) -> dict:
    meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
    return dict(getattr(meta, "tree", meta))


def _is_wrapped(saved) -> bool:
    """A saved nnx Variable: {'value': array metadata} (orbax writes a Variable's value under 'value')."""
    return isinstance(saved, dict) and set(saved) == {"value"} and not isinstance(saved["value"], dict)


def _unwrap(saved):
    """The saved tree with every Variable's {'value': x} replaced by x (the layout of ``nnx.to_pure_dict``)."""
    if _is_wrapped(saved):
        return saved["value"]
    return {k: _unwrap(v) for k, v in saved.items()} if isinstance(saved, dict) else saved


def _wrap_like(tree, saved):
    """A pure nested dict laid out as on disk: each leaf wrapped as {'value': leaf} where ``saved`` wraps it."""
    if isinstance(tree, dict):
        return {k: _wrap_like(v, saved.get(str(k)) if isinstance(saved, dict) else None) for k, v in tree.items()}
    return {"value": tree} if _is_wrapped(saved) else tree


def _split_by_saved(target: dict, saved: dict) -> tuple[dict, dict]:
    """Split a nested dict into (the part whose paths exist in ``saved`` (unwrapped; keys compared as str), the
    rest)."""
    inside, outside = {}, {}
    for k, v in target.items():
        sv = saved.get(str(k))
        if isinstance(v, dict):
            a, b = _split_by_saved(v, sv if isinstance(sv, dict) else {})
            if a:
                inside[k] = a
            if b:
                outside[k] = b
        elif sv is not None and not isinstance(sv, dict):
            inside[k] = v
        else:
            outside[k] = v
    return inside, outside


def _merge_nested(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_nested(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _key_name(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _check_shapes(saved, target, where, key):
    flat_saved = {tuple(_key_name(k) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for p, x in jax.tree_util.tree_flatten_with_path(target)[0]:
        name = tuple(_key_name(k) for k in p)
        s = flat_saved.get(name)
        if s is None:
            raise ValueError(f"{where}: state[{key!r}] has no variable {'.'.join(name)}")
        if tuple(s.shape) != tuple(x.shape):
            raise ValueError(f"{where}: state[{key!r}].{'.'.join(name)} is {tuple(s.shape)}, the model expects "
                             f"{tuple(x.shape)}")


def _abstract(x) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def restore_variables(workdir: str | os.PathLike, target, *, step: int | None = None, prefer_ema: bool = True
                      ) -> tuple[Any, dict]:
    """Restore a run's model variables into ``target`` (an nnx State, or a pure dict, of arrays or of
    ``jax.ShapeDtypeStruct``: its structure, shapes and shardings; variable *types* may differ from the saved
    ones, e.g. ``Frozen`` for ``Param``). Trainable variables come from ``state['ema']`` when saved and
    ``prefer_ema``, else ``state['params']``; the run's non-trainable variables from ``state['frozen']``. Only
    those subtrees are read (no optimiser state). Returns (state, info) with info = {step, key, workdir}."""
    step = checkpoint_step(workdir, step)
    ckpt_lib.verify_step(checkpoint_dir(workdir), step)
    state_dir = _state_dir(workdir, step)
    on_disk = _saved_tree(state_dir)
    saved = _unwrap(on_disk)
    key = "ema" if prefer_ema and "ema" in saved else "params"
    if key not in saved:
        raise ValueError(f"{state_dir}: checkpoint holds no 'params' (has {sorted(saved)})")
    pure = jax.tree.map(_abstract, nnx.to_pure_dict(target) if isinstance(target, nnx.State) else target)
    trainable, rest = _split_by_saved(pure, dict(saved[key]))
    frozen, missing = _split_by_saved(rest, dict(saved.get("frozen", {})))
    if missing:
        _check_shapes(saved[key], missing, state_dir, key)  # raises, naming the first missing variable
    item = {key: trainable}
    if frozen:
        item["frozen"] = frozen
    for k, part in item.items():
        _check_shapes(saved[k], part, state_dir, k)
    item = {k: _wrap_like(part, on_disk[k]) for k, part in item.items()}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                               dtype=x.dtype), item)
    try:
        out = _unwrap(ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{state_dir}: cannot restore state[{key!r}] into the model built from the config "
                         f"(architecture mismatch?): {e}") from None
    values = _merge_nested(out[key], out.get("frozen", {}))
    if isinstance(target, nnx.State):
        restored = jax.tree.map(lambda x: x, target)
        nnx.replace_by_pure_dict(restored, values)
        values = restored
    return values, {"step": step, "key": key, "workdir": os.fspath(workdir)}


def restore_model(workdir: str | os.PathLike, build: Callable[[], nnx.Module], *, mesh, rules=None,
                  step: int | None = None, prefer_ema: bool = True) -> tuple[nnx.Module, dict]:
    """(model, info): ``build()`` (e.g. ``lambda: task.build_model(nnx.Rngs(0))``) traced abstractly (no
    arrays), then the variables of checkpoint ``step`` (default: latest; EMA when kept and ``prefer_ema``)
    restored straight into their shardings on ``mesh`` under the logical ``rules``. info: step, key (ema |
    params), workdir, mesh, rules."""
    step = checkpoint_step(workdir, step)  # a clear error before the model is traced
    with sh.use_mesh(mesh, rules):
        graphdef, abstract = nnx.split(nnx.eval_shape(build))
        shardings = sh.state_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state, info = restore_variables(workdir, target, step=step, prefer_ema=prefer_ema)
    return nnx.merge(graphdef, state), {**info, "mesh": mesh, "rules": rules}
