"""PlayCanvas SOG ("spatially ordered Gaussians", version 2): read a `.sog` bundle or an unbundled `meta.json`.

Written from the layout of github.com/playcanvas/splat-transform's SOG writer and reader; no code is shared with them.
A SOG is `meta.json` plus lossless WebP textures, one texel per Gaussian in row-major order (texel i = Gaussian i),
either side by side in a folder or stored together in a zip archive (`.sog`, meta.json at its root):

  meta.json  {"version": 2, "count": N,
              "means":  {"mins": [3], "maxs": [3], "files": ["means_l.webp", "means_u.webp"]},
              "scales": {"codebook": [256], "files": ["scales.webp"]},
              "quats":  {"files": ["quats.webp"]},
              "sh0":    {"codebook": [256], "files": ["sh0.webp"]},
              "shN":    {"count": P, "bands": 1-3, "codebook": [256], "files": ["shN_centroids.webp",
                                                                              "shN_labels.webp"]}}   (optional)
  means      16 bits per axis, low byte in means_l, high byte in means_u (RGB = x y z):
             v = mins + (maxs - mins) u / 65535, position = sign(v) (exp|v| - 1)
  quats      RGB: the three smaller components c of the unit quaternion (w x y z order, the largest made positive),
             b = 255 (c / sqrt(2) + 0.5) rounded down, decoded c = (2 b / 255 - 1) / sqrt(2); A = 252 + index of the
             largest
  scales     RGB: indices into the 256-entry codebook of log scales
  sh0        RGB: indices into the codebook of f_dc values; A: round-down 255 sigmoid(opacity)
  shN        labels (R + 256 G) pick one of P palette entries; palette entry p occupies texels (p % 64) K ..
             (p % 64) K + K - 1 of row p // 64 of the centroids texture (K = 3, 8, 15 coefficients), RGB = codebook
             indices of the R, G, B coefficient

Version 1 SOG files (no "version" key, per-channel min / max instead of codebooks) are refused with a message.
Bounds: meta.json and every texture are size-checked before decoding (WebP dimensions read from the header; a
texture must hold `count` texels and not hugely more), texture names must be plain file names inside the SOG's
folder or archive, and a quaternion tag outside 252-255 is an error. Reading clips alpha to [0.5, 254.5] / 255
before the logit (finite opacities, as `read_splat`).
"""
from __future__ import annotations

import io as _io
import json
import logging
import math
import os
import zipfile

import numpy as np

from scene3d.data.splat_io import alpha8_to_opacity
from scene3d.geometry.gaussians import Gaussians, normalise_quat, num_rest_coeffs

log = logging.getLogger(__name__)

MAX_META_BYTES = 16 << 20
MAX_COUNT = 16383 * 16383  # WebP's dimension limit, as the reference writer
_QUAT_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


