"""Multi-view examples: resize + crop geometry (blob centroids, point maps), relative poses and scale (similarity
invariance), view-sampling strategies, and the grain pipeline (process sharding, exact resume)."""
import numpy as np
import pytest

from scene3d.data import multiview as M
from scene3d.data import pipeline

# ------------------------------------------------------------------------------------------ independent helpers


def _pinhole(points, c2w, intr, H, W):
    """World points (P, 3) -> (u, v, z) with an explicit R^T (p - t) and pixel = f * x / z + c."""
    R, t = c2w[:3, :3], c2w[:3, 3]
    p = (points - t) @ R
    return intr[0] * W * p[:, 0] / p[:, 2] + intr[2] * W, intr[1] * H * p[:, 1] / p[:, 2] + intr[3] * H, p[:, 2]


def _look_at(eye, target):
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], 1)
    c2w[:3, 3] = eye
    return c2w


def _blob_image(H, W, centres, sigma):
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    img = np.zeros((H, W))
    for u, v in centres:
        img += np.exp(-((jj - u) ** 2 + (ii - v) ** 2) / (2 * sigma ** 2))
    return np.repeat((255 * np.clip(img, 0, 1)).astype(np.uint8)[..., None], 3, -1)


def _centroid(img, u, v, r):
    """Intensity centroid (u, v) of channel 0 in a (2r+1) window around the pixel containing (u, v)."""
    j0, i0 = int(np.floor(u)), int(np.floor(v))
    a = img[max(i0 - r, 0):i0 + r + 1, max(j0 - r, 0):j0 + r + 1, 0].astype(np.float64)
    jj, ii = np.meshgrid(np.arange(max(j0 - r, 0), max(j0 - r, 0) + a.shape[1]) + 0.5,
                         np.arange(max(i0 - r, 0), max(i0 - r, 0) + a.shape[0]) + 0.5)
    return (a * jj).sum() / a.sum(), (a * ii).sum() / a.sum()


# ----------------------------------------------------------------------------------------------- resize + crop


@pytest.mark.parametrize("out_hw", [(32, 32), (40, 24), (24, 60), (96, 150)])
def test_resize_crop_keeps_projected_content(out_hw):
    """Blobs drawn where 3D points project stay where the updated intrinsics project them (< 0.1 px)."""
    H, W = 60, 90
    rng = np.random.default_rng(0)
    c2w = _look_at(np.array([0.3, -2.0, 0.8]), np.array([0.0, 0.0, 0.5]))
    intr = np.array([0.8, 0.8 * W / H, 0.47, 0.53])  # off-centre principal point
    # points spread over the central region (they must survive the crop)
    target = [(u, v) for u in (39, 45, 51) for v in (24, 30, 36)]
    depth = rng.uniform(2.0, 3.0, len(target))
    pix = np.array(target, np.float64) + rng.uniform(-0.5, 0.5, (len(target), 2))
    xy = (pix - intr[2:] * [W, H]) / (intr[:2] * [W, H])
    cam = np.concatenate([xy, np.ones((len(xy), 1))], 1) * depth[:, None]
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    u, v, _ = _pinhole(world, c2w, intr, H, W)
    np.testing.assert_allclose(np.stack([u, v], 1), pix, atol=1e-9)
    imgs = np.stack([_blob_image(H, W, [p], sigma=2.0) for p in pix])  # one blob per view: no overlap
    n = len(pix)
    out = M.resize_and_crop(imgs, np.tile(intr, (n, 1)), out_hw)
    h, w = out_hw
    assert out["images"].shape == (n, h, w, 3)
    k = out["intrinsics"][0]
    u2, v2, _ = _pinhole(world, c2w, k, h, w)
    scale = max(h / H, w / W)
    r = int(np.ceil(4 * 2.0 * scale))
    for i, (a, b) in enumerate(zip(u2, v2)):
        cu, cv = _centroid(out["images"][i], a, b, r)
        assert abs(cu - a) < 0.1 and abs(cv - b) < 0.1, (out_hw, (a, b), (cu, cv))


