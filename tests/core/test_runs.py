"""scene3d.core.runs: a run directory read back (config.json field checks, checkpoint steps) and its variables
restored (EMA vs params, a step, frozen variables, a missing step, a shape mismatch) into a State and onto a mesh,
against the values the fake run saved."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.core import runs
from scene3d.core import sharding as sh
from scene3d.core.checkpoint import Checkpointer
from scene3d.nn.frozen import Frozen


class _Model(nnx.Module):
    """A trainable part and a frozen part (like a stage-2 model with its stage-1 tokenizer)."""

    def __init__(self, rngs, width=8):
        self.head = nnx.Linear(4, width, rngs=rngs)
        self.tok = nnx.Dict(w=Frozen(jnp.zeros((3, 2))))


def _saved(step: int, kind: str) -> dict:
    """Distinct values for each (step, params|ema) of the trainable part."""
    off = 10.0 * step + (1.0 if kind == "ema" else 0.0)
    return {"head": {"kernel": np.arange(32, dtype=np.float32).reshape(4, 8) + off,
                     "bias": np.full((8,), off, np.float32)}}


FROZEN = {"tok": {"w": np.arange(6, dtype=np.float32).reshape(3, 2) - 5}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """config.json + checkpoints 1 and 2 with params, EMA (step 2 only), frozen variables and optimiser state."""
    workdir = tmp_path_factory.mktemp("runs") / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"task": "toy", "model": {"width": 8}, "seed": 3}))
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        for step in (1, 2):
            state = {"params": _saved(step, "params"), "frozen": FROZEN, "step": jnp.int32(step),
                     "opt_state": {"mu": _saved(step, "params")}}
            if step == 2:
                state["ema"] = _saved(step, "ema")
            ck.save(step, state, force=True)
    return workdir


def _pure(x):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(x) if isinstance(x, nnx.State) else x)


def test_read_config_and_steps(run, tmp_path):
    cfg = runs.read_config(run)
    assert cfg.task == "toy" and cfg.model.width == 8 and cfg.seed == 3
    assert runs.checkpoint_steps(run) == [1, 2]
    assert runs.checkpoint_step(run) == 2 and runs.checkpoint_step(run, 1) == 1
    with pytest.raises(FileNotFoundError, match=r"checkpoint step 5 not found \(available: \[1, 2\]\)"):
        runs.checkpoint_step(run, 5)
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        runs.read_config(bad)
    with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
        runs.checkpoint_step(bad)
    (bad / "config.json").write_text(json.dumps({"task": "toy"}))
    with pytest.raises(ValueError, match=rf"{bad / 'config.json'}: field 'model' missing"):
        runs.read_config(bad)
    assert runs.read_config(bad, required=("task",)).task == "toy"
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{bad / 'config.json'}: not valid JSON"):
        runs.read_config(bad)


@pytest.mark.parametrize("step,prefer_ema,key", [(None, True, "ema"), (None, False, "params"), (1, True, "params"),
                                                 (1, False, "params")])
def test_restore_variables_ema_params_and_step(run, step, prefer_ema, key):
    target = nnx.state(nnx.eval_shape(lambda: _Model(nnx.Rngs(0))))
    state, info = runs.restore_variables(run, target, step=step, prefer_ema=prefer_ema)
    want_step = 2 if step is None else step
    assert info == {"step": want_step, "key": key, "workdir": str(run)}
    got = _pure(state)
    want = _saved(want_step, key)
    np.testing.assert_array_equal(got["head"]["kernel"], want["head"]["kernel"])
    np.testing.assert_array_equal(got["head"]["bias"], want["head"]["bias"])
    np.testing.assert_array_equal(got["tok"]["w"], FROZEN["tok"]["w"])  # from state['frozen']
    assert isinstance(state["tok"]["w"], Frozen)  # the target's variable types are kept


def test_restore_errors(run):
    with pytest.raises(FileNotFoundError, match="checkpoint step 3 not found"):
        runs.restore_variables(run, nnx.state(nnx.eval_shape(lambda: _Model(nnx.Rngs(0)))), step=3)
    wide = nnx.state(nnx.eval_shape(lambda: _Model(nnx.Rngs(0), width=5)))
    with pytest.raises(ValueError, match=r"state\['ema'\]\.head\.bias is \(8,\), the model expects \(5,\)"):
        runs.restore_variables(run, wide)


def test_restore_model_onto_a_mesh(run):
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    model, info = runs.restore_model(run, lambda: _Model(nnx.Rngs(0)), mesh=mesh, step=1, prefer_ema=False)
    assert info["step"] == 1 and info["key"] == "params" and info["mesh"] is mesh
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), _saved(1, "params")["head"]["kernel"])
    np.testing.assert_array_equal(np.asarray(model.tok["w"][...]), FROZEN["tok"]["w"])
    assert model.head.kernel[...].sharding.mesh.shape == mesh.shape
