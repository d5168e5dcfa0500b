"""The autoencode task (Can3Tok): a two-step sharded smoke train of configs/can3tok.py:runlocal on tiny built-in
scenes (metrics incl. failure rate, renders, PLY files checked against numpy), the loss vs numpy, config checks,
and the normalisation / augmentation invariant checked with the rasteriser."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("pybullet")

from scene3d import train  # noqa: E402
from scene3d.core import sharding as sh  # noqa: E402
from scene3d.core.config import load_config  # noqa: E402
from scene3d.data import gs_pipeline, splat_io  # noqa: E402
from scene3d.geometry import gaussians as gs  # noqa: E402
from scene3d.geometry import so3  # noqa: E402
from scene3d.render import splat  # noqa: E402
from scene3d.geometry.trajectories import orbit_cameras  # noqa: E402
from scene3d.tasks.autoencode import AutoencodeTask, scene_index  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "can3tok.py")
N = 48  # Gaussians per crop (the tiny scenes hold 64)
SPEC = dict(num_views=3, height=16, width=16, num_gaussians=64)


def tiny_config(data_dir, **extra):
    c = load_config(f"{CONFIG}:runlocal")
    over = {
        "data.name": "builtin_gaussians", "data.data_dir": str(data_dir), "data.spec": SPEC, "data.num_scenes": 6,
        "data.num_eval": 2,
        "data.gaussians.num_gaussians": N, "data.num_threads": 1, "data.prefetch": 1,
        "model.num_gaussians": N, "model.width": 32, "model.head_width": 32, "model.num_latents": 8,
        "model.latent_dim": 32,
        "global_batch_size": 4, "eval_batch_size": 2, "eval_batches": 1, "total_steps": 2, "eval_every": 2,
        "log_every": 1, "ckpt_every": 2, "async_checkpoint": False,
        "render.size": 16, "render.num_cameras": 2, "render.num_scenes": 1, "num_output_scenes": 2,
        "loss.kl_anneal_steps": 4, "metrics.baselines": 6, **extra,
    }
    for k, v in over.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def smoke(data_dir, tmp_path_factory):
    """Two steps on a (2 data x 4 fsdp) mesh with an evaluation at step 2."""
    workdir = tmp_path_factory.mktemp("can3tok_run")
    config = tiny_config(data_dir)
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    return config, mesh, workdir, state


def test_smoke_train_writes_metrics_images_checkpoints(smoke):
    config, mesh, workdir, state = smoke
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        for k in ("recon", "kl", "kl_weight", "l2_mean", "l2_batch", "failure_rate", "mse_xyz", "mse_rot"):
            assert np.isfinite(l[f"train/{k}"]), k
    # KL annealing: beta * step / 4 at steps 0 and 1
    beta = config.loss.beta
    np.testing.assert_allclose([l["train/kl_weight"] for l in train_lines], [0.0, beta / 4], rtol=1e-6)
    ev = [l for l in lines if "eval/l2_mean" in l]
    assert len(ev) == 1 and ev[0]["step"] == 2
    for k in ("l2_mean", "l2_batch", "failure_rate", "mse", "kl"):
        assert np.isfinite(ev[0][f"eval/{k}"]), k
    assert ev[0]["eval/failure_rate"] in (0.0, 0.5, 1.0)
    assert int(state["step"]) == 2
    assert (workdir / "checkpoints" / "2").is_dir()
    # the parameters really are sharded over fsdp
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state["params"]))
    # one [input | reconstruction] figure: 2 cameras x 16 px + 4 px gap, 2 x 16 + 4 wide
    from PIL import Image
    png = workdir / "images" / "eval_recon_0_00000002.png"
    assert png.is_file() and np.asarray(Image.open(png)).shape[:2] == (36, 36)


def test_eval_metrics_and_ply_outputs_vs_numpy(smoke):
    """Reconstruct the first eval batch again with the final params; the logged eval metrics and the PLY files
    (mapped back to world coordinates) must equal numpy computations from it."""
    config, mesh, workdir, state = smoke
    task = AutoencodeTask(config)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    batch = next(train.data_iterator(config, task, "eval"))
    assert np.array_equal(batch["scene_index"], [4, 5])  # held-out scenes builtin/000004, 000005
    rows = batch["gaussians"].astype(np.float64)
    with sh.use_mesh(mesh, sh.rules_from_config(config.sharding.rules)):
        rec = task.reconstruct(nnx.merge(graphdef, state["params"]), jnp.asarray(batch["gaussians"]))
    d = rec.astype(np.float64) - rows
    l2 = np.sqrt((d ** 2).sum((1, 2)))
    ev = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if "eval/l2_mean" in l][0]
    np.testing.assert_allclose(ev["eval/l2_mean"], l2.mean(), rtol=2e-4)
    np.testing.assert_allclose(ev["eval/l2_batch"], np.sqrt((d ** 2).sum()) / 2, rtol=2e-4)
    np.testing.assert_allclose(ev["eval/mse"], (d ** 2).mean(), rtol=2e-4)
    np.testing.assert_allclose(ev["eval/failure_rate"], (l2 > config.metrics.failure_threshold).mean())

    # The trivial predictors beside the model: mean scene and PCA (k = latent floats) of 6 training examples made as
    # training makes them (random crops, seeds [seed, 7919, i]), fitted here with numpy's SVD.
    train_src = train.data_lib.get_source(config.data, "train")
    gcfg = gs_pipeline.GaussianConfig.from_config(config.data.gaussians)
    fit = np.stack([gs_pipeline.process_gaussians(gs_pipeline.record_gaussians(train_src[i % len(train_src)]), gcfg,
                                                  np.random.default_rng([config.seed, 7919, i]), True)["gaussians"]
                    for i in range(6)]).astype(np.float64).reshape(6, -1)
    mu = fit.mean(0)
    v = np.linalg.svd(fit - mu, full_matrices=False)[2][:5]  # k = min(latent 32, 6 - 1)
    flat = rows.reshape(2, -1)
    pca = (flat - mu) @ v.T @ v + mu
    np.testing.assert_allclose(ev["eval/baseline_mean_scene_l2"], np.linalg.norm(flat - mu, axis=1).mean(), rtol=1e-4)
    np.testing.assert_allclose(ev["eval/baseline_pca_l2"], np.linalg.norm(flat - pca, axis=1).mean(), rtol=1e-3)
    # and the fresh run's Gaussian head started from the mean scene (init.head_bias='mean_scene')
    fresh = nnx.split(task.build_model(nnx.Rngs(0)))[1]
    kernel0 = np.asarray(fresh["head_out"]["kernel"].value)
    init = task.restore_pretrained(fresh)
    np.testing.assert_allclose(np.asarray(init["head_out"]["bias"].value), mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(init["head_out"]["kernel"].value), 0.1 * kernel0, rtol=1e-6)

    out = workdir / "outputs" / "00000002"
    for i in range(2):
        center, scale = batch["center"][i].astype(np.float64), float(batch["scale"][i])
        for name, raw in (("input", rows[i]), ("recon", rec[i].astype(np.float64))):
            g = splat_io.read_ply(out / f"{name}_{i}.ply")
            assert g.xyz.shape == (N, 3) and g.f_rest.shape == (N, 15, 3) and not g.f_rest.any()
            assert g.normals is not None and not g.normals.any()
            np.testing.assert_allclose(g.xyz, raw[:, :3] / scale + center, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(g.scale, raw[:, 7:10] - np.log(scale), rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(g.f_dc, raw[:, 3:6], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g.opacity, raw[:, 6], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(g.rot, raw[:, 10:14], rtol=1e-5, atol=1e-5)
    # the input file is a crop of the original scene: every Gaussian is one of the scene's own
    src = train.data_lib.get_source(config.data, "eval")
    orig = src[0]["gaussians"].astype(np.float64)
    g = splat_io.read_ply(out / "input_0.ply")
    dist = np.abs(g.xyz.astype(np.float64)[:, None] - orig[None, :, :3]).max(-1).min(-1)
    assert dist.max() < 1e-4


def test_baselines_are_skipped_when_the_training_data_is_missing(data_dir, tmp_path, caplog):
    """Evaluating a run where its training data is not available: no baselines and a warning, not a crash."""
    config = tiny_config(data_dir)
    missing = str(tmp_path / "not_here")
    config.data = dict(name="ply", paths=missing, eval_paths=missing, gaussians=config.data.gaussians.to_dict())
    task = AutoencodeTask(config)
    with caplog.at_level("WARNING"):
        assert task.baselines() is None and task.baselines() is None
    assert "no baselines" in caplog.text and "not_here" in caplog.text


def test_loss_vs_numpy(data_dir):
    """Past the posterior warm-up the loss samples the posterior exactly as the model does from the same key; at
    step 0 it decodes the posterior mean."""
    config = tiny_config(data_dir, **{"loss.posterior_warmup_steps": 4})
    task = AutoencodeTask(config)
    model = task.build_model(nnx.Rngs(0))
    rows = np.random.default_rng(0).normal(size=(3, N, 14)).astype(np.float32)
    rng = jax.random.key(3)
    loss_fn = nnx.jit(lambda mo, b, r, s: task.loss(mo, b, r, step=s))
    for step, sample in ((5, True), (0, False)):
        loss, m = loss_fn(model, {"gaussians": jnp.asarray(rows)}, rng, jnp.int32(step))
        pred, aux = nnx.jit(lambda mo, x, r: mo(x, rng=r, sample_posterior=sample))(model, jnp.asarray(rows), rng)
        pred, mean, logvar = (np.asarray(a, np.float64) for a in (pred, aux["mean"], aux["logvar"]))
        mse = ((pred - rows) ** 2).mean()
        kl = (0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar).sum(-1)).mean()
        beta = config.loss.beta * min(1.0, step / config.loss.kl_anneal_steps)
        np.testing.assert_allclose(float(loss), mse + beta * kl, rtol=1e-5)
        np.testing.assert_allclose(float(m["kl"]), kl, rtol=1e-5)
        np.testing.assert_allclose(float(m["posterior_noise"]), min(1.0, step / 4))
        np.testing.assert_allclose(float(m["l2_mean"]), np.sqrt(((pred - rows) ** 2).sum((1, 2))).mean(), rtol=1e-5)
        np.testing.assert_allclose(float(m["mse_scale"]), ((pred - rows)[..., 7:10] ** 2).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"batch\['gaussians'\].*\(B, 48, 14\)"):
        task.loss(model, {"gaussians": jnp.zeros((2, N + 1, 14))}, rng, step=0)


def test_release18_rows_target_the_raw_channels(data_dir):
    """rows='release18' + input_offset=4: the 4 voxel columns are input only; loss, metrics and renders use the 14
    raw channels behind them."""
    config = tiny_config(data_dir, **{"data.gaussians.rows": "release18", "model.input_offset": 4,
                                      "loss.posterior_warmup_steps": 0})
    task = AutoencodeTask(config)
    model = task.build_model(nnx.Rngs(0))
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(2, N, 14)).astype(np.float32)
    rows = np.concatenate([rng.normal(size=(2, N, 4)).astype(np.float32), raw], -1)
    m = nnx.jit(lambda mo, b: task.evaluate(mo, b, None))(model, {"gaussians": jnp.asarray(rows)})
    pred = np.asarray(nnx.jit(lambda mo, x: mo(x, sample_posterior=False)[0])(model, jnp.asarray(rows)), np.float64)
    assert pred.shape == (2, N, 14)
    np.testing.assert_allclose(float(m["mse"]), ((pred - raw) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(task.reconstruct(model, jnp.asarray(rows)), pred, rtol=1e-6, atol=1e-6)
    imgs = task.images(model, {"gaussians": jnp.asarray(rows)}, None)
    assert imgs["recon_0"].shape == (36, 36, 3)
    with pytest.raises(ValueError, match=r"\(B, 48, 18\) \(config.model.num_gaussians x 4 prefix columns"):
        task.loss(model, {"gaussians": jnp.zeros((2, N, 14))}, jax.random.key(0), step=0)
    with pytest.raises(ValueError, match="config.model.input_offset.*rows='release18'.*expected 4, got 0"):
        AutoencodeTask(tiny_config(data_dir, **{"data.gaussians.rows": "release18"}))


def test_config_errors(data_dir):
    with pytest.raises(ValueError, match="config.model.num_gaussians=48 must equal config.data.gaussians"):
        AutoencodeTask(tiny_config(data_dir, **{"data.gaussians.num_gaussians": 64}))
    with pytest.raises(ValueError, match="config.model.input_offset"):
        AutoencodeTask(tiny_config(data_dir, **{"model.input_offset": 4}))
    with pytest.raises(ValueError, match="config.loss.posterior_warmup_steps"):
        AutoencodeTask(tiny_config(data_dir, **{"loss.posterior_warmup_steps": -1}))
    with pytest.raises(ValueError, match="config.loss.recon"):
        AutoencodeTask(tiny_config(data_dir, **{"loss.recon": "l1"}))
    c = tiny_config(data_dir)
    c.model.num_gausians = 3
    with pytest.raises(ValueError, match=r"config.model: unknown keys \['num_gausians'\]"):
        AutoencodeTask(c)
    assert scene_index("builtin/000031") == 31 and scene_index(b"fox") == scene_index("fox")


def _random_scene(m, seed):
    rng = np.random.default_rng(seed)
    return gs.Gaussians(xyz=rng.uniform(-1, 1, (m, 3)) * [3.0, 2.0, 1.0] + [10.0, -4.0, 2.0],
                        f_dc=rng.normal(size=(m, 3)), opacity=rng.normal(size=m) + 1.0,
                        scale=rng.normal(size=(m, 3)) * 0.3 - 2.0, rot=rng.normal(size=(m, 4)),
                        f_rest=0.3 * rng.normal(size=(m, 3, 3)))


def test_normalise_and_rotate_is_a_camera_change():
    """Rendering the training example (normalised + randomly rotated, SH degree 1) from the equally transformed
    camera equals rendering the original scene from the original camera."""
    m = 150
    g = _random_scene(m, 0)
    cfg = gs_pipeline.GaussianConfig(num_gaussians=m, sh_degree=1, rotate=True, radius=1.0)
    ex = gs_pipeline.process_gaussians(g, cfg, np.random.default_rng(1), training=True)
    plain = gs_pipeline.process_gaussians(g, cfg, np.random.default_rng(1), training=False)
    R, center, scale = ex["rotation"].astype(np.float64), ex["center"].astype(np.float64), float(ex["scale"])
    # the augmentation is not a no-op: positions and quaternions change by the rotation
    assert np.abs(R - np.eye(3)).max() > 0.1
    np.testing.assert_allclose(ex["gaussians"][:, :3], plain["gaussians"][:, :3] @ R.T, atol=1e-5)
    q = so3.quat_multiply(so3.matrix_to_quat(R), plain["gaussians"][:, 10:14].astype(np.float64))
    np.testing.assert_allclose(ex["gaussians"][:, 10:14], q, atol=1e-5)

    cams = orbit_cameras(2, 24, distance=4.0, elevation_deg=30.0, fov_deg=50.0)
    c2w = cams.c2w.copy()
    c2w[:, :3, 3] = c2w[:, :3, 3] * 3.0 + [10.0, -4.0, 2.0]  # look at the original scene
    for i in range(2):
        new = np.eye(4)
        new[:3, :3] = R @ c2w[i, :3, :3]
        new[:3, 3] = R @ (c2w[i, :3, 3] - center) * scale
        a = splat.render(gs.unpack(ex["gaussians"].astype(np.float64)), new, cams.intrinsics[i], 24, 24)
        b = splat.render(g, c2w[i], cams.intrinsics[i], 24, 24)
        assert int(a["dropped"]) == 0 and int(b["dropped"]) == 0
        assert float(b["alpha"].mean()) > 0.1  # the scene is in view
        np.testing.assert_allclose(a["rgb"], b["rgb"], atol=2e-4)
        np.testing.assert_allclose(a["alpha"], b["alpha"], atol=2e-4)
        np.testing.assert_allclose(a["depth"], b["depth"] * scale, atol=2e-4)
