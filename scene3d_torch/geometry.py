"""Camera rays in PyTorch: per-pixel / per-patch ray maps and Pluecker coordinates.

Port of :mod:`scene3d.geometry.rays` (``patch_mode='center'``). Conventions: OpenCV camera-to-world c2w
(..., 4, 4), intrinsics (..., 4) = (fx/W, fy/H, cx/W, cy/H) normalised by the image size, pixel centres at
(j + 0.5, i + 0.5). Maps come out as (..., h, w, C) with h = H // patch, w = W // patch.
"""
from __future__ import annotations

import torch


def _check(x: torch.Tensor, tail: tuple[int, ...], name: str) -> None:
    if x.ndim < len(tail) or tuple(x.shape[-len(tail):]) != tuple(tail):
        raise ValueError(f"{name}: expected shape (..., {', '.join(map(str, tail))}), got {tuple(x.shape)}")


def pixel_centers(height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H, W, 2) continuous (u, v) = (j + 0.5, i + 0.5) coordinates of every pixel centre."""
    u = torch.arange(width, dtype=dtype, device=device) + 0.5
    v = torch.arange(height, dtype=dtype, device=device) + 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], -1)


def camera_directions(pixels: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
                      normalise: bool = True) -> torch.Tensor:
    """Pixels (..., h, w, 2) -> camera-frame directions (..., h, w, 3); z = 1 if not normalised."""
    scale = torch.tensor([width, height], dtype=pixels.dtype, device=pixels.device)
    f = intrinsics[..., None, None, :2] * scale
    c = intrinsics[..., None, None, 2:] * scale
    xy = (pixels - c) / f
    d = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    return d / torch.linalg.norm(d, dim=-1, keepdim=True) if normalise else d


def ray_map(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int, patch_size: int = 1,
            normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel / patch centres: (origins (..., h, w, 3), directions (..., h, w, 3)).

    Unit directions by default; with ``normalise=False`` the camera-frame z of a direction is 1, so
    ``origin + depth * direction`` is the point at z-depth ``depth``.
    """
    _check(c2w, (4, 4), "ray_map c2w")
    _check(intrinsics, (4,), "ray_map intrinsics")
    if height % patch_size or width % patch_size:
        raise ValueError(f"ray_map: image size {height}x{width} is not divisible by patch_size {patch_size}")
    dtype = c2w.dtype if c2w.is_floating_point() else torch.float32
    c2w, intrinsics = c2w.to(dtype), intrinsics.to(dtype)
    h, w, p = height // patch_size, width // patch_size, patch_size
    pix = pixel_centers(h, w, dtype=dtype, device=c2w.device) * p  # (j + 0.5) * p = patch centre
    d = camera_directions(pix, intrinsics, height, width, normalise)
    rot = c2w[..., None, None, :3, :3]
    d_world = torch.sum(rot * d[..., None, :], -1)  # R @ d
    origins = torch.broadcast_to(c2w[..., None, None, :3, 3], d_world.shape)
    return origins, d_world


def plucker(origins: torch.Tensor, directions: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Pluecker coordinates (..., 6) = (moment o x d, direction d); d is made unit first by default."""
    _check(origins, (3,), "plucker origins")
    _check(directions, (3,), "plucker directions")
    if normalise:
        directions = directions / torch.linalg.norm(directions, dim=-1, keepdim=True)
    origins = torch.broadcast_to(origins, directions.shape)
    return torch.cat([torch.linalg.cross(origins, directions, dim=-1), directions], -1)


def plucker_map(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
                patch_size: int = 1) -> torch.Tensor:
    """(..., h, w, 6) Pluecker ray map (o x d, d) with unit d through each pixel / patch centre."""
    o, d = ray_map(c2w, intrinsics, height, width, patch_size)
    return plucker(o, d, normalise=False)
