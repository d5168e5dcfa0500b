"""Cameras on the real captures in ../shared/data (skipped when the folder is absent)."""
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.geometry import cameras as C
from scene3d.geometry import conventions as cv
from scene3d.geometry import rays as R
from tests.conftest import shared_data


def _data(shared_dir, name):
    return shared_data(shared_dir, name)


# ----------------------------------------------------------------------------------------------- fox (NeRF)


def test_fox_transforms_json(shared_dir, tmp_path):
    root = _data(shared_dir, "fox_nerf")
    fox = cv.read_transforms_json(root / "transforms.json")
    assert len(fox.cameras) == 50 and fox.num_skipped == 17
    assert all((root / p).is_file() for p in fox.file_paths)
    assert not any((root / p).exists() for p in fox.skipped)
    cams = fox.cameras
    assert (cams.height, cams.width) == (1920, 1080)
    np.testing.assert_allclose(cams.intrinsics[0], [1375.52 / 1080, 1374.49 / 1920, 554.558 / 1080, 965.268 / 1920])
    assert set(fox.distortion) == {"k1", "k2", "p1", "p2"}
    # All cameras face the fox: the point nearest to every optical axis is in front of every camera (positive
    # z-depth in our OpenCV frame; with the unconverted OpenGL matrices it would be behind) and inside the image.
    o, d = cams.c2w[:, :3, 3], cams.c2w[:, :3, 2]
    P = np.eye(3) - d[:, :, None] * d[:, None, :]
    x = np.linalg.solve(P.sum(0), np.einsum("nij,nj->i", P, o))
    uv, z = C.project(np.broadcast_to(x, (50, 1, 3)), cams.c2w, cams.intrinsics, 1920, 1080)
    assert np.all(z > 0) and np.all(C.in_image(uv, z, 1920, 1080))
    # round trip: ours -> transforms.json -> ours (write next to copies of the listed image names)
    (tmp_path / "images").mkdir()
    for p in fox.file_paths:
        (tmp_path / p).write_bytes(b"")
    cv.write_transforms_json(tmp_path / "transforms.json", cams, fox.file_paths, extra=fox.distortion)
    back = cv.read_transforms_json(tmp_path / "transforms.json")
    np.testing.assert_allclose(back.cameras.c2w, cams.c2w, atol=1e-12)
    np.testing.assert_allclose(back.cameras.intrinsics, cams.intrinsics, atol=1e-12)
    assert back.file_paths == fox.file_paths and back.distortion == fox.distortion


# ---------------------------------------------------------------------------------------------- fern (LLFF)


@pytest.fixture(scope="module")
def fern(shared_dir):
    root = _data(shared_dir, "llff_fern")
    cams, bounds = cv.read_llff(root, factor=8)
    ccams, images, points = cv.read_colmap_model(root / "sparse" / "0")
    return root, cams, bounds, ccams, images, points


def test_fern_colmap_model(fern):
    _, _, _, ccams, images, points = fern
    assert images is None  # this capture ships cameras.bin and points3D.bin only
    (cam,) = ccams.values()
    assert (cam.model, cam.width, cam.height) == ("SIMPLE_RADIAL", 4032, 3024)
    assert len(points) == 10091 and points.xyz.shape == (10091, 3)
    assert all(t.shape[1] == 2 and len(t) >= 2 for t in points.tracks)
    assert np.isfinite(points.xyz).all() and (points.error >= 0).all()


def test_fern_llff_matches_colmap(fern):
    """LLFF poses (converted to OpenCV) are in the COLMAP world frame: every COLMAP point lands inside each
    image whose track contains it, and LLFF's near/far bounds are exactly the 0.1 / 99.9 percentiles of those
    points' z-depths (how LLFF's imgs2poses computed them), so no similarity separates the two frames."""
    root, cams, bounds, ccams, _, points = fern
    (cam,) = ccams.values()
    np.testing.assert_allclose(cams.intrinsics, np.broadcast_to(cam.intrinsics(), (20, 4)), rtol=1e-9)
    from PIL import Image
    for factor in (8, 16):
        c, _ = cv.read_llff(root, factor=factor)
        first = sorted((root / f"images_{factor}").iterdir())[0]
        with Image.open(first) as im:
            assert im.size == (c.width, c.height)
    uv, z = C.project(points.xyz[None], cams.c2w, cams.intrinsics, cams.height, cams.width)
    image_ids = [t[:, 0] for t in points.tracks]
    for i in range(20):
        vis = np.array([np.any(ids == i + 1) for ids in image_ids])  # COLMAP image i+1 = i-th name in order
        assert vis.sum() > 1000
        assert C.in_image(uv[i, vis], z[i, vis], cams.height, cams.width).all()
        np.testing.assert_allclose(np.percentile(z[i, vis], [0.1, 99.9]), bounds[i], rtol=1e-9)


