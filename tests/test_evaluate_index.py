"""python -m scene3d.evaluate --index: the SceneTok release's protocol on a random tiny SceneTok run (no training)
over two 16 px transforms.json captures. Exactly the index's frames are rendered and scored (the ground truth is
the capture's frame files, by frame id), per-frame PSNR / SSIM equal numpy / scipy references on renders made
directly with the task, scenes of the index missing from the data and null entries are reported, LPIPS is
reported as not computed when the config has none and fed [-1, 1] frames when it has one, and bad inputs fail
cleanly."""
import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from scene3d import data as data_lib
from scene3d import evaluate
from scene3d.core import config as config_lib
from scene3d.core import sharding as sh
from scene3d.data import eval_index, multiview
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import conventions, trajectories
from tests.metrics.test_release_metrics import skimage_ssim
from tests.test_reconstruct import fake_run

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 16
INDEX = {
    "sceneA": {"context": [0, 5], "target": [1, 2, 3, 4, 6]},
    "gone1": {"context": [0, 1], "target": [2]},
    "sceneB": {"context": [2, 4], "target": [0, 5]},
    "skipped": None,
    "gone2": {"context": [0, 1], "target": [2]},
}


def capture(folder: pathlib.Path, n: int, seed: int) -> pathlib.Path:
    """n smooth 16 px frames on an orbit, as a transforms.json capture named after the folder."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    names = []
    for i in range(n):
        im = np.stack([0.5 + 0.4 * np.sin(3 * xx + 0.4 * i + k + seed) * np.cos(2 * yy) for k in range(3)], -1)
        names.append(f"f{i}.png")
        Image.fromarray(np.clip((im + rng.normal(0, 0.03, im.shape)) * 255, 0, 255).astype(np.uint8)).save(
            folder / names[-1])
    c2w = trajectories.orbit((0.0, 0.0, 0.0), 3.0, n, elevation_deg=15.0)
    intr = cam_lib.intrinsics_from_fov(np.full(n, np.radians(50.0)), SIZE, SIZE)
    conventions.write_transforms_json(folder / "transforms.json", cam_lib.Cameras(c2w, intr, SIZE, SIZE), names)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_index")
    caps = [capture(root / "data" / "sceneA", 8, 0), capture(root / "data" / "sceneB", 6, 1)]
    c = config_lib.load_config(str(REPO / "configs" / "scenetok.py") + ":runlocal")
    c.data = dict(name="captures", paths=[str(p) for p in caps], num_threads=1, prefetch=1,
                  views=dict(num_context=2, num_target=2, strategy="nearby", window=(2, 5), resolution=(SIZE, SIZE),
                             relative_poses=True, scale_mode="max_camera_distance", with_depth=False))
    c.model.compressor = dict(width=32, heads=2, depth=1, patch=2, num_tokens=8, token_dim=4, ray_patch=2)
    c.model.decoder = dict(width=32, heads=2, depth=1, patch=1, ray_patch=2, freq_dim=32, prediction="x")
    c.flow.sample_steps = 2
    c.metrics.render_samples = 1
    workdir = fake_run(root, c)
    (root / "index.json").write_text(json.dumps(INDEX))
    return workdir, root / "index.json", caps


@pytest.fixture(scope="module")
def evaluated(run):
    workdir, index, _ = run
    return evaluate.main([f"--workdir={workdir}", f"--index={index}", "--quiet"])


def test_index_scenes_frames_and_metrics(run, evaluated, capsys):
    workdir, index_path, caps = run
    record = evaluated
    assert record["mode"] == "index" and record["out"] == str(workdir / "eval_eval_1_index.json")
    assert json.loads(pathlib.Path(record["out"]).read_text())["scenes"].keys() == {"sceneA", "sceneB"}
    assert record["num_examples"] == 2 and record["index_scenes"] == 5 and record["index_skipped"] == ["skipped"]
    assert record["missing"] == {"count": 2, "first": ["gone1", "gone2"]}
    assert record["lpips"].startswith("LPIPS not computed: config.metrics.lpips is not set")
    assert record["per_example"]["index"] == [0, 2]  # positions in the index file
    scenes = record["scenes"]
    assert scenes["sceneA"]["target"] == [1, 2, 3, 4, 6] and scenes["sceneA"]["num_frames"] == 5
    assert set(scenes["sceneA"]["frames"]) == {"psnr", "ssim"}
    # Renders of sceneA's targets made directly with the task (same key: fold_in(key(0), position 0)); the ground
    # truth is the capture's own frame files.
    task, model, info = evaluate.load_run(str(workdir))
    config = info["config"]
    entry = eval_index.read_index(index_path)["sceneA"]
    source = data_lib.get_source(config.data, "eval")
    views = multiview.ViewConfig.from_config(config.data.views)
    ex = eval_index.index_example(source[0], entry, views)
    gt = np.stack([np.asarray(Image.open(caps[0] / f"f{i}.png"), np.float64) / 255 for i in entry.target])
    np.testing.assert_allclose((ex["target"]["images"] + 1) / 2, gt, atol=1e-6)
    with sh.use_mesh(info["mesh"], info["rules"]):
        host = {f"{p}_{k}": ex[p][k][None] for p in ("context", "target") for k in ("images", "c2w", "intrinsics")}
        rendered = task.render_views(model, task.context_tokens(model, host), host["target_c2w"],
                                     host["target_intrinsics"], jax.random.fold_in(jax.random.key(0), 0))[0]
    pred = np.clip((rendered.astype(np.float64) + 1) / 2, 0, 1)
    psnr = -10 * np.log10(((pred - gt) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(scenes["sceneA"]["frames"]["psnr"], psnr, rtol=1e-4)
    np.testing.assert_allclose(scenes["sceneA"]["frames"]["ssim"], [skimage_ssim(p, g) for p, g in zip(pred, gt)],
                               atol=1e-5)
    frames = np.concatenate([scenes[k]["frames"]["psnr"] for k in ("sceneA", "sceneB")])
    m = record["metrics"]
    assert m["num_frames"] == 7 and m["num_scenes"] == 2
    assert m["psnr"] == pytest.approx(frames.mean())
    assert m["psnr_scene_mean"] == pytest.approx(np.mean(record["per_example"]["psnr"]))

    # With an LPIPS metric (a stand-in: any callable net): the frames reach it in [-1, 1], one value per frame.
    class StandIn:
        net, random_weights = "vgg", False

        def __call__(self, x, y):
            return np.abs(np.asarray(x) - np.asarray(y)).mean(axis=(1, 2, 3))

    task.lpips = StandIn()
    again = evaluate.evaluate_index(task, model, config, eval_index.read_index(index_path), mesh=info["mesh"],
                                    rules=info["rules"], progress=None)
    assert again["lpips"].startswith("LPIPS-VGG") and "lpips" in again["metrics"]
    np.testing.assert_allclose(again["scenes"]["sceneA"]["frames"]["lpips"], 2 * np.abs(pred - gt).mean(axis=(1, 2, 3)),
                               rtol=1e-4)
    np.testing.assert_allclose(again["scenes"]["sceneA"]["frames"]["psnr"], psnr, rtol=1e-4)  # same seed: same renders


def test_index_errors(run, tmp_path):
    workdir, _, _ = run
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sceneB": {"context": [0], "target": [3, 9]}}))
    with pytest.raises(SystemExit, match=r"scene 'sceneB': target frame 9 is out of range: the clip has 6 frames"):
        evaluate.main([f"--workdir={workdir}", f"--index={bad}", "--quiet", f"--out={tmp_path / 'o.json'}"])
    bad.write_text(json.dumps({"nowhere": {"context": [0], "target": [1]}}))
    with pytest.raises(SystemExit, match=r"bad\.json: none of its 1 scenes"):
        evaluate.main([f"--workdir={workdir}", f"--index={bad}", "--quiet"])
    bad.write_text("{")
    with pytest.raises(SystemExit, match=r"bad\.json: not JSON"):
        evaluate.main([f"--workdir={workdir}", f"--index={bad}"])
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"task": "autoencode", "model": {}}))
    bad.write_text(json.dumps(INDEX))
    with pytest.raises(SystemExit, match="SceneTok runs"):
        evaluate.main([f"--workdir={other}", f"--index={bad}"])
