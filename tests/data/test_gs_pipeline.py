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


def _assert_rotated(a, b, R):
    """Scene ``a`` is scene ``b`` rotated by R about the origin: positions, orientations (quaternions, checked
    through scipy) and view-dependent colour (degree-1 SH) all carried along; scale and opacity unchanged."""
    np.testing.assert_allclose(a.xyz, b.xyz @ R.T, atol=1e-5)
    np.testing.assert_allclose(a.scale, b.scale, atol=1e-6)
    np.testing.assert_allclose(a.opacity, b.opacity, atol=1e-6)
    # quaternions (w x y z) through scipy (x y z w): orientation R * R_i
    qa = Rotation.from_quat(np.roll(a.rot, -1, axis=-1)).as_matrix()
    qb = Rotation.from_quat(np.roll(b.rot, -1, axis=-1)).as_matrix()
    np.testing.assert_allclose(qa, R @ qb, atol=1e-5)
    # degree-1 SH: view-dependent colour is carried along, c'(R d) = c(d)
    d = np.random.default_rng(0).normal(size=(a.xyz.shape[0], 3))
    np.testing.assert_allclose(gs.sh_color(a, d @ R.T), gs.sh_color(b, d), atol=1e-4)


def _rotation_example(seed=3):
    rec = {"gaussians": gs.pack(_random_scene(300, degree=1)), "scene_id": "r"}
    cfg = G.GaussianConfig(num_gaussians=256, sh_degree=1, crop_seed="random")
    ex = G.GaussianTransform(cfg, training=True).random_map(rec, np.random.default_rng(seed))
    ref = G.process_gaussians(gs.unpack(rec["gaussians"]), G.GaussianConfig(num_gaussians=256, sh_degree=1,
                                                                            crop_seed="random", rotate=False),
                              np.random.default_rng(seed), training=True)
    return ex, ref


def test_rotation_augmentation_matches_scipy():
    ex, ref = _rotation_example()
    R = ex["rotation"].astype(np.float64)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0 and not np.allclose(R, np.eye(3))
    a, b = gs.unpack(ex["gaussians"].astype(np.float64)), gs.unpack(ref["gaussians"].astype(np.float64))
    _assert_rotated(a, b, R)  # same crop (same rng draws), rotated
    assert ex["gaussians"].shape == (256, gs.num_channels(1))


def test_the_release_rotation_bug_fails_the_check_and_ours_rotates_per_example():
    """The public Can3Tok code augments with ``xyz @ (R R^T)`` (the identity: nothing rotates) and never touches
    the quaternions or SH; the check above rejects both that and positions-only rotation. Our transform draws a new
    rotation for every example."""
    ex, ref = _rotation_example()
    R = ex["rotation"].astype(np.float64)
    b = gs.unpack(ref["gaussians"].astype(np.float64))
    release = b._replace(xyz=b.xyz @ (R @ R.T))  # gs_can3tok.py: rand_rot = R R^T, positions only
    with pytest.raises(AssertionError):
        _assert_rotated(release, b, R)
    positions_only = b._replace(xyz=b.xyz @ R.T)
    with pytest.raises(AssertionError):
        _assert_rotated(positions_only, b, R)
    rec = {"gaussians": gs.pack(_random_scene(300, degree=1)), "scene_id": "r"}
    tf = G.GaussianTransform(G.GaussianConfig(num_gaussians=256, sh_degree=1), training=True)
    rng = np.random.default_rng(0)
    rots = [tf.random_map(rec, rng)["rotation"] for _ in range(3)]
    assert not np.allclose(rots[0], rots[1]) and not np.allclose(rots[1], rots[2])


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
        np.testing.assert_array_equal(np.concatenate([a["gaussians"], b["gaussians"]]), g["gaussians"])
        np.testing.assert_array_equal(np.concatenate([a["rotation"], b["rotation"]]), g["rotation"])
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


# ------------------------------------------------------------------------------------------- canonical order


def _kd_reference(xyz, idx, depth=0):
    """Plain recursive median split (x, y, z, x, ...), lower floor(n / 2) first; distinct coordinates only."""
    if len(idx) <= 1:
        return list(idx)
    o = idx[np.argsort(xyz[idx, depth % 3])]
    h = len(o) // 2
    return _kd_reference(xyz, o[:h], depth + 1) + _kd_reference(xyz, o[h:], depth + 1)


def _morton_reference(i, j, k, bits=8):
    code = 0
    for b in range(bits):
        code |= ((i >> b) & 1) << (3 * b + 2) | ((j >> b) & 1) << (3 * b + 1) | ((k >> b) & 1) << (3 * b)
    return code


