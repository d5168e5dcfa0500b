"""PlayCanvas compressed PLY (SuperSplat, splat-transform, gsplat's `ply_compressed` export): read and write.

Written from the layout PlayCanvas's readers and writers agree on (github.com/playcanvas/splat-transform); no code
is shared with them. A binary little-endian PLY with

  element chunk C     float min_x min_y min_z max_x max_y max_z min_scale_x .. max_scale_z [min_r min_g min_b
                      max_r max_g max_b]                    (12 or 18 properties, one chunk per 256 Gaussians)
  element vertex N    uint packed_position packed_rotation packed_scale packed_color
  [element sh N       uchar f_rest_0 .. f_rest_{3K-1}]      (K = 3, 8, 15: SH degree 1-3, INRIA channel-major)

with C = ceil(N / 256): Gaussian i belongs to chunk i // 256, whose min / max bound its values.
  packed_position  11 / 10 / 11 bits (x from bit 21, y from bit 11, z from bit 0) of (v - min) / (max - min),
                   each field an unsigned normalised integer u / (2^bits - 1)
  packed_scale     the same for the log scales (chunk bounds clamped to [-20, 20])
  packed_color     8 bits each, from the top: r g b (colour 0.5 + C0 f_dc, normalised by the chunk's min_r .. max_b,
                   or taken as is when the chunk has 12 properties) and alpha = sigmoid(opacity)
  packed_rotation  2 bits (30-31): index i of the largest |rot_i| (w x y z order), made positive; then the three others
                   in index order, 10 bits each, from bit 20 down: u / 1023 = q / sqrt(2) + 0.5
  sh               byte = clip(trunc(256 (c / 8 + 0.5)), 0, 255); decoded 0 -> -4, 255 -> 4, else
                   ((b + 0.5) / 256 - 0.5) * 8

Precision: positions to (max - min) / 2047 (x, z) or / 1023 (y) of their chunk, scales likewise in log space,
colours to 1/255 of the chunk's colour range, alpha 1/255, quaternion components 1/1023 * sqrt(2), SH 1/32.
Reading clips alpha to [0.5, 254.5] / 255 before the logit (finite opacities, as `read_splat`). The writer orders
the Gaussians along a Morton (Z-order) curve of their positions first, so that chunks are compact, as PlayCanvas's
and gsplat's writers do: the file holds the same Gaussians in another order.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from scene3d.core import io
from scene3d.data.splat_io import _PLY_TYPES, _as_numpy, alpha8_to_opacity
from scene3d.geometry.gaussians import (Gaussians, activate_opacity, dc_to_rgb, normalise_quat, num_rest_coeffs,
                                        rgb_to_dc)

log = logging.getLogger(__name__)

CHUNK_SIZE = 256
CHUNK_PROPS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
               "max_scale_x", "max_scale_y", "max_scale_z")
COLOR_PROPS = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
VERTEX_PROPS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
MAX_LOG_SCALE = 20.0
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


def is_compressed(elements) -> bool:
    """Whether parsed PLY header elements (splat_io._read_header) describe a compressed PLY: a 'chunk' element and a
    'vertex' element with packed_position."""
    names = {el.name: el for el in elements}
    return "chunk" in names and "vertex" in names and any(n == "packed_position" for n, _ in names["vertex"].props)


def _check_element(path, el, expected, ply_type):
    props = [n for n, _ in el.props]
    if tuple(props) != tuple(expected):
        raise ValueError(f"{path}: compressed PLY element {el.name!r} has properties {props}: expected "
                         f"{list(expected)}")
    bad = [n for n, t in el.props if t != ply_type and not (ply_type == "uint" and t == "uint32")
           and not (ply_type == "float" and t == "float32") and not (ply_type == "uchar" and t == "uint8")]
    if bad:
        raise ValueError(f"{path}: compressed PLY element {el.name!r} properties {bad} must be {ply_type}")


def read_compressed_ply(path, f, elements, header_nbytes) -> Gaussians:
    """Decode a compressed PLY whose header `_read_header` has parsed (f positioned after it) -> float32 Gaussians."""
    names = [el.name for el in elements]
    if len(set(names)) != len(names) or not set(names) <= {"chunk", "vertex", "sh"}:
        raise ValueError(f"{path}: compressed PLY elements are {names}: expected chunk, vertex and optionally sh")
    els = {el.name: el for el in elements}
    chunk, vertex, sh = els["chunk"], els["vertex"], els.get("sh")
    if len(chunk.props) not in (12, 18):
        raise ValueError(f"{path}: compressed PLY element 'chunk' has {len(chunk.props)} properties: expected 12 or "
                         f"18 ({list(CHUNK_PROPS + COLOR_PROPS)})")
    _check_element(path, chunk, CHUNK_PROPS + (COLOR_PROPS if len(chunk.props) == 18 else ()), "float")
    _check_element(path, vertex, VERTEX_PROPS, "uint")
    n = vertex.count
    if chunk.count != math.ceil(n / CHUNK_SIZE):
        raise ValueError(f"{path}: compressed PLY has {chunk.count} chunks for {n} vertices: expected "
                         f"ceil({n} / {CHUNK_SIZE}) = {math.ceil(n / CHUNK_SIZE)}")
    k = 0
    if sh is not None:
        if len(sh.props) not in (9, 24, 45):
            raise ValueError(f"{path}: compressed PLY element 'sh' has {len(sh.props)} properties: expected 9, 24 "
                             f"or 45 (SH degree 1-3)")
        _check_element(path, sh, [f"f_rest_{i}" for i in range(len(sh.props))], "uchar")
        if sh.count != n:
            raise ValueError(f"{path}: compressed PLY element 'sh' has {sh.count} rows for {n} vertices")
        k = len(sh.props) // 3
    dtypes = {el.name: np.dtype([(p, "<" + _PLY_TYPES[t]) for p, t in el.props]) for el in elements}
    need = sum(el.count * dtypes[el.name].itemsize for el in elements)
    avail = os.fstat(f.fileno()).st_size - header_nbytes
    if need > avail:
        raise ValueError(f"{path}: truncated data or bad counts: the header's elements need {need} bytes, only "
                         f"{max(avail, 0)} follow")
    if avail > need:
        log.warning("%s: %d trailing bytes after the compressed PLY data ignored", path, avail - need)
    f.seek(header_nbytes)
    data = {el.name: np.fromfile(f, dtype=dtypes[el.name], count=el.count) for el in elements}
    c = data["chunk"]
    for p in c.dtype.names:
        bad = ~np.isfinite(c[p])
        if bad.any():
            raise ValueError(f"{path}: compressed PLY chunk {int(np.argmax(bad))}: property {p!r} is not finite")
    ci = np.arange(n) // CHUNK_SIZE
    v = data["vertex"]

    def bounds(prefix_min, prefix_max, axes):
        lo = np.stack([c[f"{prefix_min}{a}"] for a in axes], -1).astype(np.float64)[ci]
        hi = np.stack([c[f"{prefix_max}{a}"] for a in axes], -1).astype(np.float64)[ci]
        return lo, hi

    def unorm(word, shift, bits):
        return ((word.astype(np.int64) >> shift) & ((1 << bits) - 1)) / ((1 << bits) - 1)

    def u111011(word):
        return np.stack([unorm(word, 21, 11), unorm(word, 11, 10), unorm(word, 0, 11)], -1)

    lo, hi = bounds("min_", "max_", "xyz")
    xyz = lo + (hi - lo) * u111011(v["packed_position"])
    lo, hi = bounds("min_scale_", "max_scale_", "xyz")
    scale = lo + (hi - lo) * u111011(v["packed_scale"])
    col = np.stack([unorm(v["packed_color"], s, 8) for s in (24, 16, 8, 0)], -1)
    rgb = col[:, :3]
    if "min_r" in c.dtype.names:
        lo, hi = bounds("min_", "max_", "rgb")
        rgb = lo + (hi - lo) * rgb
    word = v["packed_rotation"].astype(np.int64)
    largest = word >> 30
    rot = np.zeros((n, 4))
    rows = np.arange(n)
    for j, shift in enumerate((20, 10, 0)):
        rot[rows, _OTHERS[largest, j]] = (unorm(word, shift, 10) - 0.5) * math.sqrt(2)
    rot[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (rot * rot).sum(-1)))
    f_rest = None
    if k:
        b = np.stack([data["sh"][f"f_rest_{i}"] for i in range(3 * k)], -1).astype(np.float64)
        u = np.where(b == 0, 0.0, np.where(b == 255, 1.0, (b + 0.5) / 256))
        f_rest = ((u - 0.5) * 8).reshape(n, 3, k).transpose(0, 2, 1)  # channel-major -> (N, K, 3)
    f32 = np.float32
    return Gaussians(xyz=xyz.astype(f32), f_dc=rgb_to_dc(rgb).astype(f32),
                     opacity=alpha8_to_opacity(col[:, 3]).astype(f32),
                     scale=scale.astype(f32), rot=normalise_quat(rot).astype(f32),
                     f_rest=None if f_rest is None else np.ascontiguousarray(f_rest.astype(f32)))


# ------------------------------------------------------------------------------------------------- write


def morton_order(xyz) -> np.ndarray:
    """Indices sorting points along a 3D Morton (Z-order) curve of their 10-bit quantised positions (stable)."""
    xyz = np.asarray(xyz, np.float64)
    if xyz.shape[0] == 0:
        return np.zeros(0, np.int64)
    lo, hi = xyz.min(0), xyz.max(0)
    ext = np.where(hi > lo, hi - lo, 1.0)
    q = np.clip(np.floor((xyz - lo) / ext * 1024), 0, 1023).astype(np.int64)
    code = np.zeros(xyz.shape[0], np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _unorm(x, bits):
    t = (1 << bits) - 1
    return np.clip(np.floor(x * t + 0.5), 0, t).astype(np.int64)


def _normalise(x, lo, hi):
    span = hi - lo
    out = np.where(span[:, None, :] < 1e-5, 0.0, (x - lo[:, None, :]) / np.where(span < 1e-5, 1.0, span)[:, None, :])
    return np.clip(out, 0.0, 1.0)


def write_compressed_ply(path, g: Gaussians, *, comments=()) -> None:
    """Write Gaussians as a PlayCanvas compressed PLY (18 chunk properties, SH degree kept), atomically. The
    Gaussians are reordered along a Morton curve (module docstring)."""
    path = os.fspath(path)
    g = _as_numpy(g, path)
    for field in ("xyz", "f_dc", "rot", "f_rest"):
        a = getattr(g, field)
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{path}: non-finite values in Gaussians.{field}: compressed PLY stores bounded values")
    if np.isnan(g.opacity).any() or np.isnan(g.scale).any():
        raise ValueError(f"{path}: NaN values in Gaussians.opacity / scale")
    n = g.xyz.shape[0]
    g = g.take(morton_order(g.xyz))
    nc = math.ceil(n / CHUNK_SIZE)
    pad = nc * CHUNK_SIZE - n

    def chunked(a):  # (N, D) -> (C, 256, D), padding the last chunk with its last row (keeps its min / max)
        a = np.asarray(a, np.float64)
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, 0)], 0)
        return a.reshape(nc, CHUNK_SIZE, a.shape[1])

    xyz = chunked(g.xyz)
    scale = chunked(np.clip(g.scale.astype(np.float64), -1e30, 1e30))
    rgb = chunked(dc_to_rgb(g.f_dc.astype(np.float64)).astype(np.float32))  # colours kept in float32, as PlayCanvas
    pmin, pmax = xyz.min(1), xyz.max(1)
    smin, smax = (np.clip(scale.min(1), -MAX_LOG_SCALE, MAX_LOG_SCALE),
                  np.clip(scale.max(1), -MAX_LOG_SCALE, MAX_LOG_SCALE))
    cmin, cmax = rgb.min(1), rgb.max(1)

    def pack111011(u):
        return (_unorm(u[..., 0], 11) << 21) | (_unorm(u[..., 1], 10) << 11) | _unorm(u[..., 2], 11)

    position = pack111011(_normalise(xyz, pmin, pmax)).reshape(-1)[:n]
    packed_scale = pack111011(_normalise(scale, smin, smax)).reshape(-1)[:n]
    cu = _normalise(rgb, cmin, cmax).reshape(-1, 3)[:n]
    alpha = activate_opacity(g.opacity.astype(np.float64))
    color = ((_unorm(cu[:, 0], 8) << 24) | (_unorm(cu[:, 1], 8) << 16) | (_unorm(cu[:, 2], 8) << 8)
             | _unorm(alpha, 8))
    q = normalise_quat(g.rot.astype(np.float64))
    q[np.linalg.norm(g.rot.astype(np.float64), axis=-1) == 0] = (1.0, 0.0, 0.0, 0.0)
    largest = np.argmax(np.abs(q), -1)
    rows = np.arange(n)
    q = np.where(q[rows, largest][:, None] < 0, -q, q)
    rotation = largest.astype(np.int64)
    for j in range(3):
        rotation = (rotation << 10) | _unorm(q[rows, _OTHERS[largest, j]] / math.sqrt(2) + 0.5, 10)
    vert = np.empty(n, np.dtype([(p, "<u4") for p in VERTEX_PROPS]))
    for p, a in zip(VERTEX_PROPS, (position, rotation, packed_scale, color)):
        vert[p] = a.astype(np.uint32)
    chunk = np.concatenate([pmin, pmax, smin, smax, cmin, cmax], -1).astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments),
              f"element chunk {nc}", *(f"property float {p}" for p in CHUNK_PROPS + COLOR_PROPS),
              f"element vertex {n}", *(f"property uint {p}" for p in VERTEX_PROPS)]
    parts = [chunk.tobytes(), vert.tobytes()]
    if g.f_rest is not None:
        k = num_rest_coeffs(g.sh_degree)
        fr = g.f_rest.astype(np.float64).transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major
        header += [f"element sh {n}", *(f"property uchar f_rest_{i}" for i in range(3 * k))]
        parts.append(np.clip(np.trunc((fr / 8 + 0.5) * 256), 0, 255).astype(np.uint8).tobytes())
    for line in header:
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path}: header comment contains a line break: {line!r}")
    io.write_bytes(path, [("\n".join(header + ["end_header"]) + "\n").encode("ascii"), *parts])
