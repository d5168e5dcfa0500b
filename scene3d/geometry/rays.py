"""Ray maps (per pixel or per patch), Pluecker coordinates and depth -> point maps.

Conventions are those of `scene3d.geometry.cameras` (OpenCV c2w, normalised intrinsics, pixel centres at
(j + 0.5, i + 0.5), z-depth). Everything is written against the array namespace of the inputs, so it runs in
`jax.numpy` under `jax.jit` (pass jax arrays) or in numpy. Shapes: c2w (..., 4, 4), intrinsics (..., 4);
maps come out as (..., h, w, C) with h = H // patch_size, w = W // patch_size.

Per-patch rays: `patch_mode='center'` (default) is the exact ray through the patch centre, i.e. through the
continuous pixel point (p*j + p/2, p*i + p/2); `patch_mode='mean'` averages the unit directions of the p x p
pixel rays in the patch and renormalises (slightly different from 'center' because normalisation is nonlinear).
Origins are the camera centre in both modes.
"""
from __future__ import annotations

from scene3d.geometry.cameras import camera_to_world
from scene3d.geometry.so3 import array_namespace


def _check(x, tail, name):
    if x.ndim < len(tail) or tuple(x.shape[-len(tail):]) != tuple(tail):
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {tuple(x.shape)}")


def pixel_centers(height: int, width: int, xp=None, dtype=None):
    """(H, W, 2) continuous (u, v) = (j + 0.5, i + 0.5) coordinates of every pixel centre."""
    import numpy as np
    xp = xp or np
    u = xp.arange(width, dtype=dtype or xp.float32) + 0.5
    v = xp.arange(height, dtype=dtype or xp.float32) + 0.5
    uu, vv = xp.meshgrid(u, v, indexing="xy")
    return xp.stack([uu, vv], -1)


def camera_directions(pixels, intrinsics, height, width, normalise: bool = True):
    """Pixels (..., h, w, 2) -> camera-frame directions (..., h, w, 3); z = 1 if not normalised.

    intrinsics (..., 4) broadcast over the pixel grid.
    """
    xp = array_namespace(pixels, intrinsics)
    scale = xp.asarray([width, height], dtype=pixels.dtype)
    f = intrinsics[..., None, None, :2] * scale
    c = intrinsics[..., None, None, 2:] * scale
    xy = (pixels - c) / f
    d = xp.concatenate([xy, xp.ones_like(xy[..., :1])], -1)
    return d / xp.linalg.norm(d, axis=-1, keepdims=True) if normalise else d


def ray_map(c2w, intrinsics, height: int, width: int, patch_size: int = 1, patch_mode: str = "center",
            normalise: bool = True):
    """World-space rays: (origins (..., h, w, 3), directions (..., h, w, 3)), unit directions by default.

    With `normalise=False` directions have camera-frame z = 1, so `origin + depth * direction` is the point
    at z-depth `depth` (only for patch_mode='center').
    """
    xp = array_namespace(c2w, intrinsics)
    _check(c2w, (4, 4), "ray_map c2w")
    _check(intrinsics, (4,), "ray_map intrinsics")
    if height % patch_size or width % patch_size:
        raise ValueError(f"ray_map: image size {height}x{width} is not divisible by patch_size {patch_size}")
    if patch_mode not in ("center", "mean"):
        raise ValueError(f"ray_map: patch_mode must be 'center' or 'mean', got {patch_mode!r}")
    dtype = c2w.dtype if xp.issubdtype(c2w.dtype, xp.floating) else xp.float32
    h, w, p = height // patch_size, width // patch_size, patch_size
    if patch_mode == "center" or p == 1:
        pix = pixel_centers(h, w, xp, dtype) * p  # (j + 0.5) * p = patch centre
        d = camera_directions(pix, intrinsics, height, width, normalise)
    else:
        if not normalise:
            raise ValueError("ray_map: patch_mode='mean' needs normalise=True")
        pix = pixel_centers(height, width, xp, dtype)
        d = camera_directions(pix, intrinsics, height, width, True)
        d = d.reshape(d.shape[:-3] + (h, p, w, p, 3)).mean(axis=(-4, -2))
        d = d / xp.linalg.norm(d, axis=-1, keepdims=True)
    R = c2w[..., None, None, :3, :3]
    d_world = xp.sum(R * d[..., None, :], -1)  # R @ d
    origins = xp.broadcast_to(c2w[..., None, None, :3, 3], d_world.shape)
    return origins, d_world


def plucker(origins, directions, normalise: bool = True):
    """Pluecker coordinates (..., 6) = (moment o x d, direction d); d is made unit first by default."""
    xp = array_namespace(origins, directions)
    _check(origins, (3,), "plucker origins")
    _check(directions, (3,), "plucker directions")
    if normalise:
        directions = directions / xp.linalg.norm(directions, axis=-1, keepdims=True)
    origins = xp.broadcast_to(origins, directions.shape)
    return xp.concatenate([xp.cross(origins, directions), directions], -1)


def plucker_map(c2w, intrinsics, height: int, width: int, patch_size: int = 1, patch_mode: str = "center"):
    """(..., h, w, 6) Pluecker ray map (o x d, d) with unit d."""
    o, d = ray_map(c2w, intrinsics, height, width, patch_size, patch_mode)
    return plucker(o, d, normalise=False)


def ray_map_features(c2w, intrinsics, height: int, width: int, patch_size: int = 1, kind: str = "plucker",
                     patch_mode: str = "center"):
    """Config-facing ray embedding input (..., h, w, 6): kind 'plucker' -> (o x d, d); 'origin_direction' -> (o, d)."""
    xp = array_namespace(c2w, intrinsics)
    if kind == "plucker":
        return plucker_map(c2w, intrinsics, height, width, patch_size, patch_mode)
    if kind == "origin_direction":
        o, d = ray_map(c2w, intrinsics, height, width, patch_size, patch_mode)
        return xp.concatenate([o, d], -1)
    raise ValueError(f"ray_map_features: kind must be 'plucker' or 'origin_direction', got {kind!r}")


def depth_to_points(depth, c2w, intrinsics, world: bool = True):
    """z-depth map (..., H, W) -> point map (..., H, W, 3), in world coordinates (or camera frame)."""
    xp = array_namespace(depth, c2w, intrinsics)
    _check(c2w, (4, 4), "depth_to_points c2w")
    _check(intrinsics, (4,), "depth_to_points intrinsics")
    if depth.ndim < 2:
        raise ValueError(f"depth_to_points depth: expected shape (..., H, W), got {tuple(depth.shape)}")
    H, W = depth.shape[-2:]
    dtype = depth.dtype if xp.issubdtype(depth.dtype, xp.floating) else xp.float32
    pix = pixel_centers(H, W, xp, dtype)
    d = camera_directions(pix, intrinsics, H, W, normalise=False)
    pts = d * depth[..., None].astype(dtype)
    if not world:
        return pts
    flat = pts.reshape(pts.shape[:-3] + (H * W, 3))
    out = camera_to_world(flat, c2w)
    return out.reshape(out.shape[:-2] + (H, W, 3))
