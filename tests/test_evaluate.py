"""python -m scene3d.evaluate on a tiny two-step Can3Tok run over 5 PLY scenes evaluated in batches of 2 (the last
one padded): every scene is evaluated exactly once, the per-scene L2 / batch figure / failure rate equal numpy
computations on the same reconstructions, the json file and the table are written, bad arguments fail cleanly;
and the generic path (a task evaluated per example) on a tiny flow run."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from scene3d import data as data_lib
from scene3d import evaluate
from scene3d.data import splat_io
from scene3d.geometry import gaussians as gs

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 32  # Gaussians per crop
NUM_SCENES = 5


def _scene(seed, n=48) -> gs.Gaussians:
    rng = np.random.default_rng(seed)
    # colours spread more with the seed: per-scene errors spread widely (some above the failure threshold)
    return gs.Gaussians(xyz=rng.normal(size=(n, 3)), f_dc=rng.normal(0.0, 1.0 + 2 * seed, (n, 3)),
                        opacity=rng.normal(size=n), scale=rng.normal(-2.0, 0.3, (n, 3)), rot=rng.normal(size=(n, 4)))


@pytest.fixture(scope="module")
def can3tok_run(tmp_path_factory):
    """Two steps of configs/can3tok.py:runlocal shrunk to 32 Gaussians, with an EMA, on a 2 x 4 mesh."""
    from scene3d import train
    from scene3d.core import sharding as sh
    from scene3d.core.config import load_config
    root = tmp_path_factory.mktemp("eval_c3t")
    scenes = root / "scenes"
    scenes.mkdir()
    for i in range(NUM_SCENES):
        splat_io.write_ply(scenes / f"scene_{i}.ply", _scene(i))
    c = load_config(str(REPO / "configs" / "can3tok.py") + ":runlocal")
    c.data = dict(name="ply", paths=str(scenes), eval_paths=str(scenes), gaussians=c.data.gaussians.to_dict(),
                  num_threads=1, prefetch=1)
    c.update_from_flattened_dict({
        "data.gaussians.num_gaussians": N, "data.gaussians.knn": 4, "model.num_gaussians": N, "model.width": 32,
        "model.head_width": 32, "model.num_latents": 8, "model.latent_dim": 32, "global_batch_size": 4,
        "eval_batch_size": 2, "total_steps": 2, "eval_every": 0, "log_every": 1, "ckpt_every": 2,
        "async_checkpoint": False, "ema_decay": 0.5, "write_images": False, "optim.lr": 1e-2,
        "metrics.failure_threshold": 50.0, "metrics.baselines": 64})
    workdir = root / "run"
    train.train_and_evaluate(c, str(workdir), mesh=sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}))
    return workdir, c


@pytest.fixture(scope="module")
def can3tok_eval(can3tok_run, tmp_path_factory):
    workdir, _ = can3tok_run
    out = tmp_path_factory.mktemp("eval_out") / "e.json"
    record = evaluate.main([f"--workdir={workdir}", f"--out={out}", "--quiet"])
    return record, out


def test_every_scene_once_and_can3tok_metrics_vs_numpy(can3tok_run, can3tok_eval):
    workdir, config = can3tok_run
    record, out = can3tok_eval
    assert record["step"] == 2 and record["variables"] == "ema" and record["mode"] == "evaluate_examples"
    source = data_lib.get_source(config.data, "eval")
    assert len(source) == NUM_SCENES
    assert record["num_examples"] == NUM_SCENES and record["batch_size"] == 2 and record["num_batches"] == 3
    assert record["padded"] == 1
    per = record["per_example"]
    assert per["index"] == list(range(NUM_SCENES))
    assert per["scene_index"] == list(range(NUM_SCENES))  # scene_0 .. scene_4, in order, each once
    assert all(len(v) == NUM_SCENES for v in per.values())
    # The same crops (the eval transform is deterministic), reconstructed one scene at a time.
    task, model, info = evaluate.load_run(str(workdir))
    it, n, _ = evaluate.split_batches(config, task, "eval", 1)
    rows = np.concatenate([next(it)["gaussians"] for _ in range(n)]).astype(np.float32)
    from scene3d.core import sharding as sh
    with sh.use_mesh(info["mesh"], info["rules"]):
        rec = np.concatenate([task.reconstruct(model, jnp.asarray(rows[i:i + 1])) for i in range(n)])
    d = rec.astype(np.float64) - rows.astype(np.float64)
    l2 = np.sqrt((d ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(per["l2"], l2, rtol=1e-4)
    thr = config.metrics.failure_threshold
    assert 0 < (l2 > thr).sum() < NUM_SCENES, "pick a threshold that splits the scenes"
    m = record["metrics"]
    np.testing.assert_allclose(m["l2_mean"], l2.mean(), rtol=1e-4)
    np.testing.assert_allclose(m["failure_rate"], (l2 > thr).mean())
    np.testing.assert_allclose(m["mse"], (d ** 2).mean(), rtol=1e-4)
    batch_fig = np.mean([np.linalg.norm(d[i:i + 2].ravel()) / len(d[i:i + 2]) for i in (0, 2, 4)])
    np.testing.assert_allclose(m["l2_batch"], batch_fig, rtol=1e-4)
    # the json file holds the same record
    saved = json.loads(out.read_text())
    assert saved["metrics"] == pytest.approx(m) and saved["per_example"]["l2"] == pytest.approx(per["l2"])
    assert saved["split"] == "eval" and saved["task"] == "autoencode"
    # the convention the figures follow is stated in the record
    conv = saved["convention"]
    assert conv["posterior"] == "mean" and conv["radius"] == config.data.gaussians.radius
    assert conv["num_gaussians"] == N and conv["channels"] == 14 and conv["failure_threshold"] == thr
    assert "posterior mean" in conv["summary"] and f"N={N}" in conv["summary"] and "L2 > 50" in conv["summary"]


def test_batch_size_does_not_change_per_scene_values(can3tok_run, can3tok_eval, tmp_path, capsys):
    workdir, _ = can3tok_run
    record, _ = can3tok_eval
    other = evaluate.main([f"--workdir={workdir}", "--batch_size=4", "--split=test", "--no_ema"])
    assert other["out"] == str(workdir / "eval_test_2.json") and (workdir / "eval_test_2.json").is_file()
    assert other["variables"] == "params" and other["batch_size"] == 4 and other["padded"] == 3
    assert other["per_example"]["scene_index"] == list(range(NUM_SCENES))
    # the EMA (decay 0.5) differs from the raw parameters
    assert not np.allclose(other["per_example"]["l2"], record["per_example"]["l2"])
    printed = capsys.readouterr()
    assert "l2_mean" in printed.out and "failure_rate" in printed.out and "5 examples" in printed.out
    assert "Can3Tok convention: posterior mean" in printed.out and "radius 1 " in printed.out
    assert "ETA" in printed.err


def test_sampled_evaluation_of_a_split_is_deterministic_per_scene(can3tok_run, can3tok_eval):
    """metrics.eval_posterior='sample' (the release's evaluation) through the split path: the same per-scene values
    at any batch size and on every call (noise per scene from metrics.eval_seed), other values than the mean's."""
    from scene3d.tasks.autoencode import AutoencodeTask
    workdir, _ = can3tok_run
    record, _ = can3tok_eval
    _, model, info = evaluate.load_run(str(workdir))
    config = info["config"]
    config.metrics.eval_posterior = "sample"
    task = AutoencodeTask(config)
    runs = [evaluate.evaluate_split(task, model, config, batch_size=bs, mesh=info["mesh"], rules=info["rules"],
                                    progress=None) for bs in (2, 4, 2)]
    l2 = [np.asarray(r["per_example"]["l2"]) for r in runs]
    np.testing.assert_allclose(l2[1], l2[0], rtol=1e-5)
    np.testing.assert_array_equal(l2[2], l2[0])
    assert not np.allclose(l2[0], record["per_example"]["l2"], rtol=1e-4)  # the posterior mean's values
    assert runs[0]["convention"]["posterior"] == "sample" and "posterior sample" in runs[0]["convention"]["summary"]


def test_bad_split_and_step_fail_cleanly(can3tok_run):
    workdir, _ = can3tok_run
    with pytest.raises(SystemExit, match="step 7 not found"):
        evaluate.main([f"--workdir={workdir}", "--step=7", "--quiet"])
    with pytest.raises(SystemExit) as e:
        evaluate.main([f"--workdir={workdir}", "--split=validation"])
    assert e.value.code == 2  # argparse: invalid choice
    with pytest.raises(SystemExit, match="config.json"):
        evaluate.main([f"--workdir={workdir / 'nope'}"])


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """Two steps of configs/flow_shapes.py:runlocal shrunk to 8 px (a task without ``evaluate_examples``)."""
    from scene3d import train
    from scene3d.core import sharding as sh
    from scene3d.core.config import load_config
    c = load_config(str(REPO / "configs" / "flow_shapes.py") + ":runlocal")
    c.update_from_flattened_dict({
        "data.size": 8, "data.num_train": 16, "data.num_eval": 5, "model.width": 32, "model.depth": 1,
        "model.heads": 2, "global_batch_size": 8, "total_steps": 2, "ckpt_every": 2, "log_every": 1,
        "eval_every": 0, "eval_batch_size": 2, "optim.warmup_steps": 1, "async_checkpoint": False})
    workdir = tmp_path_factory.mktemp("eval_flow") / "run"
    train.train_and_evaluate(c, str(workdir), mesh=sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}))
    return workdir, c