def test_fern_llff_colmap_round_trips(fern, tmp_path):
    _, cams, bounds, _, _, points = fern
    names = [f"image{i:03d}.png" for i in range(20)]
    ccams, cims = cv.cameras_to_colmap(cams, names)
    cv.write_colmap_model(tmp_path / "txt", ccams, cims, points, ext=".txt")
    c2, i2, p2 = cv.read_colmap_model(tmp_path / "txt")
    back, bnames, _ = cv.colmap_to_cameras(c2, i2)
    assert bnames == names
    np.testing.assert_allclose(back.c2w, cams.c2w, atol=1e-9)
    np.testing.assert_allclose(back.intrinsics, cams.intrinsics, atol=1e-12)
    np.testing.assert_array_equal(p2.xyz, points.xyz)
    cv.write_llff(tmp_path / "pb.npy", back, bounds, factor=8)
    np.testing.assert_allclose(np.load(tmp_path / "pb.npy"), np.load(fern[0] / "poses_bounds.npy"), atol=1e-9)


# -------------------------------------------------------------------------------------------- RealEstate10K


def test_re10k_files(shared_dir, tmp_path):
    files = sorted(_data(shared_dir, "re10k_poses").glob("[0-9a-f]*.txt"))
    assert len(files) == 10
    for f in files:
        clip = cv.read_re10k(f)
        assert clip.url.startswith("https://www.youtube.com/")
        assert clip.c2w.shape == (16, 4, 4) and clip.intrinsics.shape == (16, 4)
        assert np.all(np.diff(clip.timestamps) > 0)
        Rm = clip.c2w[:, :3, :3]
        np.testing.assert_allclose(Rm @ Rm.transpose(0, 2, 1), np.broadcast_to(np.eye(3), Rm.shape), atol=1e-6)
        np.testing.assert_allclose(clip.intrinsics[:, 2:], 0.5)
        # consecutive frames of a video: small camera motion
        rel = C.relative_poses(clip.c2w, 0)
        assert np.linalg.norm(np.diff(rel[:, :3, 3], axis=0), axis=-1).max() < 0.5
        cv.write_re10k(tmp_path / f.name, clip)
        assert (tmp_path / f.name).read_text().split() == f.read_text().split()  # text round trip, digit for digit


# ------------------------------------------------------------------------------------------------- 3DMatch


def _rgbd(root, frame):
    from PIL import Image
    depth = np.asarray(Image.open(root / "seq-01" / f"frame-{frame}.depth.png"), np.float64) / 1000.0
    return depth, np.loadtxt(root / "seq-01" / f"frame-{frame}.pose.txt")


@pytest.mark.parametrize("other", ["000001", "000002"])
def test_3dmatch_depth_fusion(shared_dir, other):
    """Depth of two frames unprojected with their poses lands on the same surfaces (NN median < 2.5 cm);
    with the second pose perturbed by 5 degrees it does not."""
    from scipy.spatial import cKDTree
    from scipy.spatial.transform import Rotation
    root = _data(shared_dir, "3dmatch_rgbd")
    K = np.loadtxt(root / "camera-intrinsics.txt")
    intr = C.normalise_intrinsics(K, 480, 640)
    np.testing.assert_allclose(intr, [570.342205 / 640, 570.342205 / 480, 0.5, 0.5], rtol=1e-6)
    da, Ta = _rgbd(root, "000000")
    db, Tb = _rgbd(root, other)
    pa = R.depth_to_points(da, Ta, intr)[::4, ::4][da[::4, ::4] > 0]
    pb = R.depth_to_points(db, Tb, intr)[::2, ::2][db[::2, ::2] > 0]
    uv, z = C.project(pa[None], Tb[None], intr[None], 480, 640)
    overlap = C.in_image(uv[0], z[0], 480, 640)
    assert overlap.mean() > 0.9
    dist, _ = cKDTree(pb).query(pa[overlap])
    assert np.median(dist) < 0.025
    Tbad = Tb.copy()
    Tbad[:3, :3] = Rotation.from_euler("y", 5, degrees=True).as_matrix() @ Tb[:3, :3]
    pbad = R.depth_to_points(db, Tbad, intr)[::2, ::2][db[::2, ::2] > 0]
    assert np.median(cKDTree(pbad).query(pa[overlap])[0]) > 3 * np.median(dist)
    # the jax path gives the same point map
    pj = np.asarray(R.depth_to_points(jnp.asarray(db, jnp.float32), jnp.asarray(Tb, jnp.float32),
                                      jnp.asarray(intr, jnp.float32)))
    np.testing.assert_allclose(pj, R.depth_to_points(db, Tb, intr), atol=1e-4)
