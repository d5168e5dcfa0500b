"""Camera trajectories for rendering: orbits, forward walks, slerp interpolation between key poses.

All return OpenCV c2w poses (n, 4, 4) in numpy float64 (convert with `jnp.asarray` if needed).
"""
from __future__ import annotations

import numpy as np

import math

from scene3d.geometry.cameras import Cameras, intrinsics_from_fov, look_at, make_c2w
from scene3d.geometry.so3 import matrix_to_quat, quat_slerp, quat_to_matrix


def _vec3(x, name):
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (3,):
        raise ValueError(f"{name}: expected shape (3,), got {x.shape}")
    return x


def orbit(center, radius: float, n: int, elevation_deg: float = 20.0, up=(0.0, 0.0, 1.0),
          start_azimuth_deg: float = 0.0, turns: float = 1.0, endpoint: bool = False):
    """n cameras on a circle of `radius` around `center`, `elevation_deg` above the plane normal to `up`,
    all looking at `center`. Azimuth runs counter-clockwise about `up` for `turns` full turns."""
    center, up = _vec3(center, "orbit center"), _vec3(up, "orbit up")
    up = up / np.linalg.norm(up)
    a = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    az = np.deg2rad(start_azimuth_deg) + np.linspace(0.0, 2 * np.pi * turns, n, endpoint=endpoint)
    el = np.deg2rad(elevation_deg)
    dirs = np.cos(el) * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2) + np.sin(el) * up
    eyes = center + radius * dirs
    return look_at(eyes, np.broadcast_to(center, eyes.shape), up)


def orbit_cameras(num: int, size: int, *, distance: float = 2.6, elevation_deg: float = 30.0,
                  fov_deg: float = 45.0, up=(0.0, 0.0, 1.0)) -> Cameras:
    """``num`` square ``size``-pixel cameras evenly spaced in azimuth around the origin at ``distance``, raised by
    ``elevation_deg`` towards ``up``, looking at the origin, vertical field of view ``fov_deg`` (the standard views
    of a normalised scene, which fills the unit ball)."""
    if int(num) < 1 or int(size) < 1 or not distance > 0:
        raise ValueError(f"orbit_cameras: need num >= 1, size >= 1 and distance > 0, got {num}, {size}, {distance}")
    c2w = orbit(np.zeros(3), distance, int(num), elevation_deg=elevation_deg, up=up)
    intr = intrinsics_from_fov(np.full(int(num), math.radians(fov_deg)), size, size)
    return Cameras(c2w, intr, size, size)


def focus_orbit(num: int, focus_depth: float, *, arc_deg: float = 360.0, elevation_deg: float = 0.0,
                radius: float | None = None, centred: bool = False) -> np.ndarray:
    """(num, 4, 4) OpenCV c2w in a reference camera's frame (the identity pose): an orbit of ``arc_deg`` degrees
    about the camera's up axis (-y) around the point ``focus_depth`` in front of it, every camera looking at that
    point, at distance ``radius`` (default ``focus_depth``: the orbit passes through the reference camera at
    elevation 0). ``centred=False`` starts at the reference camera's azimuth (the end point excluded, so a full
    turn does not repeat its first frame); ``centred=True`` spreads the arc symmetrically about it, both ends
    included."""
    if int(num) < 1 or not focus_depth > 0:
        raise ValueError(f"focus_orbit: need num >= 1 and focus_depth > 0, got {num}, {focus_depth}")
    r = float(focus_depth if radius is None else radius)
    start = 180.0 - arc_deg / 2 if centred else 180.0
    return orbit((0.0, 0.0, float(focus_depth)), r, int(num), elevation_deg=elevation_deg, up=(0.0, -1.0, 0.0),
                 start_azimuth_deg=start, turns=arc_deg / 360.0, endpoint=centred)


def forward_walk(c2w_start, n: int, distance: float, lateral_sway: float = 0.0):
    """n poses moving `distance` along the start camera's optical axis (+z), keeping its orientation;
    optional sinusoidal sway of amplitude `lateral_sway` along the camera x axis (one period)."""
    c2w_start = np.asarray(c2w_start, dtype=np.float64)
    if c2w_start.shape != (4, 4):
        raise ValueError(f"forward_walk c2w_start: expected shape (4, 4), got {c2w_start.shape}")
    s = np.linspace(0.0, 1.0, n)
    R = c2w_start[:3, :3]
    t = (c2w_start[:3, 3] + (s * distance)[:, None] * R[:, 2]
         + (lateral_sway * np.sin(2 * np.pi * s))[:, None] * R[:, 0])
    return make_c2w(np.broadcast_to(R, (n, 3, 3)), t)


def interpolate_poses(keyframes, n: int):
    """n poses through (K, 4, 4) key poses: rotations by quaternion slerp, centres linearly, piecewise per
    segment with uniform spacing in the segment index. The first and last poses equal the first/last keys."""
    keyframes = np.asarray(keyframes, dtype=np.float64)
    if keyframes.ndim != 3 or keyframes.shape[1:] != (4, 4) or keyframes.shape[0] < 2:
        raise ValueError(f"interpolate_poses keyframes: expected shape (K>=2, 4, 4), got {keyframes.shape}")
    q = matrix_to_quat(keyframes[:, :3, :3])
    s = np.linspace(0.0, keyframes.shape[0] - 1, n)
    i = np.minimum(np.floor(s).astype(int), keyframes.shape[0] - 2)
    t = s - i
    R = quat_to_matrix(quat_slerp(q[i], q[i + 1], t))
    pos = (1 - t)[:, None] * keyframes[i, :3, 3] + t[:, None] * keyframes[i + 1, :3, 3]
    return make_c2w(R, pos)


def spiral(c2w_center, n: int, radii=(0.1, 0.1, 0.05), focus_depth: float = 1.0, rotations: float = 2.0):
    """LLFF-style spiral: centres wander around `c2w_center` by `radii` (camera x, y, z) while looking at the
    point `focus_depth` in front of it (for forward-facing scenes)."""
    c = np.asarray(c2w_center, dtype=np.float64)
    if c.shape != (4, 4):
        raise ValueError(f"spiral c2w_center: expected shape (4, 4), got {c.shape}")
    th = np.linspace(0.0, 2 * np.pi * rotations, n, endpoint=False)
    local = np.stack([np.cos(th), np.sin(th), np.sin(th * 0.5)], -1) * np.asarray(radii)
    eyes = local @ c[:3, :3].T + c[:3, 3]
    target = c[:3, 3] + focus_depth * c[:3, 2]
    return look_at(eyes, np.broadcast_to(target, eyes.shape), -c[:3, 1])
