"""Camera file formats: axis conventions on hand-built cases, write -> read round trips, malformed files."""
import json
import struct

import numpy as np
import pytest

from scene3d.geometry import cameras as C
from scene3d.geometry import conventions as cv
from tests.geometry._helpers import random_cameras

H, W = 24, 32


def _cams(n=4, seed=0, shared=False):
    c2w, intr = random_cameras(n, seed=seed, height=H, width=W)
    if shared:
        intr = np.broadcast_to(intr[0], intr.shape).copy()
    return C.Cameras(c2w, intr, H, W)


def _assert_same(a, b, atol=1e-12):
    np.testing.assert_allclose(np.asarray(a.c2w), np.asarray(b.c2w), atol=atol)
    np.testing.assert_allclose(np.asarray(a.intrinsics), np.asarray(b.intrinsics), atol=atol)
    assert (a.height, a.width) == (b.height, b.width)


def test_axis_conventions_by_hand():
    # An OpenGL camera at the origin looking down -z: the world point (0, 0, -2) is 2 in front of it.
    gl = np.eye(4)
    uv, z = C.project(np.array([[[0.0, 0.0, -2.0], [0.0, 1.0, -2.0]]]), cv.opengl_to_opencv(gl)[None],
                      np.array([[1.0, 1.0, 0.5, 0.5]]), H, W)
    assert z[0, 0] == pytest.approx(2.0)
    assert uv[0, 1, 1] < H / 2  # OpenGL +y is up, so it lands above the centre
    np.testing.assert_allclose(cv.opengl_to_opencv(cv.opengl_to_opencv(gl)), gl)
    # LLFF columns are [down, right, back]: the identity OpenCV camera is [[0,1,0],[1,0,0],[0,0,-1]].
    llff = np.array([[0, 1, 0, 5.0], [1, 0, 0, 6.0], [0, 0, -1, 7.0]])
    np.testing.assert_allclose(cv.llff_to_opencv(llff), C.make_c2w(np.eye(3), np.array([5.0, 6.0, 7.0])))
    c2w = _cams().c2w
    np.testing.assert_allclose(cv.llff_to_opencv(cv.opencv_to_llff(c2w)), c2w, atol=1e-15)


@pytest.mark.parametrize("shared", [True, False])
def test_transforms_json_round_trip(tmp_path, shared):
    cams = _cams(shared=shared)
    names = [f"images/{i:03d}.png" for i in range(len(cams))]
    (tmp_path / "images").mkdir()
    for n in names[:-1]:  # the last image is absent: it must be skipped
        (tmp_path / n).write_bytes(b"")
    cv.write_transforms_json(tmp_path / "transforms.json", cams, names, extra={"k1": 0.1, "aabb_scale": 4})
    out = cv.read_transforms_json(tmp_path / "transforms.json")
    assert out.file_paths == names[:-1] and out.skipped == names[-1:] and out.num_skipped == 1
    _assert_same(out.cameras, cams[:3])
    assert out.distortion == {"k1": 0.1} and out.meta["aabb_scale"] == 4
    raw = json.loads((tmp_path / "transforms.json").read_text())
    np.testing.assert_allclose(np.asarray(raw["frames"][0]["transform_matrix"]) @ np.diag([1, -1, -1, 1.0]),
                               cams.c2w[0])
    everything = cv.read_transforms_json(tmp_path / "transforms.json", check_files=False)
    assert len(everything.cameras) == 4


