"""3DGS scene batches: filtering, exact-N crops, normalisation, SO(3) augmentation checked against scipy's
rotations, on the real fox.ply and synthetic PLY files; process sharding and exact resume of the pipeline."""
import pathlib

import grain
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scene3d.data import gs_pipeline as G
from scene3d.data import pipeline, splat_io
from scene3d.geometry import gaussians as gs

_OPTS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)


@pytest.fixture(scope="module")
def fox(shared_dir):
    p = pathlib.Path(shared_dir) / "data" / "fox_3dgs" / "fox.ply"
    if not p.is_file():
        pytest.skip(f"real data {p} not found")
    return p


def _random_scene(m, degree=0, seed=0):
    rng = np.random.default_rng(seed)
    k = gs.num_rest_coeffs(degree)
    return gs.Gaussians(xyz=rng.normal(size=(m, 3)) * 3 + 5, f_dc=rng.normal(size=(m, 3)),
                        opacity=rng.normal(size=m), scale=rng.normal(size=(m, 3)) - 3,
                        rot=rng.normal(size=(m, 4)), f_rest=rng.normal(size=(m, k, 3)) if k else None)


def test_fox_eval_example_is_normalised_crop(fox):
    rec = G.PlySource([fox])[0]
    assert rec["scene_id"] == "fox" and rec["gaussians"].shape == (50000, 14)
    assert np.isinf(rec["gaussians"][:, 6]).sum() == 0  # read with repair: the 37 +inf logits are clamped
    cfg = G.GaussianConfig(num_gaussians=4096, radius=1.0)
    ex = G.GaussianTransform(cfg, training=False).random_map(rec, np.random.default_rng(0))
    g = ex["gaussians"]
    assert g.shape == (4096, 14) and g.dtype == np.float32 and np.isfinite(g).all()
    np.testing.assert_allclose(g[:, :3].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(g[:, :3], axis=-1).max(), 1 / 1.1, rtol=1e-5)
    np.testing.assert_array_equal(ex["rotation"], np.eye(3, dtype=np.float32))
    # each output Gaussian is an input one mapped by x -> (x - center) * scale, log scale + log(scale)
    src = rec["gaussians"].astype(np.float64)
    back = g[:, :3].astype(np.float64) / ex["scale"] + ex["center"]
    from scipy.spatial import cKDTree
    d, idx = cKDTree(src[:, :3]).query(back)
    assert d.max() < 1e-4 * np.ptp(src[:, :3])
    assert len(np.unique(idx)) == 4096  # N distinct Gaussians
    np.testing.assert_allclose(g[:, 7:10], src[idx, 7:10] + np.log(ex["scale"]), atol=1e-4)
    np.testing.assert_allclose(g[:, 3:7], src[idx, 3:7], atol=1e-6)
    # the eval example is deterministic and seeded at the Gaussian nearest the mean: a connected blob
    ex2 = G.GaussianTransform(cfg, training=False).random_map(rec, np.random.default_rng(9))
    np.testing.assert_array_equal(ex2["gaussians"], g)


def test_rotation_augmentation_matches_scipy():
    rec = {"gaussians": gs.pack(_random_scene(300, degree=1)), "scene_id": "r"}
    cfg = G.GaussianConfig(num_gaussians=256, sh_degree=1, crop_seed="random")
    ex = G.GaussianTransform(cfg, training=True).random_map(rec, np.random.default_rng(3))
    ref = G.process_gaussians(gs.unpack(rec["gaussians"]), G.GaussianConfig(num_gaussians=256, sh_degree=1,
                                                                            crop_seed="random", rotate=False),
                              np.random.default_rng(3), training=True)
    R = ex["rotation"].astype(np.float64)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0 and not np.allclose(R, np.eye(3))
    a, b = gs.unpack(ex["gaussians"].astype(np.float64)), gs.unpack(ref["gaussians"].astype(np.float64))
    np.testing.assert_allclose(a.xyz, b.xyz @ R.T, atol=1e-5)  # same crop (same rng draws), rotated
    np.testing.assert_allclose(a.scale, b.scale, atol=1e-6)
    np.testing.assert_allclose(a.opacity, b.opacity, atol=1e-6)
    # quaternions (w x y z) through scipy (x y z w): orientation R * R_i
    qa = Rotation.from_quat(np.roll(a.rot, -1, axis=-1)).as_matrix()
    qb = Rotation.from_quat(np.roll(b.rot, -1, axis=-1)).as_matrix()
    np.testing.assert_allclose(qa, R @ qb, atol=1e-5)
    # degree-1 SH: view-dependent colour is carried along, c'(R d) = c(d)
    d = np.random.default_rng(0).normal(size=(256, 3))
    np.testing.assert_allclose(gs.sh_color(a, d @ R.T), gs.sh_color(b, d), atol=1e-4)
    assert ex["gaussians"].shape == (256, gs.num_channels(1))


