"""Image to 3DGS (scene3d.tasks.image_to_gs, configs/can3tok_img2gs.py): two training steps with an evaluation on a
2 x 4 mesh on tiny sizes (conditioning images from files next to the PLYs), the regression target against the
tokenizer module's posterior mean, the loss and the mean-latent baseline against numpy, and the sample command."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from scene3d import sample, tasks
from scene3d.data import splat_io
from scene3d.geometry import gaussians as gs
from scene3d.metrics import gaussians as gmetrics

from tests.tasks import ldm_setup

CONFIG = str(ldm_setup.REPO / "configs" / "can3tok_img2gs.py")
TINY = {"model.width": 32, "model.depth": 1, "model.heads": 2, "model.patch": 8, "cond.image_size": 16,
        "render.size": 16, "eval_every": 2, "ckpt_every": 2, "num_sample_images": 2}


def write_views(scenes):
    """A conditioning image per scene (<stem>.png): its dominant colour over a grey corner."""
    for i, (rgb, _) in enumerate(ldm_setup.SCENE_COLOURS):
        im = np.full((24, 20, 3), np.asarray(rgb) * 255, np.uint8)
        im[:8, :8] = 128
        Image.fromarray(im).save(scenes / f"scene_{i}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from scene3d import train
    from scene3d.core import sharding as sh
    root = tmp_path_factory.mktemp("img2gs")
    scenes = ldm_setup.write_scenes(root / "scenes")
    write_views(scenes)
    config = ldm_setup.tiny_config(scenes, cond=None, args="runlocal", config=CONFIG, **TINY)
    state = train.train_and_evaluate(config, str(root / "run"), mesh=sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}))
    return root, config, state


def test_two_steps_and_evaluation(run):
    root, config, state = run
    lines = [json.loads(l) for l in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        np.testing.assert_allclose(l["train/loss"], l["train/latent_mse"] + l["train/baseline_latent_mse"], rtol=1e-5)
    ev = next(l for l in lines if "eval/latent_mse" in l)
    for k in ("l2_mean", "l2_batch", "failure_rate"):
        for prefix in ("", "baseline_", "tokenizer_"):
            assert np.isfinite(ev[f"eval/{prefix}{k}"]), prefix + k
    assert set(state["params"]) == {"regressor", "baseline"} and set(state["frozen"]) == {"tokenizer"}
    figure = np.asarray(Image.open(root / "run" / "images" / "eval_predictions_00000002.png"))
    assert figure.shape[0] >= 2 * 16 and figure.shape[1] >= 4 * 16  # 2 x [input | prediction | recon | target]


def test_target_loss_and_metrics_against_references(run):
    """The target is the tokenizer's posterior mean (the module called directly) times the scale; the loss and the
    evaluation figures match numpy on the same batch."""
    root, config, state = run
    config.tokenizer.scale = 2.0
    task = tasks.get_task(config)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    model = nnx.merge(graphdef, jax.device_get(nnx.merge_state(state["params"], state["frozen"])))
    tf = task.data_transforms("eval")[0]
    from scene3d import data as data_lib
    src = data_lib.get_source(config.data, "eval")
    gtf = data_lib.get_transforms(config.data, "eval")[0]
    exs = [tf(gtf.random_map(src[i], np.random.default_rng(i))) for i in range(3)]
    batch = {k: jnp.asarray(np.stack([e[k] for e in exs])) for k in exs[0]}
    # the conditioning image: the file next to the PLY, resized to cond.image_size
    square = Image.fromarray(np.asarray(Image.open(root / "scenes" / "scene_0.png"))[2:22])  # 24 x 20 -> centre 20
    want_img = np.asarray(square.resize((16, 16), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(batch["cond_image"][0], want_img, atol=1e-6)
    _, aux = model.tokenizer.encode(batch["gaussians"], sample_posterior=False)
    x0 = 2.0 * np.asarray(aux["mean"]).reshape((3,) + task.latent_shape)
    np.testing.assert_allclose(task.target(model, batch), x0, rtol=1e-5, atol=1e-6)
    pred = np.asarray(model.regressor(batch["cond_image"]))
    base = np.asarray(model.baseline[...])
    loss, m = task.loss(model, batch, jax.random.key(0))
    np.testing.assert_allclose(m["latent_mse"], np.mean((pred - x0) ** 2), rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean((pred - x0) ** 2) + np.mean((base[None] - x0) ** 2), rtol=1e-5)
    ev = task.evaluate(model, batch, jax.random.key(0))
    raw = np.asarray(batch["gaussians"])[..., task.offset:]
    decoded = np.asarray(model.tokenizer.decode(jnp.asarray(pred / 2.0))[0])
    l2 = np.sqrt(((decoded - raw) ** 2).sum((1, 2)))
    np.testing.assert_allclose(ev["l2_mean"], l2.mean(), rtol=1e-4)
    np.testing.assert_allclose(ev["failure_rate"], np.mean(l2 > gmetrics.DEFAULT_FAILURE_THRESHOLD))
    dec_base = np.asarray(model.tokenizer.decode(jnp.asarray(np.broadcast_to(base / 2.0, x0.shape)))[0])
    np.testing.assert_allclose(ev["baseline_l2_mean"], np.sqrt(((dec_base - raw) ** 2).sum((1, 2))).mean(), rtol=1e-4)


def test_sample_command(run, tmp_path):
    root, config, _ = run
    views = [str(root / "scenes" / f"scene_{i}.png") for i in (0, 1)]
    rec = sample.main([f"--workdir={root / 'run'}", f"--cond={'|'.join(views)}", f"--out={tmp_path}", "--size=16"])
    assert rec["task"] == "img2gs" and rec["num"] == 2 and rec["step"] == 2
    task, model, info = sample.load_model(str(root / "run"))
    want = np.asarray(task.sample(model, num=2, cond_inputs=task.cond_inputs(views)))
    assert want.shape == (2, ldm_setup.N, 14) and np.abs(want[0] - want[1]).max() > 1e-4  # the image matters
    for i in range(2):
        g = splat_io.read_ply(tmp_path / f"sample_{i}.ply")
        np.testing.assert_allclose(gs.pack(g._replace(normals=None)), want[i], rtol=1e-5, atol=1e-5)
        assert Image.open(tmp_path / f"sample_{i}.png").size == (16, 16)
    assert (tmp_path / "inputs.png").is_file() and (tmp_path / "samples.png").is_file()
    with pytest.raises(SystemExit, match="--cond is required"):
        sample.main([f"--workdir={root / 'run'}", f"--out={tmp_path}"])
    with pytest.raises(ValueError, match="nope.png"):
        sample.main([f"--workdir={root / 'run'}", f"--cond={tmp_path / 'nope.png'}", f"--out={tmp_path}"])
