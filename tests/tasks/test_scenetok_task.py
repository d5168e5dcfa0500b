"""The scenetok task (SceneTok stage 1): a two-step sharded smoke train of configs/scenetok.py:runlocal shrunk onto
tiny built-in scenes (metrics, [context | target | rendered] figure, orbit GIF), the logged eval PSNR recomputed
in numpy from renders of the trained tokens, PSNR / SSIM vs numpy, the data plumbing (latents = patchified
pixels, poses relative to context 0), the orbit trajectory's geometry, a trainable VAE's stop-gradient and config
errors."""
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
from scene3d.metrics import image as image_metrics  # noqa: E402
from scene3d.tasks import scenetok as stok  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "scenetok.py")
SPEC = dict(num_views=6, height=16, width=16, num_gaussians=64)
SIZE = 16


def set_fields(c, over):
    for k, v in over.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def tiny_config(data_dir, **extra):
    """configs/scenetok.py:runlocal on 6 tiny 16 px scenes: 4 px pixel patches (4 x 4 x 48 latents), one block per
    network, 2 context + 2 target views, batch 4, two steps and an evaluation at step 2."""
    c = load_config(f"{CONFIG}:runlocal")
    return set_fields(c, {
        "data.data_dir": str(data_dir), "data.spec": SPEC, "data.num_scenes": 6, "data.num_eval": 2,
        "data.num_threads": 1, "data.prefetch": 1, "data.views.resolution": (SIZE, SIZE),
        "data.views.window": (2, 5),
        "model.compressor": dict(width=32, heads=2, depth=1, patch=2, num_tokens=8, token_dim=4, ray_patch=2),
        "model.decoder": dict(width=32, heads=2, depth=1, patch=1, ray_patch=2, freq_dim=32),
        "flow.sample_steps": 2, "flow.num_chunks": 2, "render.num_scenes": 2, "render.orbit.num_frames": 3,
        "metrics.render_samples": 2,
        "global_batch_size": 4, "eval_batch_size": 2, "eval_batches": 1, "total_steps": 2, "eval_every": 2,
        "log_every": 1, "ckpt_every": 2, "async_checkpoint": False, **extra})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Shared with tests/tasks/test_scenegen_task.py (same scenes: built once per session)."""
    return tmp_path_factory.getbasetemp() / "scenetok_tfds"


@pytest.fixture(scope="module")
def smoke(data_dir, tmp_path_factory):
    """Two steps on a (2 data x 4 fsdp) mesh with an evaluation (metrics, figure, GIF) at step 2."""
    workdir = tmp_path_factory.mktemp("scenetok_run")
    config = tiny_config(data_dir)
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    return config, mesh, workdir, state


# ------------------------------------------------------------------------------------------ metrics


def _np_psnr(a, b, data_range=1.0):
    return 10 * np.log10(data_range ** 2 / ((a - b) ** 2).mean(axis=(-3, -2, -1)))


def _np_ssim(a, b, L=1.0, size=11, sigma=1.5):
    """Direct per-window SSIM (2D Gaussian weights, population statistics), channel by channel."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    h, wd, ch = a.shape
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(ch):
        for i in range(h - size + 1):
            for j in range(wd - size + 1):
                pa, pb = a[i:i + size, j:j + size, c], b[i:i + size, j:j + size, c]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_psnr_ssim_vs_numpy():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (2, 3, 14, 13, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    np.testing.assert_allclose(image_metrics.psnr(a, b), _np_psnr(a, b), rtol=1e-5)
    np.testing.assert_allclose(image_metrics.psnr(2 * a - 1, 2 * b - 1, data_range=2.0), _np_psnr(a, b), rtol=1e-5)
    got = np.asarray(image_metrics.ssim(a, b))
    assert got.shape == (2, 3)
    want = np.array([[_np_ssim(a[i, j], b[i, j]) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(image_metrics.ssim(a, a), 1.0, atol=1e-5)
    assert np.isinf(float(image_metrics.psnr(a[0, 0], a[0, 0])))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\) of equal shape"):
        image_metrics.psnr(a, b[..., :2])


# ------------------------------------------------------------------------------------------ smoke train


def test_smoke_train_metrics_figure_gif(smoke):
    config, mesh, workdir, state = smoke
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        for k in ("flow_loss", "kl", "token_std", "latent_std", "grad_norm"):
            assert np.isfinite(l[f"train/{k}"]), k
        np.testing.assert_allclose(l["train/loss"], l["train/flow_loss"] + config.loss.kl_weight * l["train/kl"],
                                   rtol=1e-5)
    ev = [l for l in lines if "eval/psnr" in l]
    assert len(ev) == 1 and ev[0]["step"] == 2
    for k in ("psnr", "ssim", "latent_mse", "val_flow_loss", "val_flow_loss_t0.5", "kl"):
        assert np.isfinite(ev[0][f"eval/{k}"]), k
    assert 0 < ev[0]["eval/psnr"] < 60 and -1 <= ev[0]["eval/ssim"] <= 1
    # repeated renders (config.metrics.render_samples): renders from different noise differ
    assert config.metrics.render_samples > 1 and ev[0]["eval/render_var"] > 0
    assert -1 <= ev[0]["eval/uncertainty_error_corr"] <= 1 and np.isfinite(ev[0]["eval/psnr_mean_image"])
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state["params"]))
    from PIL import Image
    png = np.asarray(Image.open(workdir / "images" / "eval_views_00000002.png"))
    # two scenes (rows): 3 groups of 2 views of 16 px, 1 px between views, 2 px between groups and rows
    assert png.shape == (2 * SIZE + 2, 3 * (2 * SIZE + 1) + 2 * 2, 3)
    for i in range(2):
        gif = Image.open(workdir / "outputs" / "00000002" / f"orbit_{i}.gif")
        assert gif.size == (SIZE, SIZE) and 1 <= gif.n_frames <= 3  # PIL merges identical frames
    assert (workdir / "outputs" / "00000002" / "context_0.png").is_file()
    # [target | mean render | std | error] rows: 4 groups of 2 views
    unc = np.asarray(Image.open(workdir / "images" / "eval_uncertainty_00000002.png"))
    assert unc.shape == (2 * SIZE + 2, 4 * (2 * SIZE + 1) + 3 * 2, 3)


def test_eval_psnr_vs_numpy(smoke):
    """Render the first eval batch's targets from its context tokens with the trainer's eval key; numpy PSNR of
    those renders vs the ground truth equals the logged eval/psnr (and the two baselines' PSNR their numpy values)."""
    config, mesh, workdir, state = smoke
    task = stok.SceneTokTask(config)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    batch = next(train.data_iterator(config, task, "eval"))
    rng = jax.random.fold_in(jax.random.key(int(config.seed) + 7), 0)
    r_render = jax.random.split(rng)[0]

    with sh.use_mesh(mesh, sh.rules_from_config(config.sharding.rules)):
        model = nnx.merge(graphdef, state["params"])
        tokens = task.context_tokens(model, batch)  # the jitted helpers of images() / write_outputs()
        cams = stok.relative_to_first(batch["context_c2w"], batch["target_c2w"]), batch["target_intrinsics"]
        pred = np.asarray(stok.render_pixels(task.render_spec(), model, tokens, *map(jnp.asarray, cams), r_render),
                          np.float64)
    gt = (batch["target_images"].astype(np.float64) + 1) / 2
    pred = np.clip((pred + 1) / 2, 0, 1)
    ev = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if "eval/psnr" in l][0]
    np.testing.assert_allclose(ev["eval/psnr"], _np_psnr(pred, gt).mean(), rtol=1e-4)
    # baselines: the batch's mean target image, and each scene's mean context view
    mean_image = np.broadcast_to(gt.mean(axis=(0, 1), keepdims=True), gt.shape)
    np.testing.assert_allclose(ev["eval/psnr_mean_image"], _np_psnr(mean_image, gt).mean(), rtol=1e-4)
    ctx = (batch["context_images"].astype(np.float64) + 1) / 2
    ctx_mean = np.broadcast_to(ctx.mean(axis=1, keepdims=True), gt.shape)
    np.testing.assert_allclose(ev["eval/psnr_context_mean"], _np_psnr(ctx_mean, gt).mean(), rtol=1e-4)


