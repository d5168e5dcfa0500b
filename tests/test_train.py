"""The trainer: sharded step == single-device step, skipped bad steps, kill -> resume is bit-identical."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d import train
from scene3d.core import sharding as sh
from scene3d.core.config import load_config
from scene3d.data import get_source, pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "flow_shapes.py")

# A tiny flow-matching run: 8x8 images, 16 tokens, 2 scanned DiT blocks of width 32.
TINY = {
    "data.size": 8, "data.num_train": 256, "data.num_eval": 16,
    "model.width": 32, "model.depth": 2, "model.heads": 2, "model.patch": 2,
    "global_batch_size": 8, "total_steps": 6, "ckpt_every": 2, "log_every": 1, "eval_every": 0,
    "eval_batch_size": 8, "eval_batches": 1, "num_sample_images": 4, "flow.sample_steps": 2,
    "optim.warmup_steps": 2, "optim.lr": 1e-3,
}


def tiny_config(**extra):
    c = load_config(f"{CONFIG}:runlocal")
    for k, v in {**TINY, **extra}.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def first_batch(config):
    it = pipeline.make_batch_iterator(get_source(config.data, "train"), global_batch_size=config.global_batch_size,
                                      seed=config.seed)
    return next(it)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _two_steps(config, batch, mesh):
    s, state = train.setup(config, mesh)
    gbatch = pipeline.to_global(batch, mesh)
    step = train.compile_train_step(s, state, gbatch)
    state, metrics = step(state, gbatch)
    state, metrics2 = step(state, pipeline.to_global(batch, mesh))
    return state, metrics, metrics2


@pytest.fixture(scope="module")
def single_device_reference():
    """Two steps of the tiny config on one device (compiled once for both mesh cases)."""
    config = tiny_config()
    batch = first_batch(config)
    mesh1 = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    return config, batch, _two_steps(config, batch, mesh1)


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)], ids=["2data_4fsdp", "2data_2fsdp_2tensor"])
def test_sharded_step_matches_single_device(shape, single_device_reference):
    config, batch, (st1, m1, m1b) = single_device_reference
    mesh8 = sh.make_mesh(dict(zip(sh.MESH_AXES, shape)))
    st8, m8, m8b = _two_steps(config, batch, mesh8)
    # The 8-device run really is sharded: some parameter is split over fsdp (and tensor).
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(st8["params"])}
    assert any("fsdp" in s for s in specs), specs
    if shape[2] > 1:
        assert any("tensor" in s for s in specs), specs
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(st1["params"]))
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8b["loss"]), float(m1b["loss"]), rtol=1e-5)
    for a, b in zip(_leaves(st8), _leaves(st1)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert int(st8["step"]) == 2 and int(st8["skipped"]) == 0


def test_nonfinite_step_is_skipped_and_counted():
    config = tiny_config()
    batch = first_batch(config)
    batch["image"] = batch["image"].copy()
    batch["image"][0, 0, 0, 0] = np.nan
    mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    s, state = train.setup(config, mesh)
    before = _leaves(state["params"])
    gbatch = pipeline.to_global(batch, mesh)
    state, metrics = train.compile_train_step(s, state, gbatch)(state, gbatch)
    assert not np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["step_skipped"]) == 1.0
    assert int(state["skipped"]) == 1 and int(state["step"]) == 1
    for a, b in zip(before, _leaves(state["params"])):
        np.testing.assert_array_equal(a, b)


def test_exploding_gradient_is_skipped():
    config = tiny_config(**{"optim.skip_grad_norm": 1e-6})
    batch = first_batch(config)
    mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    s, state = train.setup(config, mesh)
    gbatch = pipeline.to_global(batch, mesh)
    state, metrics = train.compile_train_step(s, state, gbatch)(state, gbatch)
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 1e-6
    assert int(state["skipped"]) == 1


def _run(workdir, *overrides):
    args = [sys.executable, "-m", "scene3d.train", f"--config={CONFIG}:runlocal", f"--workdir={workdir}"]
    args += [f"--config.{k}={v}" for k, v in TINY.items()]
    args += list(overrides)
    # One persistent compilation cache for the three runs of a test: the same programs compile once.
    cache = os.path.join(os.path.dirname(os.fspath(workdir)), "jax_cache")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]  # conftest's others
    env = dict(os.environ, XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=1"]),
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _restore_final(workdir):
    from scene3d.core.checkpoint import Checkpointer
    config = tiny_config()
    mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    _, state = train.setup(config, mesh)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.latest_step() == 6, ckpt.all_steps()
        restored, _ = ckpt.restore(6, abstract_state=train.abstract_like(state))
    return restored


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = _run(full, "--config.eval_every=6")
    assert r.returncode == 0, r.stderr[-3000:]
    # The uninterrupted run wrote metrics, TensorBoard events and sample images.
    lines = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "train/loss" in l] == [1, 2, 3, 4, 5, 6]
    assert any("eval/val_loss" in l for l in lines)
    assert list(full.glob("events.out.tfevents*")) and list((full / "images").glob("*samples*.png"))
    assert "steps/s" in r.stderr and "ETA" in r.stderr

    # Killed DURING the save of step 4 (its files written, not yet sealed or renamed into place), then, resumed from
    # step 2 (the newest complete one), killed again BETWEEN saves at step 5; the final resume ends bit-identical.
    r = _run(killed, "--config.preempt_in_save_at_step=4")
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])  # SIGKILLed inside the save
    assert sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()) == [2]
    assert any(".orbax-checkpoint-tmp" in p.name for p in (killed / "checkpoints").iterdir())  # the cut save
    r = _run(killed, "--config.preempt_at_step=5")
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])  # SIGKILLed mid-run
    assert "resumed from step 2" in r.stderr
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[0] == 2 and max(steps) < 6, steps  # step 4's async save may or may not have finished
    r = _run(killed)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {max(steps)}" in r.stderr

    a, b = _restore_final(full), _restore_final(killed)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    # And training did move the parameters (the comparison is not of two untouched inits).
    _, init = train.setup(tiny_config(), sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1]))
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(init["params"]), _leaves(a["params"])))


# ----------------------------------------------------------------------------------------------------------------
# Training never goes on from a corrupt state (issue 17): the update / optimiser-state guard, damaged checkpoints,
# non-finite restored states, too many skipped steps, metrics.jsonl without replayed duplicates.


def _one_device():
    return sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


def test_nonfinite_optimizer_state_is_skipped():
    """A NaN in Adam's first moment: loss and gradient are finite, the update is not; the step must not apply."""
    config = tiny_config()
    batch = first_batch(config)
    mesh = _one_device()
    s, state = train.setup(config, mesh)
    adam = state["opt_state"][1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    flat, treedef = jax.tree.flatten(adam.mu)
    flat[0] = flat[0].at[(0,) * flat[0].ndim].set(jnp.nan)  # one NaN in the first moment of the first parameter
    adam = adam._replace(mu=jax.tree.unflatten(treedef, flat))
    state["opt_state"] = (state["opt_state"][0], (adam,) + tuple(state["opt_state"][1][1:]))
    before = _leaves({"params": state["params"], "opt_state": state["opt_state"]})
    gbatch = pipeline.to_global(batch, mesh)
    state, metrics = train.compile_train_step(s, state, gbatch)(state, gbatch)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    assert float(metrics["step_skipped"]) == 1.0 and int(state["skipped"]) == 1
    after = _leaves({"params": state["params"], "opt_state": state["opt_state"]})
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # params and (NaN-holding) moments untouched, nothing spread


def _metric_steps(workdir):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def _flip_array_file(step_dir):
    state = step_dir / "state"
    path = max((p for p in state.rglob("*") if p.is_file() and p.name != "sha256.json"), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_skips_a_damaged_checkpoint_without_duplicate_metrics(tmp_path, caplog):
    """Steps 2, 4, 6 saved; step 6's array file then bit-flipped: the rerun says so in one line, resumes from 4,
    trains 5 and 6 again to the very same parameters, and metrics.jsonl holds each step once. A checkpoint holding
    NaN parameters (with valid checksums) stops the run instead."""
    config, mesh, workdir = tiny_config(), _one_device(), tmp_path / "run"
    final = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    reference = _leaves(final)
    assert _metric_steps(workdir) == [1, 2, 3, 4, 5, 6]
    _flip_array_file(workdir / "checkpoints" / "6")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "train/lo')  # a row cut short by the kill
    caplog.clear()
    with caplog.at_level("INFO"):
        resumed = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    text = [r.getMessage() for r in caplog.records]
    damaged = [t for t in text if " is damaged: " in t]
    assert len(damaged) == 1 and "checkpoint step 6 " in damaged[0] and "resuming from step 4" in damaged[0], damaged
    assert "\n" not in damaged[0] and any("resumed from step 4" in t for t in text)
    for x, y in zip(reference, _leaves(resumed)):
        np.testing.assert_array_equal(x, y)
    assert _metric_steps(workdir) == [1, 2, 3, 4, 5, 6]
    assert (workdir / "checkpoints" / "corrupt" / "6").is_dir()

    # Valid checksums, NaN parameters (e.g. saved by an older trainer): refuse to go on, naming the step.
    from scene3d.core.checkpoint import Checkpointer
    with Checkpointer(workdir / "checkpoints", keep=None, async_save=False) as ck:
        state, _ = ck.restore(6, abstract_state=train.abstract_like(resumed))
        state["params"] = jax.tree.map(lambda x: x * jnp.nan, state["params"])
        ck.save(7, state, force=True)
    with pytest.raises(train.TrainingStopped, match=r"checkpoint step 7 in .* holds non-finite values \(params/"):
        train.train_and_evaluate(tiny_config(total_steps=8), str(workdir), mesh=mesh)


def test_run_stops_after_too_many_skipped_steps(tmp_path, monkeypatch, caplog):
    """Every step skipped (gradient norm above a tiny skip_grad_norm): the command exits 1 with one clear line
    after max_skipped_steps instead of finishing with nothing learned. (The command's main() in this process, on
    one device: the step is the one test_exploding_gradient_is_skipped compiled.)"""
    import types
    workdir = tmp_path / "run"
    real = train.train_and_evaluate
    monkeypatch.setattr(train, "train_and_evaluate", lambda config, wd: real(config, wd, mesh=_one_device()))
    config = tiny_config(**{"optim.skip_grad_norm": 1e-6, "max_skipped_steps": 3})
    monkeypatch.setattr(train, "_CONFIG", types.SimpleNamespace(value=config))  # what --config=... parses to
    monkeypatch.setattr(train, "_WORKDIR", types.SimpleNamespace(value=str(workdir)))
    with caplog.at_level("INFO"), pytest.raises(SystemExit) as e:
        train.main([])
    assert e.value.code == 1
    lines = [r.getMessage() for r in caplog.records if "steps were all skipped" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "stopping at step 3: the last 3 steps were all skipped" in lines[0]
    assert "parameters are those of step 0" in lines[0]
    assert _metric_steps(workdir) == [1, 2, 3]
    # Only step 2 was saved (ckpt_every=2); the parameters there are the initial ones: nothing was applied.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
