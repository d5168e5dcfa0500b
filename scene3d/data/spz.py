"""Niantic SPZ (`.spz`): compressed 3D Gaussian splats, read (versions 1-4) and written (versions 2, 3, 4).

Written from the format description of github.com/nianticlabs/spz (README "File Format"); no code is shared with it.
A file is one of two containers:

- versions 1-3: a gzip stream holding a 16-byte header (little-endian uint32 magic 0x5053474e "NGSP", uint32
  version, uint32 numPoints, uint8 shDegree, uint8 fractionalBits, uint8 flags, uint8 reserved) followed by the
  attribute blocks below, all Gaussians of one attribute together. Bytes after the blocks are vendor extensions
  (flags & 0x2), skipped with a warning.
- version 4: a 32-byte plain header (magic, version, numPoints, shDegree, fractionalBits, flags, uint8 numStreams,
  uint32 tocByteOffset, 12 reserved bytes), extension records up to tocByteOffset, a table of contents of
  numStreams x (uint64 compressed size, uint64 uncompressed size), then one zstd frame per non-empty attribute
  block. Needs the `zstandard` package (pinned in requirements.txt), imported only for version 4.

Attribute blocks, in this order, per Gaussian:
  positions  3 x 24-bit signed fixed point, `fractionalBits` fraction bits (12: 1/4096 steps, |x| < 2048);
             version 1: 3 x float16
  alphas     uint8 round(255 sigmoid(opacity))
  colors     3 x uint8 round(255 (0.15 f_dc + 0.5))   (SH DC, so "wide" colours below 0 / above 1 survive)
  scales     3 x uint8 round(16 (log scale + 10))     (log scale in [-10, 5.94], 1/16 steps)
  rotations  version 2: 3 x uint8 round(127.5 (q + 1)) of x y z with w >= 0 (w = sqrt(1 - |xyz|^2));
             versions 3, 4 "smallest three": uint32, bits 30-31 the index (x y z w order) of the largest |q_i|, made
             positive; the three others in index order, first in the highest bits, 10 bits each: a sign bit and
             a 9-bit magnitude round(511 |q_i| / sqrt(1/2))
  sh         3 x dim(shDegree) uint8 round(128 c) + 128, coefficient-major with the colour channel fastest (the
             layout of our f_rest (N, K, 3)); writers may round to coarser buckets (5 bits for degree 1, 4 bits
             above: `sh1_bits`, `sh_rest_bits`) so the bytes gzip better; readers decode (b - 128) / 128.

Axes: the format's reference library says data "should" be stored right-up-back (RUB, OpenGL / three.js) and
converts when its caller names a source system; its own ply_to_spz / spz_to_ply tools and PlayCanvas splat-transform
(SuperSplat) name none and copy coordinates as they are, so an .spz holds the axes of the PLY it came from. That is
the default here too: a scene written and read back, or converted by any of those tools, keeps its frame.
`flip_yz=True` converts between scene3d's right-down-forward (RDF, INRIA PLY / OpenCV) and RUB, as the library does
for from=RDF / to=RDF: positions (x, -y, -z), quaternion vector part (x, -y, -z), and each real SH basis function
of degree l changes sign with its parity in y and z (degree 1 y z x: - - +; degree 2 xy yz (3z^2-1) xz (x^2-y^2):
- + + - +; degree 3: - + - - + - +).

Reading clips alpha bytes to [0.5, 254.5] / 255 before the logit (finite opacities, as `read_splat`); SH degree 4
(SPZ allows it, scene3d stops at 3) is dropped with a warning. Malformed files raise ValueError naming the file and
the field; the point count is checked against the file size before anything is allocated and decompression is
bounded by the size the header implies (no gzip / zstd bomb).
"""
from __future__ import annotations

import dataclasses
import io as _io
import logging
import math
import os
import struct
import zlib
from typing import Optional

import numpy as np

from scene3d.core import io
from scene3d.data.splat_io import _as_numpy, alpha8_to_opacity
from scene3d.geometry.gaussians import Gaussians, activate_opacity, normalise_quat, num_rest_coeffs

log = logging.getLogger(__name__)

