"""3D Gaussian Splatting files: INRIA PLY (lossless) and antimatter15 .splat (lossy, 32 bytes per Gaussian) here;
the compressed formats in their own modules, all reached through `read_gaussians` / `write_gaussians`:

  format          read  write  suffix                     module
  INRIA PLY       yes   yes    .ply                       here
  .splat          yes   yes    .splat                     here
  Niantic SPZ     1-4   2-4    .spz                       spz.py (version 3 written by default)
  compressed PLY  yes   yes    .ply (chunk element)       compressed_ply.py (PlayCanvas / SuperSplat)
  SOG             v2    no     .sog, or SOG meta.json     sog.py (PlayCanvas; WebP textures)

`read_ply` recognises a compressed PLY by its header and decodes it, so every PLY path takes both. `write_gaussians`
picks the format from `format=` (FORMATS) or the suffix (`.compressed.ply` -> compressed PLY).

PLY: binary little-endian, one `vertex` element with the INRIA property names in any order, each float or
double: x y z, optional nx ny nz, f_dc_0..2, optional f_rest_0..f_rest_{3K-1} (K = 3, 8, 15 for SH degree 1-3,
channel-major: K coefficients of R, then G, then B), opacity (logit), scale_0..2 (log), rot_0..3 (w x y z).
Unknown scalar properties (e.g. `filter_3D`) and elements other than `vertex` are skipped on reading and not
written back. Malformed files raise ValueError naming the file and the problem.

A .splat has no header: `read_splat` refuses a file that starts like another format (PLY, PNG, JPEG, zip, .npy,
gzip, text), as well as NaN positions and negative or non-finite scales; an empty file is 0 Gaussians.

Repair policy: NaN anywhere, or +-inf in anything but opacity, is an error. An infinite opacity logit is a
legitimate saturated alpha (0 or 1) that some trainers write (fox.ply has 37 +inf); `read_ply` keeps it by
default (so read -> write is bit-exact) and logs a warning with the count; `repair=True` clamps it to
+-MAX_OPACITY_LOGIT = logit(1 - 1e-6) ~ 13.8 (alpha 1 - 1e-6) and logs the count of clamped values.

Bit-exact round trip: `g, info = read_ply(p, return_info=True); write_ply(q, g, layout=info.layout)` rewrites
the same bytes for any file that has only known properties, a single element and its comment / obj_info
lines between the `format` line and the element (the INRIA layout). Writes are atomic (temp file + rename).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import Optional, Sequence

import numpy as np

from scene3d.core import io
from scene3d.geometry.gaussians import (Gaussians, activate_opacity, degree_from_num_rest, dc_to_rgb, logit,
                                        normalise_quat, num_rest_coeffs, rgb_to_dc)

log = logging.getLogger(__name__)

MAX_OPACITY_LOGIT = math.log((1 - 1e-6) / 1e-6)
MAX_HEADER_BYTES = 1 << 20
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_FLOAT_TYPES = {"float", "float32", "double", "float64"}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")
_NORMALS = ("nx", "ny", "nz")
_F_REST = re.compile(r"f_rest_(\d+)$")


@dataclasses.dataclass(frozen=True)
class PlyLayout:
    """How a PLY stores the Gaussians: (name, PLY type as spelled) in file order, and comment/obj_info lines."""
    properties: tuple
    comments: tuple = ()


@dataclasses.dataclass(frozen=True)
class PlyInfo:
    """What `read_ply(..., return_info=True)` learned besides the Gaussians."""
    path: str
    layout: PlyLayout  # the known properties only; pass to write_ply to reproduce the file
    ignored_properties: tuple  # unknown vertex properties that were skipped
    num_inf_opacity: int  # infinite opacity logits found
    num_repaired: int  # of those, clamped (repair=True)
    compressed: bool = False  # a PlayCanvas compressed PLY (layout: INRIA float32 for the decoded Gaussians)


def inria_properties(sh_degree: int = 0, normals: bool = False, ply_type: str = "float") -> tuple:
    """The INRIA property order: x y z [nx ny nz] f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3."""
    names = ["x", "y", "z"] + (list(_NORMALS) if normals else []) + ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_coeffs(sh_degree))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return tuple((n, ply_type) for n in names)


# ------------------------------------------------------------------------------------------------ header


@dataclasses.dataclass
class _Element:
    name: str
    count: int
    props: list  # (name, type) or (name, None) for list properties


def _read_header(f, path):
    """-> (elements, comments, header_nbytes). Consumes the header from binary file object f."""
    lines, nbytes = [], 0
    while True:
        raw = f.readline(MAX_HEADER_BYTES)
        nbytes += len(raw)
        if not raw or nbytes > MAX_HEADER_BYTES:
            if not lines:
                raise ValueError(f"{path}: empty file, not a PLY")
            raise ValueError(f"{path}: PLY header has no 'end_header' line (within {MAX_HEADER_BYTES} bytes)")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: PLY header line {len(lines) + 1} is not ASCII "
                             f"(missing 'end_header' or not a PLY file)") from None
        if not lines and line != "ply":
            raise ValueError(f"{path}: not a PLY file (first line must be 'ply', got {line[:40]!r})")
        lines.append(line)
        if line == "end_header":
            break
    fmt, elements, comments = None, [], []
    for no, line in enumerate(lines[1:-1], start=2):
        tok = line.split()
        if not tok:
            continue
        kw = tok[0]
        if kw in ("comment", "obj_info"):
            comments.append(line)
        elif kw == "format":
            if fmt is not None:
                raise ValueError(f"{path}: PLY header line {no}: second 'format' line")
            if elements:
                raise ValueError(f"{path}: PLY header line {no}: 'format' must precede the elements")
            if len(tok) != 3 or tok[1] != "binary_little_endian" or tok[2] != "1.0":
                raise ValueError(f"{path}: unsupported PLY format {line!r}: expected 'format binary_little_endian "
                                 f"1.0'")
            fmt = line
        elif kw == "element":
            if fmt is None:
                raise ValueError(f"{path}: PLY header has no 'format binary_little_endian 1.0' line before "
                                 f"the elements")
            if len(tok) != 3 or not tok[2].isdigit():
                raise ValueError(f"{path}: PLY header line {no}: bad element line {line!r} "
                                 f"(expected 'element NAME COUNT')")
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif kw == "property":
            if not elements:
                raise ValueError(f"{path}: PLY header line {no}: property before any element")
            if len(tok) == 5 and tok[1] == "list":
                elements[-1].props.append((tok[4], None))
            elif len(tok) == 3 and tok[1] in _PLY_TYPES:
                elements[-1].props.append((tok[2], tok[1]))
            else:
                raise ValueError(f"{path}: PLY header line {no}: bad property line {line!r} "
                                 f"(expected 'property TYPE NAME', TYPE one of {sorted(set(_PLY_TYPES))})")
        else:
            raise ValueError(f"{path}: PLY header line {no}: unrecognised line {line!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format binary_little_endian 1.0' line")
    return elements, tuple(comments), nbytes


def _vertex_layout(elements, path):
    """-> (vertex element, byte offset of its data after the header)."""
    offset = 0
    for el in elements:
        if el.name == "vertex":
            return el, offset
        if any(t is None for _, t in el.props):
            raise ValueError(f"{path}: element {el.name!r} with list properties precedes 'vertex' "
                             f"(cannot locate the vertex data)")
        offset += el.count * sum(np.dtype(_PLY_TYPES[t]).itemsize for _, t in el.props)
    raise ValueError(f"{path}: PLY header has no 'element vertex N'")


def _classify(props, path):
    """Check names/types of the vertex properties; -> (known props in file order, ignored names, K)."""
    names = [n for n, _ in props]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate vertex properties {dup}")
    missing = [n for n in _REQUIRED if n not in names]
    if missing:
        raise ValueError(f"{path}: missing required vertex properties {missing} (INRIA 3DGS layout needs "
                         f"{list(_REQUIRED)})")
    has_n = [n in names for n in _NORMALS]
    if any(has_n) and not all(has_n):
        raise ValueError(f"{path}: normals must be all of nx ny nz or none, got "
                         f"{[n for n, h in zip(_NORMALS, has_n) if h]}")
    rest = sorted(int(_F_REST.match(n).group(1)) for n in names if _F_REST.match(n))
    if len(rest) not in (0, 9, 24, 45):
        raise ValueError(f"{path}: wrong f_rest count {len(rest)}: expected 0, 9, 24 or 45 properties "
                         f"(SH degree 0-3)")
    if rest != list(range(len(rest))):
        raise ValueError(f"{path}: f_rest properties must be consecutive f_rest_0..f_rest_{len(rest) - 1}, got "
                         f"indices {rest}")
    known = set(_REQUIRED) | (set(_NORMALS) if all(has_n) else set()) | {f"f_rest_{i}" for i in rest}
    for n, t in props:
        if n in known and t not in _FLOAT_TYPES:
            raise ValueError(f"{path}: vertex property {n!r} has type {t or 'list'}: expected float or double")
    if any(t is None for _, t in props):
        lists = [n for n, t in props if t is None]
        raise ValueError(f"{path}: vertex element has list properties {lists}: not a 3DGS PLY")
    return ([(n, t) for n, t in props if n in known], tuple(n for n, _ in props if n not in known),
            len(rest) // 3)


# -------------------------------------------------------------------------------------------------- read


def read_ply(path, *, repair: bool = False, return_info: bool = False):
    """Read an INRIA 3DGS PLY -> Gaussians (float32, or float64 if any used property is double); a PlayCanvas
    compressed PLY is recognised by its header and decoded (`compressed_ply`, float32, PlyInfo.compressed).

    repair: clamp infinite opacity logits to +-MAX_OPACITY_LOGIT (default: keep them). return_info: also
    return a PlyInfo (layout for a bit-exact `write_ply`, skipped properties, inf/repair counts).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        elements, comments, header_nbytes = _read_header(f, path)
        from scene3d.data import compressed_ply  # imports this module: lazily, as spz / sog below
        if compressed_ply.is_compressed(elements):
            g = compressed_ply.read_compressed_ply(path, f, elements, header_nbytes)
            if not return_info:
                return g
            return g, PlyInfo(path=path, layout=PlyLayout(inria_properties(g.sh_degree), comments),
                              ignored_properties=(), num_inf_opacity=0, num_repaired=0, compressed=True)
        vertex, skip = _vertex_layout(elements, path)
        known, ignored, k = _classify(vertex.props, path)
        dtype = np.dtype([(n, "<" + _PLY_TYPES[t]) for n, t in vertex.props])
        need = vertex.count * dtype.itemsize
        avail = os.fstat(f.fileno()).st_size - header_nbytes - skip
        if need > avail:
            raise ValueError(f"{path}: truncated data or bad vertex count: header declares {vertex.count} vertices "
                             f"x {dtype.itemsize} bytes = {need} bytes, but only {max(avail, 0)} bytes follow")
        if avail > need and elements[-1] is vertex:
            log.warning("%s: %d trailing bytes after the vertex data ignored", path, avail - need)
        f.seek(header_nbytes + skip)
        data = np.fromfile(f, dtype=dtype, count=vertex.count)
    if data.shape[0] != vertex.count:
        raise ValueError(f"{path}: truncated data: read {data.shape[0]} of {vertex.count} vertices")
    if ignored:
        log.info("%s: skipped unknown vertex properties %s", path, list(ignored))
    out_dtype = np.float64 if any(_PLY_TYPES[t] == "f8" for _, t in known) else np.float32

    def cols(names):
        return np.stack([data[n].astype(out_dtype) for n in names], axis=-1)

    for n, _ in known:
        col = data[n]
        bad = np.isnan(col) if n == "opacity" else ~np.isfinite(col)
        if bad.any():
            what = "NaN" if np.isnan(col).any() else "infinite"
            raise ValueError(f"{path}: {int(bad.sum())} {what} values in vertex property {n!r} "
                             f"(first at vertex {int(np.argmax(bad))})")
    opacity = data["opacity"].astype(out_dtype)
    inf = np.isinf(opacity)
    n_inf = int(inf.sum())
    n_rep = 0
    if n_inf and repair:
        opacity = np.clip(opacity, -MAX_OPACITY_LOGIT, MAX_OPACITY_LOGIT).astype(out_dtype)
        n_rep = n_inf
        log.warning("%s: clamped %d infinite opacity logits to +-%.4f", path, n_inf, MAX_OPACITY_LOGIT)
    elif n_inf:
        log.warning("%s: kept %d infinite opacity logits (alpha exactly 0 or 1); read_ply(..., repair=True) "
                    "clamps them", path, n_inf)
    f_rest = None
    if k:
        fr = cols([f"f_rest_{i}" for i in range(3 * k)])  # (N, 3K) channel-major
        f_rest = np.ascontiguousarray(fr.reshape(-1, 3, k).transpose(0, 2, 1))
    names = {n for n, _ in known}
    g = Gaussians(xyz=cols(["x", "y", "z"]), f_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]), opacity=opacity,
                  scale=cols(["scale_0", "scale_1", "scale_2"]), rot=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
                  f_rest=f_rest, normals=cols(list(_NORMALS)) if "nx" in names else None)
    if not return_info:
        return g
    info = PlyInfo(path=path, layout=PlyLayout(tuple(known), comments), ignored_properties=ignored,
                   num_inf_opacity=n_inf, num_repaired=n_rep)
    return g, info


