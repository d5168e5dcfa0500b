"""The one training entry point.

    python -m scene3d.train --config=configs/flow_shapes.py:runlocal --workdir=/tmp/run

Generic over tasks (``config.task`` names one in ``scene3d.tasks``). The train step is a pure ``jax.jit`` function
of (state, batch) with explicit in/out shardings and a donated state; the model is ``nnx.merge``d inside. One orbax
checkpoint holds params, optimiser state, EMA, step, RNG and the data iterator; a run resumes from the newest
checkpoint in ``--workdir`` that passes its checksums (damaged newer ones are reported in one line each and moved
aside, ``scene3d.core.checkpoint``), and ``metrics.jsonl`` drops the rows the resumed run replays. Metrics go to the
console, ``metrics.jsonl`` and TensorBoard event files.

Training never goes on from a corrupt state: a step whose loss, gradient, update or new optimiser state is not
finite is skipped (the state is left as it was), a run whose restored parameters / optimiser state / EMA are not
finite stops, and so does a run whose last ``config.max_skipped_steps`` steps were all skipped (exit status 1 and
one clear line, :class:`TrainingStopped`).
"""
from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import os
import signal
import sys
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scene3d import data as data_lib
from scene3d import tasks as tasks_lib
from scene3d.core import checkpoint as ckpt_lib
from scene3d.core import chrono as chrono_lib
from scene3d.core import compile_cache
from scene3d.core import config as config_lib
from scene3d.core import distributed
from scene3d.core import metrics as metrics_lib
from scene3d.core import runs
from scene3d.core import sharding as sh
from scene3d.core import tree as tree_lib
from scene3d.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config: configs/X.py:ARGS", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")


# ----------------------------------------------------------------------------------------------------------------
# Start-up: a persistent compilation cache (its home is scene3d.core.compile_cache; these names are kept here)

DEFAULT_COMPILATION_CACHE_DIR = compile_cache.DEFAULT_COMPILATION_CACHE_DIR
compilation_cache_dir = compile_cache.compilation_cache_dir
enable_compilation_cache = compile_cache.enable_compilation_cache


