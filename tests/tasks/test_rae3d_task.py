"""The rae3d task: a two-step sharded smoke train of configs/rae3d.py:runlocal on tiny built-in scenes (metrics,
eval figure, trajectory + PLY outputs), the point-map / perceptual losses vs numpy, PLY round trip, HF tower weights
loaded into the frozen encoder."""
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
from scene3d.losses import perceptual, pointmap  # noqa: E402
from scene3d.render import ply  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SPEC = dict(num_views=4, height=32, width=32, num_gaussians=64)


def tiny_config(data_dir, path="configs/rae3d.py:runlocal", **extra):
    c = load_config(str(REPO / path))
    over = {"data.data_dir": str(data_dir), "data.spec": SPEC, "data.num_scenes": 6, "data.num_eval": 2,
            "data.num_threads": 1, "data.prefetch": 1, "data.views.resolution": (28, 28),
            "data.views.window": (2, 4), "global_batch_size": 2, "eval_batch_size": 2, "eval_batches": 1,
            "total_steps": 2, "eval_every": 2, "log_every": 1, "ckpt_every": 2, "async_checkpoint": False,
            "render.num_scenes": 1, "render.trajectory_frames": 3, **extra}
    for k, v in over.items():
        node = c
        *p, leaf = k.split(".")
        for q in p:
            node = node[q]
        node[leaf] = v
    return c


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    workdir = tmp_path_factory.mktemp("rae3d_run")
    config = tiny_config(data_dir, **{"model.num_tokens": 8, "model.dim": 32, "model.dec_dim": 32,
                                      "model.dec_depth": 1})
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
    return config, workdir, state


def test_smoke_train_metrics_images_outputs(smoke):
    config, workdir, state = smoke
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        for k in ("l1", "perceptual", "point_loss", "point_err", "psnr"):
            assert np.isfinite(l[f"train/{k}"]), k
    ev = [l for l in lines if "eval/psnr" in l][0]
    for k in ("psnr", "psnr_context", "point_err", "l1"):
        assert np.isfinite(ev[f"eval/{k}"]), k
    assert "frozen" in state and int(state["step"]) == 2
    from PIL import Image
    png = workdir / "images" / "eval_views_00000002.png"
    # one row: 2 context | 2 target | 2 rendered | 2 depth views of 28 px (1 px apart, 2 px between groups)
    assert np.asarray(Image.open(png)).shape[:2] == (28, 4 * (2 * 29 - 1) + 3 * 2)
    out = workdir / "outputs" / "00000002"
    frames = np.asarray(Image.open(out / "trajectory_0.png"))
    assert frames.shape[:2] == (28, 3 * 29 - 1)
    xyz, rgb = ply.read_point_ply(out / "points_0.ply")
    assert xyz.ndim == 2 and len(xyz) > 0 and rgb.dtype == np.uint8 and np.isfinite(xyz).all()
    gt_xyz, _ = ply.read_point_ply(out / "points_0_gt.ply")
    assert len(gt_xyz) > 0


def test_point_losses_vs_numpy():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(2, 5, 4, 3))
    conf = 1 + rng.uniform(size=(2, 5, 4))
    mask = rng.uniform(size=(2, 5, 4)) > 0.4
    d = np.linalg.norm(p - t, axis=-1)
    np.testing.assert_allclose(pointmap.point_error(jnp.asarray(p), jnp.asarray(t), jnp.asarray(mask)),
                               d[mask].mean(), rtol=1e-5)
    ref = (conf * d - 0.3 * np.log(conf))[mask].mean()
    np.testing.assert_allclose(pointmap.confidence_point_loss(jnp.asarray(p), jnp.asarray(t), jnp.asarray(conf),
                                                              jnp.asarray(mask), alpha=0.3), ref, rtol=1e-5)
    assert float(pointmap.point_error(jnp.asarray(p), jnp.asarray(t), jnp.zeros((2, 5, 4), bool))) == 0.0
    g = jax.grad(lambda x: pointmap.point_error(x, x, None))(jnp.asarray(p))  # distance 0: finite gradient
    assert np.isfinite(np.asarray(g)).all()
    with pytest.raises(ValueError, match="mask must be"):
        pointmap.point_error(jnp.asarray(p), jnp.asarray(t), jnp.asarray(mask[..., 0]))


def test_random_conv_perceptual_vs_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (2, 8, 8, 3)), rng.uniform(-1, 1, (2, 8, 8, 3))
    w = perceptual.random_conv_weights((4, 5), seed=3)

    def conv(x, k):  # numpy 3x3 SAME conv + relu
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + x.shape[1], j:j + x.shape[2]], k[i, j])
                  for i in range(3) for j in range(3))
        return np.maximum(out, 0)

    def feats(x):
        f1 = conv(x, w[0])
        f2 = conv(f1.reshape(2, 4, 2, 4, 2, 4).mean((2, 4)), w[1])
        return [f1, f2]

    def nd(x, y):
        nx = x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-8)
        ny = y / np.sqrt((y * y).sum(-1, keepdims=True) + 1e-8)
        return ((nx - ny) ** 2).sum(-1).mean()

    ref = np.mean([nd(x, y) for x, y in zip(feats(a), feats(b))])
    got = perceptual.perceptual_loss("random_conv", jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                                     widths=(4, 5), seed=3)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert float(perceptual.perceptual_loss("random_conv", jnp.asarray(a), jnp.asarray(a))) < 1e-6
    f = lambda x: x[..., :2]
    np.testing.assert_allclose(perceptual.perceptual_loss("features", jnp.asarray(a), jnp.asarray(b), feature_fn=f),
                               nd(a[..., :2], b[..., :2]), rtol=1e-5)


def test_point_ply_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    xyz, rgb = rng.normal(size=(50, 3)).astype(np.float32), rng.uniform(size=(50, 3))
    ply.write_point_ply(tmp_path / "a.ply", xyz, rgb)
    x2, c2 = ply.read_point_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(x2, xyz)
    np.testing.assert_array_equal(c2, np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="xyz must be"):
        ply.write_point_ply(tmp_path / "b.ply", xyz[:, :2], rgb[:, :2])


def test_hf_tower_weights_load_into_frozen_encoder(tmp_path):
    from safetensors.numpy import save_file

    from scene3d.convert import hf_vit as convert_hf
    from scene3d.models import rae3d, vit
    from scene3d.nn.frozen import Frozen
    from scene3d.tasks.rae3d import load_tower_weights
    src = vit.ViT("tiny-dinov2", rngs=nnx.Rngs(7))
    save_file({k: np.ascontiguousarray(v) for k, v in convert_hf.to_hf_state_dict(src).items()},
              str(tmp_path / "model.safetensors"))
    model = rae3d.RAE3D("tiny", rngs=nnx.Rngs(0), num_tokens=4)
    graphdef, variables = nnx.split(model)
    assert all(isinstance(v, Frozen) for v in jax.tree.leaves(variables["encoder"]["vit"],
                                                                is_leaf=lambda x: isinstance(x, nnx.Variable)))
    variables = load_tower_weights(variables, "tiny-dinov2", tmp_path / "model.safetensors")
    loaded = nnx.merge(graphdef, variables)
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (1, 28, 28, 3)), jnp.float32)
    want = nnx.jit(lambda m: m(vit.preprocess(x, "dinov2"))[0])(src)
    got = nnx.jit(lambda m: m.encoder.features(x))(loaded)
    np.testing.assert_allclose(got, want, atol=1e-5)