# ------------------------------------------------------------------------------------------------- write


def _as_numpy(g: Gaussians, path) -> Gaussians:
    g = Gaussians(*(None if a is None else np.asarray(a) for a in g))
    try:
        g.validate(f"{path}: gaussians")
    except ValueError as e:
        raise ValueError(str(e)) from None
    if g.xyz.ndim != 2:
        raise ValueError(f"{path}: expected unbatched Gaussians (xyz (N, 3)), got xyz {g.xyz.shape}")
    return g


def _columns(g: Gaussians) -> dict:
    cols = {}
    for i, n in enumerate("xyz"):
        cols[n] = g.xyz[:, i]
    if g.normals is not None:
        for i, n in enumerate(_NORMALS):
            cols[n] = g.normals[:, i]
    for i in range(3):
        cols[f"f_dc_{i}"] = g.f_dc[:, i]
        cols[f"scale_{i}"] = g.scale[:, i]
    if g.f_rest is not None:
        fr = g.f_rest.transpose(0, 2, 1).reshape(g.f_rest.shape[0], -1)  # channel-major
        for i in range(fr.shape[1]):
            cols[f"f_rest_{i}"] = fr[:, i]
    cols["opacity"] = g.opacity
    for i in range(4):
        cols[f"rot_{i}"] = g.rot[:, i]
    return cols


