"""Pinhole cameras in the one scene3d convention.

- Camera axes: OpenCV (x right, y down, z forward). Extrinsics: 4x4 camera-to-world `c2w` (..., 4, 4).
- Intrinsics: the canonical form is a (..., 4) vector `(fx/W, fy/H, cx/W, cy/H)` (focal lengths and principal
  point normalised by the image size), so it does not change when an image is resized.
- Pixel coordinates are continuous with the origin at the top-left *corner* of the image: pixel (row i, col j)
  covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5) (the COLMAP convention). A centred principal
  point is therefore cx = W/2, i.e. cx/W = 0.5.
- Depth is z-depth (distance along the optical axis), not ray length.

Functions take numpy or jax arrays (jax in -> jax out, usable under `jax.jit`) and broadcast over leading dims.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from scene3d.geometry.so3 import array_namespace


def _check(x, tail, name):
    if tuple(x.shape[len(x.shape) - len(tail):]) != tuple(tail) or x.ndim < len(tail):
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------- intrinsics


def intrinsics_matrix(intrinsics, height, width):
    """(..., 4) normalised `(fx/W, fy/H, cx/W, cy/H)` -> (..., 3, 3) pixel-space K for an H x W image."""
    xp = array_namespace(intrinsics)
    _check(intrinsics, (4,), "intrinsics_matrix intrinsics")
    fx, fy = intrinsics[..., 0] * width, intrinsics[..., 1] * height
    cx, cy = intrinsics[..., 2] * width, intrinsics[..., 3] * height
    z, o = xp.zeros_like(fx), xp.ones_like(fx)
    return xp.stack([xp.stack([fx, z, cx], -1), xp.stack([z, fy, cy], -1), xp.stack([z, z, o], -1)], -2)


def normalise_intrinsics(K, height, width):
    """(..., 3, 3) pixel-space K of an H x W image -> (..., 4) `(fx/W, fy/H, cx/W, cy/H)`. Skew must be 0."""
    xp = array_namespace(K)
    _check(K, (3, 3), "normalise_intrinsics K")
    return xp.stack([K[..., 0, 0] / width, K[..., 1, 1] / height, K[..., 0, 2] / width, K[..., 1, 2] / height], -1)


def as_intrinsics4(intrinsics, lead: Optional[tuple] = None, name: str = "intrinsics"):
    """Normalised intrinsics as (..., 4) `(fx/W, fy/H, cx/W, cy/H)`, from that or from a normalised (..., 3, 3) K
    (zero skew). ``lead``: the leading shape required (checked; a ValueError naming ``name`` otherwise)."""
    xp = array_namespace(intrinsics)
    k = xp.asarray(intrinsics)
    pre = tuple(k.shape[:-2]) if k.shape[-2:] == (3, 3) else tuple(k.shape[:-1])
    if (k.shape[-2:] != (3, 3) and k.shape[-1:] != (4,)) or (lead is not None and pre != tuple(lead)):
        want = "(..., 4)" if lead is None else str(tuple(lead) + (4,))
        raise ValueError(f"{name}: intrinsics must be {want} (fx/W, fy/H, cx/W, cy/H) or a normalised 3x3 K, "
                         f"got {tuple(k.shape)}")
    if k.shape[-2:] == (3, 3):
        return xp.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], -1)
    return k


def intrinsics_from_fov(fov_x, height, width, fov_y=None):
    """Centred normalised intrinsics from horizontal (and optionally vertical) field of view in radians.

    Square pixels are assumed when `fov_y` is None (fy = fx in pixels).
    """
    xp = array_namespace(fov_x)
    fx = 0.5 / xp.tan(xp.asarray(fov_x) / 2)  # fx / W
    fy = fx * width / height if fov_y is None else 0.5 / xp.tan(xp.asarray(fov_y) / 2)
    half = xp.full_like(fx, 0.5)
    return xp.stack([fx, fy, half, half], -1)


def fov_from_intrinsics(intrinsics):
    """(..., 4) normalised intrinsics -> (fov_x, fov_y) in radians (for a centred principal point)."""
    xp = array_namespace(intrinsics)
    return 2 * xp.arctan(0.5 / intrinsics[..., 0]), 2 * xp.arctan(0.5 / intrinsics[..., 1])


# ----------------------------------------------------------------------------------------------- extrinsics


def invert_rigid(T):
    """Inverse of (..., 4, 4) rigid transforms [R t; 0 1] -> [R^T -R^T t; 0 1] (c2w <-> w2c)."""
    xp = array_namespace(T)
    _check(T, (4, 4), "invert_rigid T")
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = xp.swapaxes(R, -1, -2)
    top = xp.concatenate([Rt, -Rt @ t], -1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=T.dtype), top.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], -2)


def make_c2w(R, t):
    """(..., 3, 3) rotation and (..., 3) translation -> (..., 4, 4) homogeneous transform."""
    xp = array_namespace(R, t)
    _check(R, (3, 3), "make_c2w R")
    _check(t, (3,), "make_c2w t")
    shape = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    top = xp.concatenate([xp.broadcast_to(R, shape + (3, 3)), xp.broadcast_to(t, shape + (3,))[..., None]], -1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), shape + (1, 4))
    return xp.concatenate([top, bottom], -2)


def camera_centers(c2w):
    """(..., 4, 4) -> (..., 3) camera centres in world coordinates."""
    return c2w[..., :3, 3]


def world_to_camera(points, c2w):
    """(..., P, 3) world points -> (..., P, 3) camera-frame points; c2w (..., 4, 4) broadcasts over the batch."""
    _check(points, (3,), "world_to_camera points")
    _check(c2w, (4, 4), "world_to_camera c2w")
    R, t = c2w[..., :3, :3], c2w[..., None, :3, 3]
    return (points - t) @ R  # row vectors: R^T (p - t)


def camera_to_world(points, c2w):
    """(..., P, 3) camera-frame points -> world; c2w (..., 4, 4)."""
    xp = array_namespace(points, c2w)
    _check(points, (3,), "camera_to_world points")
    _check(c2w, (4, 4), "camera_to_world c2w")
    return points @ xp.swapaxes(c2w[..., :3, :3], -1, -2) + c2w[..., None, :3, 3]


# ------------------------------------------------------------------------------------ projection / unprojection


def project(points, c2w, intrinsics, height, width, eps: float = 1e-8):
    """World points (..., P, 3) -> (pixels (..., P, 2) as (u=x, v=y), z-depth (..., P)).

    Points at or behind the camera get depth <= 0 (their pixels are meaningless; mask with depth > 0).
    """
    xp = array_namespace(points, c2w, intrinsics)
    _check(intrinsics, (4,), "project intrinsics")
    p = world_to_camera(points, c2w)
    z = p[..., 2]
    zs = xp.where(xp.abs(z) < eps, eps, z)
    f = intrinsics[..., None, :2] * xp.asarray([width, height], dtype=p.dtype)
    c = intrinsics[..., None, 2:] * xp.asarray([width, height], dtype=p.dtype)
    return p[..., :2] / zs[..., None] * f + c, z


def unproject(pixels, depth, c2w, intrinsics, height, width):
    """Pixels (..., P, 2) (u=x, v=y, corner origin) with z-depth (..., P) -> world points (..., P, 3)."""
    xp = array_namespace(pixels, depth, c2w, intrinsics)
    _check(pixels, (2,), "unproject pixels")
    _check(intrinsics, (4,), "unproject intrinsics")
    f = intrinsics[..., None, :2] * xp.asarray([width, height], dtype=pixels.dtype)
    c = intrinsics[..., None, 2:] * xp.asarray([width, height], dtype=pixels.dtype)
    xy = (pixels - c) / f
    cam = xp.concatenate([xy, xp.ones_like(xy[..., :1])], -1) * depth[..., None]
    return camera_to_world(cam, c2w)


def in_image(pixels, depth, height, width):
    """Boolean mask (..., P): point in front of the camera and inside [0, W) x [0, H)."""
    u, v = pixels[..., 0], pixels[..., 1]
    return (depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


# ------------------------------------------------------------------------------------------- scene helpers


def relative_poses(c2w, ref_index: int = 0):
    """Express (..., N, 4, 4) poses in the frame of view `ref_index` (that view becomes the identity)."""
    _check(c2w, (4, 4), "relative_poses c2w")
    if c2w.ndim < 3:
        raise ValueError(f"relative_poses c2w: expected (..., N, 4, 4), got {tuple(c2w.shape)}")
    return invert_rigid(c2w[..., ref_index:ref_index + 1, :, :]) @ c2w


SCALE_MODES = ("max_camera_distance", "mean_camera_distance", "median_depth", "points_radius")


def normalise_scene_scale(c2w, points=None, mode: str = "max_camera_distance", target: float = 1.0):
    """Uniformly rescale a scene about the world origin; returns (c2w, points, scale).

    Positions are multiplied by `scale` (undo with 1/scale). Modes (statistic made equal to `target`):
    - 'max_camera_distance' / 'mean_camera_distance': of camera centres from the world origin (apply after
      `relative_poses` to measure from a reference view). A single camera at the origin gives scale 1.
    - 'median_depth': median z-depth of `points` (..., P, 3) over all views they are in front of.
    - 'points_radius': max distance of `points` from the world origin.
    c2w (..., N, 4, 4); points (..., P, 3) or None. Works per leading batch element.
    """
    xp = array_namespace(c2w, points) if points is not None else array_namespace(c2w)
    _check(c2w, (4, 4), "normalise_scene_scale c2w")
    if mode not in SCALE_MODES:
        raise ValueError(f"normalise_scene_scale: unknown mode {mode!r}; expected one of {SCALE_MODES}")
    if mode in ("median_depth", "points_radius") and points is None:
        raise ValueError(f"normalise_scene_scale: mode {mode!r} needs points (..., P, 3)")
    if mode in ("max_camera_distance", "mean_camera_distance"):
        d = xp.linalg.norm(c2w[..., :3, 3], axis=-1)
        stat = xp.max(d, -1) if mode == "max_camera_distance" else xp.mean(d, -1)
    elif mode == "points_radius":
        stat = xp.max(xp.linalg.norm(points, axis=-1), -1)
    else:
        z = world_to_camera(points[..., None, :, :], c2w)[..., 2]  # (..., N, P)
        z = xp.where(z > 0, z, xp.nan)
        stat = xp.nanmedian(z.reshape(z.shape[:-2] + (-1,)), -1)
    stat = xp.asarray(stat)
    scale = xp.where(stat > 0, target / xp.where(stat > 0, stat, 1.0), 1.0)
    out = scale_poses(c2w, scale)
    pts = None if points is None else points * scale[..., None, None]
    return out, pts, scale


def scale_poses(c2w, scale):
    """Multiply camera translations of (..., N, 4, 4) poses by a per-batch `scale` (...)."""
    xp = array_namespace(c2w, scale)
    scale = xp.asarray(scale, dtype=c2w.dtype)
    t = c2w[..., :3, 3] * scale[..., None, None]
    top = xp.concatenate([c2w[..., :3, :3], t[..., None]], -1)
    return xp.concatenate([top, c2w[..., 3:, :]], -2)


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """OpenCV c2w (..., 4, 4) at `eye` looking at `target`; image 'up' (-y) is as close to `up` as possible."""
    xp = array_namespace(eye, target, up)
    eye, target, up = xp.asarray(eye, dtype=float), xp.asarray(target, dtype=float), xp.asarray(up, dtype=float)
    if xp is np:
        eye, target, up = (a.astype(np.float64) for a in (eye, target, up))
    z = target - eye
    z = z / xp.linalg.norm(z, axis=-1, keepdims=True)
    x = xp.cross(z, up * xp.ones_like(z))  # right = down x forward = forward x up
    n = xp.linalg.norm(x, axis=-1, keepdims=True)
    x = x / xp.where(n < 1e-9, 1.0, n)
    y = xp.cross(z, x)
    R = xp.stack([x, y, z], -1)
    return make_c2w(R, eye * xp.ones_like(z))


# ------------------------------------------------------------------------------------------- validation

# What the camera-file readers (`scene3d.geometry.conventions`) accept. A rotation is rigid when
# max |R R^T - I| <= RIGID_ATOL and det R > 0 (files store 6-9 decimals: real captures are within 1e-5). With the
# readers' opt-in `repair=True`, a rotation within REPAIR_MAX_ERROR of rigid (a few decimals lost, a rounded
# matrix) is replaced by the nearest rotation (polar decomposition) and the count is logged; anything further off
# (a scaled, sheared or mirrored matrix, or a matrix of the wrong convention) is an error either way.
RIGID_ATOL = 1e-4
REPAIR_MAX_ERROR = 0.05


def rigid_error(R) -> np.ndarray:
    """(..., 3, 3) -> (...) max |R R^T - I| (numpy, float64)."""
    R = np.asarray(R, np.float64)
    return np.abs(R @ np.swapaxes(R, -1, -2) - np.eye(3)).max((-1, -2))


def nearest_rotation(R) -> np.ndarray:
    """(..., 3, 3) -> the nearest rotations in the Frobenius norm (U V^T of the SVD; numpy, float64). The input
    must have a positive determinant (a reflection has no nearest rotation worth returning)."""
    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64))
    return U @ Vt


def check_rotations(R, labels, *, repair: bool = False, what: str = "rotation") -> tuple:
    """Validate (N, 3, 3) float rotations read from a file -> (R, number repaired).

    labels: N strings naming each item (file and frame), used in the ValueError. Non-finite values, a determinant
    <= 0 and a rigid error above RIGID_ATOL are errors; with `repair`, errors up to REPAIR_MAX_ERROR are fixed by
    `nearest_rotation` instead (the returned array is a copy; the input is not modified).
    """
    R = np.asarray(R, np.float64)
    bad = ~np.isfinite(R).all((-1, -2))
    if bad.any():
        raise ValueError(f"{labels[int(np.argmax(bad))]}: {what} has non-finite values")
    err, det = rigid_error(R), np.linalg.det(R)
    off = (err > RIGID_ATOL) | (det <= 0)
    if not off.any():
        return R, 0
    fixable = (err <= REPAIR_MAX_ERROR) & (det > 0)
    stop = off & ~fixable if repair else off
    if stop.any():
        i = int(np.argmax(stop))
        hint = " (pass repair=True to re-orthonormalise it)" if fixable[i] else ""
        raise ValueError(f"{labels[i]}: {what} is not rigid: max |R R^T - I| = {err[i]:.3g}, det {det[i]:.6g} "
                         f"(accepted: <= {RIGID_ATOL:g} and det > 0){hint}")
    R = R.copy()
    R[off] = nearest_rotation(R[off])
    return R, int(off.sum())


def check_pose_matrices(m, labels, *, repair: bool = False, what: str = "pose") -> tuple:
    """Validate (N, 4, 4) homogeneous rigid transforms (c2w or w2c) read from a file -> (m, number repaired):
    finite, last row exactly (0, 0, 0, 1), rotation block as `check_rotations`."""
    m = np.asarray(m, np.float64)
    bad = ~np.isfinite(m).all((-1, -2))
    if bad.any():
        raise ValueError(f"{labels[int(np.argmax(bad))]}: {what} has non-finite values")
    last = (m[:, 3] != np.array([0.0, 0.0, 0.0, 1.0])).any(-1)
    if last.any():
        i = int(np.argmax(last))
        raise ValueError(f"{labels[i]}: {what} last row is {m[i, 3].tolist()}, expected [0, 0, 0, 1]")
    R, n = check_rotations(m[:, :3, :3], labels, repair=repair, what=f"{what} rotation")
    if n:
        m = m.copy()
        m[:, :3, :3] = R
    return m, n


def check_intrinsics(intr, labels) -> np.ndarray:
    """Validate (N, 4) normalised intrinsics read from a file: finite, fx and fy > 0. -> float64 array."""
    intr = np.asarray(intr, np.float64)
    bad = ~np.isfinite(intr).all(-1)
    if bad.any():
        raise ValueError(f"{labels[int(np.argmax(bad))]}: intrinsics have non-finite values")
    bad = (intr[:, :2] <= 0).any(-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{labels[i]}: focal lengths must be positive, got fx/W {intr[i, 0]:.6g}, "
                         f"fy/H {intr[i, 1]:.6g}")
    return intr


# ------------------------------------------------------------------------------------------- dataclass


@dataclasses.dataclass
class Cameras:
    """A set of N pinhole cameras sharing one image size.

    c2w: (N, 4, 4) OpenCV camera-to-world. intrinsics: (N, 4) normalised (fx/W, fy/H, cx/W, cy/H).
    height, width: image size in pixels (None when unknown, e.g. RealEstate10K poses without frames).
    """

    c2w: np.ndarray
    intrinsics: np.ndarray
    height: Optional[int] = None
    width: Optional[int] = None

    def __post_init__(self):
        xp = array_namespace(self.c2w, self.intrinsics)
        self.c2w = xp.asarray(self.c2w)
        self.intrinsics = xp.asarray(self.intrinsics)
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"Cameras.c2w: expected shape (N, 4, 4), got {tuple(self.c2w.shape)}")
        n = self.c2w.shape[0]
        if self.intrinsics.shape == (4,):
            self.intrinsics = xp.broadcast_to(self.intrinsics, (n, 4))
        if self.intrinsics.shape != (n, 4):
            raise ValueError(f"Cameras.intrinsics: expected shape ({n}, 4), got {tuple(self.intrinsics.shape)}")

    def __len__(self):
        return self.c2w.shape[0]

    def __getitem__(self, idx):
        c2w, intr = self.c2w[idx], self.intrinsics[idx]
        if c2w.ndim == 2:
            c2w, intr = c2w[None], intr[None]
        return Cameras(c2w, intr, self.height, self.width)

    @property
    def w2c(self):
        return invert_rigid(self.c2w)

    @property
    def centers(self):
        return camera_centers(self.c2w)

    def K(self, height=None, width=None):
        """(N, 3, 3) pixel intrinsics at the given (default: own) image size."""
        h, w = height or self.height, width or self.width
        if h is None or w is None:
            raise ValueError("Cameras.K: image size unknown; pass height and width")
        return intrinsics_matrix(self.intrinsics, h, w)

    def resized(self, height: int, width: int):
        """Same cameras for images resized to height x width (normalised intrinsics are unchanged)."""
        return Cameras(self.c2w, self.intrinsics, height, width)
