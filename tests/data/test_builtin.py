"""Built-in pybullet scene dataset: determinism, camera geometry (checked with an independent pinhole), metric depth,
3DGS lifting, the on-disk format."""
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from scene3d.data import builtin as B  # noqa: E402

C0 = 0.28209479177387814
SPEC = B.SceneSpec(num_views=9, height=32, width=48, num_gaussians=512)


@pytest.fixture(scope="module")
def scene():
    return B.build_scene(7, SPEC)


def _project(points, c2w, intr, H, W):
    """Independent pinhole: world points (P, 3) -> (col, row) pixel coordinates and z-depth in camera c2w."""
    R, t = c2w[:3, :3].astype(np.float64), c2w[:3, 3].astype(np.float64)
    cam = (points.astype(np.float64) - t) @ R  # R^T (p - t)
    z = cam[:, 2]
    u = intr[0] * W * cam[:, 0] / z + intr[2] * W
    v = intr[1] * H * cam[:, 1] / z + intr[3] * H
    return u, v, z


def test_shapes_dtypes_non_square(scene):
    V, H, W, N = SPEC.num_views, SPEC.height, SPEC.width, SPEC.num_gaussians
    expect = dict(images=((V, H, W, 3), np.uint8), depth=((V, H, W), np.float32), points=((V, H, W, 3), np.float32),
                  mask=((V, H, W), np.bool_), c2w=((V, 4, 4), np.float32), intrinsics=((V, 4), np.float32),
                  trajectory=((V,), np.int8), gaussians=((N, 14), np.float32))
    for k, (shape, dtype) in expect.items():
        assert scene[k].shape == shape and scene[k].dtype == dtype, (k, scene[k].shape, scene[k].dtype)
    assert sorted(set(scene["trajectory"].tolist())) == [0, 1, 2]
    assert scene["mask"].mean() > 0.5
    # square pixels: fx (pixels) == fy (pixels) although H != W
    intr = scene["intrinsics"]
    np.testing.assert_allclose(intr[:, 0] * W, intr[:, 1] * H, rtol=1e-5)
    # valid depths lie strictly between the clipping planes, invalid ones are zeroed
    d = scene["depth"]
    assert np.all(d[scene["mask"]] > SPEC.near) and np.all(d[scene["mask"]] < SPEC.far)
    assert np.all(d[~scene["mask"]] == 0)
    # c2w rotations are orthonormal with det +1
    R = scene["c2w"][:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)


def test_deterministic(scene):
    again = B.build_scene(7, SPEC)
    assert set(again) == set(scene)
    for k in scene:
        assert np.array_equal(again[k], scene[k]), k
    other = B.build_scene(8, SPEC)
    assert not np.array_equal(other["images"], scene["images"])


def test_point_maps_reproject_across_views(scene):
    """View A's point map projected into view B (independent pinhole) lands where B sees the same depth.

    B's depth is sampled by bilinear interpolation of inverse depth (exact on planes) over 2x2 neighbourhoods
    with no depth edge. Correct cameras give ~1e-6 relative error; a quarter-pixel error in (cx, cy) gives ~5e-3.
    """
    H, W = SPEC.height, SPEC.width
    rels = []
    for a in range(SPEC.num_views):
        for b in range(SPEC.num_views):
            if a == b:
                continue
            pts = scene["points"][a][scene["mask"][a]]
            u, v, z = _project(pts, scene["c2w"][b], scene["intrinsics"][b], H, W)
            x, y = u - 0.5, v - 0.5  # pixel centres sit at integer + 0.5
            j, i = np.floor(x).astype(int), np.floor(y).astype(int)
            ok = (z > 0.1) & (j >= 0) & (j < W - 1) & (i >= 0) & (i < H - 1)
            x, y, z, j, i = x[ok], y[ok], z[ok], j[ok], i[ok]
            inv = np.where(scene["mask"][b], 1 / np.maximum(scene["depth"][b].astype(np.float64), 1e-9), np.nan)
            q = np.stack([inv[i, j], inv[i, j + 1], inv[i + 1, j], inv[i + 1, j + 1]], -1)
            with np.errstate(invalid="ignore"):
                smooth = np.all(np.isfinite(q), -1) & (np.ptp(q, -1) < 0.05 * q.min(-1))
            x, y, z, j, i, q = x[smooth], y[smooth], z[smooth], j[smooth], i[smooth], q[smooth]
            fx, fy = x - j, y - i
            zb = 1 / (q[:, 0] * (1 - fx) * (1 - fy) + q[:, 1] * fx * (1 - fy) + q[:, 2] * (1 - fx) * fy
                      + q[:, 3] * fx * fy)
            rels.append((z - zb) / zb)
    rel = np.concatenate(rels)
    assert len(rel) > 5000
    # occluded points lie behind B's surface (rel > 0); almost none may float in front of it
    assert np.mean(rel < -0.02) < 0.005
    visible = np.abs(rel) < 0.02
    assert visible.mean() > 0.5
    assert np.median(np.abs(rel[visible])) < 1e-4