def write_ply(path, g: Gaussians, *, layout: Optional[PlyLayout] = None, comments: Sequence[str] = ()) -> None:
    """Write Gaussians as a binary little-endian INRIA PLY, atomically.

    Without `layout`: INRIA property order (`inria_properties`), float32, normals only if g.normals is set, and
    `comments` as 'comment ...' lines. With `layout` (from read_ply's PlyInfo): its property order, types and
    header lines, which must describe exactly g's fields (same normals / SH degree).
    """
    path = os.fspath(path)
    g = _as_numpy(g, path)
    cols = _columns(g)
    if layout is None:
        props = inria_properties(g.sh_degree, g.normals is not None)
        header_lines = [c if c.startswith(("comment ", "obj_info ")) else "comment " + c for c in comments]
    else:
        props = tuple(layout.properties)
        header_lines = list(layout.comments) + [c if c.startswith(("comment ", "obj_info ")) else "comment " + c
                                                 for c in comments]
        names = [n for n, _ in props]
        if sorted(names) != sorted(cols) or len(set(names)) != len(names):
            raise ValueError(f"{path}: layout properties do not match the Gaussians: layout-only "
                             f"{sorted(set(names) - set(cols))}, gaussians-only {sorted(set(cols) - set(names))}")
        for n, t in props:
            if t not in _FLOAT_TYPES:
                raise ValueError(f"{path}: layout property {n!r} has type {t!r}: expected float or double")
    for line in header_lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"{path}: header comment contains a line break: {line!r}")
    dtype = np.dtype([(n, "<" + _PLY_TYPES[t]) for n, t in props])
    n = g.xyz.shape[0]
    data = np.empty(n, dtype=dtype)
    for name, _ in props:
        data[name] = cols[name]
    header = ["ply", "format binary_little_endian 1.0", *header_lines, f"element vertex {n}",
              *(f"property {t} {name}" for name, t in props), "end_header"]
    io.write_bytes(path, [("\n".join(header) + "\n").encode("ascii"), data.tobytes()])