def test_crop_resize_intrinsics_closed_form():
    # 100 x 200 -> 50 x 50: scale 0.5 to 50 x 100, crop 25 columns on the left
    k = M.crop_resize_intrinsics(np.array([0.5, 1.0, 0.5, 0.5]), (100, 200), (50, 50))
    # fx: 0.5 * 200 px = 100 px -> 50 px in a 50 px image; cx: 100 px -> 50 - 25 = 25 px -> 0.5
    np.testing.assert_allclose(k, [1.0, 1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="positive"):
        M.crop_resize_geometry((0, 4), (2, 2))


def _synthetic_scene(V=12, H=24, W=32, seed=0, with_depth=True, sid="s"):
    """A scene of V cameras on an arc looking at a box of random points; depth is of a fronto plane."""
    rng = np.random.default_rng(seed)
    ang = np.linspace(-0.6, 0.6, V) + rng.uniform(-0.05, 0.05, V)
    c2w = np.stack([_look_at(np.array([3 * np.sin(a), -3 * np.cos(a), 1.0 + 0.1 * i / V]), np.zeros(3))
                    for i, a in enumerate(ang)])
    intr = np.tile([0.9, 0.9 * W / H, 0.5, 0.5], (V, 1))
    rec = {"scene_id": sid, "images": rng.integers(0, 256, (V, H, W, 3), dtype=np.uint8),
           "c2w": c2w.astype(np.float32), "intrinsics": intr.astype(np.float32)}
    if with_depth:
        depth = rng.uniform(2.0, 4.0, (V, H, W)).astype(np.float32)
        mask = rng.uniform(size=(V, H, W)) > 0.2
        rec.update(depth=np.where(mask, depth, 0).astype(np.float32), mask=mask)
    return rec


def test_point_maps_follow_output_cameras():
    """After resize + crop, each valid point projects into its own output pixel (within the half source pixel
    that nearest-neighbour resampling allows) at z = the output depth."""
    rec = _synthetic_scene(V=5, H=30, W=40)
    cfg = M.ViewConfig(num_context=2, num_target=3, strategy="random", resolution=(16, 16))
    ex = M.make_views(rec, [0, 2], [1, 3, 4], cfg)
    for part in ("context", "target"):
        d = ex[part]
        for v in range(len(d["index"])):
            m = d["mask"][v]
            ii, jj = np.nonzero(m)
            u, vv, z = _pinhole(d["points"][v][m].astype(np.float64), d["c2w"][v].astype(np.float64),
                                d["intrinsics"][v].astype(np.float64), 16, 16)
            s = 16 / 30  # output pixels per source pixel (the covering scale)
            assert np.all(np.abs(u - (jj + 0.5)) <= 0.5 * s + 1e-3)
            assert np.all(np.abs(vv - (ii + 0.5)) <= 0.5 * s + 1e-3)
            np.testing.assert_allclose(z, d["depth"][v][m], rtol=1e-4)


def _random_similarity(rng):
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return R, rng.uniform(-5, 5, 3), rng.uniform(0.2, 5.0)


@pytest.mark.parametrize("scale_mode", ["max_camera_distance", "median_depth", "points_radius"])
def test_relative_and_scale_normalised_examples_are_similarity_invariant(scale_mode):
    """Moving, rotating and scaling the whole scene changes nothing in the example except ref_c2w / scale; the
    first context camera is the identity and the chosen statistic equals scale_target."""
    rec = _synthetic_scene(V=8)
    cfg = M.ViewConfig(num_context=2, num_target=2, scale_mode=scale_mode, scale_target=2.0)
    ex = M.make_views(rec, [1, 5], [2, 3], cfg)
    R, t, s = _random_similarity(np.random.default_rng(1))
    moved = dict(rec)
    c2w = rec["c2w"].astype(np.float64).copy()
    c2w[:, :3, :3] = R @ c2w[:, :3, :3]
    c2w[:, :3, 3] = s * (c2w[:, :3, 3] @ R.T) + t
    moved["c2w"], moved["depth"] = c2w, rec["depth"] * s
    ex2 = M.make_views(moved, [1, 5], [2, 3], cfg)
    for part in ("context", "target"):
        for k in ("c2w", "points", "depth", "intrinsics", "images", "mask"):
            np.testing.assert_allclose(ex2[part][k], ex[part][k], atol=2e-4, rtol=1e-4, err_msg=f"{part}/{k}")
    np.testing.assert_allclose(ex["context"]["c2w"][0], np.eye(4), atol=1e-6)
    np.testing.assert_allclose(ex2["scale"], ex["scale"] / s, rtol=1e-5)
    ctx = ex["context"]
    if scale_mode == "max_camera_distance":
        assert np.isclose(np.linalg.norm(ctx["c2w"][:, :3, 3], axis=-1).max(), 2.0, rtol=1e-5)
    elif scale_mode == "points_radius":
        assert np.isclose(np.linalg.norm(ctx["points"][ctx["mask"]], axis=-1).max(), 2.0, rtol=1e-5)
    else:
        z = [(ctx["points"][v][ctx["mask"][v]] - ctx["c2w"][w, :3, 3]) @ ctx["c2w"][w, :3, :3]
             for v in range(2) for w in range(2)]
        z = np.concatenate([a[:, 2] for a in z])
        assert np.isclose(np.median(z[z > 0]), 2.0, rtol=1e-3)
    # undo: world = ref_c2w @ (p / scale) recovers the original point map of the first context view
    p = ex["context"]["points"][0][ex["context"]["mask"][0]].astype(np.float64) / ex["scale"]
    world = p @ ex["ref_c2w"][:3, :3].T.astype(np.float64) + ex["ref_c2w"][:3, 3]
    from scene3d.geometry.rays import depth_to_points
    ref = depth_to_points(rec["depth"][1].astype(np.float64), rec["c2w"][1].astype(np.float64),
                          rec["intrinsics"][1].astype(np.float64))[rec["mask"][1]]
    np.testing.assert_allclose(world, ref, atol=1e-4)


def test_images_float_range_and_uint8():
    rec = _synthetic_scene(V=4, with_depth=False)
    ex = M.make_views(rec, [0], [2], M.ViewConfig(num_context=1, num_target=1, scale_mode=None))
    np.testing.assert_allclose(ex["context"]["images"][0], rec["images"][0] / 127.5 - 1, atol=1e-6)
    assert "depth" not in ex["context"]
    ex = M.make_views(rec, [0], [2], M.ViewConfig(num_context=1, num_target=1, image_dtype="uint8"))
    assert ex["target"]["images"].dtype == np.uint8 and np.array_equal(ex["target"]["images"][0], rec["images"][2])


def test_encoded_frames_decode_only_selected():
    rec = _synthetic_scene(V=6, with_depth=False)
    enc = dict(rec, images=np.array([M.encode_png(im) for im in rec["images"]], dtype=object))
    enc["images"][4] = b"not an image"  # never decoded: not sampled
    cfg = M.ViewConfig(num_context=2, num_target=1, scale_mode=None, image_dtype="uint8")
    a, b = M.make_views(rec, [0, 2], [5], cfg), M.make_views(enc, [0, 2], [5], cfg)
    assert np.array_equal(a["context"]["images"], b["context"]["images"])


# ----------------------------------------------------------------------------------------------- sampling


def test_strategies_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(8, 40))
        cfg = M.ViewConfig(num_context=2, num_target=3, strategy="nearby", window=(4, 10))
        c, t = M.select_views(n, cfg, rng)
        lo, hi = c[0], c[-1]
        assert 4 <= hi - lo <= 10 and np.all((t >= lo) & (t <= hi)) and hi < n
        assert not set(t) & set(c) and len(set(t)) == 3 and np.all(np.diff(t) > 0)
        cfg = M.ViewConfig(num_context=3, num_target=4, strategy="random")
        c, t = M.select_views(n, cfg, rng)
        assert len(set(c) | set(t)) == 7 and c.max() < n and t.max() < n
        cfg = M.ViewConfig(num_context=3, num_target=4, strategy="heldout_trajectory")
        c, t = M.select_views(n, cfg, rng)
        assert np.all(np.diff(t) == 1) and not set(c) & set(t) and len(set(c)) == 3
    # a window too small for the targets: targets from the window, with replacement
    c, t = M.select_views(3, M.ViewConfig(num_context=2, num_target=4, window=(2, 2)), rng)
    assert list(c) == [0, 2] and np.all((t >= 0) & (t <= 2))


