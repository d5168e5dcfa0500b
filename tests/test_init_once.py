"""The sharded init is traced and compiled once per training run (not per evaluation or checkpoint), never when a
run resumes (its state is restored into abstract shapes), and never by the commands that read a run (evaluate /
sample / reconstruct load through ``stage1.load_run``, export through ``export.load_run``).

Counted with jax's own monitoring events (the ones ``jax_log_compiles`` prints): a trace of the function and an
XLA compile of its program, by function name; the sharded init is ``scene3d.core.sharding.create_sharded_model``'s
``init`` (a fresh closure per call, so jax's in-memory caches cannot hide a second build), the Adam init optax's
``init_fn``. A persistent-cache hit still reports its compile request, so the test session's cache hides nothing."""
import collections
import contextlib

import jax
import pytest
from jax._src import dispatch

from scene3d import evaluate, export, train
from tests.test_train import tiny_config

INIT = "init"  # create_sharded_model's jitted constructor


@contextlib.contextmanager
def compile_log():
    """Yields (traces, compiles): Counters by function name, filled while the block runs."""
    traces, compiles = collections.Counter(), collections.Counter()

    def listen(event, duration, **kw):
        name = str(kw.get("fun_name", ""))
        if event == dispatch.JAXPR_TRACE_EVENT:
            traces[name] += 1
        elif event == dispatch.BACKEND_COMPILE_EVENT:
            compiles[name.removeprefix("jit(").removesuffix(")")] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield traces, compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_compile_log_sees_a_jitted_function():
    """The counter itself: a fresh jitted function is counted once per build, and twice when built twice."""
    with compile_log() as (traces, compiles):
        for _ in range(2):
            def init():
                return jax.numpy.arange(3) * 2
            jax.jit(init)()
    assert traces[INIT] == 2 and compiles[INIT] == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps with an evaluation and a checkpoint after each, then resumed for a third; the compile logs of
    both runs."""
    workdir = tmp_path_factory.mktemp("init_once")
    common = dict(ckpt_every=1, eval_every=1, eval_batches=1, write_images=False, async_checkpoint=False)
    with compile_log() as first:
        train.train_and_evaluate(tiny_config(total_steps=2, **common), str(workdir))
    with compile_log() as resumed:
        state = train.train_and_evaluate(tiny_config(total_steps=3, **common), str(workdir))
    assert int(jax.device_get(state["step"])) == 3
    return workdir, first, resumed


def test_a_run_with_evaluations_and_checkpoints_builds_the_init_once(trained):
    _, (traces, compiles), _ = trained
    assert traces["step_fn"] == 1 and compiles["step_fn"] == 1  # the run did train
    assert traces[INIT] == 1 and compiles[INIT] == 1, (traces, compiles)
    assert compiles["init_fn"] == 1  # Adam's state, once too


def test_a_resumed_run_builds_no_init(trained):
    _, _, (traces, compiles) = trained
    assert compiles["step_fn"] == 1
    assert traces[INIT] == 0 and compiles[INIT] == 0, (traces, compiles)
    assert compiles["init_fn"] == 0  # the optimiser state comes from the checkpoint as well


def test_commands_that_read_a_run_build_no_init(trained, tmp_path):
    workdir = trained[0]
    with compile_log() as (traces, compiles):
        task, model, info = evaluate.load_run(str(workdir))  # what evaluate / sample / reconstruct call
        assert info["step"] == 3
        export.main([f"--workdir={workdir}", "--layout=torch_port", f"--out={tmp_path / 'w.safetensors'}"])
    assert (tmp_path / "w.safetensors").is_file()
    assert traces[INIT] == 0 and compiles[INIT] == 0, (traces, compiles)