def is_sog_meta(path) -> bool:
    """Whether a .json file looks like a SOG meta.json (an object with 'means' and 'quats'); never raises."""
    try:
        if os.path.getsize(path) > MAX_META_BYTES:
            return False
        with open(path, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "means" in meta and "quats" in meta


class _Folder:
    """Texture files beside meta.json; names may not leave the folder (no '..', no absolute paths, no symlinks out)."""

    def __init__(self, meta_path):
        self.meta_path = os.path.abspath(meta_path)
        self.root = os.path.realpath(os.path.dirname(self.meta_path))

    def meta_bytes(self):
        if os.path.getsize(self.meta_path) > MAX_META_BYTES:
            raise ValueError(f"{self.meta_path}: SOG meta.json larger than {MAX_META_BYTES} bytes")
        with open(self.meta_path, "rb") as f:
            return f.read()

    def read(self, name, limit):
        full = os.path.realpath(os.path.join(self.root, name))
        if os.path.commonpath([full, self.root]) != self.root:
            raise ValueError(f"{self.meta_path}: SOG texture {name!r} lies outside {self.root}")
        if not os.path.isfile(full):
            raise ValueError(f"{self.meta_path}: SOG texture {name!r} not found in {self.root}")
        if os.path.getsize(full) > limit:
            raise ValueError(f"{self.meta_path}: SOG texture {name!r} is {os.path.getsize(full)} bytes, more than "
                             f"{limit} for its pixels")
        with open(full, "rb") as f:
            return f.read()


class _Zip:
    """Texture members of a .sog zip archive (looked up by name; declared sizes checked before inflating)."""

    def __init__(self, path):
        self.meta_path = path
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a SOG bundle (zip archive): {e}") from None

    def _member(self, name, limit):
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise ValueError(f"{self.meta_path}: SOG bundle has no member {name!r}") from None
        if info.file_size > limit:
            raise ValueError(f"{self.meta_path}: SOG member {name!r} declares {info.file_size} bytes, more than "
                             f"{limit}")
        try:
            with self.zf.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
            raise ValueError(f"{self.meta_path}: SOG member {name!r} is corrupt: {e}") from None
        if len(data) > limit:
            raise ValueError(f"{self.meta_path}: SOG member {name!r} inflates past {limit} bytes")
        return data

    def meta_bytes(self):
        return self._member("meta.json", MAX_META_BYTES)

    def read(self, name, limit):
        return self._member(name, limit)


def _field(meta, path, *keys, kind=None):
    """meta[keys[0]][keys[1]]... with a ValueError naming the field when absent or of the wrong type."""
    v = meta
    for i, k in enumerate(keys):
        if not isinstance(v, dict) or k not in v:
            raise ValueError(f"{path}: SOG meta.json has no field {'.'.join(keys[:i + 1])!r}")
        v = v[k]
    if kind is not None and (not isinstance(v, kind) or isinstance(v, bool)):
        raise ValueError(f"{path}: SOG meta.json field {'.'.join(keys)!r} is {type(v).__name__}, expected "
                         f"{getattr(kind, '__name__', kind)}")
    return v


def _floats(meta, path, *keys, length):
    v = _field(meta, path, *keys, kind=list)
    try:
        a = np.array(v, np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != (length,) or not np.isfinite(a).all():
        raise ValueError(f"{path}: SOG meta.json field {'.'.join(keys)!r} must be {length} finite numbers")
    return a


def _files(meta, path, key, n):
    files = _field(meta, path, key, "files", kind=list)
    if len(files) != n or not all(isinstance(f, str) for f in files):
        raise ValueError(f"{path}: SOG meta.json field '{key}.files' must list {n} file names")
    for f in files:
        if not f or os.path.isabs(f) or f != os.path.basename(f) or f in (".", ".."):
            raise ValueError(f"{path}: SOG meta.json field '{key}.files' names {f!r}: expected a plain file name")
    return files


def _texture(src, path, name, count, palette=None) -> np.ndarray:
    """Decode one WebP texture to (H*W, 4) uint8 after checking its size against the texels it must hold
    (palette=(width, max_height): the SH centroids, exactly that wide and at most that high)."""
    from PIL import Image

    max_px = 4 * count + (1 << 16) if palette is None else palette[0] * palette[1]
    data = src.read(name, 16 * max_px + (1 << 16))
    try:
        im = Image.open(_io.BytesIO(data))
        fmt, (w, h) = im.format, im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types for foreign / corrupt bytes
        raise ValueError(f"{path}: SOG texture {name!r} is not an image ({type(e).__name__}: {e})") from None
    if fmt != "WEBP":
        raise ValueError(f"{path}: SOG texture {name!r} is {fmt}, expected WebP")
    if palette is not None and (w != palette[0] or not 1 <= h <= palette[1]):
        raise ValueError(f"{path}: SOG texture {name!r} is {w}x{h}, expected {palette[0]} wide and 1..{palette[1]} "
                         f"high for the SH palette")
    if w * h < count or w * h > max_px:
        raise ValueError(f"{path}: SOG texture {name!r} is {w}x{h} = {w * h} texels for {count} Gaussians")
    try:
        rgba = np.asarray(im.convert("RGBA"), np.uint8)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: SOG texture {name!r} does not decode ({type(e).__name__}: {e})") from None
    return rgba.reshape(-1, 4)


def read_sog(path) -> Gaussians:
    """Read a SOG (a `.sog` zip bundle, or a `meta.json` with its textures beside it) -> float32 Gaussians."""
    path = os.fspath(path)
    if path.lower().endswith(".sog"):
        src = _Zip(path)
    else:
        src = _Folder(path)
    try:
        meta = json.loads(src.meta_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: SOG meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: SOG meta.json is a {type(meta).__name__}, expected an object")
    if "version" not in meta:
        raise ValueError(f"{path}: SOG version 1 (meta.json without 'version') is not supported: re-export it with "
                         f"a current splat-transform / SuperSplat (version 2)")
    version = _field(meta, path, "version", kind=int)
    if version != 2:
        raise ValueError(f"{path}: SOG meta.json field 'version' is {version} (expected 2)")
    n = _field(meta, path, "count", kind=int)
    if not 0 <= n <= MAX_COUNT:
        raise ValueError(f"{path}: SOG meta.json field 'count' is {n} (expected 0..{MAX_COUNT})")
    mins, maxs = _floats(meta, path, "means", "mins", length=3), _floats(meta, path, "means", "maxs", length=3)
    scale_cb = _floats(meta, path, "scales", "codebook", length=256)
    sh0_cb = _floats(meta, path, "sh0", "codebook", length=256)
    means_l, means_u = (_texture(src, path, f, n)[:n] for f in _files(meta, path, "means", 2))
    quats = _texture(src, path, _files(meta, path, "quats", 1)[0], n)[:n]
    scales = _texture(src, path, _files(meta, path, "scales", 1)[0], n)[:n]
    sh0 = _texture(src, path, _files(meta, path, "sh0", 1)[0], n)[:n]

    u = (means_l[:, :3].astype(np.int64) | (means_u[:, :3].astype(np.int64) << 8)) / 65535.0
    span = np.where(maxs - mins == 0, 1.0, maxs - mins)
    v = mins + span * u
    xyz = np.sign(v) * np.expm1(np.abs(v))
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: SOG meta.json field 'means' bounds give non-finite positions")
    tag = quats[:, 3].astype(np.int64)
    bad = (tag < 252) | (tag > 255)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: SOG texture quats texel {i} has tag {tag[i]} (expected 252-255; lossy WebP?)")
    largest = tag - 252
    rot = np.zeros((n, 4))
    rows = np.arange(n)
    for j in range(3):
        rot[rows, _QUAT_OTHERS[largest, j]] = (quats[:, j] / 255.0 * 2 - 1) / math.sqrt(2)
    rot[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (rot * rot).sum(-1)))
    scale = scale_cb[scales[:, :3]]
    f_dc = sh0_cb[sh0[:, :3]]
    f_rest = None
    if "shN" in meta:
        bands = _field(meta, path, "shN", "bands", kind=int)
        if bands not in (1, 2, 3):
            raise ValueError(f"{path}: SOG meta.json field 'shN.bands' is {bands} (expected 1, 2 or 3)")
        k = num_rest_coeffs(bands)
        palette = _field(meta, path, "shN", "count", kind=int)
        if not 0 < palette <= 65536:
            raise ValueError(f"{path}: SOG meta.json field 'shN.count' is {palette} (expected 1..65536)")
        cb = _floats(meta, path, "shN", "codebook", length=256)
        cname, lname = _files(meta, path, "shN", 2)
        rows_c = math.ceil(palette / 64)
        cen = _texture(src, path, cname, 0, palette=(64 * k, rows_c))
        cen = np.concatenate([cen, np.zeros((64 * k * rows_c - len(cen), 4), np.uint8)])  # rows the writer left
        # out (fewer centroids than the palette size) read as codebook entry 0, as the reference reader
        labels = _texture(src, path, lname, n)[:n]
        label = labels[:, 0].astype(np.int64) | (labels[:, 1].astype(np.int64) << 8)
        out = label >= palette
        if out.any():
            log.warning("%s: %d SOG SH labels beyond the %d-entry palette read as zero SH", path, int(out.sum()),
                        palette)
        lab = np.where(out, 0, label)
        texel = (lab // 64)[:, None] * (64 * k) + (lab % 64)[:, None] * k + np.arange(k)[None, :]  # (N, K)
        f_rest = cb[cen[texel][..., :3]]  # (N, K, 3)
        f_rest[out] = 0.0
    f32 = np.float32
    return Gaussians(xyz=xyz.astype(f32), f_dc=f_dc.astype(f32), opacity=alpha8_to_opacity(sh0[:, 3] / 255).astype(f32),
                     scale=scale.astype(f32), rot=normalise_quat(rot).astype(f32),
                     f_rest=None if f_rest is None else f_rest.astype(f32))