def alpha8_to_opacity(alpha) -> np.ndarray:
    """Opacity logits of alphas stored in 8 bits (.splat, SPZ, compressed PLY, SOG), clipped half a step inside
    (0, 1) first, to [0.5, 254.5] / 255, so that bytes 0 and 255 give finite logits (about -6.2 and 6.2)."""
    return logit(np.clip(np.asarray(alpha, np.float64), 0.5 / 255, 254.5 / 255))


# ------------------------------------------------------------------------------------------------ .splat

SPLAT_DTYPE = np.dtype([("xyz", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])
assert SPLAT_DTYPE.itemsize == 32


def write_splat(path, g: Gaussians, *, sort: bool = True) -> None:
    """Write the antimatter15 .splat layout (32 bytes per Gaussian, no header), atomically.

    Per Gaussian: float32 x y z, float32 exp(scale) x3, uint8 RGBA = 255 * (0.5 + C0 f_dc, sigmoid(opacity)),
    uint8 quaternion w x y z as 128 * q / |q| + 128 (as the reference convert.py), values rounded to nearest
    and clipped to [0, 255] (the reference truncates). SH degree >= 1 is dropped. sort: order by
    exp(sum scale) * alpha descending (stable), as the reference converter does for its viewer.
    """
    path = os.fspath(path)
    g = _as_numpy(g, path)
    if g.sh_degree > 0:
        log.info("%s: .splat stores SH degree 0 only; dropping degree %d coefficients", path, g.sh_degree)
    scale64 = g.scale.astype(np.float64)
    alpha = activate_opacity(g.opacity.astype(np.float64))
    if sort:
        order = np.argsort(-(np.exp(scale64.sum(-1)) * alpha), kind="stable")
        g = g.take(order)
        scale64, alpha = scale64[order], alpha[order]
    rec = np.empty(g.xyz.shape[0], dtype=SPLAT_DTYPE)
    rec["xyz"] = g.xyz
    rec["scale"] = np.exp(scale64)
    rgba = np.concatenate([dc_to_rgb(g.f_dc.astype(np.float64)), alpha[:, None]], -1)
    rec["rgba"] = np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8)
    q = normalise_quat(g.rot.astype(np.float64))
    rec["rot"] = np.clip(np.rint(q * 128 + 128), 0, 255).astype(np.uint8)
    io.write_bytes(path, [rec.tobytes()])