def test_transforms_json_camera_angle_and_image_size(tmp_path):
    from PIL import Image
    Image.new("RGB", (W, H)).save(tmp_path / "r_0.png")
    meta = {"camera_angle_x": 0.69, "frames": [{"file_path": "./r_0", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "t.json").write_text(json.dumps(meta))
    out = cv.read_transforms_json(tmp_path / "t.json")
    assert (out.cameras.height, out.cameras.width) == (H, W)
    fx = 0.5 * W / np.tan(0.69 / 2)
    np.testing.assert_allclose(out.cameras.intrinsics[0], [fx / W, fx / H, 0.5, 0.5])


def test_transforms_json_malformed(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"fl_x": 10, "w": 4, "h": 4, "frames": [{"file_path": "a.png"}]}))
    with pytest.raises(ValueError, match=r"t\.json: frames\[0\] \(a\.png\) has no 'transform_matrix'"):
        cv.read_transforms_json(p, check_files=False)
    p.write_text(json.dumps({"fl_x": 10, "w": 4, "h": 4,
                             "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}))
    with pytest.raises(ValueError, match=r"transform_matrix has shape \(2, 2\), expected \(4, 4\)"):
        cv.read_transforms_json(p, check_files=False)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cv.read_transforms_json(p)


def test_llff_round_trip(tmp_path):
    c2w, _ = random_cameras(5, seed=1)
    f = 0.9 * W  # one focal length, centred principal point
    cams = C.Cameras(c2w, np.array([f / W, f / H, 0.5, 0.5]), H, W)
    bounds = np.random.default_rng(0).uniform(1, 10, (5, 2))
    cv.write_llff(tmp_path / "poses_bounds.npy", cams, bounds, factor=4)
    arr = np.load(tmp_path / "poses_bounds.npy")
    np.testing.assert_allclose(arr[:, 4:15:5], [[H * 4, W * 4, f * 4]] * 5)  # hwf at full resolution
    back, b2 = cv.read_llff(tmp_path, factor=4)
    _assert_same(back, cams)
    np.testing.assert_allclose(b2, bounds)
    full, _ = cv.read_llff(tmp_path)
    assert (full.height, full.width) == (4 * H, 4 * W)
    np.testing.assert_allclose(full.intrinsics, cams.intrinsics)  # normalised intrinsics ignore resizing
    with pytest.raises(ValueError, match="centred principal point"):
        cv.write_llff(tmp_path / "x.npy", _cams(5), bounds)
    np.save(tmp_path / "bad.npy", np.zeros((5, 15)))
    with pytest.raises(ValueError, match=r"bad\.npy: expected an \(N, 17\) array.*\(5, 15\)"):
        cv.read_llff(tmp_path / "bad.npy")


MODELS = {"SIMPLE_PINHOLE": [20.0, 16.0, 12.0], "PINHOLE": [20.0, 22.0, 16.5, 12.5],
          "SIMPLE_RADIAL": [20.0, 16.0, 12.0, 0.01], "RADIAL": [20.0, 16.0, 12.0, 0.01, -0.002],
          "OPENCV": [20.0, 22.0, 16.5, 12.5, 0.01, -0.02, 0.001, 0.002]}


def _colmap_model():
    cameras = {i + 1: cv.ColmapCamera(i + 1, m, W, H, np.array(p)) for i, (m, p) in enumerate(MODELS.items())}
    rng = np.random.default_rng(0)
    images = {}
    for i in range(5):
        q = rng.standard_normal(4)
        q = q / np.linalg.norm(q) * np.sign(q[0])
        images[10 + i] = cv.ColmapImage(10 + i, q, rng.standard_normal(3), i + 1, f"img {i}.jpg",
                                        rng.uniform(0, 30, (i, 2)), rng.integers(-1, 100, i))
    tracks = [rng.integers(0, 50, (k, 2)) for k in (1, 3, 0, 2)]
    pts = cv.ColmapPoints(np.array([3, 7, 8, 100]), rng.standard_normal((4, 3)),
                          rng.integers(0, 256, (4, 3)).astype(np.uint8), rng.uniform(0, 1, 4), tracks)
    return cameras, images, pts


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_colmap_round_trip(tmp_path, ext):
    cameras, images, pts = _colmap_model()
    cv.write_colmap_model(tmp_path, cameras, images, pts, ext=ext)
    c2, i2, p2 = cv.read_colmap_model(tmp_path)
    assert c2.keys() == cameras.keys() and i2.keys() == images.keys()
    for k, c in cameras.items():
        assert (c2[k].model, c2[k].width, c2[k].height) == (c.model, c.width, c.height)
        np.testing.assert_array_equal(c2[k].params, c.params)
    for k, im in images.items():
        assert (i2[k].name, i2[k].camera_id) == (im.name, im.camera_id)
        np.testing.assert_array_equal(i2[k].qvec, im.qvec)
        np.testing.assert_array_equal(i2[k].tvec, im.tvec)
        np.testing.assert_array_equal(i2[k].xys, im.xys.reshape(-1, 2))
        np.testing.assert_array_equal(i2[k].point3d_ids, im.point3d_ids)
    np.testing.assert_array_equal(p2.ids, pts.ids)
    np.testing.assert_array_equal(p2.xyz, pts.xyz)
    np.testing.assert_array_equal(p2.rgb, pts.rgb)
    np.testing.assert_array_equal(p2.error, pts.error)
    for a, b in zip(p2.tracks, pts.tracks):
        np.testing.assert_array_equal(a, b.reshape(-1, 2))


def test_colmap_text_by_hand(tmp_path):
    """A hand-written model in COLMAP's documented text layout."""
    (tmp_path / "cameras.txt").write_text(
        "# Camera list\n1 SIMPLE_RADIAL 3072 2304 2559.81 1536 1152 -0.0204\n2 PINHOLE 640 480 500 510 320 240\n")
    (tmp_path / "images.txt").write_text(
        "# Image list\n1 0.7071067811865476 0 0.7071067811865476 0 1 2 3 1 a.jpg\n"
        "10.5 20.5 -1 30 40 7\n2 1 0 0 0 0 0 0 2 b.jpg\n\n")
    (tmp_path / "points3D.txt").write_text("# pts\n7 1 2 3 255 128 0 0.5 1 1 2 0\n")
    cams, ims, pts = cv.read_colmap_model(tmp_path)
    assert cams[1].model == "SIMPLE_RADIAL"
    np.testing.assert_allclose(cams[1].intrinsics(), [2559.81 / 3072, 2559.81 / 2304, 0.5, 0.5])
    np.testing.assert_allclose(cams[1].distortion(), [-0.0204])
    np.testing.assert_allclose(ims[1].xys, [[10.5, 20.5], [30, 40]])
    np.testing.assert_array_equal(ims[1].point3d_ids, [-1, 7])
    assert len(ims[2].xys) == 0
    # qvec = 90 degrees about y: world x maps to camera -z; camera centre = -R^T t
    R = ims[1].w2c[:3, :3]
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(ims[1].c2w[:3, 3], -R.T @ [1, 2, 3], atol=1e-12)
    np.testing.assert_array_equal(pts.tracks[0], [[1, 1], [2, 0]])
    np.testing.assert_array_equal(pts.rgb[0], [255, 128, 0])


def test_colmap_cameras_conversion_round_trip():
    cams = _cams(6, seed=3)
    names = [f"{i}.png" for i in range(6)][::-1]
    ccams, cims = cv.cameras_to_colmap(cams, names)
    back, bnames, dist = cv.colmap_to_cameras(ccams, cims)
    order = np.argsort(names)  # colmap_to_cameras sorts by name
    assert bnames == sorted(names)
    _assert_same(back, cams[order], atol=1e-12)
    assert all(len(d) == 0 for d in dist)
    shared, _ = cv.cameras_to_colmap(_cams(3, shared=True), ["a", "b", "c"])
    assert list(shared) == [1]


def test_colmap_malformed(tmp_path):
    cameras, images, pts = _colmap_model()
    cv.write_colmap_model(tmp_path, cameras, images, pts)
    for stem in ("cameras", "images", "points3D"):
        p = tmp_path / f"{stem}.bin"
        data = p.read_bytes()
        p.write_bytes(data[:-5])
        with pytest.raises(ValueError, match=rf"{stem}\.bin: truncated file: needed \d+ bytes for .*"):
            getattr(cv, f"read_colmap_{stem.lower()}_bin")(p)
    (tmp_path / "bad.bin").write_bytes(struct.pack("<QiiQQ", 1, 1, 42, 4, 4))
    with pytest.raises(ValueError, match="unknown camera model id 42"):
        cv.read_colmap_cameras_bin(tmp_path / "bad.bin")
    (tmp_path / "cameras.txt").write_text("# c\n1 PINHOLE 640 480 500 500 320\n")
    with pytest.raises(ValueError, match=r"cameras\.txt: line 2: PINHOLE expects .* \(8 fields\), got 7"):
        cv.read_colmap_cameras_txt(tmp_path / "cameras.txt")
    (tmp_path / "cameras.txt").write_text("1 FISH 640 480 500\n")
    with pytest.raises(ValueError, match="unknown camera model 'FISH'"):
        cv.read_colmap_cameras_txt(tmp_path / "cameras.txt")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.jpg\n1 2\n")
    with pytest.raises(ValueError, match=r"images\.txt: line 2: POINTS2D must be triples"):
        cv.read_colmap_images_txt(tmp_path / "images.txt")
    (tmp_path / "points3D.txt").write_text("1 0 0 0 1 2 3 0.5 4\n")
    with pytest.raises(ValueError, match=r"points3D\.txt: line 1: expected POINT3D_ID"):
        cv.read_colmap_points3d_txt(tmp_path / "points3D.txt")


def test_re10k_round_trip_and_errors(tmp_path):
    cams = _cams(3, seed=4)
    clip = cv.RE10KClip("https://www.youtube.com/watch?v=x", np.array([0, 33366, 66733]), cams.intrinsics,
                        cams.c2w)
    cv.write_re10k(tmp_path / "c.txt", clip, decimals=17)
    back = cv.read_re10k(tmp_path / "c.txt")
    assert back.url == clip.url
    np.testing.assert_array_equal(back.timestamps, clip.timestamps)
    np.testing.assert_allclose(back.c2w, clip.c2w, atol=1e-12)
    np.testing.assert_allclose(back.intrinsics, clip.intrinsics, atol=1e-15)
    # the stored matrix is world-to-camera
    row = np.array((tmp_path / "c.txt").read_text().splitlines()[1].split()[7:], float).reshape(3, 4)
    np.testing.assert_allclose(row, np.linalg.inv(cams.c2w[0])[:3], atol=1e-12)
    lines = (tmp_path / "c.txt").read_text().splitlines()
    (tmp_path / "bad.txt").write_text("\n".join(lines[:2] + [" ".join(lines[2].split()[:-1])]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 3: expected 19 values .* got 18"):
        cv.read_re10k(tmp_path / "bad.txt")


def test_3dgs_cameras_round_trip(tmp_path):
    c2w, intr = random_cameras(3, seed=5)
    intr[:, 2:] = 0.5
    cams = C.Cameras(c2w, intr, H, W)
    cv.write_3dgs_cameras(tmp_path / "cameras.json", cams, ["a", "b", "c"], ids=[4, 5, 6])
    entries = json.loads((tmp_path / "cameras.json").read_text())
    np.testing.assert_allclose(entries[1]["position"], c2w[1, :3, 3])  # camera centre
    assert entries[1]["fx"] == pytest.approx(intr[1, 0] * W)
    back, names, ids = cv.read_3dgs_cameras(tmp_path / "cameras.json")
    _assert_same(back, cams)
    assert names == ["a", "b", "c"] and ids == [4, 5, 6]
    del entries[2]["rotation"]
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"bad\.json: entry 2 has no 'rotation'"):
        cv.read_3dgs_cameras(tmp_path / "bad.json")
    entries[2]["rotation"] = [[1, 0], [0, 1]]
    (tmp_path / "bad.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"'rotation' has shape \(2, 2\), expected \(3, 3\)"):
        cv.read_3dgs_cameras(tmp_path / "bad.json")
