"""Frozen stage-1 tokenizers inside stage-2 models, and restoring model variables from a run's checkpoints.

A stage-2 generator holds its tokenizer as a submodule whose parameters are ``Frozen`` variables (not
``nnx.Param``): the trainer optimises ``nnx.Param`` only, so the tokenizer is sharded, checkpointed and passed to
the jitted step like any other state, never updated, and no optimiser state is kept for it.

- ``stage1_config(workdir)``: the stage-1 run's ``config.json`` (written by ``scene3d.train``) as a ConfigDict.
- ``build_tokenizer(config, rngs)``: the stage-1 model built by the stage-1 task (``config.task``), random init.
- ``freeze(module)``: the module with every ``nnx.Param`` turned into a ``Frozen`` variable (metadata kept).
- ``restore_variables(workdir, target, ...)``: the EMA (if the run kept one) or the raw parameters of a run's
  checkpoint, restored into ``target`` (a State or abstract State: its structure, shapes and shardings) without
  reading the optimiser state.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from scene3d.core.checkpoint import Checkpointer


class Frozen(nnx.Variable):
    """A parameter that the trainer does not optimise (e.g. a pretrained stage-1 tokenizer's weights)."""


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def freeze(module: nnx.Module) -> nnx.Module:
    """``module`` with its ``nnx.Param`` variables turned into ``Frozen`` ones (values and metadata kept)."""
    graphdef, state = nnx.split(module)
    state = jax.tree.map(lambda v: Frozen(v.get_value(), **v.get_metadata()) if isinstance(v, nnx.Param) else v,
                         state, is_leaf=_is_var)
    return nnx.merge(graphdef, state)


def stage1_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a stage-1 run was trained with: ``<workdir>/config.json``."""
    path = os.path.join(os.fspath(workdir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"stage-1 workdir {workdir!r}: no config.json (expected {path}, written by "
                                "scene3d.train at the start of a run)")
    with open(path) as f:
        cfg = json.load(f)
    for key in ("task", "model"):
        if key not in cfg:
            raise ValueError(f"{path}: field {key!r} missing; not a scene3d training config")
    return ml_collections.ConfigDict(cfg)


def build_tokenizer(config, rngs: nnx.Rngs) -> nnx.Module:
    """The stage-1 model of ``config`` (a stage-1 training config), randomly initialised, built by its task."""
    from scene3d import tasks  # the task registry (lazy: tasks import this module)
    return tasks.get_task(config).build_model(rngs)


def checkpoint_step(workdir: str, step: int | None = None) -> int:
    """``step`` if the run in ``workdir`` saved it, else its latest step; a clear error if there is none."""
    ckdir = os.path.join(os.fspath(workdir), "checkpoints")
    if not os.path.isdir(ckdir):
        raise FileNotFoundError(f"{workdir!r}: no checkpoints folder ({ckdir})")
    with Checkpointer(ckdir, async_save=False) as ckpt:
        steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"{workdir!r}: no complete checkpoint in {ckdir}")
    if step is None:
        return steps[-1]
    if int(step) not in steps:
        raise FileNotFoundError(f"{workdir!r}: checkpoint step {step} not found (available: {steps})")
    return int(step)


def _saved_tree(state_dir: str) -> dict:
    meta = ocp.PyTreeCheckpointer().metadata(state_dir)
    meta = getattr(meta, "item_metadata", meta)
    return dict(getattr(meta, "tree", meta))


def restore_variables(workdir: str, target, *, step: int | None = None, prefer_ema: bool = True
                      ) -> tuple[Any, dict]:
    """Restore a run's model variables (``state['ema']`` when saved and ``prefer_ema``, else
    ``state['params']``) into the structure, shapes and shardings of ``target`` (an nnx State of arrays or of
    ``jax.ShapeDtypeStruct``; variable *types* may differ from the saved ones, e.g. ``Frozen`` for ``Param``).
    Only that subtree is read. Returns (state, info) with info = {step, key, workdir}."""
    step = checkpoint_step(workdir, step)
    state_dir = os.path.join(os.fspath(workdir), "checkpoints", str(step), "state")
    saved = _saved_tree(state_dir)
    key = "ema" if prefer_ema and "ema" in saved else "params"
    if key not in saved:
        raise ValueError(f"{state_dir}: checkpoint holds no 'params' (has {sorted(saved)})")

    def abstract(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    target = jax.tree.map(abstract, target)
    _check_shapes(saved[key], target, state_dir, key)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                               dtype=x.dtype), target)
    try:
        out = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
            item={key: target}, restore_args={key: restore_args}, partial_restore=True))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{state_dir}: cannot restore state[{key!r}] into the model built from the config "
                         f"(architecture mismatch?): {e}") from None
    return out[key], {"step": step, "key": key, "workdir": os.fspath(workdir)}


def _check_shapes(saved, target, where, key):
    flat_saved = {tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p): v
                  for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for p, x in jax.tree_util.tree_flatten_with_path(target)[0]:
        name = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p)
        s = flat_saved.get(name)
        if s is None:
            raise ValueError(f"{where}: state[{key!r}] has no variable {'.'.join(name)}")
        if tuple(s.shape) != tuple(x.shape):
            raise ValueError(f"{where}: state[{key!r}].{'.'.join(name)} is {tuple(s.shape)}, the model expects "
                             f"{tuple(x.shape)}")