def test_strategies_deterministic_and_errors():
    cfg = M.ViewConfig(num_context=2, num_target=2, strategy="random")
    a = M.select_views(30, cfg, np.random.default_rng(5))
    b = M.select_views(30, cfg, np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="scene abc: 3 frames"):
        M.select_views(3, cfg, np.random.default_rng(0), "abc")
    with pytest.raises(ValueError, match="strategy"):
        M.ViewConfig(strategy="everything")
    with pytest.raises(ValueError, match="unknown keys"):
        M.ViewConfig.from_config({"num_views": 3})
    with pytest.raises(ValueError, match="c2w expected shape"):
        M.num_frames({"scene_id": "x", "images": np.zeros((2, 4, 4, 3), np.uint8), "c2w": np.zeros((2, 3, 4)),
                      "intrinsics": np.zeros((2, 4))})


# ----------------------------------------------------------------------------------------------- pipeline


class _Scenes:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return _synthetic_scene(V=10, H=12, W=16, seed=i, sid=f"scene{i:02d}")


_CFG = M.ViewConfig(num_context=2, num_target=2, strategy="nearby", window=(3, 6), resolution=(8, 8))


def _iter(**kw):
    import grain
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_batch_iterator(_Scenes(10), global_batch_size=4, seed=3,
                                        transforms=[M.MultiViewTransform(_CFG)],
                                        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=1), **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _key(b, i):
    return (str(b["scene_id"][i]), tuple(b["context"]["index"][i]), tuple(b["target"]["index"][i]))