MAGIC = 0x5053474E  # b"NGSP" little-endian
WRITE_VERSIONS = (2, 3, 4)
READ_VERSIONS = (1, 2, 3, 4)
COLOR_SCALE = 0.15
MAX_SPZ_SH_DEGREE = 4
FLAG_ANTIALIASED, FLAG_EXTENSIONS = 0x1, 0x2
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand a stream by more (RFC 1951 longest match per 2 bits)
MAX_ZSTD_RATIO = 1024  # the reference loader's sanity bound on numPoints against the file size
MAX_EXTENSION_BYTES = 1 << 20
_LEGACY_HEADER = struct.Struct("<IIIBBBB")
_V4_HEADER = struct.Struct("<IIIBBBBI12s")
_SQRT1_2 = math.sqrt(0.5)
_RDF_RUB = np.array([1.0, -1.0, -1.0])
# sign of each real SH basis function (degrees 1..3, f_rest order) under (x, y, z) -> (x, -y, -z)
_SH_FLIP = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float64)


def sh_dim(degree: int) -> int:
    """SH coefficients per colour channel beyond DC for SPZ's degrees 0..4."""
    return (degree + 1) ** 2 - 1


@dataclasses.dataclass(frozen=True)
class SpzInfo:
    """What `read_spz(..., return_info=True)` learned besides the Gaussians."""
    path: str
    version: int
    num_points: int
    sh_degree: int  # as stored (4 is dropped to 3 on reading)
    fractional_bits: int
    antialiased: bool
    extension_bytes: int  # vendor extension bytes skipped


def _layout(n: int, version: int, degree: int) -> list:
    """(name, bytes) of the attribute blocks in file order."""
    return [("positions", n * 3 * (2 if version == 1 else 3)), ("alphas", n), ("colors", n * 3), ("scales", n * 3),
            ("rotations", n * (3 if version < 3 else 4)), ("sh", n * 3 * sh_dim(degree))]


def _check_header(path, version, n, degree, fbits, where=""):
    if version not in READ_VERSIONS:
        raise ValueError(f"{path}: unsupported SPZ version {version}{where} (expected one of {READ_VERSIONS})")
    if degree > MAX_SPZ_SH_DEGREE:
        raise ValueError(f"{path}: SPZ header field shDegree is {degree} (expected 0..{MAX_SPZ_SH_DEGREE})")
    if version > 1 and fbits > 23:
        raise ValueError(f"{path}: SPZ header field fractionalBits is {fbits} (expected 0..23 for 24-bit fixed "
                         f"point positions)")
    if n > 2 ** 31 - 1:
        raise ValueError(f"{path}: SPZ header field numPoints is {n} (more than 2^31 - 1)")


