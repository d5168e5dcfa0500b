"""Frozen stage-1 tokenizers inside stage-2 models, and restoring model variables from a run's checkpoints.

A stage-2 generator holds its tokenizer as a submodule whose parameters are ``Frozen`` variables (not
``nnx.Param``): the trainer optimises ``nnx.Param`` only, so the tokenizer is sharded, checkpointed and passed to
the jitted step like any other state, never updated, and no optimiser state is kept for it.

- ``stage1_config(workdir)``: the stage-1 run's ``config.json`` (written by ``scene3d.train``) as a ConfigDict.
- ``build_tokenizer(config, rngs)``: the stage-1 model built by the stage-1 task (``config.task``), random init.
- ``freeze(module)``: the module with every ``nnx.Param`` turned into a ``Frozen`` variable (metadata kept).

What every stage-2 task does with its ``config.tokenizer`` (``workdir``, ``model``, ``step``, ``use_ema``):

- ``resolve(config, stage2=..., expected=...)``: (workdir or None, the stage-1 config): the run's config.json, or
  a random-init stand-in built from ``tokenizer.model`` (smoke tests).
- ``frozen_tokenizer(config, rngs)``: the stage-1 model with ``Frozen`` variables (the stage-2 model's submodule).
- ``restore_tokenizer(variables, key, tokenizer_config, workdir, name=...)``: fill ``variables[key]`` from the
  run (``restore_pretrained`` of the stage-2 task).
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
from absl import logging
from etils import epath
from flax import nnx

from scene3d.core.checkpoint import Checkpointer
from scene3d.nn.frozen import Frozen, freeze  # noqa: F401  (re-exported: stage-2 tasks use them)


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


def resolve(config, *, stage2: str, expected: str | None = None, init_fields: str = "model",
            extra: dict | None = None) -> tuple[str | None, ml_collections.ConfigDict]:
    """(workdir or None, stage-1 config) of a stage-2 ``config``'s frozen tokenizer (``config.tokenizer``).

    With ``tokenizer.workdir``: that run's config.json, which must be an ``expected`` run when ``expected`` is
    given. Without: a random-init stand-in (smoke tests) of task ``expected`` (else ``tokenizer.task``, default
    'autoencode') with ``tokenizer.model``, the stage-2 ``data`` and the ``extra`` fields. ``stage2`` (the task
    name) and ``init_fields`` only word the errors."""
    tc = config.tokenizer
    workdir = tc.get("workdir") or None
    run = f"a {expected} run" if expected else "a stage-1 run"
    if workdir:
        cfg = stage1_config(workdir)
        if expected and cfg.task != expected:
            raise ValueError(f"config.tokenizer.workdir={workdir!r}: a {cfg.task!r} run; the {stage2} task needs "
                             f"a {expected!r} run")
        return workdir, cfg
    if tc.get("model") is None:
        raise ValueError(f"config.tokenizer: set workdir ({run}) or {init_fields} (random init, for smoke tests)")
    return None, ml_collections.ConfigDict({"task": expected or tc.get("task", "autoencode"),
                                            "model": tc.model.to_dict(), "data": config.data.to_dict(),
                                            **(extra or {})})


def frozen_tokenizer(config, rngs: nnx.Rngs) -> nnx.Module:
    """``build_tokenizer(config, rngs)`` with its parameters ``Frozen`` (never optimised by the trainer)."""
    return freeze(build_tokenizer(config, rngs))


def abstract_tokenizer(config, needs: tuple[str, ...] = ("encode", "decode", "latent_shape")) -> nnx.Module:
    """The stage-1 model of ``config`` as an abstract module (``nnx.eval_shape``: no arrays allocated), checked to
    have the attributes ``needs``."""
    tok = nnx.eval_shape(lambda: build_tokenizer(config, nnx.Rngs(0)))
    for attr in needs:
        if not hasattr(tok, attr):
            raise ValueError(f"config.tokenizer: the stage-1 model {type(tok).__name__} has no {attr!r}; a latent "
                             f"tokenizer needs {' / '.join(needs)}")
    return tok


def restore_tokenizer(variables, key: str, tokenizer_config, workdir: str | None, *, name: str):
    """Fill ``variables[key]`` (the frozen stage-1 model in a fresh run's state, sharded or abstract) from the run
    in ``workdir``: checkpoint ``tokenizer_config.step`` (default: the latest), its EMA unless
    ``tokenizer_config.use_ema`` is False. Without a workdir it keeps its random init (a warning). ``name`` (e.g.
    '3DRAE') words the log. Returns ``variables``."""
    if not workdir:
        logging.warning("config.tokenizer.workdir unset: the stage-1 %s is RANDOMLY initialised", name)
        return variables
    restored, info = restore_variables(workdir, variables[key], step=tokenizer_config.get("step"),
                                       prefer_ema=bool(tokenizer_config.get("use_ema", True)))
    variables[key] = restored
    logging.info("stage-1 %s: state[%r] of step %d from %s", name, info["key"], info["step"], info["workdir"])
    return variables


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


def restore_variables(workdir: str, target, *, step: int | None = None, prefer_ema: bool = True
                      ) -> tuple[Any, dict]:
    """Restore a run's model variables into ``target`` (an nnx State of arrays or of ``jax.ShapeDtypeStruct``:
    its structure, shapes and shardings; variable *types* may differ from the saved ones, e.g. ``Frozen`` for
    ``Param``). Trainable variables come from ``state['ema']`` when saved and ``prefer_ema``, else
    ``state['params']``; the run's non-trainable variables from ``state['frozen']``. Only those subtrees are
    read (no optimiser state). Returns (state, info) with info = {step, key, workdir}."""
    step = checkpoint_step(workdir, step)
    state_dir = os.path.join(os.fspath(workdir), "checkpoints", str(step), "state")
    on_disk = _saved_tree(state_dir)
    saved = _unwrap(on_disk)
    key = "ema" if prefer_ema and "ema" in saved else "params"
    if key not in saved:
        raise ValueError(f"{state_dir}: checkpoint holds no 'params' (has {sorted(saved)})")

    def abstract(x):
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    pure = jax.tree.map(abstract, nnx.to_pure_dict(target) if isinstance(target, nnx.State) else target)
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