# ----------------------------------------------------------------------------------------------------------------
# Optimiser


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup + cosine decay (or constant, or multistep), global-norm clipping.

    ``schedule='multistep'`` is the SceneTok release's SequentialLR(LinearLR, MultiStepLR): the learning rate rises
    linearly from ``warmup_start_factor * lr`` to ``lr`` over ``warmup_steps``, then is multiplied by ``gamma`` at
    each of ``milestones`` (counted from the end of the warmup, as SequentialLR restarts its second scheduler)."""
    oc = config.optim
    if oc.get("schedule", "cosine") == "multistep":
        warm = max(int(oc.warmup_steps), 1)
        start = float(oc.lr) * float(oc.get("warmup_start_factor", 0.0))
        gamma = float(oc.get("gamma", 0.1))
        stones = sorted(int(m) for m in (oc.get("milestones") or ()))
        if any(m <= 0 for m in stones) or len(set(stones)) != len(stones):
            raise ValueError(f"config.optim.milestones must be distinct positive steps, got {oc.get('milestones')}")
        schedule = optax.join_schedules(
            [optax.linear_schedule(start, float(oc.lr), warm),
             optax.piecewise_constant_schedule(float(oc.lr), {m: gamma for m in stones})], [warm])
    elif oc.get("schedule", "cosine") == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=oc.lr, warmup_steps=max(int(oc.warmup_steps), 1),
            decay_steps=max(int(config.total_steps), int(oc.warmup_steps) + 1), end_value=oc.lr * oc.get("end_lr_factor", 0.0))
    elif oc.schedule == "constant":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, oc.lr, max(int(oc.warmup_steps), 1)), optax.constant_schedule(oc.lr)],
            [max(int(oc.warmup_steps), 1)])
    else:
        raise ValueError(f"config.optim.schedule: unknown {oc.schedule!r} (cosine | constant | multistep)")
    parts = []
    if oc.get("clip_norm"):
        parts.append(optax.clip_by_global_norm(oc.clip_norm))
    parts.append(optax.adamw(schedule, b1=oc.get("b1", 0.9), b2=oc.get("b2", 0.999), eps=oc.get("eps", 1e-8),
                             weight_decay=oc.get("weight_decay", 0.0)))
    return optax.chain(*parts), schedule


# ----------------------------------------------------------------------------------------------------------------
# Train state


@dataclasses.dataclass
class Setup:
    """Everything the loop needs that is not the (device) state."""
    task: Any
    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Any
    mesh: Any
    rules: dict
    state_shardings: Any
    step_fn: Any
    eval_params_key: str


def _replicated_like(tree, mesh):
    return jax.tree.map(lambda _: sh.replicated(mesh), tree)


def create_state(config, task, mesh, rules, *, abstract: bool = False):
    """Create params (already sharded), optimiser state, EMA, step and RNG. Returns (graphdef, state, shardings).

    The sharded init (``sh.create_sharded_model``: one ``jit(init)``) is traced and compiled once per run, here.
    ``abstract=True`` computes nothing: every leaf is a ``jax.ShapeDtypeStruct`` carrying its sharding, the target
    a checkpoint is restored into (a resumed run: no init program, no pretrained weights read, no Adam init; the
    restored state replaces all of it)."""
    seed = int(config.seed)
    build = lambda: task.build_model(nnx.Rngs(seed))
    if abstract:
        graphdef, shapes = nnx.split(nnx.eval_shape(build))
        variables = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                                 sh.state_shardings(shapes, mesh, rules))
    else:
        graphdef, variables = sh.create_sharded_model(build, mesh, rules)
        if hasattr(task, "restore_pretrained"):  # e.g. a frozen stage-1 tokenizer; a resume then overwrites all
            variables = task.restore_pretrained(variables)
    # Only nnx.Param is trained; every other variable (Frozen pretrained weights, buffers) is carried as state
    # with no gradient and no optimiser state.
    params, frozen = variables.filter(nnx.Param), variables.filter(nnx.Not(nnx.Param))
    tx, schedule = make_optimizer(config)
    pshard = jax.tree.map(lambda x: x.sharding, params)
    rep = sh.replicated(mesh)
    opt_shape = jax.eval_shape(tx.init, params)
    oshard = optax.tree_map_params(tx, lambda p, s: s, opt_shape, pshard, transform_non_params=lambda _: rep,
                                   is_leaf=lambda x: isinstance(x, nnx.Variable))
    scalar = lambda: jnp.zeros((), jnp.int32)
    rng_data = lambda: jax.random.key_data(jax.random.key(seed + 1))
    if abstract:
        shaped = lambda tree, shardings: jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
        opt_state = shaped(opt_shape, oshard)
        made = {k: shaped(jax.eval_shape(f), rep) for k, f in (("step", scalar), ("skipped", scalar),
                                                               ("rng", rng_data))}
    else:
        with sh.use_mesh(mesh, rules):
            opt_state = jax.jit(tx.init, out_shardings=oshard)(params)
        made = {k: jax.device_put(f(), rep) for k, f in (("step", scalar), ("skipped", scalar), ("rng", rng_data))}
    state = {"params": params, "opt_state": opt_state, **made}
    shardings = {"params": pshard, "opt_state": oshard, "step": rep, "skipped": rep, "rng": rep}
    if jax.tree.leaves(frozen):
        state["frozen"] = frozen
        shardings["frozen"] = jax.tree.map(lambda x: x.sharding, frozen)
    if config.get("ema_decay", 0.0):
        state["ema"] = (params if abstract else
                        jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=pshard)(params))
        shardings["ema"] = pshard
    return graphdef, state, shardings, tx, schedule


def merge_model(graphdef, params, state) -> nnx.Module:
    """The model from trainable ``params`` plus the state's frozen variables (if any)."""
    return nnx.merge(graphdef, params, state["frozen"]) if "frozen" in state else nnx.merge(graphdef, params)


SKIP_NORMS = ("global", "mean_tensor")


