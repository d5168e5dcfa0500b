"""RGB-D sequence readers (`scene3d.data.rgbd`) on a synthetic room written in each layout (Replica / NICE-SLAM, TUM
RGB-D, ScanNet exported frames, 3DMatch) and on the real 3DMatch frames in ../shared/data.

The reference is the room itself: an axis-aligned box ray-cast here (numpy, independent of the library) from known
cameras into colour, 16-bit depth and the id of the wall each pixel sees. Read back, every depth pixel must land on
the box's surface, and depth re-projected from frame i into frame j must match frame j's depth within the file's
quantisation (frame j's inverse depth interpolated bilinearly among pixels on the same wall, which is exact for a
plane). A wrong pose convention, depth scale, intrinsic, frame pairing or timestamp association breaks both.
"""
import json
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from scene3d.data import captures as CAP
from scene3d.data import inspect as INS
from scene3d.data import multiview as MV
from scene3d.data import rgbd as R
from scene3d.geometry.cameras import look_at
from tests.conftest import shared_data

LO, HI = np.array([-2.0, -1.5, -1.0]), np.array([2.5, 1.8, 1.4])  # the room (metres)
WALL_RGB = np.array([[200, 60, 60], [60, 180, 60], [60, 80, 200], [210, 190, 60], [150, 150, 150], [160, 80, 190]])
H, W = 48, 64
K = (40.0, 41.0, 31.7, 24.3)  # fx fy cx cy in pixels for H x W
EYES = [(0.2, 0.1, 0.2), (0.5, -0.2, 0.3), (-0.3, 0.3, 0.0), (0.0, -0.4, 0.4), (0.6, 0.4, -0.1)]
TARGETS = [(2.5, 0.6, 0.0), (1.5, -1.5, 0.2), (-2.0, 1.0, -0.3), (2.0, 1.8, 0.5), (-1.0, -1.5, 0.1)]


def render(c2w, k, h, w):
    """Ray-cast the room from an OpenCV c2w with pixel intrinsics k: (z-depth (h, w), wall id (h, w), rgb uint8)."""
    v, u = np.mgrid[0:h, 0:w] + 0.5
    d = np.stack([(u - k[2]) / k[0], (v - k[3]) / k[1], np.ones_like(u)], -1) @ c2w[:3, :3].T  # z_cam = 1
    o = c2w[:3, 3]
    with np.errstate(divide="ignore"):
        t = np.where(d > 0, (HI - o) / d, np.where(d < 0, (LO - o) / d, np.inf))  # (h, w, 3) exit per axis
    axis = t.argmin(-1)
    z = t.min(-1)  # directions have camera z = 1, so the ray parameter is the z-depth
    wall = 2 * axis + (np.take_along_axis(d, axis[..., None], -1)[..., 0] > 0)
    p = o + z[..., None] * d
    checker = (np.floor(2 * p).sum(-1) % 2)[..., None]
    rgb = np.rint(WALL_RGB[wall] * (0.55 + 0.45 * checker)).astype(np.uint8)
    return z, wall, rgb


def poses():
    return [look_at(np.array(e), np.array(t), np.array([0.0, 0.0, 1.0])) for e, t in zip(EYES, TARGETS)]


def save_depth(path, z, scale):
    Image.fromarray(np.clip(np.rint(z * scale), 0, 65535).astype(np.uint16)).save(path)


def matrix_text(m, fmt="%.9f"):
    return "\n".join(" ".join(fmt % x for x in row) for row in np.asarray(m)) + "\n"


# ------------------------------------------------------------------------------------------- writers per layout


def write_replica(root, c2ws):
    (root / "results").mkdir(parents=True)
    for i, m in enumerate(c2ws):
        z, _, rgb = render(m, K, H, W)
        Image.fromarray(rgb).save(root / "results" / f"frame{i:06d}.jpg", quality=95)
        save_depth(root / "results" / f"depth{i:06d}.png", z, 6553.5)
    (root / "traj.txt").write_text("".join(" ".join("%.18e" % x for x in m.reshape(-1)) + "\n" for m in c2ws))
    cam = dict(w=W, h=H, fx=K[0], fy=K[1], cx=K[2], cy=K[3], scale=6553.5)
    (root.parent / "cam_params.json").write_text(json.dumps({"camera": cam}))  # NICE-SLAM: next to the scenes


