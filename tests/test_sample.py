"""python -m scene3d.sample end to end on the two-step latent-diffusion run of tests/tasks/ldm_setup.py: PLY files
read back equal the sampled Gaussians, renders and GIFs are written; seeds control the samples."""
import json

import numpy as np
import pytest
from PIL import Image

from scene3d import sample
from scene3d.data import splat_io
from scene3d.geometry import gaussians as gs

from tests.tasks import ldm_setup

CAPTION = "a bright scene, mostly red"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ldm_setup.trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(run):
    workdir = run[0]
    task, model, info = sample.load_model(str(workdir))
    return task, model, info


def test_sample_cli_writes_ply_and_renders(run, loaded, tmp_path):
    workdir = run[0]
    out = tmp_path / "samples"
    record = sample.main([f"--workdir={workdir}", "--num=2", f"--cond={CAPTION}", f"--out={out}", "--seed=0",
                          "--size=16", "--views=2", "--gif"])
    assert record["step"] == 2 and record["variables"] == "params"  # the run kept no EMA
    assert json.loads((out / "samples.json").read_text())["cond"] == [CAPTION, CAPTION]
    # the PLY files hold exactly what the sampler returns for the same seed (float32 round trip)
    task, model, info = loaded
    rows = sample.generate(task, model, num=2, cond=[CAPTION] * 2, seed=0, mesh=info["mesh"], rules=info["rules"])
    assert rows.shape == (2, ldm_setup.N, 14) and np.isfinite(rows).all()
    for i in range(2):
        g = splat_io.read_ply(out / f"sample_{i}.ply")
        np.testing.assert_array_equal(gs.pack(g._replace(normals=None)), rows[i])
        png = Image.open(out / f"sample_{i}.png")
        assert png.size == (16, 16) and png.mode == "RGB"
        gif = Image.open(out / f"sample_{i}_orbit.gif")
        assert gif.n_frames >= 1 and gif.size == (16, 16)
    assert (out / "samples.png").is_file()


def test_seeds_control_the_samples(loaded):
    task, model, info = loaded
    kw = dict(num=2, cond=[CAPTION] * 2, mesh=info["mesh"], rules=info["rules"])
    a, b, c = (sample.generate(task, model, seed=s, **kw) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])  # the two samples of one call differ too


