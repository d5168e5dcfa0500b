"""Single-capture readers on the real captures in ../shared/data (fox transforms.json, fern LLFF + COLMAP) and on
RealEstate10K clip folders built from the real re10k_poses files with synthetic frames."""
import pathlib
import shutil

import numpy as np
import pytest

from scene3d.data import captures as C
from scene3d.data import multiview as M
from scene3d.geometry import conventions as cv
from tests.conftest import shared_data


def _data(shared_dir, name):
    return shared_data(shared_dir, name)


def _pil_resize_crop(img, out_hw):
    """Independent resize + centre crop: scale to cover, round, crop the middle."""
    from PIL import Image
    H, W = img.shape[:2]
    h, w = out_hw
    s = max(h / H, w / W)
    sh, sw = max(h, round(H * s)), max(w, round(W * s))
    oy, ox = (sh - h) // 2, (sw - w) // 2
    return np.asarray(Image.fromarray(img).resize((sw, sh), Image.BICUBIC))[oy:oy + h, ox:ox + w], (sh, sw, oy, ox)


def test_fox_transforms_capture(shared_dir):
    root = _data(shared_dir, "fox_nerf")
    cap = C.read_capture(root)
    assert cap.scene_id == "fox_nerf" and len(cap) == 50 and (cap.cameras.height, cap.cameras.width) == (1920, 1080)
    assert all(f.is_file() for f in cap.frames) and set(cap.distortion) == {"k1", "k2", "p1", "p2"}
    # 96 x 96 from 1920 x 1080: JPEG decoded at 1/8 (240 x 135) then resized; compare with the full decode
    imgs, intr = cap.load_images([0, 7], size=(96, 96))
    assert imgs.shape == (2, 96, 96, 3) and imgs.dtype == np.uint8
    full = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(cap.frames[7]).convert("RGB"))
    ref, (sh, sw, oy, ox) = _pil_resize_crop(full, (96, 96))
    assert np.abs(imgs[1].astype(float) - ref).mean() < 4.0  # same content, same place (a shift would be ~10+)
    # intrinsics in pixels: f * sw / 1080, c * sw / 1080 - ox, ...
    fx, fy, cx, cy = 1375.52, 1374.49, 554.558, 965.268
    np.testing.assert_allclose(intr[1], [fx * sw / 1080 / 96, fy * sh / 1920 / 96, (cx * sw / 1080 - ox) / 96,
                                         (cy * sh / 1920 - oy) / 96], rtol=1e-9)


@pytest.fixture(scope="module")
def fern(shared_dir):
    return _data(shared_dir, "llff_fern")


def test_fern_llff_capture_agrees_with_colmap_cameras(fern):
    cap = C.read_llff_capture(fern, factor=8)
    assert len(cap) == 20 and cap.bounds.shape == (20, 2) and (cap.cameras.height, cap.cameras.width) == (378, 504)
    imgs, intr = cap.load_images([0, 19])
    assert imgs.shape == (2, 378, 504, 3)
    # the real COLMAP calibration (SIMPLE_RADIAL, 4032 x 3024) gives the same normalised focal lengths
    cams, _, pts = cv.read_colmap_model(fern / "sparse" / "0")
    k = next(iter(cams.values())).intrinsics()
    np.testing.assert_allclose(intr[0, :2], k[:2], rtol=2e-3)
    # and the sparse points lie in front of every LLFF camera, mostly inside its image
    c2w = cap.cameras.c2w
    p = (pts.xyz[None] - c2w[:, None, :3, 3]) @ c2w[:, :3, :3]
    assert np.mean(p[..., 2] > 0) > 0.99
    k_all = cap.cameras.intrinsics
    u = k_all[:, None, 0] * p[..., 0] / p[..., 2] + k_all[:, None, 2]
    assert np.mean((u > 0) & (u < 1)) > 0.8