def _inflate(path, data: bytes) -> tuple:
    """Gzip container (versions 1-3) -> (header tuple, payload bytes, extension byte count), bounded."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = d.decompress(data, _LEGACY_HEADER.size)
    except zlib.error as e:
        raise ValueError(f"{path}: corrupt SPZ gzip stream ({e})") from None
    if len(head) < _LEGACY_HEADER.size:
        raise ValueError(f"{path}: SPZ gzip stream ends inside the 16-byte header ({len(head)} bytes)")
    magic, version, n, degree, fbits, flags, _ = _LEGACY_HEADER.unpack(head)
    if magic != MAGIC:
        raise ValueError(f"{path}: SPZ header field magic is {magic:#010x} (expected {MAGIC:#010x}, 'NGSP')")
    if version == 4:
        raise ValueError(f"{path}: SPZ version 4 inside a gzip stream (version 4 files start with 'NGSP', zstd)")
    _check_header(path, version, n, degree, fbits)
    need = sum(b for _, b in _layout(n, version, degree))
    if need > len(data) * MAX_DEFLATE_RATIO:
        raise ValueError(f"{path}: SPZ header field numPoints is {n}: {need} bytes of attributes cannot come from "
                         f"{len(data)} compressed bytes (truncated file or corrupt header)")
    try:
        payload = d.decompress(d.unconsumed_tail, need) if need else b""  # max_length 0 would mean unbounded
        ext = b""
        if len(payload) == need and not d.eof:
            ext = d.decompress(d.unconsumed_tail, MAX_EXTENSION_BYTES + 1)
    except zlib.error as e:
        raise ValueError(f"{path}: corrupt SPZ gzip stream ({e})") from None
    if len(payload) < need:
        raise ValueError(f"{path}: SPZ data truncated: header declares {n} points ({need} attribute bytes), the "
                         f"gzip stream holds {len(payload)}")
    if len(ext) > MAX_EXTENSION_BYTES:
        raise ValueError(f"{path}: more than {MAX_EXTENSION_BYTES} bytes after the SPZ attributes")
    if not d.eof:
        raise ValueError(f"{path}: SPZ gzip stream is truncated (no end of stream / CRC)")
    return (version, n, degree, fbits, flags), payload, len(ext)


def _unzstd(path, data: bytes) -> tuple:
    """Version 4 container -> (header tuple, payload bytes, extension byte count), bounded."""
    if len(data) < _V4_HEADER.size:
        raise ValueError(f"{path}: SPZ version 4 file is {len(data)} bytes, shorter than its 32-byte header")
    magic, version, n, degree, fbits, flags, nstreams, toc, reserved = _V4_HEADER.unpack_from(data)
    if version != 4:
        raise ValueError(f"{path}: SPZ header field version is {version} in a plain 'NGSP' file (expected 4; "
                         f"versions 1-3 are gzip streams)")
    _check_header(path, version, n, degree, fbits)
    if n * 9 > len(data) * MAX_ZSTD_RATIO:
        raise ValueError(f"{path}: SPZ header field numPoints is {n}: too many for a {len(data)}-byte file")
    blocks = [(name, b) for name, b in _layout(n, version, degree) if b]
    if nstreams != len(blocks):
        raise ValueError(f"{path}: SPZ header field numStreams is {nstreams} (expected {len(blocks)} for "
                         f"{n} points of SH degree {degree})")
    toc_end = toc + 16 * nstreams
    if toc < _V4_HEADER.size or toc_end > len(data):
        raise ValueError(f"{path}: SPZ header field tocByteOffset is {toc} (table of contents outside the "
                         f"{len(data)}-byte file)")
    try:
        import zstandard
    except ImportError:  # pinned in requirements.txt; only version 4 needs it
        raise ValueError(f"{path}: SPZ version 4 needs the 'zstandard' package (pip install zstandard)") from None
    out, off = [], toc_end
    for i, (name, size) in enumerate(blocks):
        csize, usize = struct.unpack_from("<QQ", data, toc + 16 * i)
        if usize != size:
            raise ValueError(f"{path}: SPZ stream {i} ({name}) declares {usize} uncompressed bytes (expected "
                             f"{size})")
        if csize > len(data) - off:
            raise ValueError(f"{path}: SPZ stream {i} ({name}) of {csize} bytes runs past the end of the file")
        try:
            with zstandard.ZstdDecompressor().stream_reader(_io.BytesIO(data[off:off + csize])) as r:
                block = r.read(size)
                more = r.read(1)
        except zstandard.ZstdError as e:
            raise ValueError(f"{path}: SPZ stream {i} ({name}): corrupt zstd data ({e})") from None
        if len(block) != size or more:
            raise ValueError(f"{path}: SPZ stream {i} ({name}) decompresses to "
                             f"{'more than' if more else len(block)} bytes (expected {size})")
        out.append(block)
        off += csize
    if off != len(data):
        raise ValueError(f"{path}: {len(data) - off} bytes after the last SPZ stream")
    if reserved != bytes(12):
        log.warning("%s: SPZ reserved header bytes are not zero", path)
    return (version, n, degree, fbits, flags), b"".join(out), toc - _V4_HEADER.size


def read_spz(path, *, flip_yz: bool = False, return_info: bool = False):
    """Read an .spz (versions 1-4) -> float32 Gaussians, axes as stored (flip_yz: RUB -> RDF, module docstring).
    return_info: also return an SpzInfo."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"NGSP":
        (version, n, degree, fbits, flags), payload, n_ext = _unzstd(path, data)
    elif data[:2] == b"\x1f\x8b":
        (version, n, degree, fbits, flags), payload, n_ext = _inflate(path, data)
    else:
        raise ValueError(f"{path}: not an SPZ file (starts with {data[:4]!r}; expected a gzip stream or 'NGSP')")
    if n_ext:
        log.warning("%s: skipped %d bytes of SPZ extensions%s", path, n_ext,
                    "" if flags & FLAG_EXTENSIONS else " (extension flag not set)")
    blocks, off = {}, 0
    for name, size in _layout(n, version, degree):
        blocks[name] = np.frombuffer(payload, np.uint8, size, off)
        off += size
    if version == 1:
        xyz = np.frombuffer(blocks["positions"].tobytes(), "<f2").reshape(n, 3).astype(np.float64)
        if not np.isfinite(xyz).all():
            raise ValueError(f"{path}: non-finite float16 positions in {int((~np.isfinite(xyz)).any(-1).sum())} "
                             f"points")
    else:
        b = blocks["positions"].reshape(n, 3, 3).astype(np.int32)
        v = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        xyz = ((v ^ 0x800000) - 0x800000).astype(np.float64) / (1 << fbits)
    f_dc = (blocks["colors"].reshape(n, 3) / 255.0 - 0.5) / COLOR_SCALE
    scale = blocks["scales"].reshape(n, 3) / 16.0 - 10.0
    if version < 3:
        q = blocks["rotations"].reshape(n, 3) / 127.5 - 1.0
        xyzw = np.concatenate([q, np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(-1)))[:, None]], -1)
    else:
        xyzw = _unpack_smallest_three(blocks["rotations"].view("<u4") if n else np.zeros(0, np.uint32))
    rot = xyzw[:, [3, 0, 1, 2]]
    k = sh_dim(degree)
    f_rest = (blocks["sh"].reshape(n, k, 3).astype(np.float64) - 128) / 128 if k else None
    if degree > 3:
        log.warning("%s: SPZ SH degree %d: dropping the degree-4 coefficients (scene3d keeps degree <= 3)", path,
                    degree)
        f_rest = f_rest[:, :num_rest_coeffs(3)]
    if flip_yz:
        xyz, rot, f_rest = _flip_yz(xyz, rot, f_rest)
    f32 = np.float32
    g = Gaussians(xyz=xyz.astype(f32), f_dc=f_dc.astype(f32),
                  opacity=alpha8_to_opacity(blocks["alphas"] / 255.0).astype(f32),
                  scale=scale.astype(f32), rot=normalise_quat(rot).astype(f32),
                  f_rest=None if f_rest is None else f_rest.astype(f32))
    if not return_info:
        return g
    return g, SpzInfo(path, version, n, degree, fbits, bool(flags & FLAG_ANTIALIASED), n_ext)