def test_batches_shapes_and_process_shards():
    full = _take(_iter(), 4)
    b = full[0]
    assert b["context"]["images"].shape == (4, 2, 8, 8, 3) and b["target"]["c2w"].shape == (4, 2, 4, 4)
    assert b["context"]["points"].shape == (4, 2, 8, 8, 3) and b["scale"].shape == (4,)
    s0 = _take(_iter(process_index=0, process_count=2), 4)
    s1 = _take(_iter(process_index=1, process_count=2), 4)
    for g, a, c in zip(full, s0, s1):
        ka, kc = {_key(a, i) for i in range(2)}, {_key(c, i) for i in range(2)}
        assert not ka & kc
        assert ka | kc == {_key(g, i) for i in range(4)}
        # element for element: process p holds rows p * B / P .. (p + 1) * B / P (same random view choice)
        np.testing.assert_array_equal(np.concatenate([a["target"]["images"], c["target"]["images"]]),
                                      g["target"]["images"])
    # one epoch (10 scenes) covers every scene once; the second epoch is reshuffled
    ids = [str(s) for b in full for s in b["scene_id"]]
    assert sorted(ids[:10]) == [f"scene{i:02d}" for i in range(10)] and ids[10:16] != ids[:6]


def test_resume_from_iterator_state():
    it = _iter()
    _take(it, 2)
    state = it.get_state()
    want = _take(it, 3)
    fresh = _iter()
    fresh.set_state(state)
    got = _take(fresh, 3)
    for a, b in zip(want, got):
        for part in ("context", "target"):
            for k in a[part]:
                np.testing.assert_array_equal(a[part][k], b[part][k])
        assert list(a["scene_id"]) == list(b["scene_id"])