def test_generic_task_evaluated_once_per_example(flow_run, tmp_path):
    """Every example of the 5-image eval split once (3 batches of 2, one padded row), each value equal to the
    task's own evaluate on that example alone with the key fold_in(key(seed), index)."""
    import jax
    from scene3d.core import sharding as sh
    workdir, config = flow_run
    record = evaluate.main([f"--workdir={workdir}", f"--out={tmp_path / 'e.json'}", "--seed=3", "--quiet"])
    assert record["mode"].startswith("evaluate per example") and record["num_examples"] == 5
    assert record["num_batches"] == 3 and record["padded"] == 1
    per = record["per_example"]
    task, model, info = evaluate.load_run(str(workdir))
    source = data_lib.get_source(config.data, "eval")
    assert len(source) == 5
    fn = jax.jit(lambda b, k: task.evaluate(model, b, k))
    with sh.use_mesh(info["mesh"], info["rules"]):
        for i in range(5):
            ex = {k: np.asarray(v)[None] for k, v in source[i].items() if np.asarray(v).dtype.kind in "biuf"}
            want = fn(ex, jax.random.fold_in(jax.random.key(3), i))
            for k, v in want.items():
                np.testing.assert_allclose(per[k][i], float(v), rtol=1e-4, err_msg=f"{k} of example {i}")
    np.testing.assert_allclose(record["metrics"]["val_loss"], np.mean(per["val_loss"]), rtol=1e-6)


