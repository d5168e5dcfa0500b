"""The scenegen task (SceneTok stage 2): a two-step sharded smoke train of configs/scenegen.py:runlocal shrunk onto
tiny built-in scenes over a fake stage-1 SceneTok run (its checkpoint restored into the frozen tokenizer and never
updated), eval metrics incl. PSNR of renders of generated tokens, the figure and orbit GIFs; the loss vs numpy;
config errors."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("pybullet")

from scene3d import train  # noqa: E402
from scene3d.core import config as config_lib  # noqa: E402
from scene3d.core import sharding as sh  # noqa: E402
from scene3d.core.checkpoint import Checkpointer  # noqa: E402
from scene3d.diffusion import timesteps  # noqa: E402
from scene3d.models import scenegen  # noqa: E402
from scene3d.tasks import scenegen as sgen  # noqa: E402
from scene3d.tasks import stage1  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SIZE = 16
TOKENIZER = {  # = tests/tasks/test_scenetok_task.py's tiny SceneTok
    "tokenizer.model.compressor": dict(width=32, heads=2, depth=1, patch=2, num_tokens=8, token_dim=4, ray_patch=2),
    "tokenizer.model.decoder": dict(width=32, heads=2, depth=1, patch=1, ray_patch=2, freq_dim=32),
}


def set_fields(c, over):
    for k, v in over.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def tiny_config(data_dir, **extra):
    c = config_lib.load_config(f"{REPO}/configs/scenegen.py:runlocal")
    return set_fields(c, {
        "data.data_dir": str(data_dir), "data.spec": dict(num_views=6, height=SIZE, width=SIZE, num_gaussians=64),
        "data.num_scenes": 6, "data.num_eval": 2, "data.num_threads": 1, "data.prefetch": 1,
        "data.views.resolution": (SIZE, SIZE), "data.views.window": (2, 5), **TOKENIZER,
        "model.hidden": 32, "model.depth": 1, "model.heads": 2, "model.freq_dim": 32,
        "flow.sample_steps": 2, "decode.sample_steps": 2, "render.num_scenes": 2, "render.orbit.num_frames": 3,
        "global_batch_size": 4, "eval_batch_size": 2, "eval_batches": 1, "total_steps": 2, "eval_every": 2,
        "log_every": 1, "ckpt_every": 2, "async_checkpoint": False, **extra})


def stage1_run(root: pathlib.Path, config):
    """A fake stage-1 workdir: config.json of configs/scenetok.py:runlocal with the tiny sizes and a checkpoint of
    a randomly initialised SceneTok (seed 7, unlike the stage-2 model's own init), perturbed so that its
    zero-initialised output layers do not make the renders independent of the tokens."""
    s1 = config_lib.load_config(f"{REPO}/configs/scenetok.py:runlocal")
    s1.data = config.data.to_dict()
    s1.image_compressor = config.tokenizer.image_compressor.to_dict()
    s1.model.update(config.tokenizer.model.to_dict())
    workdir = root / "stage1"
    workdir.mkdir()
    config_lib.config_to_json(s1, workdir / "config.json")
    params = jax.device_get(jax.jit(lambda: nnx.state(stage1.build_tokenizer(s1, nnx.Rngs(7))))())
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (x + 0.05 * rng.normal(size=x.shape)).astype(x.dtype), params)
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        ck.save(5, {"params": params, "step": jnp.int32(5)}, force=True)
    return workdir, params


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenegen")
    config = tiny_config(tmp_path_factory.getbasetemp() / "scenetok_tfds")  # = test_scenetok_task.py's scenes
    s1dir, s1params = stage1_run(root, config)
    config.tokenizer.workdir = str(s1dir)
    workdir = root / "run"
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    return config, mesh, workdir, state, s1params


def test_smoke_train_over_a_restored_frozen_stage1(smoke):
    config, mesh, workdir, state, s1params = smoke
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        for k in ("x0_rmse", "token_std", "suggested_token_scale", "cond_views", "grad_norm"):
            assert np.isfinite(l[f"train/{k}"]), k
        assert 1.0 <= l["train/cond_views"] <= 2.0
    ev = [l for l in lines if "eval/val_loss" in l]
    assert len(ev) == 1 and ev[0]["step"] == 2
    for k in ("val_loss", "val_loss_t0.5", "gen_psnr", "gen_ssim", "stage1_psnr", "gen_vs_stage1_psnr",
              "token_rmse"):
        assert np.isfinite(ev[0][f"eval/{k}"]), k
    # the tokenizer is the stage-1 checkpoint, untouched by two optimiser steps
    assert "tokenizer" not in state["params"]  # the trainer carries non-Param variables as state["frozen"]
    got = jax.device_get(state["frozen"]["tokenizer"])
    kinds = {type(v).__name__ for v in jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    assert kinds == {"Frozen"}
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(s1params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state["params"]["generator"]))
    from PIL import Image
    png = np.asarray(Image.open(workdir / "images" / "eval_views_00000002.png"))
    # 2 scenes: [1 conditioning view | 2 targets | 2 generated renders | 2 stage-1 renders] of 16 px
    assert png.shape == (2 * SIZE + 2, (SIZE) + 3 * (2 * SIZE + 1) + 3 * 2, 3)
    for i in range(2):
        assert Image.open(workdir / "outputs" / "00000002" / f"orbit_{i}.gif").size == (SIZE, SIZE)


def test_loss_vs_numpy(smoke):
    """The task's loss = mean (v - (eps - x0))^2 with x0 = token_scale x the stage-1 posterior mean, t from the
    shifted logit-normal, and the release's condition mask, recomputed from the model's parts."""
    config, mesh, workdir, state, _ = smoke
    config = tiny_config(pathlib.Path(config.data.data_dir), **{"model.token_scale": 0.5})
    config.tokenizer.workdir = str(workdir.parent / "stage1")
    task = sgen.SceneGenTask(config)
    model = task.build_model(nnx.Rngs(0))
    batch = next(train.data_iterator(config, task, "train"))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    key = jax.random.key(3)
    loss, m = nnx.jit(lambda mo, b, r: task.loss(mo, b, r))(model, batch, key)

    r_tok, r_t, r_eps, r_mask, r_cam = jax.random.split(key, 5)
    inputs = nnx.jit(lambda mo, b: task.prepare(mo, b))(model, batch)
    tokens = np.asarray(inputs["tokens"], np.float64)
    b = tokens.shape[0]
    t = np.asarray(timesteps.TimeSampler.from_spec(config.flow.time_sampler)(r_t, (b,)), np.float64)
    eps = np.asarray(jax.random.normal(r_eps, tokens.shape), np.float64)
    mask = scenegen.random_cond_mask(r_mask, b, 2, p_view=config.cond.p_view, p_uncond=config.cond.p_uncond)
    x0 = 0.5 * tokens
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
    v = np.asarray(nnx.jit(lambda mo, x, tt, mk, r: task.velocity(mo, inputs, x, tt, mk, r))(
        model, jnp.asarray(xt, jnp.float32), jnp.asarray(t, jnp.float32), mask, r_cam), np.float64)
    np.testing.assert_allclose(float(loss), ((v - (eps - x0)) ** 2).mean(), rtol=1e-4)
    np.testing.assert_allclose(float(m["token_std"]), tokens.std(), rtol=1e-4)
    np.testing.assert_allclose(float(m["cond_views"]), np.asarray(mask).sum(1).mean(), rtol=1e-6)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="set workdir .* or model"):
        c = tiny_config(tmp_path)
        c.tokenizer.model = None
        sgen.SceneGenTask(c)
    with pytest.raises(ValueError, match=r"num_cond_views=3 must be in 1..2 \(the conditioning views of the 'context' layout"):
        sgen.SceneGenTask(tiny_config(tmp_path, **{"sample.num_cond_views": 3}))
    with pytest.raises(ValueError, match=r"cond.max_views=4: the release layout draws views 2.. from the 2 target"):
        sgen.SceneGenTask(tiny_config(tmp_path, **{"cond": dict(layout="release", max_views=4)}))
    with pytest.raises(ValueError, match=r"cond.layout must be one of"):
        sgen.SceneGenTask(tiny_config(tmp_path, **{"cond": dict(layout="anchors")}))
    with pytest.raises(ValueError, match=r"config.model: unknown keys \['widht'\]"):
        sgen.SceneGenTask(tiny_config(tmp_path, **{"model.widht": 3}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        sgen.SceneGenTask(tiny_config(tmp_path, **{"tokenizer.workdir": str(tmp_path / "nope")}))
    # random-init stage 1 without a workdir (smoke tests): camera grid = latent grid, token shape from stage 1
    task = sgen.SceneGenTask(tiny_config(tmp_path))
    gen = nnx.eval_shape(lambda: task.build_generator(nnx.Rngs(0)))
    assert (gen.num_tokens, gen.token_dim, gen.latent_channels, gen.camera_grid) == (8, 4, 48, (4, 4))


def test_release_recipe_conditioning_views_are_separate_from_the_anchors(smoke):
    """recipe=release: conditioning view 0 is a random context view whose frame every pose takes (its camera is the
    identity), views 1-2 are other frames of the clip (target views, distinct, latents of their images); the
    anchors stay the context cameras; times uniform then shifted; the loss trains."""
    config, mesh, workdir, state, _ = smoke
    c = config_lib.load_config(f"{REPO}/configs/scenegen.py:runlocal,recipe=release")
    assert c.flow.time_sampler == "uniform,shift=2.0" and c.cond.layout == "release" and c.cond.p_uncond == 0.0
    config = tiny_config(pathlib.Path(config.data.data_dir), **{"cond": c.cond.to_dict(),
                                                                  "flow.time_sampler": c.flow.time_sampler})
    config.tokenizer.workdir = str(workdir.parent / "stage1")
    task = sgen.SceneGenTask(config)
    assert (task.cond_layout, task.num_cond) == ("release", 3)
    model = task.build_model(nnx.Rngs(0))
    assert model.generator.max_cond_views == 3
    batch = {k: jnp.asarray(v) for k, v in next(train.data_iterator(config, task, "train")).items()}
    inputs = nnx.jit(lambda mo, b, r: task.prepare(mo, b, None, r))(model, batch, jax.random.key(5))
    lat_t = np.asarray(nnx.jit(lambda mo, im: task.tokenizer.bind(mo.tokenizer).image_latents(im))(
        model, batch["target_images"]))
    ctx, tgt = np.asarray(batch["context_c2w"], np.float64), np.asarray(batch["target_c2w"], np.float64)
    for i in range(ctx.shape[0]):
        ref = [j for j in range(ctx.shape[1]) if np.allclose(inputs["context_c2w"][i, j], np.eye(4), atol=1e-5)]
        assert len(ref) == 1
        ref_inv = np.linalg.inv(ctx[i, ref[0]])
        np.testing.assert_allclose(inputs["context_c2w"][i], ref_inv @ ctx[i], atol=1e-5)
        np.testing.assert_allclose(inputs["cond_c2w"][i, 0], np.eye(4), atol=1e-5)
        picked = []
        for v in (1, 2):
            match = [j for j in range(tgt.shape[1])
                     if np.allclose(inputs["cond_c2w"][i, v], ref_inv @ tgt[i, j], atol=1e-5)]
            assert match, (i, v)
            picked.append(set(match))
            np.testing.assert_allclose(inputs["cond_latents"][i, v], lat_t[i, match[0]], rtol=1e-5, atol=1e-5)
        # two different target views (the data may repeat a frame: then either copy matches both)
        assert any(a != b for a in picked[0] for b in picked[1])
    loss, m = nnx.jit(lambda mo, b, r: task.loss(mo, b, r))(model, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and 1.0 <= float(m["cond_views"]) <= 3.0
