"""Frozen stage-1 tokenizers inside stage-2 models, their Tokenizer adapters, and loading a run with its task.

A stage-2 generator holds its tokenizer as a submodule whose parameters are ``Frozen`` variables (not
``nnx.Param``): the trainer optimises ``nnx.Param`` only, so the tokenizer is sharded, checkpointed and passed to
the jitted step like any other state, never updated, and no optimiser state is kept for it. The stage-2 task uses
it only through its adapter (``scene3d.models.tokenizers``: encode / decode / token_shape / scale).

What every stage-2 task does with its ``config.tokenizer`` (``workdir``, ``model``, ``step``, ``use_ema``):

- ``resolve(config, stage2=..., expected=...)``: (workdir or None, the stage-1 config): the run's config.json, or
  a random-init stand-in built from ``tokenizer.model`` (smoke tests).
- ``tokenizer(stage1_config, **settings)``: the family's adapter (unbound, or bound to the abstract stage-1
  module when its shapes need one); ``adapter.bind(model.tokenizer)`` inside the task's functions.
- ``frozen_tokenizer(stage1_config, rngs)``: the stage-1 model with ``Frozen`` variables (the stage-2 model's
  submodule; ``build_tokenizer``: the same, trainable).
- ``restore_tokenizer(variables, key, tokenizer_config, workdir, name=...)``: fill ``variables[key]`` from the
  run (``restore_pretrained`` of the stage-2 task).

``load_run(workdir, ...)``: (config, task, model, info) of any run, its variables restored onto a mesh: what
``scene3d.sample`` / ``scene3d.export`` / ``scene3d.evaluate`` load. Reading run directories is
``scene3d.core.runs``.
"""
from __future__ import annotations

import ml_collections
from absl import logging
from flax import nnx

from scene3d.core import runs
from scene3d.core import sharding as sh
from scene3d.models import tokenizers
from scene3d.nn.frozen import freeze


def build_tokenizer(config, rngs: nnx.Rngs) -> nnx.Module:
    """The stage-1 model of ``config`` (a stage-1 training config), randomly initialised, built by its task."""
    from scene3d import tasks  # the task registry (lazy: tasks import this module)
    return tasks.get_task(config).build_model(rngs)


def frozen_tokenizer(config, rngs: nnx.Rngs) -> nnx.Module:
    """``build_tokenizer(config, rngs)`` with its parameters ``Frozen`` (never optimised by the trainer)."""
    return freeze(build_tokenizer(config, rngs))


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
        cfg = runs.read_config(workdir)
        if expected and cfg.task != expected:
            raise ValueError(f"config.tokenizer.workdir={workdir!r}: a {cfg.task!r} run; the {stage2} task needs "
                             f"a {expected!r} run")
        return workdir, cfg
    if tc.get("model") is None:
        raise ValueError(f"config.tokenizer: set workdir ({run}) or {init_fields} (random init, for smoke tests)")
    return None, ml_collections.ConfigDict({"task": expected or tc.get("task", "autoencode"),
                                            "model": tc.model.to_dict(), "data": config.data.to_dict(),
                                            **(extra or {})})


def tokenizer(config, module: nnx.Module | None = None, **settings) -> tokenizers.Tokenizer:
    """The Tokenizer adapter of the stage-1 ``config`` (``scene3d.models.tokenizers.from_config``) with
    ``settings``, bound to ``module``; without one, bound to the abstract stage-1 module (``nnx.eval_shape``: no
    arrays) only when the family needs a module for its shapes."""
    adapter = tokenizers.from_config(config, module, **settings)
    if module is None:
        try:
            adapter.token_shape
        except ValueError:  # not bound: this family reads its shapes off the module
            adapter = adapter.bind(nnx.eval_shape(lambda: build_tokenizer(config, nnx.Rngs(0))))
    return adapter


def restore_tokenizer(variables, key: str, tokenizer_config, workdir: str | None, *, name: str):
    """Fill ``variables[key]`` (the frozen stage-1 model in a fresh run's state, sharded or abstract) from the run
    in ``workdir``: checkpoint ``tokenizer_config.step`` (default: the latest), its EMA unless
    ``tokenizer_config.use_ema`` is False. Without a workdir it keeps its random init (a warning). ``name`` (e.g.
    '3DRAE') words the log. Returns ``variables``."""
    if not workdir:
        logging.warning("config.tokenizer.workdir unset: the stage-1 %s is RANDOMLY initialised", name)
        return variables
    restored, info = runs.restore_variables(workdir, variables[key], step=tokenizer_config.get("step"),
                                            prefer_ema=bool(tokenizer_config.get("use_ema", True)))
    variables[key] = restored
    logging.info("stage-1 %s: state[%r] of step %d from %s", name, info["key"], info["step"], info["workdir"])
    return variables


def load_run(workdir: str, *, step: int | None = None, mesh=None, prefer_ema: bool = True):
    """(config, task, model, info) of the run in ``workdir``: its config.json, the task it names, and the model
    that task builds with the variables of checkpoint ``step`` (default: latest; EMA when kept and
    ``prefer_ema``) restored straight into their shardings on ``mesh`` (default: all devices along fsdp). info:
    step, key (ema | params), workdir, mesh, rules."""
    from scene3d import tasks  # the task registry (lazy: tasks import this module)
    config = runs.read_config(workdir)
    runs.checkpoint_step(workdir, step)  # a clear error before the task is built
    task = tasks.get_task(config)
    mesh = sh.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}) if mesh is None else mesh
    rules = sh.rules_from_config(config.sharding.get("rules") if "sharding" in config else None)
    model, info = runs.restore_model(workdir, lambda: task.build_model(nnx.Rngs(0)), mesh=mesh, rules=rules,
                                     step=step, prefer_ema=prefer_ema)
    return config, task, model, info