def test_filter_pad_and_sh_degree(tmp_path):
    g = _random_scene(50, degree=0)
    g = g._replace(opacity=np.where(np.arange(50) < 10, -10.0, 3.0))
    g = g._replace(opacity=np.where(np.arange(50) == 49, np.inf, g.opacity))
    ex = G.process_gaussians(g, G.GaussianConfig(num_gaussians=64, min_opacity=0.5, sh_degree=2))
    out = gs.unpack(ex["gaussians"])
    assert ex["gaussians"].shape == (64, gs.num_channels(2))
    assert np.all(gs.sigmoid(out.opacity.astype(np.float64)) >= 0.5) and np.isfinite(out.opacity).all()
    assert len(np.unique(out.xyz, axis=0)) == 40  # 40 kept, padded by repetition to 64
    assert np.all(out.f_rest == 0)
    with pytest.raises(ValueError, match="no Gaussian left"):
        G.process_gaussians(g, G.GaussianConfig(min_opacity=0.99999999))
    with pytest.raises(ValueError, match="unknown keys"):
        G.GaussianConfig.from_config({"n": 3})
    with pytest.raises(ValueError, match="scene bad: raw Gaussians"):
        G.record_gaussians({"gaussians": np.zeros((4, 15)), "scene_id": "bad"})
    with pytest.raises(ValueError, match="no .ply"):
        G.PlySource(str(tmp_path / "*.ply"))


@pytest.fixture(scope="module")
def ply_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plys")
    for i in range(6):
        g = _random_scene(100 + 20 * i, seed=i)
        splat_io.write_ply(d / f"scene{i}.ply", gs.Gaussians(*(a.astype(np.float32) for a in g[:5])))
    return d


def _iter(src, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_batch_iterator(src, global_batch_size=4, seed=11, read_options=_OPTS,
                                        transforms=[G.GaussianTransform(G.GaussianConfig(num_gaussians=64,
                                                                                          crop_seed="random"))], **kw)


def test_pipeline_shards_and_resume(ply_dir):
    src = G.PlySource(ply_dir)
    assert len(src) == 6
    full = [next(it) for it in [_iter(src)] for _ in range(3)]
    assert full[0]["gaussians"].shape == (4, 64, 14) and full[0]["rotation"].shape == (4, 3, 3)
    it0, it1 = _iter(src, process_index=0, process_count=2), _iter(src, process_index=1, process_count=2)
    for g in full:
        a, b = next(it0), next(it1)
        np.testing.assert_array_equal(np.concatenate([a["gaussians"], b["gaussians"]]), g["gaussians"][[0, 2, 1, 3]])
        np.testing.assert_array_equal(np.concatenate([a["rotation"], b["rotation"]]), g["rotation"][[0, 2, 1, 3]])
    # resume: state after 1 batch, restored into a fresh iterator, gives the same next 2 batches
    it = _iter(src)
    next(it)
    state = it.get_state()
    want = [next(it), next(it)]
    fresh = _iter(src)
    fresh.set_state(state)
    for w in want:
        got = next(fresh)
        np.testing.assert_array_equal(got["gaussians"], w["gaussians"])
        assert list(got["scene_id"]) == list(w["scene_id"])


def test_ply_get_source(ply_dir):
    import ml_collections

    from scene3d import data as data_lib
    dc = ml_collections.ConfigDict(dict(name="ply", paths=str(ply_dir / "scene*.ply"),
                                        eval_paths=[str(ply_dir / "scene0.ply")], gaussians=dict(num_gaussians=32)))
    assert len(data_lib.get_source(dc, "train")) == 6 and len(data_lib.get_source(dc, "eval")) == 1
    (t,) = data_lib.get_transforms(dc, "eval")
    assert not t.training and t.cfg.num_gaussians == 32