def _unpack_smallest_three(comp) -> np.ndarray:
    """(N,) uint32 -> (N, 4) x y z w."""
    comp = comp.astype(np.int64)
    largest = comp >> 30
    out = np.zeros((comp.shape[0], 4))
    rows = np.arange(comp.shape[0])
    # the three stored components, in index order, sit at bits 20-29, 10-19, 0-9
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j, shift in enumerate((20, 10, 0)):
        field = (comp >> shift) & 0x3FF
        val = _SQRT1_2 * (field & 0x1FF) / 511.0
        out[rows, others[:, j]] = np.where(field >> 9, -val, val)
    out[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (out * out).sum(-1)))
    return out


def _flip_yz(xyz, rot, f_rest):
    """RDF <-> RUB (its own inverse): see the module docstring."""
    xyz = xyz * _RDF_RUB
    rot = rot * np.array([1.0, 1.0, -1.0, -1.0])
    if f_rest is not None:
        f_rest = f_rest * _SH_FLIP[:f_rest.shape[1], None]
    return xyz, rot, f_rest


# ------------------------------------------------------------------------------------------------- write


def _pack_smallest_three(xyzw) -> np.ndarray:
    """(N, 4) unit x y z w -> (N,) uint32."""
    a = np.abs(xyzw)
    largest = np.argmax(a, -1)  # first maximum, as the reference encoder's strict '>' scan
    rows = np.arange(xyzw.shape[0])
    negate = xyzw[rows, largest] < 0
    comp = largest.astype(np.uint64)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        v = xyzw[rows, others[:, j]]
        neg = ((v < 0) ^ negate).astype(np.uint64)
        mag = np.minimum(np.floor(511.0 * np.abs(v) / _SQRT1_2 + 0.5), 511).astype(np.uint64)
        comp = (comp << np.uint64(10)) | (neg << np.uint64(9)) | mag
    return comp.astype("<u4")