@pytest.fixture(scope="module")
def floor_client():
    import pybullet as p
    import pybullet_data
    c = p.connect(p.DIRECT)
    p.loadURDF(pybullet_data.getDataPath() + "/plane.urdf", physicsClientId=c)  # z = 0 plane
    yield c
    p.disconnect(c)


@pytest.mark.parametrize("hw", [(32, 48), (48, 32)])
def test_depth_is_metric_looking_down(floor_client, hw):
    H, W = hw
    h = 1.7
    v = B.render_view(floor_client, (0.3, -0.2, h), (0.3, -0.2, 0.0), (0, 1, 0), H, W, 60, 0.05, 30)
    assert v["mask"].all()
    np.testing.assert_allclose(v["depth"], h, rtol=1e-4)
    # camera centre and optical axis of the returned OpenCV c2w
    np.testing.assert_allclose(v["c2w"][:3, 3], [0.3, -0.2, h], atol=1e-5)
    np.testing.assert_allclose(v["c2w"][:3, 2], [0, 0, -1], atol=1e-5)  # z forward = down
    np.testing.assert_allclose(v["c2w"][:3, 1], [0, -1, 0], atol=1e-5)  # y down in the image = -up
    # vertical field of view 60 deg: fy / H = 0.5 / tan(30 deg)
    np.testing.assert_allclose(v["intrinsics"][1], 0.5 / np.tan(np.radians(30)), rtol=1e-5)


@pytest.mark.parametrize("hw", [(32, 48), (48, 32)])
@pytest.mark.parametrize("pose", [((0, 0, 1.5), (2, 1, 0), (0.3, 0.6, 1)), ((1, 1, 0.8), (-1, 0.5, 0), (0, -0.7, 1))])
def test_depth_matches_ray_plane_intersection(floor_client, hw, pose):
    """Tilted and rolled cameras over the z = 0 plane: rendered z-depth equals the closed-form ray/plane hit.

    Sub-pixel sensitive: a half-pixel error in cx or cy moves the hits by ~1e-2 here.
    """
    H, W = hw
    eye, target, up = pose
    v = B.render_view(floor_client, eye, target, up, H, W, 60, 0.05, 30)
    K, c2w, m = v["intrinsics"], v["c2w"], v["mask"]
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d_cam = np.stack([(jj / W - K[2]) / K[0], (ii / H - K[3]) / K[1], np.ones_like(jj)], -1)  # z = 1
    d_world = d_cam @ c2w[:3, :3].T
    with np.errstate(divide="ignore"):
        expected = -c2w[2, 3] / d_world[..., 2]  # ray origin + s d hits z = 0 at s = z-depth
    hits = (d_world[..., 2] < 0) & (expected < 29)
    assert m.sum() > 0.3 * m.size
    assert np.array_equal(m, hits) or np.mean(m != hits) < 0.02  # the far-plane horizon may differ by a pixel
    both = m & hits
    np.testing.assert_allclose(v["depth"][both], expected[both], rtol=2e-4)