@pytest.mark.parametrize("order", ["voxel", "morton", "kdtree"])
def test_canonical_order_is_a_permutation_invariant_to_input_order(order):
    rng = np.random.default_rng(0)
    rows = gs.pack(_random_scene(301, seed=4)).astype(np.float32)
    rows[:, :3] = rng.uniform(-0.9, 0.9, (301, 3))
    rows[50:60] = rows[0]  # exact duplicates (padding by repetition) must not break invariance
    rows[100:110, :3] = rows[1, :3]  # equal positions, different other channels: ties broken by the row values
    perm = G.canonical_order(rows, order, grid=4, radius=1.0)
    assert perm.dtype == np.int64 and np.array_equal(np.sort(perm), np.arange(301))
    ordered = rows[perm]
    np.testing.assert_array_equal(rows[G.canonical_order(rows, order, grid=4)], ordered)  # deterministic
    for seed in range(3):
        shuffled = rows[np.random.default_rng(seed).permutation(301)]
        np.testing.assert_array_equal(shuffled[G.canonical_order(shuffled, order, grid=4)], ordered)
    np.testing.assert_array_equal(G.canonical_order(rows, "none"), np.arange(301))


def test_voxel_and_morton_orders_sort_by_cell_then_centre_distance():
    rng = np.random.default_rng(1)
    rows = gs.pack(_random_scene(500, seed=5)).astype(np.float32)
    rows[:, :3] = rng.uniform(-1, 1, (500, 3)) / 1.1
    grid, size = 5, 2.0 / 5
    for order in ("voxel", "morton"):
        r = rows[G.canonical_order(rows, order, grid=grid, radius=1.0)]
        ijk = np.floor((r[:, :3].astype(np.float64) + 1.0) / size).astype(int)
        if order == "voxel":
            key = np.ravel_multi_index(tuple(ijk.T), (grid,) * 3)  # raster, x slowest
        else:
            key = np.array([_morton_reference(*c) for c in ijk])
        assert np.all(np.diff(key) >= 0)
        d = np.linalg.norm(r[:, :3] - ((ijk + 0.5) * size - 1.0), axis=-1)
        same = np.diff(key) == 0
        assert np.all(np.diff(d)[same] >= -1e-12)
    # Morton codes against the bit-by-bit definition on the whole 16^3 grid
    ijk = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_array_equal(G.morton_codes(ijk), [_morton_reference(*c) for c in ijk])


def test_kdtree_order_matches_recursive_median_splits():
    rng = np.random.default_rng(2)
    for n in (256, 300, 77):
        xyz = rng.normal(size=(n, 3))
        perm = G.kdtree_order(xyz)
        np.testing.assert_array_equal(perm, _kd_reference(xyz, np.arange(n)))
        if n == 256:  # balanced: the first 128 rows are the lower half in x, each quarter splits in y
            x = xyz[perm]
            assert x[:128, 0].max() < x[128:, 0].min()
            for q in (0, 128):
                assert x[q:q + 64, 1].max() < x[q + 64:q + 128, 1].min()


def test_process_orders_rows_and_release18_prefix():
    g = _random_scene(400, seed=7)
    base = dict(num_gaussians=256, radius=1.0, voxel_grid=8)
    plain = G.process_gaussians(g, G.GaussianConfig(**base), np.random.default_rng(0))["gaussians"]
    for order in ("voxel", "morton", "kdtree"):
        ex = G.process_gaussians(g, G.GaussianConfig(order=order, **base), np.random.default_rng(0))
        rows = ex["gaussians"]
        # the same Gaussians, reordered
        np.testing.assert_array_equal(rows[np.lexsort(rows.T[::-1])], plain[np.lexsort(plain.T[::-1])])
        assert not np.array_equal(rows, plain)
    ex = G.process_gaussians(g, G.GaussianConfig(order="voxel", rows="release18", **base), np.random.default_rng(0))
    r = ex["gaussians"]
    assert r.shape == (256, 18) and r.dtype == np.float32
    assert G.GaussianConfig(rows="release18").row_offset == 4 and G.GaussianConfig().row_offset == 0
    xyz = r[:, 4:7].astype(np.float64)
    np.testing.assert_array_equal(r[:, 4:], G.process_gaussians(g, G.GaussianConfig(order="voxel", **base),
                                                                np.random.default_rng(0))["gaussians"])
    size = 2.0 / 8
    assert np.all(np.abs(xyz - r[:, :3]) <= size / 2 + 1e-6)  # each Gaussian lies in its voxel
    np.testing.assert_allclose((r[:, :3] + 1.0) / size % 1.0, 0.5, atol=1e-5)  # ... whose centre is on the grid
    ijk = np.round((r[:, :3].astype(np.float64) + 1.0) / size - 0.5).astype(int)
    np.testing.assert_array_equal(r[:, 3], np.ravel_multi_index(tuple(ijk.T), (8, 8, 8)))
    assert np.all(np.diff(r[:, 3]) >= 0)  # order 'voxel': rows sorted by voxel id
    for bad, match in ((dict(order="hilbert"), "GaussianConfig.order"), (dict(rows="r19"), "GaussianConfig.rows"),
                       (dict(voxel_grid=0), "GaussianConfig.voxel_grid")):
        with pytest.raises(ValueError, match=match):
            G.GaussianConfig(**bad)
    with pytest.raises(ValueError, match="canonical_order: expected rows"):
        G.canonical_order(np.zeros((4, 2)), "voxel")