# Files of another kind that a .splat (which has no header) could be confused with, by their first bytes.
_OTHER_MAGIC = ((b"ply\n", "a PLY file"), (b"ply\r\n", "a PLY file"), (b"\x89PNG", "a PNG image"),
                (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a zip / .npz archive"),
                (b"\x93NUMPY", "a .npy array"), (b"\x1f\x8b", "a gzip file"), (b"GIF8", "a GIF image"),
                (b"RIFF", "a RIFF (WebP / AVI) file"))


def _splat_kind_check(path, head: bytes) -> None:
    """Reject a file of another kind renamed .splat: known magic numbers, or a first record that is all printable
    text (a real first record holds float32 positions and scales, whose bytes are almost never all ASCII)."""
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            raise ValueError(f"{path}: not a .splat file: it starts like {what} (rename it to its real suffix)")
    if head and all(32 <= b < 127 or b in b"\t\n\r" for b in head[:SPLAT_DTYPE.itemsize]):
        raise ValueError(f"{path}: not a .splat file: its first {SPLAT_DTYPE.itemsize} bytes are text "
                         f"({head[:SPLAT_DTYPE.itemsize]!r})")


def read_splat(path) -> Gaussians:
    """Read an antimatter15 .splat -> float32 Gaussians (SH degree 0), undoing `write_splat`'s activations.

    Alpha is clipped to [0.5/255, 254.5/255] before the logit (finite logits); zero scales are clamped to the
    smallest float32 normal; quaternion bytes decode as (b - 128) / 128, normalised (an all-128 quaternion
    becomes the identity). Negative or non-finite scales and non-finite positions raise ValueError, and so does a
    file of another kind renamed .splat (PLY, image, archive or text: `_splat_kind_check`). An empty file is a
    valid .splat of 0 Gaussians.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _splat_kind_check(path, f.read(SPLAT_DTYPE.itemsize))
        if size % SPLAT_DTYPE.itemsize:
            raise ValueError(f"{path}: .splat size {size} bytes is not a multiple of {SPLAT_DTYPE.itemsize} "
                             f"(truncated or not a .splat file)")
        f.seek(0)
        rec = np.fromfile(f, dtype=SPLAT_DTYPE, count=size // SPLAT_DTYPE.itemsize)
    if not np.isfinite(rec["xyz"]).all():
        raise ValueError(f"{path}: non-finite positions in {int((~np.isfinite(rec['xyz'])).any(-1).sum())} splats")
    sc = rec["scale"].astype(np.float64)
    if not (np.isfinite(sc).all() and (sc >= 0).all()):
        raise ValueError(f"{path}: negative or non-finite scales in "
                         f"{int((~(np.isfinite(sc) & (sc >= 0))).any(-1).sum())} splats")
    scale = np.log(np.maximum(sc, np.finfo(np.float32).tiny))
    rgba = rec["rgba"].astype(np.float64) / 255
    q = (rec["rot"].astype(np.float64) - 128) / 128
    zero = np.linalg.norm(q, axis=-1) == 0
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    f32 = np.float32
    return Gaussians(xyz=rec["xyz"].astype(f32), f_dc=rgb_to_dc(rgba[:, :3]).astype(f32),
                     opacity=alpha8_to_opacity(rgba[:, 3]).astype(f32), scale=scale.astype(f32),
                     rot=normalise_quat(q).astype(f32))


FORMATS = ("ply", "splat", "spz", "compressed_ply")  # what write_gaussians writes
GAUSSIAN_SUFFIXES = (".ply", ".splat", ".spz", ".sog")  # what read_gaussians reads (and a SOG meta.json)


def is_gaussian_file(path) -> bool:
    """Whether read_gaussians takes this file: a known suffix, or a .json that is a SOG meta.json."""
    p = os.fspath(path)
    if p.lower().endswith(GAUSSIAN_SUFFIXES):
        return True
    if p.lower().endswith(".json") and os.path.isfile(p):
        from scene3d.data import sog
        return sog.is_sog_meta(p)
    return False


def format_of(path) -> str:
    """The format read_gaussians / write_gaussians use for a path: 'ply' (INRIA or compressed, told apart by the
    header on reading), 'compressed_ply' (a name ending .compressed.ply, for writing), 'splat', 'spz' or 'sog'."""
    p = os.fspath(path).lower()
    if p.endswith(".compressed.ply"):
        return "compressed_ply"
    for suffix in GAUSSIAN_SUFFIXES:
        if p.endswith(suffix):
            return suffix[1:]
    if p.endswith(".json"):
        return "sog"
    raise ValueError(f"{path}: unknown Gaussian splat file type (expected {', '.join(GAUSSIAN_SUFFIXES)} or a SOG "
                     f"meta.json)")


def read_gaussians(path, *, repair: bool = False, **kwargs) -> Gaussians:
    """Read any supported 3DGS file by its suffix: .ply (INRIA or compressed; `read_ply(path, repair=..,
    **kwargs)`), .splat, .spz (`spz.read_spz(path, **kwargs)`), .sog or a SOG meta.json. The lossy formats store
    alpha in 8 bits and read back finite opacity logits, so `repair` only concerns PLY."""
    p = os.fspath(path)
    fmt = format_of(p)
    if fmt in ("ply", "compressed_ply"):
        return read_ply(p, repair=repair, **kwargs)
    if fmt == "spz":
        from scene3d.data import spz
        return spz.read_spz(p, **kwargs)
    if kwargs:
        raise TypeError(f"read_gaussians: unexpected options {sorted(kwargs)} for a .{fmt} file")
    if fmt == "splat":
        return read_splat(p)
    from scene3d.data import sog
    return sog.read_sog(p)


def write_gaussians(path, g: Gaussians, *, format: Optional[str] = None, **kwargs) -> None:
    """Write Gaussians as `format` (one of FORMATS; default from the suffix, `format_of`), atomically. kwargs go to
    the writer: write_ply(comments=, layout=), write_splat(sort=), spz.write_spz(version=, ...),
    compressed_ply.write_compressed_ply(comments=)."""
    fmt = format or format_of(path)
    if fmt not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: cannot write format {fmt!r} (expected one of {FORMATS})")
    if fmt == "ply":
        return write_ply(path, g, **kwargs)
    if fmt == "splat":
        return write_splat(path, g, **kwargs)
    if fmt == "spz":
        from scene3d.data import spz
        return spz.write_spz(path, g, **kwargs)
    from scene3d.data import compressed_ply
    return compressed_ply.write_compressed_ply(path, g, **kwargs)


def output_suffix(fmt: str) -> str:
    """File suffix for a write_gaussians format: .ply, .splat, .spz, .compressed.ply."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown 3DGS output format {fmt!r} (expected one of {FORMATS})")
    return ".compressed.ply" if fmt == "compressed_ply" else "." + fmt