def test_rae3d_per_scene_metrics_vs_numpy(tmp_path):
    """3DRAE's per-scene values on a random model and batch (one scene without any valid target pixel): PSNR and
    pixel-weighted point errors against numpy on the same decoded views; the batch figures equal the split
    figures of the per-scene values."""
    pytest.importorskip("pybullet")
    import jax
    from flax import nnx
    from tests.tasks.test_rae3d_task import tiny_config
    from scene3d.tasks.rae3d import RAE3DTask
    config = tiny_config(tmp_path, **{"model.num_tokens": 8, "model.dim": 32, "model.dec_dim": 32,
                                      "model.dec_depth": 1, "metrics.baselines": 0})
    task = RAE3DTask(config)
    model = task.build_model(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, v, s = 2, 2, 28
    batch = {}
    for part in ("context", "target"):
        batch[f"{part}_images"] = rng.uniform(-1, 1, (b, v, s, s, 3)).astype(np.float32)
        c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
        c2w[..., :3, 3] = rng.normal(0, 0.2, (b, v, 3))
        batch[f"{part}_c2w"] = c2w
        batch[f"{part}_intrinsics"] = np.tile(np.float32([1.0, 1.0, 0.5, 0.5]), (b, v, 1))
        batch[f"{part}_points"] = rng.normal(size=(b, v, s, s, 3)).astype(np.float32)
        batch[f"{part}_mask"] = rng.uniform(size=(b, v, s, s)) < 0.5
    batch["target_mask"][1] = False  # scene 1: no valid target pixel
    batch = {k: jnp.asarray(x) for k, x in batch.items()}
    ex, dec, batch_figures = jax.tree.map(np.asarray, nnx.jit(lambda m, x: (
        task.evaluate_examples(m, x, None), task.render(m, x, None, with_context=True)[0],
        task.evaluate(m, x, None)))(model, batch))
    pred = np.clip((dec["rgb"][:, v:].astype(np.float64) + 1) / 2, 0, 1)
    gt = (np.asarray(batch["target_images"], np.float64) + 1) / 2
    psnr = 10 * np.log10(1.0 / ((pred - gt) ** 2).mean(axis=(2, 3, 4)))  # (B, V)
    np.testing.assert_allclose(ex["psnr"], psnr.mean(1), rtol=1e-4)
    dist = np.linalg.norm(dec["points"][:, v:].astype(np.float64) - np.asarray(batch["target_points"]), axis=-1)
    mask = np.asarray(batch["target_mask"])
    np.testing.assert_allclose(ex["point_err"], [dist[0][mask[0]].mean(), 0.0], rtol=1e-4)
    np.testing.assert_array_equal(ex["point_pixels"], mask.sum(axis=(1, 2, 3)))
    split = task.summarize_examples(ex, b)
    np.testing.assert_allclose(split["point_err"], dist[mask].mean(), rtol=1e-4)  # pooled over valid pixels
    assert set(split) == {"psnr", "psnr_context", "ssim", "ssim_context", "l1", "point_err", "point_err_context",
                          "psnr_context_mean", "depth_absrel", "depth_delta1", "chamfer", "chamfer_all"}
    for k, val in batch_figures.items():
        np.testing.assert_allclose(float(val), split[k], rtol=1e-4, err_msg=k)


def test_batch_level_metrics_are_left_out_of_the_per_example_path():
    """A task's ``batch_metrics`` (e.g. SceneTok's mean-image baseline: the mean of the batch's targets) would be
    meaningless for one example: the per-example path drops them and keeps the rest, example by example."""
    import jax
    import jax.numpy as jnp

    class Task:
        batch_metrics = ("mean_of_batch",)

        def evaluate(self, model, batch, rng):
            x = batch["x"]
            return {"sq": jnp.mean(jnp.square(x)), "mean_of_batch": jnp.mean(x)}

    fn, mode = evaluate.per_example_fn(Task())
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = fn(None, {"x": jnp.asarray(x)}, jax.random.key(0), jnp.arange(3))
    assert mode.startswith("evaluate per example") and set(out) == {"sq"}
    np.testing.assert_allclose(out["sq"], np.mean(x ** 2, axis=1))
    from scene3d.tasks.scenetok import SceneTokTask
    assert "psnr_mean_image" in SceneTokTask.batch_metrics