# ------------------------------------------------------------------------------------------ data + geometry


def test_prepare_latents_and_relative_poses(data_dir):
    config = tiny_config(data_dir)
    task = stok.SceneTokTask(config)
    assert task.latent_grid == (4, 4) and task.latent_channels == 48
    ex = task.data_transforms("train")[0]({
        "context": {"images": np.zeros((2, SIZE, SIZE, 3)), "c2w": np.tile(np.eye(4), (2, 1, 1)),
                    "intrinsics": np.ones((2, 4)), "index": np.arange(2)},
        "target": {"images": np.zeros((1, SIZE, SIZE, 3)), "c2w": np.eye(4)[None], "intrinsics": np.ones((1, 4)),
                   "index": np.arange(1)}, "scene_id": "builtin/000003", "scale": 2.0})
    assert set(ex) == {f"{p}_{k}" for p in ("context", "target") for k in ("images", "c2w", "intrinsics")} | {"scale"}

    rng = np.random.default_rng(0)
    from scene3d.geometry import so3
    def poses(n):
        c2w = np.tile(np.eye(4), (3, n, 1, 1))
        c2w[..., :3, :3] = so3.quat_to_matrix(rng.normal(size=(3, n, 4)))
        c2w[..., :3, 3] = rng.normal(size=(3, n, 3))
        return c2w.astype(np.float32)
    batch = {"context_images": rng.uniform(-1, 1, (3, 2, SIZE, SIZE, 3)), "context_c2w": poses(2),
             "context_intrinsics": np.full((3, 2, 4), 0.5), "target_images": rng.uniform(-1, 1, (3, 2, SIZE, SIZE, 3)),
             "target_c2w": poses(2), "target_intrinsics": np.full((3, 2, 4), 0.5)}
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))  # pixel latents: no weights needed
    out = task.prepare(model, batch)
    img = np.asarray(batch["target_images"])
    # (B, V, 16, 16, 3) -> (B, V, 4, 4, 4 * 4 * 3) with features ordered (py, px, c)
    want = img.reshape(3, 2, 4, 4, 4, 4, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(3, 2, 4, 4, 48)
    want = want * config.image_compressor.scale
    np.testing.assert_allclose(out["target_latents"], want, atol=1e-6)
    ref = np.linalg.inv(np.asarray(batch["context_c2w"][:, :1], np.float64))
    np.testing.assert_allclose(out["context_c2w"], ref @ np.asarray(batch["context_c2w"]), atol=1e-5)
    np.testing.assert_allclose(out["target_c2w"], ref @ np.asarray(batch["target_c2w"]), atol=1e-5)
    np.testing.assert_allclose(out["context_c2w"][:, 0], np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-5)
    with pytest.raises(ValueError, match=r"scenetok batch\['target_c2w'\]: expected \(3, 2, 4, 4\)"):
        task.prepare(model, dict(batch, target_c2w=batch["target_c2w"][:, :1]))


# ------------------------------------------------------------------------------------------ VAE + errors


def test_trainable_vae_loss_and_stop_gradient(data_dir):
    """With a VAE trained alongside, the total loss adds its recon + KL loss, and SceneTok sees its latents through
    a stop-gradient (zero gradient from the latents SceneTok consumes into the VAE)."""
    config = tiny_config(data_dir, image_compressor=dict(kind="vavae", variant="tiny", ch_mult=(1, 2), ch=8,
                                                         num_groups=4, train=True))
    task = stok.SceneTokTask(config)
    assert task.latent_grid == (8, 8) and task.latent_channels == 8
    model = task.build_model(nnx.Rngs(0))
    rng = np.random.default_rng(1)
    batch = {"context_images": rng.uniform(-1, 1, (2, 2, SIZE, SIZE, 3)),
             "context_c2w": np.tile(np.eye(4), (2, 2, 1, 1)), "context_intrinsics": np.full((2, 2, 4), 0.5),
             "target_images": rng.uniform(-1, 1, (2, 2, SIZE, SIZE, 3)),
             "target_c2w": np.tile(np.eye(4), (2, 2, 1, 1)), "target_intrinsics": np.full((2, 2, 4), 0.5)}
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(p):
        m = nnx.merge(graphdef, p)
        loss, metrics = task.loss(m, batch, jax.random.key(0))
        g = jax.grad(lambda p: sum(jnp.sum(v) for k, v in task.prepare(nnx.merge(graphdef, p), batch).items()
                                   if k.endswith("latents")))(p)
        return loss, metrics, g["image"]

    loss, m, g = run(params)
    want = (float(m["flow_loss"]) + config.loss.kl_weight * float(m["kl"]) + float(m["vae_mse"])
            + config.loss.vae_kl_weight * float(m["vae_kl"]))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(g))
    assert np.isfinite(float(m["vae_psnr"]))


def test_config_errors(data_dir):
    with pytest.raises(ValueError, match="must be divisible by the image compressor's downsampling factor 4"):
        stok.SceneTokTask(tiny_config(data_dir, **{"data.views.resolution": (18, 18)}))
    with pytest.raises(ValueError, match="num_chunks=3 must divide data.views.num_target=2"):
        stok.SceneTokTask(tiny_config(data_dir, **{"flow.num_chunks": 3}))
    c = tiny_config(data_dir)
    c.model.decoder.in_channels = 12
    with pytest.raises(ValueError, match=r"config.model.decoder.in_channels=12 disagrees .*in_channels=48"):
        stok.SceneTokTask(c)
    c = tiny_config(data_dir)
    c.model.compressor.num_tokns = 3
    with pytest.raises(ValueError, match=r"config.model.compressor: unknown keys \['num_tokns'\]"):
        stok.SceneTokTask(c)
    with pytest.raises(ValueError, match="train / weights apply to kind='vavae' only"):
        stok.SceneTokTask(tiny_config(data_dir, image_compressor=dict(kind="pixels", patch=4, train=True)))
