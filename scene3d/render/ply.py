"""Coloured point clouds as PLY files (binary little-endian: float x y z, uchar red green blue), e.g. decoded point
maps. ``write_point_ply(path, xyz, rgb)`` / ``read_point_ply(path) -> (xyz, rgb)``. (3DGS PLYs: data.splat_io.)"""
from __future__ import annotations

import os

import numpy as np

from scene3d.core.io import write_bytes

_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def write_point_ply(path, xyz, rgb) -> None:
    """Write points xyz (N, 3) with colours rgb (N, 3): uint8, or floats in [0, 1] (clipped, rounded)."""
    xyz = np.asarray(xyz, np.float32)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"write_point_ply({path}): xyz must be (N, 3), got {xyz.shape}")
    if rgb.shape != xyz.shape:
        raise ValueError(f"write_point_ply({path}): rgb must be {xyz.shape} like xyz, got {rgb.shape}")
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.asarray(rgb, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rows = np.empty(len(xyz), _DTYPE)
    for i, k in enumerate("xyz"):
        rows[k] = xyz[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        rows[k] = rgb[:, i]
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(xyz)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_bytes(path, [header.encode("ascii"), rows.tobytes()])


def read_point_ply(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a file written by :func:`write_point_ply` -> (xyz (N, 3) float32, rgb (N, 3) uint8)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"read_point_ply({path}): not a PLY file")
    try:
        header = data[:end].decode("ascii").splitlines()
        n = int(next(l.split()[2] for l in header if l.startswith("element vertex")))
    except (UnicodeDecodeError, StopIteration, IndexError, ValueError):
        raise ValueError(f"read_point_ply({path}): bad header (not ASCII or no 'element vertex N' line)") from None
    if "format binary_little_endian 1.0" not in header:
        raise ValueError(f"read_point_ply({path}): expected binary_little_endian, got header {header[:3]}")
    props = [l.split()[-1] for l in header if l.startswith("property")]
    if props != list(_DTYPE.names):
        raise ValueError(f"read_point_ply({path}): expected properties {list(_DTYPE.names)}, got {props}")
    left = len(data) - end - len(b"end_header\n")
    if n < 0 or n * _DTYPE.itemsize > left:
        raise ValueError(f"read_point_ply({path}): header declares {n} points ({n * _DTYPE.itemsize} bytes), "
                         f"{left} bytes follow (truncated file or bad count)")
    rows = np.frombuffer(data, _DTYPE, count=n, offset=end + len(b"end_header\n"))
    xyz = np.stack([rows[k] for k in "xyz"], -1).astype(np.float32)
    if not np.isfinite(xyz).all():
        raise ValueError(f"read_point_ply({path}): {int((~np.isfinite(xyz)).any(-1).sum())} non-finite points")
    rgb = np.stack([rows[k] for k in ("red", "green", "blue")], -1)
    return xyz, rgb