def test_gaussians_lifted_from_pixels(scene):
    from scipy.spatial import cKDTree

    g = scene["gaussians"].astype(np.float64)
    m = scene["mask"]
    pix_xyz = scene["points"][m].astype(np.float64)
    pix_rgb = scene["images"][m].astype(np.float64) / 255
    dist, idx = cKDTree(pix_xyz).query(g[:, :3])
    assert dist.max() < 1e-6  # every Gaussian sits on a rendered point
    np.testing.assert_allclose(0.5 + C0 * g[:, 3:6], pix_rgb[idx], atol=1e-5)  # and has that pixel's colour
    assert np.all(g[:, 6] == SPEC.opacity_logit)
    np.testing.assert_array_equal(g[:, 10:14], np.broadcast_to([1.0, 0, 0, 0], (len(g), 4)))
    # isotropic log scale = log mean distance to the 3 nearest distinct Gaussians (brute force)
    uniq = np.unique(g[:, :3], axis=0)
    d = np.linalg.norm(uniq[:, None] - uniq[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    ref = dict(zip(map(tuple, uniq), np.log(np.maximum(np.sort(d, 1)[:, :3].mean(1), 1e-4))))
    want = np.array([ref[tuple(x)] for x in g[:, :3]])
    np.testing.assert_allclose(g[:, 7], want, atol=1e-5)
    assert np.all(g[:, 7:10] == g[:, 7:8])
    assert len(uniq) == len(g)  # plenty of pixels: drawn without replacement


def test_exactly_n_gaussians_when_fewer_pixels():
    spec = B.SceneSpec(num_views=2, height=8, width=8, num_gaussians=300)
    s = B.build_scene(1, spec)
    g = s["gaussians"]
    assert g.shape == (300, 14)
    n_valid = int(s["mask"].sum())
    assert n_valid < 300
    uniq = np.unique(g[:, :3], axis=0)
    assert len(uniq) == n_valid  # every valid pixel used, the rest are repeats


def test_walk_moves_forward_and_orbit_circles(scene):
    c2w = scene["c2w"].astype(np.float64)
    walk = np.flatnonzero(scene["trajectory"] == B.TRAJECTORY_KINDS.index("walk"))
    steps = np.diff(c2w[walk, :3, 3], axis=0)
    assert np.all(np.einsum("ni,ni->n", steps, c2w[walk[:-1], :3, 2]) > 0)  # moving along the view direction
    orbit = np.flatnonzero(scene["trajectory"] == B.TRAJECTORY_KINDS.index("orbit"))
    centres = c2w[orbit, :3, 3]
    lo, hi = scene["bounds"]
    assert np.all(centres > lo) and np.all(centres < hi)
    assert np.ptp(np.arctan2(centres[:, 1], centres[:, 0])) > 0.5  # goes around the centre


def test_single_trajectory_clips_without_textures():
    """single_trajectory: every view of a scene on one kind (drawn with trajectory_weights, here orbit or walk);
    textures=False: plain colours, so neighbouring pixels differ far less than in textured scenes."""
    spec = B.SceneSpec(num_views=6, height=16, width=16, num_gaussians=32, trajectory_weights=(1.0, 1.0, 0.0),
                       single_trajectory=True, textures=False)
    kinds, grad_plain, grad_tex = set(), [], []
    for seed in range(6):
        sc = B.build_scene(seed, spec)
        assert len(set(sc["trajectory"].tolist())) == 1
        kinds.add(int(sc["trajectory"][0]))
        tex = B.build_scene(seed, B.SceneSpec(**{**spec.to_json(), "textures": True}))
        for out, img in ((grad_plain, sc["images"]), (grad_tex, tex["images"])):
            out.append(np.abs(np.diff(img.astype(np.float64), axis=2)).mean())
    assert kinds == {B.TRAJECTORY_KINDS.index("orbit"), B.TRAJECTORY_KINDS.index("walk")}
    assert np.mean(grad_plain) < 0.6 * np.mean(grad_tex), (grad_plain, grad_tex)
    assert B.preset("clips")[1].single_trajectory and not B.preset("clips")[1].textures


def test_build_dataset_resumable_and_loadable(tmp_path):
    spec = B.SceneSpec(num_views=3, height=16, width=24, num_gaussians=64)
    idx = B.build_dataset(tmp_path, 2, spec, seed=3)
    assert idx["built_now"] == 2
    on_disk = json.loads((tmp_path / "index.json").read_text())
    assert on_disk["scenes"][1]["file"] == "scene_000001.npz" and B.SceneSpec.from_json(on_disk["spec"]) == spec
    ref = B.build_scene(B.scene_seed(3, 1), spec)
    got = B.load_scene(tmp_path / "scene_000001.npz")
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    mtime = (tmp_path / "scene_000000.npz").stat().st_mtime_ns
    idx = B.build_dataset(tmp_path, 3, spec, seed=3)  # resume and extend
    assert idx["built_now"] == 1 and (tmp_path / "scene_000002.npz").exists()
    assert (tmp_path / "scene_000000.npz").stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="seed"):
        B.build_dataset(tmp_path, 3, spec, seed=4)


def test_build_dataset_without_points_and_parallel(tmp_path):
    spec = B.SceneSpec(num_views=3, height=16, width=24, num_gaussians=64, store_points=False)
    B.build_dataset(tmp_path / "par", 2, spec, seed=5, num_workers=2)
    with np.load(tmp_path / "par" / "scene_000000.npz") as z:
        assert "points" not in z.files
    ref = B.build_scene(B.scene_seed(5, 0), spec)
    got = B.load_scene(tmp_path / "par" / "scene_000000.npz")
    for k in ref:
        if k == "points":
            np.testing.assert_allclose(got[k], ref[k], atol=1e-5)
        else:
            assert np.array_equal(got[k], ref[k]), k


def test_bad_spec_errors():
    with pytest.raises(ValueError, match="height"):
        B.SceneSpec(height=0)
    with pytest.raises(ValueError, match="trajectory_weights"):
        B.SceneSpec(trajectory_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="near"):
        B.SceneSpec(near=1.0, far=0.5)
    with pytest.raises(ValueError, match="preset"):
        B.preset("nope")
