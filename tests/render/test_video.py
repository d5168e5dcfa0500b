"""Trajectory rendering and frame / GIF writing (read back with PIL)."""
import os

import numpy as np
import pytest
from PIL import Image

from scene3d.geometry.cameras import Cameras, intrinsics_from_fov
from scene3d.geometry.gaussians import Gaussians
from scene3d.geometry.trajectories import orbit
from scene3d.render import splat, video

H, W = 24, 32


@pytest.fixture(scope="module")
def scene():
    """Coloured blobs around the origin (distinct colours, so orbit frames differ) and a 5-view orbit."""
    rng = np.random.default_rng(0)
    n = 10
    g = Gaussians(xyz=rng.uniform(-0.6, 0.6, (n, 3)), f_dc=rng.normal(0, 1.5, (n, 3)), opacity=np.full(n, 2.0),
                  scale=np.full((n, 3), -1.8), rot=np.tile([1.0, 0, 0, 0], (n, 1)))
    g = Gaussians(*(None if a is None else np.asarray(a, np.float32) for a in g))
    c2w = orbit(np.zeros(3), 2.5, 5, elevation_deg=25.0)
    cams = Cameras(c2w, np.broadcast_to(intrinsics_from_fov(np.deg2rad(60.0), H, W), (5, 4)), H, W)
    return g, cams


def test_render_trajectory_matches_per_frame_render(scene):
    g, cams = scene
    frames = video.render_trajectory(g, cams, background=0.5)
    assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8
    for i in (0, 3):
        ref = splat.to_uint8(splat.render(g, cams.c2w[i], cams.intrinsics[i], H, W, background=0.5)["rgb"])
        np.testing.assert_array_equal(frames[i], ref)
    assert len({f.tobytes() for f in frames}) == 5  # the camera moves
    assert (frames != 128).any(axis=-1).mean() > 0.05  # something besides background
    with pytest.raises(ValueError, match="image size"):
        video.render_trajectory(g, Cameras(cams.c2w, cams.intrinsics))


def test_write_frames_png_roundtrip(scene, tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    paths = video.write_frames(tmp_path / "frames", frames)
    assert [os.path.basename(p) for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for p, f in zip(paths, frames):
        np.testing.assert_array_equal(np.asarray(Image.open(p).convert("RGB")), f)
    assert sorted(os.listdir(tmp_path / "frames")) == sorted(os.path.basename(p) for p in paths)  # no temp files
    floats = video.write_frames(tmp_path / "f", frames[:1] / 255.0, prefix="x")  # float frames in [0, 1]
    np.testing.assert_array_equal(np.asarray(Image.open(floats[0]).convert("RGB")), frames[0])


def test_write_gif_roundtrip(scene, tmp_path):
    g, cams = scene
    frames = video.render_trajectory(g, cams, background=1.0)
    path = tmp_path / "orbit.gif"
    path.write_bytes(b"old contents")  # replaced atomically
    video.write_gif(path, frames, fps=5)
    assert os.listdir(tmp_path) == ["orbit.gif"]
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size == (W, H)
        assert im.info.get("loop") == 0
        for i in range(im.n_frames):
            im.seek(i)
            assert im.info["duration"] == 200
            got = np.asarray(im.convert("RGB"), np.float64)
            assert np.abs(got - frames[i]).mean() < 8.0  # palette quantisation only
    with pytest.raises(ValueError, match="frames"):
        video.write_gif(tmp_path / "bad.gif", frames[0])
    with pytest.raises(ValueError, match="fps"):
        video.write_gif(tmp_path / "bad.gif", frames, fps=0)


def test_image_grid_places_every_image_row_by_row():
    from scene3d.render import plots
    imgs = np.stack([np.full((4, 5, 3), v) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)])
    g = plots.image_grid(imgs, cols=2)
    assert g.dtype == np.uint8 and g.shape == (3 * 4 + 2 * 2, 2 * 5 + 1, 3)  # 3 rows (gap 2), 2 columns (1 px)
    for i, v in enumerate((-1.0, -0.5, 0.0, 0.5, 1.0)):
        r, c = divmod(i, 2)
        cell = g[r * 6: r * 6 + 4, c * 6: c * 6 + 5]
        assert np.all(cell == int(np.clip((v + 1) * 127.5 + 0.5, 0, 255)))
    grey = plots.image_grid(np.zeros((4, 3, 3, 1)))  # one channel -> RGB, 2 x 2 by default
    assert grey.shape == (3 * 2 + 2, 3 * 2 + 1, 3) and np.all(grey[:3, :3] == 128)


def test_write_mp4_roundtrip_and_odd_sizes(tmp_path):
    """H.264 MP4 through PyAV: frame count, (even-padded) size and a smooth picture within a few grey levels."""
    y, x = np.mgrid[0:31, 0:45]
    frames = np.stack([x * 5, y * 7, (x + y) * 2], -1).astype(np.uint8)[None].repeat(5, 0)
    frames[2:] = 255 - frames[2:]
    path = tmp_path / "v.mp4"
    video.write_mp4(path, frames, fps=8)
    back = video.read_video(path)
    assert back.shape == (5, 32, 46, 3)
    err = np.abs(back[:, :31, :45].astype(int) - frames.astype(int))
    assert err.mean() < 4.0, err.mean()
    with pytest.raises(ValueError, match="cannot decode"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video")
        video.read_video(tmp_path / "bad.mp4")