def _quantize_sh(x, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.rint(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def write_spz(path, g: Gaussians, *, version: int = 3, fractional_bits: Optional[int] = None, sh1_bits: int = 5,
              sh_rest_bits: int = 4, antialiased: bool = False, flip_yz: bool = False) -> None:
    """Write Gaussians as .spz (version 2, 3 or 4), atomically.

    fractional_bits: position fixed-point fraction bits (default 12, the reference writer's; lowered with a warning
    when the scene does not fit 24 bits, i.e. |x| >= 2048). sh1_bits / sh_rest_bits: SH bucket bits (1-8) for degree 1
    and degrees 2-3. flip_yz: convert RDF -> RUB (module docstring; default: axes as they are).
    Version 2 stores rotations as 3 x 8 bits; 3 and 4 as smallest-three 10 bits (version 4 needs `zstandard`).
    """
    path = os.fspath(path)
    if version not in WRITE_VERSIONS:
        raise ValueError(f"{path}: SPZ version {version} cannot be written (expected one of {WRITE_VERSIONS})")
    for name, bits in (("sh1_bits", sh1_bits), ("sh_rest_bits", sh_rest_bits)):
        if not 1 <= bits <= 8:
            raise ValueError(f"{path}: {name}={bits}: expected 1..8")
    g = _as_numpy(g, path)
    for field in ("xyz", "f_dc", "scale", "rot", "f_rest"):
        a = getattr(g, field)
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"{path}: non-finite values in Gaussians.{field}: SPZ stores finite fixed-point values")
    if np.isnan(g.opacity).any():
        raise ValueError(f"{path}: NaN values in Gaussians.opacity")
    n, degree = g.xyz.shape[0], g.sh_degree
    rot = normalise_quat(g.rot.astype(np.float64))
    rot[np.linalg.norm(g.rot.astype(np.float64), axis=-1) == 0] = (1.0, 0.0, 0.0, 0.0)
    xyz, rot, f_rest = g.xyz.astype(np.float64), rot, None if g.f_rest is None else g.f_rest.astype(np.float64)
    if flip_yz:
        xyz, rot, f_rest = _flip_yz(xyz, rot, f_rest)
    reach = float(np.abs(xyz).max()) if n else 0.0
    fit = 23 - max(0, math.floor(math.log2(reach)) + 1) if reach > 0 else 23  # largest fbits with |x| 2^fb < 2^23
    if fractional_bits is None:
        fractional_bits = min(12, fit)
        if fractional_bits < 12:
            log.warning("%s: positions reach %.1f: SPZ fixed point uses %d fraction bits (step %.3g) instead of 12",
                        path, reach, fractional_bits, 2.0 ** -fractional_bits)
        if fractional_bits < 0:
            raise ValueError(f"{path}: positions reach {reach:.3g}, beyond SPZ's 24-bit fixed point range")
    elif not 0 <= fractional_bits <= 23 or fractional_bits > fit:
        raise ValueError(f"{path}: fractional_bits={fractional_bits}: positions reaching {reach:.4g} need at most "
                         f"{fit} fraction bits in 24-bit fixed point")
    fixed = np.rint(xyz * (1 << fractional_bits)).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, fixed >> 16], -1).astype(np.uint8)
    alphas = np.clip(np.rint(activate_opacity(g.opacity.astype(np.float64)) * 255), 0, 255).astype(np.uint8)
    colors = np.clip(np.rint(g.f_dc.astype(np.float64) * (COLOR_SCALE * 255) + 127.5), 0, 255).astype(np.uint8)
    scales = np.clip(np.rint((g.scale.astype(np.float64) + 10.0) * 16.0), 0, 255).astype(np.uint8)
    xyzw = rot[:, [1, 2, 3, 0]]
    if version == 2:
        xyzw = np.where(xyzw[:, 3:] < 0, -xyzw, xyzw)
        rotations = np.clip(np.rint(xyzw[:, :3] * 127.5 + 127.5), 0, 255).astype(np.uint8)
    else:
        rotations = _pack_smallest_three(xyzw)
    if f_rest is not None:
        k1 = num_rest_coeffs(1)
        sh = np.concatenate([_quantize_sh(f_rest[:, :k1], sh1_bits), _quantize_sh(f_rest[:, k1:], sh_rest_bits)], 1)
    else:
        sh = np.zeros((n, 0, 3), np.uint8)
    blocks = [np.ascontiguousarray(b).tobytes() for b in (positions, alphas, colors, scales, rotations, sh)]
    flags = FLAG_ANTIALIASED if antialiased else 0
    if version < 4:
        header = _LEGACY_HEADER.pack(MAGIC, version, n, degree, fractional_bits, flags, 0)
        data = _gzip(header + b"".join(blocks))
    else:
        import zstandard
        blocks = [b for b in blocks if b]
        frames = [zstandard.ZstdCompressor(level=12).compress(b) for b in blocks]
        header = _V4_HEADER.pack(MAGIC, 4, n, degree, fractional_bits, flags, len(frames), _V4_HEADER.size,
                                 bytes(12))
        toc = b"".join(struct.pack("<QQ", len(c), len(u)) for c, u in zip(frames, blocks))
        data = header + toc + b"".join(frames)
    io.write_bytes(path, data)


def _gzip(raw: bytes) -> bytes:
    """Deterministic gzip (mtime 0), default level as the reference writer."""
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
    return c.compress(raw) + c.flush()