def test_cli_errors(run):
    with pytest.raises(SystemExit, match="--cond is required"):
        sample.main([f"--workdir={run[0]}", "--num=1"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        sample.main([f"--workdir={run[0] / 'nope'}", "--num=1"])


# ============================================================================================ posed-view families


def fake_run(root, config, seed: int = 0):
    """A run directory made without training: config.json and a step-1 checkpoint of the task's model (every
    variable moved by small noise so that zero-initialised output layers do not hide the inputs), laid out as
    scene3d.train writes it (trainable ``params``, non-trainable ``frozen``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from scene3d import tasks
    from scene3d.core import config as config_lib
    from scene3d.core.checkpoint import Checkpointer

    root.mkdir(parents=True)
    config_lib.config_to_json(config, root / "config.json")
    task = tasks.get_task(config)
    state = jax.device_get(jax.jit(lambda: nnx.state(task.build_model(nnx.Rngs(seed))))())
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: (x + 0.05 * rng.normal(size=x.shape)).astype(x.dtype), state)
    with Checkpointer(root / "checkpoints", async_save=False) as ck:
        ck.save(1, {"params": state.filter(nnx.Param), "frozen": state.filter(nnx.Not(nnx.Param)),
                    "step": jnp.int32(1)}, force=True)
    return root, state


def write_image(path, seed: int, hw=(40, 60)):
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 255, hw[1])[None, :, None] * rng.uniform(0.3, 1.0, 3)
    Image.fromarray(np.broadcast_to(grad, hw + (3,)).astype(np.uint8)).save(path)
    return str(path)


def _gif_frames(path) -> int:
    gif = Image.open(path)
    return gif.n_frames, gif.size


def _strip(path, width: int) -> np.ndarray:
    """The frames (n, H, W, 3) of a ``sample_{i}_frames.png`` row (1 px apart; lossless, unlike the GIF)."""
    row = np.asarray(Image.open(path).convert("RGB"))
    n = (row.shape[1] + 1) // (width + 1)
    return np.stack([row[:, j * (width + 1):j * (width + 1) + width] for j in range(n)])


@pytest.fixture(scope="module")
def scenegen_run(tmp_path_factory):
    from tests.tasks import test_scenegen_task as tsg
    root = tmp_path_factory.mktemp("sgen_sample")
    return fake_run(root / "run", tsg.tiny_config(root / "tfds"))


def test_scenegen_sample_from_images_and_a_trajectory(scenegen_run, tmp_path):
    import jax
    from scene3d.data import multiview
    workdir, _ = scenegen_run
    task, model, _ = sample.load_model(str(workdir))
    img = write_image(tmp_path / "view.png", 0)
    traj = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
    traj[:, :3, 3] = [[0.5, 0.0, 0.0], [0.7, 0.1, -0.2]]  # world poses: re-expressed in the first one's frame
    np.savez(tmp_path / "traj.npz", c2w=traj, intrinsics=np.full((2, 4), [0.8, 0.8, 0.5, 0.5], np.float32))
    args = [f"--workdir={workdir}", "--num=2", f"--image={img}", f"--trajectory={tmp_path / 'traj.npz'}",
            "--steps=2"]
    rec = sample.main(args + [f"--out={tmp_path / 'a'}"])
    assert rec["task"] == "scenegen" and rec["step"] == 1
    saved = np.load(tmp_path / "a" / "tokens.npz")
    tokens = saved["tokens"]
    assert tokens.shape == (2, 8, 4) and np.isfinite(tokens).all() and np.abs(tokens[0] - tokens[1]).max() > 1e-4
    np.testing.assert_allclose(saved["trajectory_c2w"][1, :3, 3], [0.2, 0.1, -0.2], atol=1e-6)
    np.testing.assert_allclose(saved["trajectory_c2w"][0], np.eye(4), atol=1e-6)
    # the conditioning view: the image centre-cropped to the run's 16 x 16
    want = multiview.resize_and_crop(np.asarray(Image.open(img))[None], np.full((1, 4), 0.5), (16, 16))["images"][0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "views.png")), want)
    # the frames: the saved tokens rendered by the stage-1 modules themselves at the trajectory cameras (render
    # noise: the second key of the seed's split), one decoder call per data.views.num_target = 2 views
    key = jax.random.split(jax.random.key(0))[1]
    spec, tok = task.tokenizer.render, model.tokenizer
    cams = [jax.numpy.asarray(np.broadcast_to(saved[k], (2,) + saved[k].shape))
            for k in ("trajectory_c2w", "trajectory_intrinsics")]
    assert spec.flow.sample_steps == 2
    lat = tok.scenetok.render(jax.numpy.asarray(tokens), *cams, key, latent_size=(4, 4), num_steps=2,
                              shift=spec.flow.sample_shift, method=spec.flow.sampler, cfg_scale=spec.flow.cfg_scale,
                              cfg_interval=spec.flow.cfg_interval)
    want = np.clip((np.asarray(tok.pixels(lat)) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    for i in range(2):
        got = _strip(tmp_path / "a" / f"sample_{i}_frames.png", 16)
        assert got.shape == (2, 16, 16, 3) and _gif_frames(tmp_path / "a" / f"sample_{i}.gif") == (2, (16, 16))
        assert np.abs(got.astype(int) - want[i].astype(int)).max() <= 1
    # the same seed gives the same tokens; another image other tokens
    sample.main(args + [f"--out={tmp_path / 'b'}"])
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "tokens.npz")["tokens"], tokens)
    other = write_image(tmp_path / "other.png", 1)
    sample.main([a.replace(img, other) for a in args] + [f"--out={tmp_path / 'c'}"])
    assert np.abs(np.load(tmp_path / "c" / "tokens.npz")["tokens"] - tokens).max() > 1e-4
    with pytest.raises(SystemExit, match="--image is required"):
        sample.main([f"--workdir={workdir}", "--num=1", f"--out={tmp_path / 'd'}"])


@pytest.fixture(scope="module")
def dit3d_run(tmp_path_factory):
    from tests.tasks.test_rae3d_task import tiny_config
    root = tmp_path_factory.mktemp("dit3d_sample")
    config = tiny_config(root / "tfds", "configs/dit3d.py:runlocal", **{
        "tokenizer.model.num_tokens": 8, "tokenizer.model.dim": 32, "tokenizer.model.dec_dim": 32,
        "tokenizer.model.dec_depth": 1, "model.dim": 32, "model.depth": 1, "flow.sample_steps": 2,
        "render.trajectory_frames": 3})
    return fake_run(root / "run", config)


def test_dit3d_sample_modes_and_every_load_path(dit3d_run, tmp_path):
    import jax
    from flax import nnx

    from scene3d import export
    from scene3d.render import ply
    workdir, state = dit3d_run
    # the run restores through every loader: sample's, export's (one CPU device)
    for model in (sample.load_model(str(workdir))[1], export.load_run(str(workdir))[1]):
        got = jax.tree.leaves(jax.device_get(nnx.state(model)))
        for a, b in zip(got, jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    task, model, _ = sample.load_model(str(workdir))
    imgs = [write_image(tmp_path / f"v{i}.png", i) for i in range(2)]
    base = [f"--workdir={workdir}", "--num=2", "--focus=1.5"]
    rec = sample.main(base + [f"--image={imgs[0]}", f"--out={tmp_path / 'one'}"])
    assert rec["mode"] == "one_view" and rec["task"] == "dit3d"
    saved = np.load(tmp_path / "one" / "tokens.npz")
    tokens = saved["tokens"]
    assert tokens.shape == (2, 8, task.tokenizer.token_shape[1]) and saved["trajectory_c2w"].shape == (3, 4, 4)
    # frames and point maps: the saved tokens decoded by the 3DRAE itself at the saved trajectory
    c2w, intr = (jax.numpy.asarray(np.broadcast_to(saved[k], (2,) + saved[k].shape))
                 for k in ("trajectory_c2w", "trajectory_intrinsics"))
    want = model.rae.decode(jax.numpy.asarray(tokens), c2w, intr, (28, 28))
    rgb = np.clip((np.asarray(want["rgb"]) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    for i in range(2):
        got = _strip(tmp_path / "one" / f"sample_{i}_frames.png", 28)
        assert got.shape == (3, 28, 28, 3) and _gif_frames(tmp_path / "one" / f"sample_{i}.gif") == (3, (28, 28))
        assert np.abs(got.astype(int) - rgb[i].astype(int)).max() <= 1
        xyz, _ = ply.read_point_ply(tmp_path / "one" / f"sample_{i}_points.ply")
        np.testing.assert_allclose(xyz, np.asarray(want["points"][i]).reshape(-1, 3), rtol=1e-5, atol=1e-5)
    # the condition matters: unconditional, several views, a trajectory file (2 cameras) as the condition
    for mode, extra in (("uncond", []), ("views", [f"--image={imgs[0]}", f"--image={imgs[1]}"]),
                        ("trajectory", [f"--trajectory={tmp_path / 'traj.npz'}"])):
        if mode == "trajectory":
            traj = np.tile(np.eye(4, dtype=np.float32), (2, 1, 1))
            traj[1, :3, 3] = [0.3, 0.0, 0.0]
            np.savez(tmp_path / "traj.npz", c2w=traj, intrinsics=np.full((2, 4), [0.8, 0.8, 0.5, 0.5], np.float32))
        out = tmp_path / mode
        assert sample.main(base + [f"--mode={mode}", f"--out={out}"] + extra)["mode"] == mode
        other = np.load(out / "tokens.npz")
        assert np.abs(other["tokens"] - tokens).max() > 1e-4, mode
        assert _gif_frames(out / "sample_0.gif")[0] == (2 if mode == "trajectory" else 3)
    with pytest.raises(SystemExit, match="--mode=views needs --image"):
        sample.main(base + ["--mode=views", f"--out={tmp_path / 'x'}"])


def test_read_camera_file(tmp_path):
    from scene3d.geometry import conventions
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, :3, 3] = rng.normal(size=(3, 3))
    intr = np.full((3, 4), [0.7, 0.9, 0.5, 0.5])
    np.savez(tmp_path / "c.npz", c2w=c2w, intrinsics=intr)
    (tmp_path / "c.json").write_text(json.dumps({"c2w": c2w.tolist(), "intrinsics": intr.tolist()}))
    conventions.write_re10k(tmp_path / "c.txt", conventions.RE10KClip("url", np.arange(3), intr, c2w))
    for name in ("c.npz", "c.json", "c.txt"):
        got_c2w, got_intr = conventions.read_camera_file(str(tmp_path / name))
        np.testing.assert_allclose(got_c2w, c2w, atol=1e-6)
        np.testing.assert_allclose(got_intr, intr, atol=1e-6)
    np.savez(tmp_path / "bad.npz", c2w=c2w)
    with pytest.raises(ValueError, match=r"bad.npz: fields \['intrinsics'\] missing"):
        conventions.read_camera_file(str(tmp_path / "bad.npz"))
    got_c2w, got_intr = conventions.read_camera_file(tmp_path / "bad.npz", require_intrinsics=False)
    np.testing.assert_allclose(got_c2w, c2w, atol=1e-6)
    assert got_intr is None
    np.save(tmp_path / "poses.npy", c2w)  # a trajectory of poses alone (scene3d.reconstruct --trajectory)
    np.testing.assert_allclose(conventions.read_camera_file(tmp_path / "poses.npy", require_intrinsics=False)[0], c2w,
                               atol=1e-6)
    with pytest.raises(ValueError, match="poses.npy: fields"):
        conventions.read_camera_file(tmp_path / "poses.npy")
    np.savez(tmp_path / "bad2.npz", c2w=c2w[:, :3], intrinsics=intr)
    with pytest.raises(ValueError, match=r"bad2.npz: expected c2w \(N, 4, 4\)"):
        conventions.read_camera_file(str(tmp_path / "bad2.npz"))
