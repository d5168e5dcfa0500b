"""The dit3d task: a two-step sharded smoke train of configs/dit3d.py:runlocal (random frozen 3DRAE) on tiny
built-in scenes: per-configuration losses, eval metrics, sample figure, per-seed trajectories and PLY files."""
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from scene3d import train  # noqa: E402
from scene3d.core import sharding as sh  # noqa: E402
from scene3d.render import ply  # noqa: E402
from tests.tasks.test_rae3d_task import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dit3d_run")
    config = tiny_config(tmp_path_factory.mktemp("tfds"), "configs/dit3d.py:runlocal", **{
        "tokenizer.model.num_tokens": 8, "tokenizer.model.dim": 32, "tokenizer.model.dec_dim": 32,
        "tokenizer.model.dec_depth": 1, "model.dim": 32, "model.depth": 1, "global_batch_size": 4,
        "flow.sample_steps": 2, "render.num_seeds": 2})
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    return config, workdir, state


def test_smoke_train_metrics_images_outputs(smoke):
    config, workdir, state = smoke
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        assert np.isfinite(l["train/loss"]) and 0 < l["train/loss"] < 10
        assert 0 <= l["train/views_kept"] <= 2 and 0 <= l["train/traj_kept"] <= 1
    ev = [l for l in lines if "eval/sample_psnr" in l][0]
    for k in ("val_loss_views", "val_loss_uncond", "sample_psnr", "sample_ssim", "sample_point_err",
              "sample_token_std"):
        assert np.isfinite(ev[f"eval/{k}"]), k
    assert 0 < ev["eval/sample_point_err"] and -1 <= ev["eval/sample_ssim"] <= 1
    # the 3DRAE is frozen state, the DiT the only trainable part
    assert "rae" in state["frozen"] and "rae" not in state["params"] and "dit" in state["params"]
    out = workdir / "outputs" / "00000002"
    a, _ = ply.read_point_ply(out / "seed0_points.ply")
    b, _ = ply.read_point_ply(out / "seed1_points.ply")
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-4  # two seeds, two scenes
    assert (out / "seed0_trajectory.gif").is_file() and (workdir / "images" / "eval_samples_00000002.png").is_file()
