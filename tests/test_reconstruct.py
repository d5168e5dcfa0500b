"""python -m scene3d.reconstruct on stage-1 runs with random (perturbed) weights, no training: a Can3Tok run on a
3DGS file (tokens, world-frame PLY files, renders, L2 against numpy) and a 3DRAE run on a small transforms.json
capture (PSNR against numpy on the written renders, the tokens reproduce the renders, a trajectory file of the
input's own cameras renders the input views again), and clean errors for mismatched inputs."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from scene3d import reconstruct
from scene3d.core import config as config_lib
from scene3d.core.checkpoint import Checkpointer
from scene3d.data import gs_pipeline, splat_io
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import conventions, trajectories
from scene3d.geometry import gaussians as gs
from scene3d.tasks import stage1

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 32  # Gaussians per Can3Tok crop
SIZE = 28  # 3DRAE view size


def fake_run(root: pathlib.Path, config, seed: int = 3) -> pathlib.Path:
    """A run folder holding ``config`` and one checkpoint (step 1) of its randomly initialised model, perturbed so
    that zero-initialised output layers do not hide the inputs."""
    workdir = root / config.task
    workdir.mkdir(parents=True)
    config_lib.config_to_json(config, workdir / "config.json")
    model = stage1.build_tokenizer(config, nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    noisy = lambda x: (np.asarray(x) + 0.05 * rng.normal(size=x.shape)).astype(x.dtype)  # noqa: E731
    state = {"params": jax.tree.map(noisy, nnx.state(model, nnx.Param)), "step": jnp.int32(1)}
    frozen = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(frozen):
        state["frozen"] = frozen
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        ck.save(1, state, force=True)
    return workdir


# ------------------------------------------------------------------------------------------------ Can3Tok


@pytest.fixture(scope="module")
def can3tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec_c3t")
    c = config_lib.load_config(str(REPO / "configs" / "can3tok.py") + ":runlocal")
    c.update_from_flattened_dict({
        "data.gaussians.num_gaussians": N, "data.gaussians.knn": 4, "model.num_gaussians": N, "model.width": 32,
        "model.head_width": 32, "model.num_latents": 8, "model.latent_dim": 32, "render.size": 24,
        "render.num_cameras": 2})
    rng = np.random.default_rng(0)
    n = 80  # more than N: the run's crop is taken
    g = gs.Gaussians(xyz=rng.normal(size=(n, 3)) * 3 + 5, f_dc=rng.normal(size=(n, 3)), opacity=rng.normal(size=n),
                     scale=rng.normal(-1.0, 0.3, (n, 3)), rot=rng.normal(size=(n, 4)))
    ply = root / "scene.ply"
    splat_io.write_ply(ply, g)
    out = root / "out"
    record = reconstruct.main([f"--workdir={fake_run(root, c)}", f"--input={ply}", f"--out={out}", "--frames=2"])
    return c, ply, out, record


def test_can3tok_reconstruction_files_and_l2(can3tok):
    config, ply, out, record = can3tok
    assert record["task"] == "autoencode" and record["step"] == 1 and record["num_gaussians"] == N
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx(record["metrics"])
    # the crop the run's evaluation path takes, reconstructed by the model directly
    config2, task, model, info = stage1.load_run(str(out.parent / "autoencode"))
    ex = gs_pipeline.process_gaussians(splat_io.read_ply(ply), gs_pipeline.GaussianConfig.from_config(
        config.data.gaussians), np.random.default_rng(0), training=False)
    rec = task.reconstruct(model, jnp.asarray(ex["gaussians"][None]))[0].astype(np.float64)
    target = ex["gaussians"].astype(np.float64)
    np.testing.assert_allclose(record["metrics"]["l2"], np.linalg.norm(rec - target), rtol=1e-4)
    np.testing.assert_allclose(record["metrics"]["mse"], np.mean((rec - target) ** 2), rtol=1e-4)
    # the PLY files hold the crop and its reconstruction in the input's world frame: x = x_norm / scale + center
    for name, raw in (("input", target), ("recon", rec)):
        g = splat_io.read_ply(out / f"{name}.ply")
        np.testing.assert_allclose(g.xyz, raw[:, :3] / ex["scale"] + ex["center"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(g.f_dc, raw[:, 3:6], rtol=1e-4, atol=1e-5)
    orig = splat_io.read_ply(ply).xyz.astype(np.float64)
    crop = splat_io.read_ply(out / "input.ply").xyz.astype(np.float64)
    assert np.abs(crop[:, None] - orig[None]).max(-1).min(-1).max() < 1e-3  # every input Gaussian is the scene's
    tokens = np.load(out / "tokens.npz")["tokens"]
    assert tokens.shape == (8, 4)  # num_latents x embed_dim of the tiny variant
    np.testing.assert_allclose(model.decode(jnp.asarray(tokens.reshape(1, -1)))[0][0], rec, rtol=1e-4, atol=1e-4)
    fig = np.asarray(Image.open(out / "side_by_side.png"))
    assert fig.shape[:2] == (2 * 24 + 4, 2 * 24 + 4)  # 2 cameras x [input | reconstruction] of 24 px
    assert Image.open(out / "orbit.gif").n_frames == 2


def test_mismatched_inputs_fail_cleanly(can3tok, tmp_path):
    config, ply, out, record = can3tok
    workdir = out.parent / "autoencode"
    capture = tmp_path / "capture"
    capture.mkdir()
    (capture / "transforms.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(SystemExit, match="3DGS scenes"):
        reconstruct.main([f"--workdir={workdir}", f"--input={capture}", f"--out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="no such file"):
        reconstruct.main([f"--workdir={workdir}", f"--input={tmp_path / 'nope.ply'}", f"--out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="step 9 not found"):
        reconstruct.main([f"--workdir={workdir}", f"--input={ply}", f"--out={tmp_path / 'o'}", "--step=9"])


# ------------------------------------------------------------------------------------------------ 3DRAE


@pytest.fixture(scope="module")
def rae3d(tmp_path_factory):
    """A random tiny 3DRAE run and a 6-frame transforms.json capture of 28 px views circling a point."""
    root = tmp_path_factory.mktemp("rec_rae")
    c = config_lib.load_config(str(REPO / "configs" / "rae3d.py") + ":runlocal")
    c.update_from_flattened_dict({"model.num_tokens": 8, "model.dim": 32, "model.dec_dim": 32,
                                  "model.dec_depth": 1, "data.views.resolution": (SIZE, SIZE)})
    capture = root / "capture"
    capture.mkdir()
    c2w = trajectories.orbit((0.0, 0.0, 0.0), 3.0, 6, elevation_deg=15.0)
    intr = cam_lib.intrinsics_from_fov(np.full(6, np.radians(50.0)), SIZE, SIZE)
    rng = np.random.default_rng(1)
    names = []
    for i in range(6):
        names.append(f"f{i}.png")
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(capture / names[-1])
    conventions.write_transforms_json(capture / "transforms.json", cam_lib.Cameras(c2w, intr, SIZE, SIZE), names)
    np.save(root / "traj.npy", c2w[[1, 4]])
    workdir = fake_run(root, c)
    out = root / "out"
    record = reconstruct.main([f"--workdir={workdir}", f"--input={capture}", f"--out={out}", "--context=0,2",
                               f"--trajectory={root / 'traj.npy'}"])
    return c, capture, out, record


def test_rae3d_views_metrics_tokens_and_trajectory(rae3d):
    config, capture, out, record = rae3d
    assert record["task"] == "rae3d" and record["context"] == [0, 2]
    views = record["views"]
    assert [v["frame"] for v in views] == list(range(6)) and [v["context"] for v in views] == [
        True, False, True, False, False, False]
    # PSNR of each written render (uint8) against its input frame (already 28 px: no resize)
    for v in views:
        render = np.asarray(Image.open(out / "renders" / f"frame_{v['frame']:04d}.png"), np.float64) / 255
        gt = np.asarray(Image.open(capture / f"f{v['frame']}.png"), np.float64) / 255
        assert v["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((render - gt) ** 2)), abs=0.05)
    novel = [v["psnr"] for v in views if not v["context"]]
    assert record["metrics"]["psnr_novel"] == pytest.approx(np.mean(novel), rel=1e-6)
    # the saved tokens decode to the same views (3DRAE decodes deterministically)
    config2, task, model, info = stage1.load_run(str(out.parent / "rae3d"))
    tok = np.load(out / "tokens.npz")
    assert tok["tokens"].shape == (8, model.config.latent_dim)
    zoom = -(-96 // SIZE)  # the strip is enlarged (nearest neighbour) to >= 96 px
    frames = np.asarray(Image.open(out / "trajectory.png"))[::zoom, ::zoom]
    assert frames.shape == (SIZE, 2 * SIZE + 1, 3)  # the trajectory file's 2 cameras
    # the trajectory file held the input cameras 1 and 4 (world frame): their renders again
    for k, f in enumerate((1, 4)):
        render = np.asarray(Image.open(out / "renders" / f"frame_{f:04d}.png"), np.int32)
        np.testing.assert_allclose(frames[:, k * (SIZE + 1):k * (SIZE + 1) + SIZE], render, atol=2)
    assert not np.array_equal(frames[:, :SIZE], frames[:, SIZE + 1:])  # the renders depend on the camera
    assert (out / "points.ply").is_file() and (out / "views.png").is_file()
