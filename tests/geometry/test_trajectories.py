"""Trajectory generators: geometric properties checked through projection and scipy's Slerp."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from scene3d.geometry import cameras as C
from scene3d.geometry import trajectories as T
from tests.geometry._helpers import random_pose

H, W = 24, 32
INTR = np.array([0.9, 1.2, 0.5, 0.5])


def _check_rotations(c2w):
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-10)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-10)


def test_orbit():
    center, up = np.array([0.5, -1.0, 2.0]), np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    c2w = T.orbit(center, 2.0, 12, elevation_deg=30, up=up)
    assert c2w.shape == (12, 4, 4)
    _check_rotations(c2w)
    off = c2w[:, :3, 3] - center
    np.testing.assert_allclose(np.linalg.norm(off, axis=-1), 2.0)
    np.testing.assert_allclose(off @ up, 2.0 * np.sin(np.deg2rad(30)))  # constant elevation
    uv, z = C.project(np.broadcast_to(center, (12, 1, 3)), c2w, np.broadcast_to(INTR, (12, 4)), H, W)
    np.testing.assert_allclose(uv[:, 0], np.broadcast_to([W / 2, H / 2], (12, 2)), atol=1e-9)
    assert np.all(z > 0)
    # consecutive azimuth steps are equal (30 degrees apart on the circle)
    horiz = off - (off @ up)[:, None] * up
    horiz /= np.linalg.norm(horiz, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.sum(horiz[1:] * horiz[:-1], -1), np.cos(2 * np.pi / 12), atol=1e-12)


def test_forward_walk():
    start = random_pose(0)
    c2w = T.forward_walk(start, 5, distance=2.0)
    np.testing.assert_allclose(c2w[:, :3, :3], np.broadcast_to(start[:3, :3], (5, 3, 3)))
    np.testing.assert_allclose(c2w[-1, :3, 3], start[:3, 3] + 2.0 * start[:3, 2], atol=1e-12)
    # each position is straight ahead of the first camera: camera-frame x = y = 0, z = travelled distance
    local = C.world_to_camera(c2w[:, :3, 3], start)
    np.testing.assert_allclose(local, np.stack([np.zeros(5), np.zeros(5), np.linspace(0, 2, 5)], -1), atol=1e-12)


def test_interpolate_poses_vs_scipy():
    keys = np.stack([random_pose(i) for i in range(3)])
    n = 9
    c2w = T.interpolate_poses(keys, n)
    _check_rotations(c2w)
    np.testing.assert_allclose(c2w[0], keys[0], atol=1e-10)
    np.testing.assert_allclose(c2w[-1], keys[-1], atol=1e-10)
    np.testing.assert_allclose(c2w[4], keys[1], atol=1e-10)  # s = 1 falls on the middle key
    s = np.linspace(0, 2, n)
    ref = Slerp([0, 1, 2], Rotation.from_matrix(keys[:, :3, :3]))(s).as_matrix()
    np.testing.assert_allclose(c2w[:, :3, :3], ref, atol=1e-10)
    np.testing.assert_allclose(c2w[2, :3, 3], 0.5 * (keys[0, :3, 3] + keys[1, :3, 3]), atol=1e-12)
    with pytest.raises(ValueError, match="K>=2"):
        T.interpolate_poses(keys[:1], 4)


def test_spiral_looks_at_focus():
    c = random_pose(3)
    c2w = T.spiral(c, 8, radii=(0.2, 0.1, 0.05), focus_depth=4.0)
    _check_rotations(c2w)
    focus = c[:3, 3] + 4.0 * c[:3, 2]
    uv, z = C.project(np.broadcast_to(focus, (8, 1, 3)), c2w, np.broadcast_to(INTR, (8, 4)), H, W)
    np.testing.assert_allclose(uv[:, 0], np.broadcast_to([W / 2, H / 2], (8, 2)), atol=1e-9)
    assert np.all(z > 0)
    # orientation stays close to the centre pose (same image 'up')
    assert np.all(np.sum(c2w[:, :3, 1] * c[:3, 1], -1) > 0.9)


def test_orbit_cameras_look_at_the_origin_from_the_requested_distance_and_elevation():
    cams = T.orbit_cameras(6, 20, distance=3.0, elevation_deg=25.0, fov_deg=50.0)
    assert len(cams) == 6 and cams.height == cams.width == 20
    _check_rotations(cams.c2w)
    eyes = cams.c2w[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=-1), 3.0)
    np.testing.assert_allclose(eyes[:, 2], 3.0 * np.sin(np.deg2rad(25.0)))  # z up
    uv, z = C.project(np.zeros((6, 1, 3)), cams.c2w, cams.intrinsics, 20, 20)
    np.testing.assert_allclose(uv[:, 0], 10.0, atol=1e-9)
    assert np.all(z > 0)
    np.testing.assert_allclose(cams.intrinsics[:, 1], 0.5 / np.tan(np.deg2rad(25.0)))  # fy / H from the fov
    az = np.arctan2(eyes[:, 1], eyes[:, 0])
    np.testing.assert_allclose(np.diff(np.unwrap(az)), 2 * np.pi / 6)  # evenly spaced, one turn
    with pytest.raises(ValueError, match="orbit_cameras"):
        T.orbit_cameras(0, 20)


@pytest.mark.parametrize("centred", [False, True])
def test_focus_orbit_circles_the_point_in_front_of_the_reference_camera(centred):
    c2w = T.focus_orbit(8, 1.5, arc_deg=360.0 if not centred else 60.0, centred=centred)
    focus = np.array([0.0, 0.0, 1.5])
    _check_rotations(c2w)
    t = c2w[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(t - focus, axis=-1), 1.5, rtol=1e-9)
    np.testing.assert_allclose(c2w[:, :3, 2], (focus - t) / 1.5, atol=1e-9)  # every camera looks at the focus
    np.testing.assert_allclose(t[:, 1], 0.0, atol=1e-9)  # stays in the reference camera's horizontal plane
    if not centred:
        np.testing.assert_allclose(c2w[0], np.eye(4), atol=1e-9)  # starts at the reference camera
        np.testing.assert_allclose(c2w[4, :3, 3], [0, 0, 3.0], atol=1e-9)  # half way round: the opposite side
    else:  # a 60 degree arc, symmetric about the reference camera, both ends included
        ang = np.degrees(np.arctan2(t[:, 0], focus[2] - t[:, 2]))
        np.testing.assert_allclose(ang, np.linspace(-30.0, 30.0, 8), atol=1e-9)
    with pytest.raises(ValueError, match="focus_orbit"):
        T.focus_orbit(4, 0.0)