def mean_tensor_norm(grads) -> jax.Array:
    """The mean over parameter tensors of each tensor's L2 norm (the SceneTok release's skip statistic: the mean of
    ``p.grad.norm()`` over its parameters). A stacked layer parameter (leading 'layers' axis, ``nn.Stack``) counts
    as one tensor per layer, as the release's per-layer modules do."""
    norms = []
    for v in jax.tree.leaves(grads, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = ()
        if isinstance(v, nnx.Variable):
            md = v.get_metadata()
            names = tuple(md.get("out_sharding") or md.get("sharding_names") or md.get("sharding") or ())
            v = v[...]
        sq = jnp.square(jnp.asarray(v, jnp.float32))
        if names and names[0] == "layers" and sq.ndim > 1:
            norms.append(jnp.sqrt(jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)))
        else:
            norms.append(jnp.sqrt(jnp.sum(sq))[None])
    return jnp.mean(jnp.concatenate(norms))


def all_finite(*trees) -> jax.Array:
    """One boolean: every floating-point leaf of ``trees`` is finite (integer leaves, e.g. Adam's count, pass).

    The per-leaf flags are combined by sorting them, not by a reduction: XLA rewrites a reduction over stacked
    scalars into a chain of ``and`` and copies that chain into every consumer's fusion, and the train step's
    consumers are one select per state leaf, so leaves^2 operations (26k for a 160-leaf model, 80 % of its compile
    time). A sort is never duplicated into a fusion."""
    flags = [jnp.all(jnp.isfinite(x)).astype(jnp.int32) for tree in trees for x in jax.tree.leaves(tree)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.sort(jnp.stack(flags))[0] == 1 if flags else jnp.bool_(True)


def make_train_step(config, task, graphdef, tx, schedule):
    """Pure jitted train step: (state, batch) -> (state, metrics). Skips non-finite / exploding updates: a step is
    applied only when the loss, the gradient norm, the update and the new optimiser state are all finite (a NaN in
    Adam's moments leaves the gradient finite but not the update); ``optim.skip_grad_norm`` > 0 also skips steps
    whose gradient norm exceeds it, the global norm or, with ``optim.skip_grad_norm_kind='mean_tensor'``,
    :func:`mean_tensor_norm` (both before clipping)."""
    ema_decay = float(config.get("ema_decay", 0.0))
    max_gnorm = float(config.optim.get("skip_grad_norm", 0.0) or 0.0)
    skip_kind = config.optim.get("skip_grad_norm_kind", "global") or "global"
    if skip_kind not in SKIP_NORMS:
        raise ValueError(f"config.optim.skip_grad_norm_kind must be one of {SKIP_NORMS}, got {skip_kind!r}")

    def step_fn(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        params = state["params"]

        def loss_fn(p):
            model = merge_model(graphdef, p, state)
            return task.loss(model, batch, rng, step=state["step"])

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        gnorm = optax.global_norm(grads)
        ok = jnp.isfinite(gnorm) & jnp.isfinite(loss)  # scalars: combined once, below, with the per-leaf flags
        extra = {}
        if max_gnorm > 0:
            if skip_kind == "mean_tensor":
                extra["grad_norm_mean_tensor"] = mean_tensor_norm(grads)
                ok &= extra["grad_norm_mean_tensor"] <= max_gnorm
            else:
                ok &= gnorm <= max_gnorm
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        ok = all_finite(updates, new_opt, [jnp.where(ok, 0.0, jnp.nan)])
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        out = dict(state)
        out["params"] = keep(new_params, params)
        out["opt_state"] = keep(new_opt, state["opt_state"])
        if "ema" in state:
            new_ema = jax.tree.map(lambda e, p: e * ema_decay + (1.0 - ema_decay) * p.astype(e.dtype), state["ema"],
                                   new_params)
            out["ema"] = keep(new_ema, state["ema"])
        out["step"] = state["step"] + 1
        out["skipped"] = state["skipped"] + (1 - ok.astype(jnp.int32))
        metrics = {"loss": loss, "grad_norm": gnorm, "lr": schedule(state["step"]),
                   "step_skipped": 1.0 - ok.astype(jnp.float32), **extra, **aux}
        return out, metrics

    return step_fn


def batch_shardings(batch, mesh):
    """Each batch leaf sharded along its leading ('batch') axis."""
    return jax.tree.map(lambda x: sh.batch_sharding(x.ndim, mesh, shape=x.shape), batch)


def compile_train_step(s: "Setup", state, batch):
    """AOT-compile the train step for this batch's shapes (explicit shardings, donated state)."""
    with sh.use_mesh(s.mesh, s.rules):
        return jax.jit(s.step_fn, in_shardings=(s.state_shardings, batch_shardings(batch, s.mesh)),
                       out_shardings=(s.state_shardings, sh.replicated(s.mesh)),
                       donate_argnums=(0,)).lower(state, batch).compile()


def setup(config, mesh=None, *, abstract: bool = False) -> tuple[Setup, dict]:
    """Mesh, task, sharded state and the jitted step for a config (``abstract``: the state as sharded
    ``jax.ShapeDtypeStruct``s, nothing computed: the target of a restore, :func:`create_state`)."""
    nnx.use_eager_sharding(False)  # a per-thread flag: runs may start in any thread (e.g. a notebook's)
    mesh = sh.make_mesh(dict(config.mesh)) if mesh is None else mesh
    rules = sh.rules_from_config(config.sharding.get("rules") if "sharding" in config else None)
    task = tasks_lib.get_task(config)
    with sh.use_mesh(mesh, rules):
        graphdef, state, shardings, tx, schedule = create_state(config, task, mesh, rules, abstract=abstract)
    step_fn = make_train_step(config, task, graphdef, tx, schedule)
    ekey = "ema" if "ema" in state else "params"
    return Setup(task, graphdef, tx, schedule, mesh, rules, shardings, step_fn, ekey), state


def abstract_like(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def evaluate(config, s: Setup, state, writer, step: int, workdir: str | None = None):
    """Average the task's eval metrics over the eval split; write images of the first batch."""
    model = merge_model(s.graphdef, state[s.eval_params_key], state)
    it = data_iterator(config, s.task, "eval")
    n = int(config.get("eval_batches", 4))
    totals: dict[str, float] = {}
    count = 0
    rng = jax.random.key(int(config.seed) + 7)
    with sh.use_mesh(s.mesh, s.rules):
        eval_fn = _jit_cache(s, "eval", lambda m, b, r: s.task.evaluate(m, b, r))
        first = None
        for i, batch in zip(range(n), it):
            gbatch = pipeline.to_global(batch, s.mesh)
            first = gbatch if first is None else first
            out = jax.device_get(eval_fn(model, gbatch, jax.random.fold_in(rng, i)))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
        if count:
            means = {f"eval/{k}": v / count for k, v in totals.items()}
            writer.write_scalars(step, means)
            logging.info("eval @ step %d: %s", step, " | ".join(f"{k} {v:.4g}" for k, v in sorted(means.items())))
    want_images = first is not None and config.get("write_images", True)
    want_outputs = first is not None and workdir and hasattr(s.task, "write_outputs")
    if want_images or want_outputs:
        mesh_ctx = sh.use_mesh(s.mesh, s.rules)
        if jax.process_count() > 1:
            # Figures and files are host-side work on whole arrays: gather the model and the batch onto every
            # process (collective) and compute them locally, outside the multi-process mesh.
            graphdef, variables = nnx.split(model)
            model = nnx.merge(graphdef, distributed.process_local(variables))
            first = distributed.process_local(first)
            mesh_ctx = sh.use_mesh(None)
        with mesh_ctx:
            if want_images:
                images = s.task.images(model, first, rng)
                writer.write_images(step, {f"eval/{k}": np.asarray(v) for k, v in images.items()})
            # Optional task hook for files a person opens (e.g. decoded PLY scenes); primary process only.
            if want_outputs and jax.process_index() == 0:
                s.task.write_outputs(model, first, rng, os.path.join(workdir, "outputs", f"{step:08d}"))
    return {k: v / max(count, 1) for k, v in totals.items()}


def data_iterator(config, task, split: str):
    """The resumable per-process batch iterator for ``split``: dataset transforms, then the task's."""
    train = split == "train"
    read = grain.ReadOptions(num_threads=int(config.data.get("num_threads", 2)),
                             prefetch_buffer_size=int(config.data.get("prefetch", 4)))
    return pipeline.make_batch_iterator(
        data_lib.get_source(config.data, split),
        global_batch_size=int(config.global_batch_size if train else config.get("eval_batch_size",
                                                                               config.global_batch_size)),
        seed=int(config.seed) if train else 0, shuffle=train, num_epochs=None if train else 1,
        transforms=data_lib.get_transforms(config.data, split) + list(task.data_transforms(split)),
        read_options=read)


def _jit_cache(s: Setup, name: str, fn):
    cache = s.__dict__.setdefault("_jit", {})
    if name not in cache:
        cache[name] = nnx.jit(fn)
    return cache[name]


# ----------------------------------------------------------------------------------------------------------------
# The loop


class TrainingStopped(RuntimeError):
    """The run cannot go on without training on a corrupt state (``main`` prints it in one line, exit status 1)."""


def _nonfinite_leaves(tree, prefix: str, mesh) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` holding a NaN or an infinity (one flag per leaf, replicated
    so that every process reads them)."""
    flat = tree_lib.flatten_with_paths(tree)
    names = [k for k, x in flat.items() if jnp.issubdtype(x.dtype, jnp.inexact)]
    flags = jax.jit(lambda xs: [jnp.all(jnp.isfinite(x)) for x in xs], out_shardings=sh.replicated(mesh))
    finite = jax.device_get(flags([flat[k] for k in names]))
    return [f"{prefix}/{k}" for k, ok in zip(names, finite) if not bool(ok)]


def check_restored_state(state, step: int, directory, mesh) -> None:
    """Stop (:class:`TrainingStopped`) when a restored state holds non-finite parameters, optimiser state or EMA:
    every step would be skipped, or worse, applied."""
    bad = []
    for key in ("params", "opt_state", "ema"):
        if key in state:
            bad += _nonfinite_leaves(state[key], key, mesh)
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise TrainingStopped(f"checkpoint step {step} in {directory} holds non-finite values ({shown}); not training "
                              f"on it. Move {os.path.join(os.fspath(directory), str(step))} aside to resume from an "
                              "earlier step.")


class SkipStreak:
    """Counts consecutive skipped steps on the host, reading each step's ``step_skipped`` flag one step late (the
    flag of the step before the one just dispatched, so the host never waits for the device), and stops the run
    (:class:`TrainingStopped`) once ``limit`` steps in a row were skipped (``limit`` 0: never)."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"config.max_skipped_steps must be >= 0 (0: never stop), got {limit}")
        self.limit, self.count = int(limit), 0
        self._pending = None  # (step, device flag) of the last step, not read yet

    def push(self, step: int, skipped_flag) -> None:
        self.flush()
        self._pending = (step, skipped_flag)

    def flush(self) -> None:
        if self._pending is None:
            return
        step, flag = self._pending
        self._pending = None
        self.count = self.count + 1 if float(jax.device_get(flag)) > 0 else 0
        if self.limit and self.count >= self.limit:
            raise TrainingStopped(
                f"stopping at step {step}: the last {self.count} steps were all skipped (non-finite loss, gradient, "
                "update or optimiser state, or a gradient norm above optim.skip_grad_norm), so nothing is being "
                f"learned; the parameters are those of step {step - self.count}. Fix the cause (data, optim.lr) or "
                "raise config.max_skipped_steps (0: never stop).")


def train_and_evaluate(config, workdir: str, *, mesh=None) -> dict:
    """Train ``config`` in ``workdir``, resuming from its newest good checkpoint. Returns the final state.

    Raises :class:`TrainingStopped` when the restored state is not finite or ``config.max_skipped_steps`` steps in
    a row were skipped."""
    os.makedirs(workdir, exist_ok=True)
    primary = jax.process_index() == 0
    if primary:
        config_lib.config_to_json(config, runs.config_path(workdir))
    ckpt = ckpt_lib.Checkpointer(runs.checkpoint_dir(workdir), keep=int(config.get("keep_ckpts", 3)),
                                 async_save=bool(config.get("async_checkpoint", True)),
                                 kill_in_save_step=int(config.get("preempt_in_save_at_step", 0) or 0))
    writer = None
    try:
        # A run that resumes builds its state abstractly (no init program, no pretrained weights, no Adam init):
        # the checkpoint replaces all of it. A fresh run compiles the sharded init once, here; evaluations and
        # checkpoints reuse the state.
        resuming = ckpt.latest_step() is not None
        s, state = setup(config, mesh, abstract=resuming)
        streak = SkipStreak(int(config.get("max_skipped_steps", 100) or 0))
        writer = metrics_lib.MetricWriter(workdir, enabled=primary)
        logging.info("mesh: %s", sh.describe(s.mesh))
        logging.info("trainable parameters:\n%s", metrics_lib.parameter_overview(state["params"]))
        if "frozen" in state:
            logging.info("frozen variables (no gradient, no optimiser state): %s",
                         f"{sum(x.size for x in jax.tree.leaves(state['frozen'])):,}")

        data_iter = data_iterator(config, task=s.task, split="train")
        if resuming:
            try:
                latest, state, _ = ckpt.restore_latest_good(abstract_state=abstract_like(state), data_iter=data_iter,
                                                            require_data=False)
            except ckpt_lib.NoGoodCheckpointError as e:
                raise TrainingStopped(str(e)) from None
            check_restored_state(state, latest, ckpt.directory, s.mesh)
            logging.info("resumed from step %d in %s", latest, workdir)
        first_step = int(jax.device_get(state["step"]))
        # The steps after first_step are trained again: their old rows would be duplicates.
        dropped = writer.truncate_after(first_step)
        if dropped:
            logging.info("metrics.jsonl: dropped %d rows after step %d (replayed by this run)", dropped, first_step)
        state = _loop(config, s, state, first_step, data_iter, ckpt, writer, streak, workdir, primary)
    finally:
        ckpt.close()  # waits for a save in flight
        if writer is not None:
            writer.flush()
            writer.close()
    return state


def _loop(config, s: Setup, state, first_step, data_iter, ckpt, writer, streak, workdir, primary):
    total = int(config.total_steps)
    if first_step == 0 and primary:
        writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})

    # AOT compile once with a memory report.
    batch = pipeline.to_global(next(data_iter), s.mesh)
    compiled = compile_train_step(s, state, batch)
    mem = compiled.memory_analysis()
    if mem is not None:
        logging.info("train step memory: args %.1f MiB, temps %.1f MiB, outputs %.1f MiB",
                     mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20,
                     mem.output_size_in_bytes / 2**20)

    chrono = chrono_lib.Chrono(total, int(config.global_batch_size), first_step=first_step)
    log_every = int(config.get("log_every", 50))
    ckpt_every = int(config.get("ckpt_every", 1000))
    eval_every = int(config.get("eval_every", 0))
    kill_at = int(config.get("preempt_at_step", 0) or 0)
    acc = metrics_lib.Accumulator()
    step = first_step
    while step < total:
        with sh.use_mesh(s.mesh, s.rules):
            state, m = compiled(state, batch)
        step += 1
        streak.push(step, m["step_skipped"])  # reads the previous step's flag; raises after too many skips
        acc.add(m)
        if kill_at and step == kill_at:  # simulated preemption (tests): a real SIGKILL, no cleanup
            os.kill(os.getpid(), signal.SIGKILL)
        if step % log_every == 0 or step == total:
            scalars = acc.result()
            rates = chrono.tick(step)
            scalars.update({"perf/" + k: v for k, v in rates.items()})
            scalars["train/skipped_total"] = int(jax.device_get(state["skipped"]))
            writer.write_scalars(step, {("train/" + k if "/" not in k else k): v for k, v in scalars.items()})
            logging.info(metrics_lib.console_line(step, total, scalars, rates))
        if step == total:
            streak.flush()  # the last step's flag, before the final checkpoint
        if step % ckpt_every == 0 or step == total:
            with chrono.pause():
                ckpt.save(step, state, data_iter=data_iter, meta={"step": step}, force=step == total)
        if eval_every and (step % eval_every == 0 or step == total):
            with chrono.pause():
                evaluate(config, s, state, writer, step, workdir)
        if step < total:
            batch = pipeline.to_global(next(data_iter), s.mesh)
    return state


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
    return out


class _QuietLibraries(std_logging.Filter):
    """Keep orbax's per-save INFO chatter out of the console; warnings and errors still pass."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or not any(
            f"/{lib}/" in record.pathname for lib in ("orbax", "jax/_src", "grain"))


def main(argv):
    del argv
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("both --config=configs/X.py:ARGS and --workdir=DIR are required")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    # Multi-process (local launcher, SLURM, TPU pod): the only difference from a single process.
    distributed.initialize_from_env()
    cache = enable_compilation_cache(_CONFIG.value)
    logging.info("compilation cache: %s", cache or "off (config.compilation_cache_dir is empty)")
    try:
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except TrainingStopped as e:
        logging.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