def test_colmap_capture_with_downscaled_images(fern, tmp_path):
    """A COLMAP model calibrated at 4032 x 3024 with images_8 files: cameras equal the LLFF ones, sorted by name."""
    llff = C.read_llff_capture(fern, factor=8)
    full = llff.cameras.resized(3024, 4032)
    names = [f"view_{19 - i:02d}.png" for i in range(20)]  # reverse order: the reader must sort by name
    cams, ims = cv.cameras_to_colmap(full, names)
    model = tmp_path / "cap" / "sparse" / "0"
    cv.write_colmap_model(model, cams, ims)
    shutil.copy(fern / "sparse" / "0" / "points3D.bin", model / "points3D.bin")
    (tmp_path / "cap" / "images").mkdir()
    for f, n in zip(llff.frames, names):
        shutil.copy(f, tmp_path / "cap" / "images" / n)
    cap = C.read_capture(tmp_path / "cap")
    order = np.argsort(names)
    np.testing.assert_allclose(cap.cameras.c2w, llff.cameras.c2w[order], atol=1e-9)
    np.testing.assert_allclose(cap.cameras.intrinsics, llff.cameras.intrinsics[order], atol=1e-12)
    assert [f.name for f in cap.frames] == sorted(names) and cap.points.shape == (10091, 3)
    a, _ = cap.load_images([0])
    b, _ = llff.load_images([int(order[0])])
    assert np.array_equal(a, b)
    # calibrated for another aspect ratio -> clear error
    cams[1].width = 3000
    cv.write_colmap_model(model, cams, ims)
    with pytest.raises(ValueError, match="aspect ratio"):
        C.read_colmap_capture(tmp_path / "cap").load_images([0])


def test_capture_source_to_multiview(fern):
    src = C.CaptureSource([fern])
    rec = src[0]
    assert rec["images"].dtype == object and rec["images"][0][:8] == b"\x89PNG\r\n\x1a\n"
    cfg = M.ViewConfig(num_context=2, num_target=1, strategy="random", resolution=(24, 32))
    ex = M.MultiViewTransform(cfg).random_map(rec, np.random.default_rng(0))
    assert ex["context"]["images"].shape == (2, 24, 32, 3) and ex["target"]["c2w"].shape == (1, 4, 4)
    assert ex["scene_id"] == "llff_fern"


# ----------------------------------------------------------------------------------------------- RE10K clips


def _re10k_files(shared_dir):
    files = sorted(_data(shared_dir, "re10k_poses").glob("[0-9a-f]*.txt"))
    assert len(files) >= 3
    return files


def _frames(n, H=18, W=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def test_re10k_clip_by_timestamp_and_by_order(shared_dir, tmp_path):
    f = _re10k_files(shared_dir)[0]
    clip = cv.read_re10k(f)
    frames = _frames(len(clip.timestamps))
    by_ts = tmp_path / "by_ts"
    by_ts.mkdir()
    shutil.copy(f, by_ts / "poses.txt")
    keep = np.arange(0, len(frames), 2)  # every other frame present: matched by timestamp
    for i in keep:
        (by_ts / f"{clip.timestamps[i]}.png").write_bytes(M.encode_png(frames[i]))
    cap = C.read_re10k_clip(by_ts)
    np.testing.assert_array_equal(cap.timestamps, clip.timestamps[keep])
    np.testing.assert_allclose(cap.cameras.c2w, clip.c2w[keep])
    imgs, intr = cap.load_images()
    np.testing.assert_array_equal(imgs, frames[keep])
    np.testing.assert_allclose(intr, clip.intrinsics[keep])

    by_order = tmp_path / "clipB"
    (by_order / "frames").mkdir(parents=True)
    shutil.copy(f, tmp_path / "clipB.txt")  # pose file next to the folder
    for i, im in enumerate(frames):
        (by_order / "frames" / f"frame_{i:04d}.png").write_bytes(M.encode_png(im))
    cap = C.read_capture(by_order, kind="re10k")
    assert cap.scene_id == "clipB" and len(cap) == len(frames)
    np.testing.assert_allclose(cap.cameras.c2w, clip.c2w)
    (by_order / "frames" / "frame_0000.png").unlink()
    with pytest.raises(ValueError, match="cannot pair"):
        C.read_re10k_clip(by_order)


def test_re10k_errors_and_split(tmp_path):
    empty = tmp_path / "c1"
    empty.mkdir()
    with pytest.raises(ValueError, match="one RealEstate10K pose file"):
        C.read_re10k_clip(empty)
    with pytest.raises(ValueError, match="cannot tell the capture format"):
        C.read_capture(empty)
    clips = [tmp_path / f"clip{i}" for i in range(10)]
    tr, ev = C.split_clips(clips, 0.25)
    assert len(ev) == 3 and not set(tr) & set(ev) and set(tr) | set(ev) == set(clips)
    assert C.split_clips(list(reversed(clips)), 0.25)[1] == list(reversed(ev))  # independent of listing order
    assert C.split_clips(clips, 0.0) == (clips, [])