def tum_pose(t, t0):
    """A fast synthetic trajectory (3 rad/s yaw): a pose 10 ms off is several pixels off."""
    a = 3.0 * (t - t0)
    eye = np.array([0.2 + 0.3 * np.sin(a), 0.1 + 0.2 * np.cos(a), 0.2])
    return look_at(eye, eye + np.array([np.cos(a), np.sin(a), 0.1]), np.array([0.0, 0.0, 1.0]))


def write_tum(root, n=5):
    """Colour at ~30 Hz, depth 3-6 ms later, plus a colour frame with no depth partner and a depth frame with no colour
    one; ground truth at 100 Hz (gt sample k at t0 + 0.01 k + 0.0007). The frames are rendered from the pose of the gt
    sample nearest their colour timestamp, as the reader must pair them. Returns the expected colour timestamps."""
    from scipy.spatial.transform import Rotation
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    t0 = 1305031102.0
    t_gt = t0 + 0.01 * np.arange(-10, 60) + 0.0007
    rgb_lines, depth_lines, used = ["# color images", "# timestamp filename"], ["# depth maps"], []
    k = np.array(R.TUM_INTRINSICS["freiburg1"][0]) * [W / 640, H / 480, W / 640, H / 480]
    for i in range(n):
        t = round(t0 + 0.0333 * i + 0.0011 * (i % 3), 6)
        m = tum_pose(t_gt[np.argmin(np.abs(t_gt - t))], t0)
        z, _, rgb = render(m, k, H, W)
        Image.fromarray(rgb).save(root / "rgb" / f"{t:.6f}.png")
        rgb_lines.append(f"{t:.6f} rgb/{t:.6f}.png")
        td = round(t + 0.003 + 0.001 * (i % 4), 6)
        save_depth(root / "depth" / f"{td:.6f}.png", z, 5000.0)
        depth_lines.append(f"{td:.6f} depth/{td:.6f}.png")
        used.append(int(round(t * 1e6)))
    t_lonely = round(t0 + 0.0333 * n + 0.05, 6)  # colour without depth within 0.02 s
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "rgb" / f"{t_lonely:.6f}.png")
    rgb_lines.append(f"{t_lonely:.6f} rgb/{t_lonely:.6f}.png")
    t_extra = round(t0 - 0.08, 6)  # depth without colour
    save_depth(root / "depth" / f"{t_extra:.6f}.png", np.ones((H, W)), 5000.0)
    depth_lines.insert(1, f"{t_extra:.6f} depth/{t_extra:.6f}.png")
    gt = ["# ground truth trajectory", "# timestamp tx ty tz qx qy qz qw"]
    for t in t_gt:
        m = tum_pose(t, t0)
        q = Rotation.from_matrix(m[:3, :3]).as_quat()  # x y z w
        gt.append(f"{t:.4f} " + " ".join(f"{x:.6f}" for x in (*m[:3, 3], *q)))
    (root / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (root / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (root / "groundtruth.txt").write_text("\n".join(gt) + "\n")
    return np.array(used, np.int64)


KC, HC, WC = (62.0, 61.0, 49.7, 36.2), 72, 100  # ScanNet-like colour camera: larger, another aspect and intrinsics


def write_scannet(root, c2ws):
    for d in ("color", "depth", "pose", "intrinsic"):
        (root / d).mkdir(parents=True)
    for i, m in enumerate(c2ws):
        Image.fromarray(render(m, KC, HC, WC)[2]).save(root / "color" / f"{i}.jpg", quality=95)
        save_depth(root / "depth" / f"{i}.png", render(m, K, H, W)[0], 1000.0)
        (root / "pose" / f"{i}.txt").write_text(matrix_text(m))
    i = len(c2ws)  # a frame where tracking failed
    Image.fromarray(np.zeros((HC, WC, 3), np.uint8)).save(root / "color" / f"{i}.jpg")
    save_depth(root / "depth" / f"{i}.png", np.ones((H, W)), 1000.0)
    (root / "pose" / f"{i}.txt").write_text(("-inf " * 4 + "\n") * 4)
    for name, k in (("intrinsic_color.txt", KC), ("intrinsic_depth.txt", K)):
        (root / "intrinsic" / name).write_text(matrix_text([[k[0], 0, k[2], 0], [0, k[1], k[3], 0], [0, 0, 1, 0],
                                                            [0, 0, 0, 1]], "%f"))


def write_3dmatch(root, c2ws):
    (root / "seq-01").mkdir(parents=True)
    (root / "camera-intrinsics.txt").write_text(matrix_text([[K[0], 0, K[2]], [0, K[1], K[3]], [0, 0, 1]], "%.8e"))
    for i, m in enumerate(c2ws):
        z, _, rgb = render(m, K, H, W)
        Image.fromarray(rgb).save(root / "seq-01" / f"frame-{i:06d}.color.png")
        save_depth(root / "seq-01" / f"frame-{i:06d}.depth.png", z, 1000.0)
        (root / "seq-01" / f"frame-{i:06d}.pose.txt").write_text(matrix_text(m, "%.8e"))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{layout: sequence folder} of the synthetic room, written once."""
    base = tmp_path_factory.mktemp("rgbd")
    c2ws = poses()
    out = {"replica": base / "Replica" / "room0", "tum": base / "rgbd_dataset_freiburg1_synth",
           "scannet": base / "scene0000_00", "3dmatch": base / "synth-room"}
    write_replica(out["replica"], c2ws)
    out["tum_timestamps"] = write_tum(out["tum"])
    write_scannet(out["scannet"], c2ws)
    write_3dmatch(out["3dmatch"], c2ws)
    return out


# ------------------------------------------------------------------------------------------- geometry checks


def back_project(depth, k):
    """(h, w) z-depth, pixel k -> (h, w, 3) camera-frame points."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w] + 0.5
    return np.stack([(u - k[2]) / k[0] * depth, (v - k[3]) / k[1] * depth, depth], -1)


def pixel_k(intr, h, w):
    return np.asarray(intr, np.float64) * [w, h, w, h]


def stored_depth_along_rays(d, intr, raw, k):
    """For each valid pixel of depth `d` (camera `intr`, normalised): whether it equals the stored depth `raw`
    (pixel intrinsics k) of the pixel its ray meets. A ray through a pixel corner may be given either neighbour."""
    ok = d > 0
    p = back_project(d, pixel_k(intr, *d.shape))[ok]
    u, v = k[0] * p[:, 0] / p[:, 2] + k[2], k[1] * p[:, 1] / p[:, 2] + k[3]
    h, w = raw.shape
    hit = np.zeros(len(p), bool)
    for du in (-1e-4, 1e-4):
        for dv in (-1e-4, 1e-4):
            r, c = np.clip(np.floor(v + dv).astype(int), 0, h - 1), np.clip(np.floor(u + du).astype(int), 0, w - 1)
            hit |= raw[r, c] == d[ok]
    return hit


def surface_distance(p):
    """Distance of world points (..., 3) inside the room to its nearest wall."""
    return np.minimum(np.abs(p - LO), np.abs(p - HI)).min(-1)


def wall_of(p, tol):
    """Wall id (2 axis + (on the high side)) of surface points (P, 3)."""
    dl, dh = np.abs(p - LO), np.abs(p - HI)
    axis = np.minimum(dl, dh).argmin(-1)
    return 2 * axis + (np.take_along_axis(dh, axis[:, None], 1)[:, 0] < tol)


def reprojection_errors(di, dj, ci, cj, ki, kj, wall_j):
    """|z_j(X) - frame j's depth at X| for the points X of frame i's depth that land in frame j where the 2x2
    neighbourhood of pixels round them sees X's wall (inverse depth is affine in the pixel on a plane: bilinear
    interpolation is exact there). -> errors (P,)."""
    ok = di > 0
    X = back_project(di, ki)[ok] @ ci[:3, :3].T + ci[:3, 3]
    wall = wall_of(X, 1e-2)
    xc = (X - cj[:3, 3]) @ cj[:3, :3]
    z = xc[:, 2]
    u, v = kj[0] * xc[:, 0] / z + kj[2] - 0.5, kj[1] * xc[:, 1] / z + kj[3] - 0.5  # pixel-centre grid coordinates
    h, w = dj.shape
    inside = (z > 0) & (u >= 0) & (u < w - 1) & (v >= 0) & (v < h - 1)
    u, v, z, wall = u[inside], v[inside], z[inside], wall[inside]
    i0, j0 = np.floor(v).astype(int), np.floor(u).astype(int)
    a, b = v - i0, u - j0
    nb = [(i0, j0), (i0, j0 + 1), (i0 + 1, j0), (i0 + 1, j0 + 1)]
    same = np.all([(wall_j[r, c] == wall) & (dj[r, c] > 0) for r, c in nb], 0)
    inv = [1.0 / np.where(dj[r, c] > 0, dj[r, c], 1.0) for r, c in nb]
    interp = (1 - a) * ((1 - b) * inv[0] + b * inv[1]) + a * ((1 - b) * inv[2] + b * inv[3])
    return np.abs(1.0 / interp[same] - z[same])


STEP = {"replica": 1 / 6553.5, "tum": 1 / 5000, "scannet": 1e-3, "3dmatch": 1e-3}  # depth quantisation (m)


@pytest.mark.parametrize("layout", R.LAYOUTS)
def test_depth_lands_on_the_room_and_reprojects(layouts, layout):
    cap = CAP.read_capture(layouts[layout])  # auto-detected through the capture dispatcher
    assert isinstance(cap, R.RGBDCapture) and cap.layout == layout and R.detect_layout(layouts[layout]) == layout
    assert len(cap) == 5
    step = STEP[layout]
    # ScanNet's depth is resampled (nearest) into another camera: its values belong to neighbouring rays, a depth
    # pixel's footprint off the surface (exact alignment: test_scannet_skips_invalid_pose_and_aligns_depth)
    tol, cover = (0.05, 0.95) if layout == "scannet" else (step + 1e-4, 0.99)
    # the scene record: colour frames as stored plus metric depth in the colour camera
    rec = cap.scene_record()
    hc, wc = (HC, WC) if layout == "scannet" else (H, W)
    assert rec["depth"].shape == (5, hc, wc) and rec["depth"].dtype == np.float32 and len(rec["images"]) == 5
    assert MV.decode_image(rec["images"][0]).shape == (hc, wc, 3)
    for i in range(5):  # every depth pixel of the record is on a wall
        p = back_project(rec["depth"][i], pixel_k(rec["intrinsics"][i], hc, wc)) @ rec["c2w"][i, :3, :3].T.astype(
            np.float64) + rec["c2w"][i, :3, 3]
        dist = surface_distance(p[rec["depth"][i] > 0])
        assert (rec["depth"][i] > 0).mean() > cover and dist.max() < tol, (i, dist.max())
    # depth of frame i re-projected into frame j (depth files as stored, each with its camera)
    dcams = cap.depth_cameras()
    raw = cap.load_depth(aligned=False)
    assert raw.shape == (5, H, W)
    ks = [pixel_k(k, H, W) for k in dcams.intrinsics]
    c2w = np.asarray(dcams.c2w, np.float64)
    walls = [render(c2w[j], ks[j], H, W)[1] for j in range(5)]
    checked = 0
    for i in range(5):
        for j in range(5):
            if i != j:
                err = reprojection_errors(raw[i], raw[j], c2w[i], c2w[j], ks[i], ks[j], walls[j])
                checked += len(err)
                assert len(err) == 0 or err.max() < 2 * step + 1e-5, (i, j, err.max())
    assert checked > 2000
    # the multi-view pipeline takes the record: point maps back in the world are on the walls
    ex = MV.make_views(rec, [0, 1], [3], MV.ViewConfig(num_context=2, num_target=1, relative_poses=True))
    pts = ex["target"]["points"][0][ex["target"]["mask"][0]].astype(np.float64) / ex["scale"]
    world = pts @ ex["ref_c2w"][:3, :3].T.astype(np.float64) + ex["ref_c2w"][:3, 3]
    assert surface_distance(world).max() < tol + 1e-3  # float32 relative frames


@pytest.mark.parametrize("layout", ["replica", "scannet"])
def test_resized_record_depth_is_the_stored_depth_along_each_ray(layouts, layout):
    """With image_size the depth follows the colour frames' resize + centre crop: each output pixel's depth is the
    stored depth of the source pixel its ray meets (checked by projecting into the depth camera)."""
    cap = CAP.read_capture(layouts[layout], stride=2)
    assert len(cap) == 3
    size = (30, 36)
    rec = cap.scene_record(image_size=size)
    assert rec["images"].shape == (3,) and MV.decode_image(rec["images"][0]).shape == (30, 36, 3)
    raw = cap.load_depth(aligned=False)
    kd = cap.depth_cameras().intrinsics
    for i in range(3):
        assert (rec["depth"][i] > 0).mean() > 0.9
        assert stored_depth_along_rays(rec["depth"][i], rec["intrinsics"][i], raw[i], pixel_k(kd[i], H, W)).all()


def test_tum_association_drops_unpaired_frames(layouts, caplog):
    with caplog.at_level(logging.INFO, logger="scene3d.data.rgbd"):
        cap = R.read_tum(layouts["tum"])
    np.testing.assert_array_equal(cap.timestamps, layouts["tum_timestamps"])  # the lonely colour frame is gone
    assert "1 of 6 colour frames have no depth frame" in caplog.text
    assert cap.intrinsics_source == "TUM freiburg1" and cap.distortion["k1"] == pytest.approx(0.2624)
    np.testing.assert_allclose(cap.cameras.intrinsics[0], np.array(R.TUM_INTRINSICS["freiburg1"][0]) / [640, 480,
                                                                                                     640, 480])
    assert all(pathlib.Path(f).stem == f"{t / 1e6:.6f}" for f, t in zip(cap.frames, cap.timestamps))
    # a max difference below the 3-6 ms colour-depth offsets pairs nothing
    with pytest.raises(ValueError, match="no colour frame has both"):
        R.read_tum(layouts["tum"], max_difference=0.002)


def _associate_reference(first, second, max_difference, offset=0.0):
    """The TUM tools' associate.py semantics, written out as all pairs (quadratic)."""
    cand = sorted((abs(a - (b + offset)), i, j) for i, a in enumerate(first) for j, b in enumerate(second)
                  if abs(a - (b + offset)) < max_difference)
    fa, fb, out = set(range(len(first))), set(range(len(second))), []
    for _, i, j in cand:
        if i in fa and j in fb:
            fa.remove(i)
            fb.remove(j)
            out.append((i, j))
    return sorted(out)


def test_associate_matches_the_tum_tool_semantics():
    rng = np.random.default_rng(0)
    for trial in range(30):
        a = np.sort(rng.uniform(0, 2, rng.integers(0, 40))) + 1.3e9
        b = rng.permutation(np.concatenate([a + rng.normal(0, 0.015, len(a)), rng.uniform(0, 2, 5) + 1.3e9]))
        off = 0.0 if trial % 3 else 0.01
        assert R.associate(a, b, 0.02, off).tolist() == [list(p) for p in _associate_reference(a, b, 0.02, off)]


def test_scannet_skips_invalid_pose_and_aligns_depth(layouts, caplog):
    with caplog.at_level(logging.WARNING, logger="scene3d.data.rgbd"):
        cap = R.read_scannet(layouts["scannet"])
    assert len(cap) == 5 and "1 frames have no valid pose" in caplog.text and "5.txt" in caplog.text
    assert (cap.cameras.height, cap.cameras.width) == (HC, WC) and cap.depth_hw == (H, W)
    np.testing.assert_allclose(pixel_k(cap.cameras.intrinsics[0], HC, WC), KC, rtol=1e-12)
    np.testing.assert_allclose(pixel_k(cap.depth_intrinsics[0], H, W), K, rtol=1e-12)
    # colour-aligned depth: each colour pixel holds the stored depth where its ray meets the depth image
    d, raw = cap.load_depth([2])[0], cap.load_depth([2], aligned=False)[0]
    assert stored_depth_along_rays(d, cap.cameras.intrinsics[2], raw, K).all()
    assert (d > 0).mean() > 0.95  # the colour view is barely wider than the depth view


def test_scannet_frames_exported_resized(layouts, tmp_path):
    """Colour frames exported at half the sensor size keep the sensor's intrinsic_color.txt: given the calibration
    size, the normalised intrinsics are those of the frames."""
    root = tmp_path / "scene"
    shutil.copytree(layouts["scannet"], root)
    k2 = [[2 * KC[0], 0, 2 * KC[2], 0], [0, 2 * KC[1], 2 * KC[3], 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    (root / "intrinsic" / "intrinsic_color.txt").write_text(matrix_text(k2))
    with pytest.raises(ValueError, match="intrinsic_color.txt: principal point"):
        R.read_scannet(root)
    cap = CAP.read_capture(root, color_calibration_hw=(2 * HC, 2 * WC))
    np.testing.assert_allclose(pixel_k(cap.cameras.intrinsics[0], HC, WC), KC, rtol=1e-9)


def test_3dmatch_real_frames(shared_dir):
    root = shared_data(shared_dir, "3dmatch_rgbd")
    cap = CAP.read_capture(root)
    assert cap.layout == "3dmatch" and len(cap) == 5 and (cap.cameras.height, cap.cameras.width) == (480, 640)
    np.testing.assert_allclose(cap.cameras.K()[0], [[570.342205, 0, 320], [0, 570.342205, 240], [0, 0, 1]])
    assert [pathlib.Path(f).name[:12] for f in cap.frames] == [f"frame-{n:06d}" for n in (0, 1, 2, 116, 422)]
    D = cap.load_depth()
    valid = D[D > 0]
    assert 0.8 < (D > 0).mean() < 0.95 and 0.3 < valid.min() and valid.max() < 8.0  # metres, not millimetres
    # the real poses carry depth from one frame onto the next view's depth (Kinect noise: a few cm)
    c2w = np.asarray(cap.cameras.c2w, np.float64)
    k = pixel_k(cap.cameras.intrinsics[0], 480, 640)
    for i, j in ((2, 3), (3, 4)):  # frames 2 -> 116 and 116 -> 422: the camera turns and moves ~1 m
        X = back_project(D[i], k)[D[i] > 0] @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        xc = (X - c2w[j, :3, 3]) @ c2w[j, :3, :3]
        z = xc[:, 2]
        u, v = k[0] * xc[:, 0] / z + k[2], k[1] * xc[:, 1] / z + k[3]
        inside = (z > 0) & (u >= 0) & (u < 640) & (v >= 0) & (v < 480)
        dj = D[j][np.floor(v[inside]).astype(int), np.floor(u[inside]).astype(int)]
        err = np.abs(dj - z[inside])[dj > 0]
        assert inside.mean() > 0.4 and np.median(err) < 0.12 and (err < 0.05).mean() > 0.3, (i, j, np.median(err))
    ex = MV.MultiViewTransform(MV.ViewConfig(num_context=2, num_target=1, resolution=(60, 80))).random_map(
        cap.scene_record(), np.random.default_rng(0))
    assert ex["context"]["depth"].shape == (2, 60, 80) and ex["context"]["mask"].mean() > 0.7


@pytest.mark.parametrize("layout", R.LAYOUTS + ("3dmatch_real", "tum_file"))
def test_inspect_cli(layouts, shared_dir, tmp_path, capsys, layout):
    if layout == "3dmatch_real":
        path = shared_data(shared_dir, "3dmatch_rgbd")
    elif layout == "tum_file":
        path = layouts["tum"] / "rgb.txt"  # a layout's own file names its sequence
    else:
        path = layouts[layout]
    out = tmp_path / "x.png"
    assert INS.main([str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "RGB-D sequence" in text and "fused depth:" in text and out.is_file()
    insp = INS.inspect_path(path)
    assert insp.counts["points"] > 1000 and len(insp.images) >= 6
    if layout != "3dmatch_real":  # the fused points of the synthetic room are on its walls (ScanNet: resampled)
        assert np.percentile(surface_distance(insp.points.astype(np.float64)), 99) < (0.05 if layout == "scannet"
                                                                                        else 0.01)


# ------------------------------------------------------------------------------------------- malformed input


def _png16(path, value=1000, shape=(H, W)):
    Image.fromarray(np.full(shape, value, np.uint16)).save(path)


def _edit(path, fn):
    path.write_text(fn(path.read_text()))


def _line(path, n, text):
    lines = path.read_text().splitlines()
    lines[n] = text
    path.write_text("\n".join(lines) + "\n")


CASES = {  # name: (layout, mutation (sequence folder -> None), file the error names, more text it must hold)
    "replica_traj_15_values": ("replica", lambda r: _line(r / "traj.txt", 2, " ".join(["1"] * 15)), "traj.txt",
                               "line 3"),
    "replica_traj_word": ("replica", lambda r: _line(r / "traj.txt", 1, " ".join(["x"] * 16)), "traj.txt", "line 2"),
    "replica_traj_not_rigid": ("replica", lambda r: _line(r / "traj.txt", 0, " ".join(
        str(x) for x in np.diag([2.0, 1, 1, 1]).reshape(-1))), "traj.txt", "not rigid"),
    "replica_traj_short": ("replica", lambda r: _edit(r / "traj.txt", lambda s: "\n".join(s.splitlines()[:3])),
                           "traj.txt", "frame 4"),
    "replica_traj_not_utf8": ("replica", lambda r: (r / "traj.txt").write_bytes(b"\xff\xfe1 2 3"), "traj.txt",
                              "UTF-8"),
    "replica_no_scale": ("replica", lambda r: (r.parent / "cam_params.json").write_text(
        json.dumps({"camera": dict(w=W, h=H, fx=40, fy=40, cx=32, cy=24)})), "cam_params.json", "scale"),
    "replica_zero_scale": ("replica", lambda r: (r.parent / "cam_params.json").write_text(
        json.dumps({"camera": dict(w=W, h=H, fx=40, fy=40, cx=32, cy=24, scale=0)})), "cam_params.json", "positive"),
    "replica_wrong_size": ("replica", lambda r: (r.parent / "cam_params.json").write_text(
        json.dumps({"camera": dict(w=640, h=480, fx=40, fy=40, cx=32, cy=24, scale=1)})), "cam_params.json",
        "640x480"),
    "replica_missing_depth": ("replica", lambda r: (r / "results" / "depth000003.png").unlink(), "results",
                              "frame000003.jpg"),
    "replica_depth_8bit": ("replica", lambda r: Image.fromarray(np.zeros((H, W), np.uint8)).save(
        r / "results" / "depth000001.png"), "depth000001.png", "16-bit"),
    "replica_depth_truncated": ("replica", lambda r: (r / "results" / "depth000002.png").write_bytes(
        (r / "results" / "depth000002.png").read_bytes()[:200]), "depth000002.png", "cannot decode"),
    "replica_depth_other_size": ("replica", lambda r: _png16(r / "results" / "depth000004.png", shape=(H, W + 2)),
                                 "depth000004.png", "depth frames are"),
    "replica_frame_symlink_out": ("replica", lambda r: (os.symlink(r.parent.parent.parent / "outside.jpg",
                                                                   r / "results" / "frame000005.jpg")),
                                  "frame000005.jpg", "outside"),
    "tum_path_escapes": ("tum", lambda r: _edit(r / "rgb.txt", lambda s: s.replace("rgb/", "../../rgb/", 1)),
                         "rgb.txt", "line 3"),
    "tum_absolute_path": ("tum", lambda r: _edit(r / "depth.txt", lambda s: s + "1305031109.0 /etc/hostname\n"),
                          "depth.txt", "outside"),
    "tum_bad_timestamp": ("tum", lambda r: _edit(r / "rgb.txt", lambda s: s.replace("1305031102.0", "13O5031102.0",
                                                                                    1)), "rgb.txt", "timestamp"),
    "tum_duplicate_timestamp": ("tum", lambda r: _edit(r / "groundtruth.txt", lambda s: s + s.splitlines()[5] + "\n"),
                                "groundtruth.txt", "repeats line 6"),
    "tum_zero_quaternion": ("tum", lambda r: _line(r / "groundtruth.txt", 12, "1305031102.0507 0 0 0 0 0 0 0"),
                            "groundtruth.txt", "line 13: zero quaternion"),
    "tum_nan_translation": ("tum", lambda r: _line(r / "groundtruth.txt", 12, "1305031102.0507 nan 0 0 0 0 0 1"),
                            "groundtruth.txt", "finite"),
    "tum_missing_file": ("tum", lambda r: next((r / "rgb").glob("*.png")).unlink(), "rgb.txt", "not found"),
    "tum_gt_absent": ("tum", lambda r: (r / "groundtruth.txt").unlink(), "rgbd_dataset_freiburg1_synth",
                      "no groundtruth.txt"),
    "tum_no_gt": ("tum", lambda r: (r / "groundtruth.txt").write_text("# nothing\n"), "groundtruth.txt",
                  "no poses"),
    "scannet_pose_words": ("scannet", lambda r: (r / "pose" / "2.txt").write_text("a b c d\n" * 4), "2.txt",
                           "numbers"),
    "scannet_pose_12_values": ("scannet", lambda r: (r / "pose" / "1.txt").write_text("1 0 0 0\n" * 3), "1.txt",
                               "12 values"),
    "scannet_intrinsic_skew": ("scannet", lambda r: _line(r / "intrinsic" / "intrinsic_depth.txt", 0,
                                                                  "40 3 31.7 0"), "intrinsic_depth.txt", "pinhole"),
    "scannet_resized_export": ("scannet", lambda r: _line(r / "intrinsic" / "intrinsic_color.txt", 0,
                                                          "124 0 149.4 0"), "intrinsic_color.txt", "(H, W)"),
    "scannet_missing_pose": ("scannet", lambda r: (r / "pose" / "3.txt").unlink(), "pose", "3.txt"),
    "scannet_duplicate_frame": ("scannet", lambda r: shutil.copy(r / "color" / "1.jpg", r / "color" / "01.jpg"),
                                "color", "colour frame 1"),
    "scannet_all_poses_invalid": ("scannet", lambda r: [p.write_text(("-inf " * 4 + "\n") * 4)
                                                        for p in (r / "pose").glob("*.txt")], "pose", "no frame"),
    "3dmatch_zero_focal": ("3dmatch", lambda r: (r / "camera-intrinsics.txt").write_text("0 0 32\n0 40 24\n0 0 1\n"),
                           "camera-intrinsics.txt", "focal"),
    "3dmatch_pose_last_row": ("3dmatch", lambda r: _edit(r / "seq-01" / "frame-000001.pose.txt", lambda s: s.replace(
        "1.00000000e+00\n", "2.00000000e+00\n")), "frame-000001.pose.txt", "last row"),
    "3dmatch_colour_truncated": ("3dmatch", lambda r: (r / "seq-01" / "frame-000000.color.png").write_bytes(b"\x89PNG"),
                                 "frame-000000.color.png", ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_names_the_file(layouts, tmp_path, case):
    layout, mutate, name, more = CASES[case]
    src = layouts[layout]
    root = tmp_path / "data" / src.parent.name / src.name
    shutil.copytree(src, root)
    if layout == "replica":
        shutil.copy(src.parent / "cam_params.json", root.parent / "cam_params.json")
    (tmp_path / "outside.jpg").write_bytes((src / "results" / "frame000000.jpg").read_bytes() if layout == "replica"
                                           else b"")
    mutate(root)
    with pytest.raises(ValueError) as e:
        CAP.read_capture(root).scene_record()
    msg = str(e.value)
    assert name in msg and more in msg, msg


def test_stride_subset_and_bad_arguments(layouts):
    cap = R.read_replica(layouts["replica"], stride=2)
    assert [pathlib.Path(f).name for f in cap.frames] == ["frame000000.jpg", "frame000002.jpg", "frame000004.jpg"]
    sub = cap.subset([2, 0])
    np.testing.assert_array_equal(sub.cameras.c2w, np.asarray(cap.cameras.c2w)[[2, 0]])
    assert sub.depth_frames == [cap.depth_frames[2], cap.depth_frames[0]]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="stride"):
            R.read_replica(layouts["replica"], stride=bad)
    with pytest.raises(ValueError, match="layout"):
        R.read_rgbd(layouts["replica"], layout="kinect")
    with pytest.raises(ValueError, match="TUM intrinsics"):
        R.read_tum(layouts["tum"], intrinsics=(0, 40, 32, 24))
    with pytest.raises(ValueError, match="not an RGB-D sequence"):
        R.read_rgbd(layouts["replica"] / "results")
