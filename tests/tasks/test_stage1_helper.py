"""scene3d.tasks.stage1's stage-2 helpers (no training): resolving ``config.tokenizer`` to a stage-1 config, the
frozen tokenizer and its adapter's shapes, and restoring it from a fake stage-1 run (checkpoint step, EMA or
params)."""
import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from scene3d.core import config as config_lib
from scene3d.core.checkpoint import Checkpointer
from scene3d.nn.frozen import Frozen
from scene3d.tasks import stage1

from tests.tasks import ldm_setup

# A tiny Can3Tok (the autoencode task): z of latent_dim 32 viewed as 32 // 4 = 8 tokens of width 4.
TINY_MODEL = {k.split(".", 2)[2]: v for k, v in ldm_setup.TINY.items() if k.startswith("tokenizer.model.")}
TOKENS = (TINY_MODEL["latent_dim"] // TINY_MODEL["embed_dim"], TINY_MODEL["embed_dim"])


@pytest.fixture(scope="module")
def s1_config():
    c = config_lib.load_config(f"{ldm_setup.REPO}/configs/can3tok.py:runlocal")
    c.model.update(TINY_MODEL)
    c.data.gaussians.num_gaussians = ldm_setup.N
    return c


def stage2(tokenizer: dict, **extra) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"tokenizer": dict(dict(workdir=None, model=None), **tokenizer),
                                      "data": {"name": "builtin", "views": {"num_context": 2}}, **extra})


def write_config(workdir, cfg: dict):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg))
    return workdir


def test_resolve_without_workdir_builds_the_stand_in():
    config = stage2({"model": {"name": "rae3d", "num_tokens": 8}, "task": "ignored_when_expected"})
    workdir, cfg = stage1.resolve(config, stage2="dit3d", expected="rae3d", extra={"loss": {}})
    assert workdir is None
    assert cfg.to_dict() == {"task": "rae3d", "model": {"name": "rae3d", "num_tokens": 8},
                             "data": {"name": "builtin", "views": {"num_context": 2}}, "loss": {}}
    # no expected task: tokenizer.task, else the autoencode task
    assert stage1.resolve(config, stage2="generate")[1].task == "ignored_when_expected"
    del config.tokenizer["task"]
    assert stage1.resolve(config, stage2="generate")[1].task == "autoencode"
    config.tokenizer.model = None
    with pytest.raises(ValueError, match=r"config.tokenizer: set workdir \(a scenetok run\) or model \+ "
                                         r"image_compressor"):
        stage1.resolve(config, stage2="scenegen", expected="scenetok", init_fields="model + image_compressor")
    with pytest.raises(ValueError, match=r"set workdir \(a stage-1 run\) or model"):
        stage1.resolve(config, stage2="generate")


def test_resolve_reads_and_checks_the_run(tmp_path):
    run = {"task": "autoencode", "model": {"name": "can3tok"}, "data": {"name": "ply"}}
    wd = str(write_config(tmp_path / "run", run))
    config = stage2({"workdir": wd, "model": {"name": "ignored"}})
    workdir, cfg = stage1.resolve(config, stage2="generate")
    assert workdir == wd and cfg.to_dict() == run
    assert stage1.resolve(config, stage2="generate", expected="autoencode")[1].to_dict() == run
    with pytest.raises(ValueError, match=rf"config.tokenizer.workdir='{wd}': a 'autoencode' run; the dit3d task "
                                         r"needs a 'rae3d' run"):
        stage1.resolve(config, stage2="dit3d", expected="rae3d")
    config.tokenizer.workdir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        stage1.resolve(config, stage2="generate")
    config.tokenizer.workdir = str(write_config(tmp_path / "bad", {"task": "autoencode"}))
    with pytest.raises(ValueError, match="field 'model' missing"):
        stage1.resolve(config, stage2="generate")


def test_frozen_tokenizer_and_its_adapter(s1_config):
    frozen = nnx.eval_shape(lambda: stage1.frozen_tokenizer(s1_config, nnx.Rngs(0)))
    plain = nnx.eval_shape(lambda: stage1.build_tokenizer(s1_config, nnx.Rngs(0)))
    assert len(nnx.state(frozen, nnx.Param)) == 0
    shapes = lambda m, kind: jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(m, kind)))  # noqa: E731
    assert shapes(frozen, Frozen) == shapes(plain, nnx.Param) and shapes(frozen, Frozen)
    # the adapter reads its shapes off the (abstract) frozen module as off the plain one
    tok = stage1.tokenizer(s1_config, frozen)
    assert tok.token_shape == stage1.tokenizer(s1_config).token_shape == TOKENS
    assert tok.output_shape == (ldm_setup.N, s1_config.model.gs_channels)


class _Stage2(nnx.Module):
    def __init__(self, config, rngs):
        self.tokenizer = stage1.frozen_tokenizer(config, rngs)
        self.head = nnx.Linear(2, 3, rngs=rngs)


@pytest.fixture(scope="module")
def s1_run(tmp_path_factory, s1_config):
    """A fake stage-1 run: config.json and checkpoints 1 and 2, each with params and EMA (all values distinct)."""
    workdir = tmp_path_factory.mktemp("s1") / "run"
    workdir.mkdir()
    config_lib.config_to_json(s1_config, workdir / "config.json")
    params = jax.device_get(jax.jit(lambda: nnx.state(stage1.build_tokenizer(s1_config, nnx.Rngs(7))))())
    saved = {}
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        for step in (1, 2):
            saved[step] = {k: jax.tree.map(lambda x, o=10 * step + i: x + o, params)
                           for i, k in enumerate(("params", "ema"))}
            ck.save(step, {**saved[step], "step": jnp.int32(step)}, force=True)
    return workdir, saved


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_restore_tokenizer_step_and_ema(s1_run, s1_config, caplog):
    workdir, saved = s1_run
    fresh = lambda: nnx.state(nnx.eval_shape(lambda: _Stage2(s1_config, nnx.Rngs(0))))  # noqa: E731
    for tc, want in (({}, saved[2]["ema"]), ({"step": 1}, saved[1]["ema"]),
                     ({"step": 1, "use_ema": False}, saved[1]["params"]), ({"use_ema": False}, saved[2]["params"])):
        tc = ml_collections.ConfigDict(dict(dict(workdir=str(workdir), step=None, use_ema=True), **tc))
        variables = fresh()
        head = nnx.to_pure_dict(variables["head"])
        out = stage1.restore_tokenizer(variables, "tokenizer", tc, str(workdir), name="Can3Tok")
        got = out["tokenizer"]
        assert {type(v).__name__ for v in jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, nnx.Variable))} == \
            {"Frozen"}, tc
        for a, b in zip(_leaves(nnx.to_pure_dict(got)), _leaves(nnx.to_pure_dict(want)), strict=True):
            np.testing.assert_array_equal(a, b)
        assert nnx.to_pure_dict(out["head"]) == head  # the rest of the state is untouched
    with pytest.raises(FileNotFoundError, match=r"checkpoint step 5 not found \(available: \[1, 2\]\)"):
        stage1.restore_tokenizer(fresh(), "tokenizer", ml_collections.ConfigDict({"step": 5}), str(workdir),
                                 name="Can3Tok")
    variables = fresh()
    with caplog.at_level(logging.WARNING):
        assert stage1.restore_tokenizer(variables, "tokenizer", ml_collections.ConfigDict({}), None,
                                        name="Can3Tok") is variables
    assert "stage-1 Can3Tok is RANDOMLY initialised" in caplog.text
