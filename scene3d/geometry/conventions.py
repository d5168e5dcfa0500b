"""Readers, writers and converters between camera file formats and the scene3d convention.

Ours: OpenCV camera axes (x right, y down, z forward), 4x4 camera-to-world, intrinsics normalised by image size
(see `scene3d.geometry.cameras`). Each format has `read_*` returning our convention and `write_*` going back:

- NeRF / instant-ngp `transforms.json` (OpenGL c2w: x right, y up, z backward)     read/write_transforms_json
- LLFF `poses_bounds.npy` (c2w rotation columns [down, right, back], (h, w, f))   read/write_llff
- COLMAP `cameras`, `images`, `points3D` in .bin and .txt (world-to-camera qvec+t)  read/write_colmap_*
- RealEstate10K pose files (normalised intrinsics, 3x4 world-to-camera)             read/write_re10k
- 3DGS (INRIA) `cameras.json` (c2w rotation + camera centre, fx fy in pixels)       read/write_3dgs_cameras

Readers use numpy (float64) and the world frame of the file unchanged. Lens distortion is not applied by our
pinhole model: readers return it separately.

Bad input: every reader raises ValueError naming the file and the frame / entry / line / field for a malformed file
(text that is not UTF-8, invalid JSON, wrong types, booleans or strings where numbers belong, truncated binary data,
declared counts the file cannot hold - checked before anything is allocated -, duplicate or non-integer ids, complex
or non-finite values, zero or negative image sizes and focal lengths, zero quaternions). Poses must be rigid
(`cameras.check_rotations`: max |R R^T - I| <= RIGID_ATOL, det > 0); readers of formats that store matrices take
`repair=True` to re-orthonormalise rotations that are nearly rigid (logged), never by default. A missing file is
the usual FileNotFoundError. Image paths read from a file (transforms.json frames, COLMAP image names) are
confined to the capture's folder after resolving symlinks (`resolve_image`, `confine_path`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import struct
from typing import Optional

import numpy as np

from scene3d.core import io
from scene3d.geometry.cameras import (Cameras, check_intrinsics, check_pose_matrices, check_rotations, invert_rigid,
                                      make_c2w)
from scene3d.geometry.so3 import matrix_to_quat, quat_to_matrix

log = logging.getLogger(__name__)

_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------------ axis conversions


def opengl_to_opencv(c2w):
    """OpenGL/NeRF c2w (x right, y up, z back) <-> OpenCV c2w: flip the camera y and z axes (an involution)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"opengl_to_opencv: expected (..., 4, 4), got {c2w.shape}")
    return c2w @ _FLIP_YZ


opencv_to_opengl = opengl_to_opencv


def llff_to_opencv(pose):
    """LLFF (..., 3, 4) [down, right, back | t] camera-to-world -> OpenCV (..., 4, 4) c2w."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-2:] != (3, 4):
        raise ValueError(f"llff_to_opencv: expected (..., 3, 4), got {pose.shape}")
    R = np.stack([pose[..., 1], pose[..., 0], -pose[..., 2]], -1)
    return make_c2w(R, pose[..., 3])


def opencv_to_llff(c2w):
    """OpenCV (..., 4, 4) c2w -> LLFF (..., 3, 4) [down, right, back | t]."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"opencv_to_llff: expected (..., 4, 4), got {c2w.shape}")
    return np.stack([c2w[..., :3, 1], c2w[..., :3, 0], -c2w[..., :3, 2], c2w[..., :3, 3]], -1)


def _shared_size(hs, ws, path):
    hs, ws = set(int(round(h)) for h in hs), set(int(round(w)) for w in ws)
    if len(hs) != 1 or len(ws) != 1:
        raise ValueError(f"{path}: views have different image sizes (heights {sorted(hs)}, widths {sorted(ws)}); "
                         "Cameras needs one size: split the views by size")
    return hs.pop(), ws.pop()


# ------------------------------------------------------------------------------------------ parsing helpers


def _read_text(path) -> str:
    try:
        return pathlib.Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}): not a text file of this "
                         f"format") from None


def _read_json(path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, too many digits, nesting too deep
        raise ValueError(f"{path}: not valid JSON ({str(e)[:200]})") from None


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _number(v, where: str, *, integer: bool = False, positive: bool = False) -> float:
    """A JSON number (not a bool, string or list) as a finite float; `integer`: no fractional part; `positive`:
    > 0. ValueError naming `where` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: expected a number, got {type(v).__name__} {_short(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise ValueError(f"{where}: number out of range ({_short(v)})") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: expected a finite number, got {x}")
    if integer and x != math.floor(x):
        raise ValueError(f"{where}: expected an integer, got {x!r}")
    if positive and x <= 0:
        raise ValueError(f"{where}: must be positive, got {x:g}")
    return x


def _json_id(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{where}: expected an integer id, got {type(v).__name__} {_short(v)}")
    return v


def _json_array(v, where: str, shapes: Optional[tuple] = None) -> np.ndarray:
    """A nested JSON list of numbers (with one of `shapes`, if given) -> finite float64 array; ValueError naming
    `where`."""
    try:
        a = np.array(v, dtype=object)
    except (ValueError, TypeError):  # ragged nesting
        raise ValueError(f"{where}: expected a rectangular nested list of numbers, got a ragged list") from None
    if shapes is not None and a.shape not in shapes:
        raise ValueError(f"{where} has shape {a.shape}, expected {shapes[0]}")
    for x in a.flat:
        _number(x, where)
    return a.astype(np.float64)


def real_array(a, where: str) -> np.ndarray:
    """A numpy array read from a file as float64: real numbers only (complex, bool, string, object dtypes refused,
    rather than silently dropping an imaginary part or casting). ValueError naming `where`."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected real numbers, got dtype {a.dtype}")
    return a.astype(np.float64)


def _int_tok(tok: str, where: str, what: str) -> int:
    try:
        v = int(tok)
    except ValueError:
        raise ValueError(f"{where}: {what} must be an integer, got {_short(tok)}") from None
    if not -(1 << 63) <= v < (1 << 63):
        raise ValueError(f"{where}: {what} {_short(tok)} is out of the int64 range")
    return v


def _float_toks(toks, where: str, what: str) -> np.ndarray:
    try:
        v = np.array([float(t) for t in toks], np.float64)
    except ValueError:
        raise ValueError(f"{where}: {what} must be numbers, got {_short(' '.join(toks))}") from None
    if not np.isfinite(v).all():
        raise ValueError(f"{where}: {what} must be finite, got {_short(' '.join(toks))}")
    return v


# --------------------------------------------------------------------------------------- transforms.json


@dataclasses.dataclass
class TransformsData:
    """Result of `read_transforms_json`: cameras of the frames whose images exist, in file order."""

    cameras: Cameras
    file_paths: list  # as written in the json
    skipped: list  # file_paths of frames whose image file is absent
    distortion: dict  # k1 k2 k3 k4 p1 p2 ... as given (not applied)
    meta: dict  # remaining top-level keys (aabb_scale, scale, offset, ...)

    @property
    def num_skipped(self):
        return len(self.skipped)


_INTR_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
_DIST_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def confine_path(root, file_path, where: str) -> pathlib.Path:
    """``root / file_path`` for a path read from a file in `root`, after checking that it stays inside `root` once
    symlinks are resolved (absolute paths and ``..`` that leave the folder, or a symlink pointing out of it, raise
    ValueError naming `where`). Returns the unresolved path (names stay as the file wrote them)."""
    if not isinstance(file_path, str) or not file_path or "\x00" in file_path:
        raise ValueError(f"{where}: expected a non-empty path string, got {_short(file_path)}")
    root = pathlib.Path(root)
    p = root / file_path
    try:
        inside = p.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:  # symlink loop, name too long
        raise ValueError(f"{where}: cannot resolve {file_path!r} ({e})") from None
    if not inside:
        raise ValueError(f"{where}: path {file_path!r} leads outside the capture folder {root} (absolute, '..' or "
                         f"a symlink out of it): refused")
    return p


def resolve_image(root, file_path: str, where: Optional[str] = None) -> Optional[pathlib.Path]:
    """The image file ``root / file_path`` names, trying the usual extensions when the name has none (NeRF-synthetic
    style ``./train/r_0``); None when there is no such file. Confined to `root` (`confine_path`): a path leaving it
    raises ValueError naming `where` (default: root and the path)."""
    where = where or f"{root}: image {_short(file_path)}"
    p = confine_path(root, file_path, where)
    try:
        for q in [p] + ([p.with_name(p.name + ext) for ext in IMAGE_EXTENSIONS] if p.name else []):
            if q.is_file():
                return confine_path(root, os.path.relpath(q, root), where) if q.is_symlink() else q
    except OSError as e:
        raise ValueError(f"{where}: cannot look up {file_path!r} ({e})") from None
    return None


def _image_size(img: pathlib.Path, where: str) -> tuple:
    from PIL import Image
    try:
        with Image.open(img) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, DecompressionBombError)
        raise ValueError(f"{where}: cannot read the size of image {img} ({type(e).__name__}: {e})") from None


def read_transforms_json(path, check_files: bool = True, *, repair: bool = False) -> TransformsData:
    """Read a NeRF / instant-ngp transforms.json into OpenCV c2w and normalised intrinsics.

    Intrinsics come from fl_x/fl_y/cx/cy/w/h or camera_angle_x (and camera_angle_y), top level or per frame
    (per-frame values win; null counts as absent). cx, cy default to the image centre; w, h default to the first
    image's size.
    With `check_files`, frames whose image file is absent are skipped and listed in `.skipped`; frame paths must
    stay inside the json's folder (`confine_path`). `repair`: re-orthonormalise nearly rigid rotations
    (`cameras.check_rotations`) instead of raising.
    """
    path = pathlib.Path(path)
    meta = _read_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'frames' list")
    root = path.parent
    c2ws, intrs, sizes, kept, skipped, labels = [], [], [], [], [], []
    for i, frame in enumerate(meta["frames"]):
        if not isinstance(frame, dict):
            raise ValueError(f"{path}: frames[{i}]: expected an object, got {type(frame).__name__}")
        fp = frame.get("file_path")
        if fp is None:
            raise ValueError(f"{path}: frames[{i}] has no 'file_path'")
        if not isinstance(fp, str) or not fp:
            raise ValueError(f"{path}: frames[{i}].file_path: expected a non-empty string, got {_short(fp)}")
        if "transform_matrix" not in frame:
            raise ValueError(f"{path}: frames[{i}] ({fp}) has no 'transform_matrix' (expected a 4x4 list)")
        img = resolve_image(root, fp, f"{path}: frames[{i}].file_path") if check_files else None
        if check_files and img is None:
            skipped.append(fp)
            continue
        m = _json_array(frame["transform_matrix"], f"{path}: frames[{i}].transform_matrix", ((4, 4), (3, 4)))
        if m.shape == (3, 4):
            m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]], 0)
        spec = {k: frame.get(k, meta.get(k)) for k in _INTR_KEYS}

        def num(key, **kw):
            return None if spec[key] is None else _number(spec[key], f"{path}: frames[{i}]: {key!r}", **kw)

        w, h = num("w", integer=True, positive=True), num("h", integer=True, positive=True)
        if w is None or h is None:
            if img is None:
                img = resolve_image(root, fp, f"{path}: frames[{i}].file_path")
            if img is None:
                raise ValueError(f"{path}: frames[{i}]: no 'w'/'h' and image {fp} not found to read its size")
            w, h = _image_size(img, f"{path}: frames[{i}]")
        w, h = float(w), float(h)
        fx, fy = num("fl_x", positive=True), num("fl_y", positive=True)
        ax, ay = num("camera_angle_x", positive=True), num("camera_angle_y", positive=True)
        for key, a in (("camera_angle_x", ax), ("camera_angle_y", ay)):
            if a is not None and a >= math.pi:
                raise ValueError(f"{path}: frames[{i}]: {key!r} must be in (0, pi) radians, got {a:g}")
        if fx is None:
            if ax is None:
                raise ValueError(f"{path}: frames[{i}]: neither 'fl_x' nor 'camera_angle_x' given")
            fx = 0.5 * w / math.tan(0.5 * ax)
        if fy is None:
            fy = 0.5 * h / math.tan(0.5 * ay) if ay is not None else fx
        cx, cy = num("cx"), num("cy")
        cx = w / 2 if cx is None else cx
        cy = h / 2 if cy is None else cy
        c2ws.append(m)
        intrs.append([fx / w, fy / h, cx / w, cy / h])
        sizes.append((h, w))
        kept.append(fp)
        labels.append(f"{path}: frames[{i}] ({fp})")
    if not kept:
        raise ValueError(f"{path}: no frames with existing images ({len(skipped)} skipped)")
    H, W = _shared_size([s[0] for s in sizes], [s[1] for s in sizes], path)
    gl, n_rep = check_pose_matrices(np.stack(c2ws), labels, repair=repair, what="transform_matrix")
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
    intr = check_intrinsics(np.asarray(intrs), labels)
    distortion = {k: meta[k] for k in _DIST_KEYS if k in meta}
    for k, v in distortion.items():
        if k == "is_fisheye":
            if not isinstance(v, bool):
                raise ValueError(f"{path}: 'is_fisheye': expected true or false, got {_short(v)}")
        else:
            _number(v, f"{path}: {k!r}")
    rest = {k: v for k, v in meta.items() if k not in _INTR_KEYS + _DIST_KEYS + ("frames",)}
    return TransformsData(Cameras(opengl_to_opencv(gl), intr, H, W), kept, skipped, distortion, rest)


def write_transforms_json(path, cameras: Cameras, file_paths, extra: Optional[dict] = None):
    """Write cameras as an instant-ngp transforms.json (OpenGL c2w). Shared intrinsics go to the top level,
    otherwise each frame gets its own fl_x fl_y cx cy. `extra` top-level keys (distortion, aabb_scale) are
    copied as given."""
    if cameras.height is None or cameras.width is None:
        raise ValueError("write_transforms_json: cameras need height and width")
    if len(file_paths) != len(cameras):
        raise ValueError(f"write_transforms_json: {len(file_paths)} file_paths for {len(cameras)} cameras")
    H, W = cameras.height, cameras.width
    intr = np.asarray(cameras.intrinsics, dtype=np.float64)

    def pix(v):
        return {"fl_x": v[0] * W, "fl_y": v[1] * H, "cx": v[2] * W, "cy": v[3] * H}

    shared = bool(np.all(intr == intr[0]))
    out = dict(extra or {})
    out.update({"w": W, "h": H})
    if shared:
        out.update(pix(intr[0]))
        out["camera_angle_x"] = 2 * math.atan(0.5 / intr[0, 0])
        out["camera_angle_y"] = 2 * math.atan(0.5 / intr[0, 1])
    gl = opencv_to_opengl(np.asarray(cameras.c2w))
    frames = []
    for i, fp in enumerate(file_paths):
        f = {"file_path": str(fp), "transform_matrix": gl[i].tolist()}
        if not shared:
            f.update(pix(intr[i]))
        frames.append(f)
    out["frames"] = frames
    io.write_text(path, json.dumps(out, indent=2))


# ----------------------------------------------------------------------------------------------------- LLFF


def read_llff(path, factor: float = 1, *, repair: bool = False) -> tuple:
    """Read LLFF poses_bounds.npy (a file or its folder) -> (Cameras, bounds (N, 2) near/far).

    `factor` is the image downscale (images_8 -> 8): the image size is divided by it; normalised intrinsics
    (f / W, f / H, 0.5, 0.5) do not change. Heights, widths, focal lengths and the near / far depths must be
    positive; `repair` re-orthonormalises nearly rigid rotations (`cameras.check_rotations`).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "poses_bounds.npy"
    arr = real_array(io.read_npy(path), str(path))
    if arr.ndim != 2 or arr.shape[1] != 17 or len(arr) == 0:
        raise ValueError(f"{path}: expected an (N, 17) array (3x5 pose + near, far per view), got {arr.shape}")
    labels = [f"{path}: view {i}" for i in range(len(arr))]
    bad = ~np.isfinite(arr).all(-1)
    if bad.any():
        raise ValueError(f"{labels[int(np.argmax(bad))]}: non-finite values")
    poses = arr[:, :15].reshape(-1, 3, 5)
    hwf = poses[:, :, 4]
    bad = (hwf <= 0).any(-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{labels[i]}: (h, w, f) must be positive, got {hwf[i].tolist()}")
    bounds = arr[:, 15:17]
    bad = (bounds <= 0).any(-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{labels[i]}: near/far bounds {bounds[i].tolist()}: expected positive depths")
    R, n_rep = check_rotations(poses[:, :, :3], labels, repair=repair)
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
        poses = poses.copy()
        poses[:, :, :3] = R
    H, W = _shared_size(hwf[:, 0] / factor, hwf[:, 1] / factor, path)
    if H <= 0 or W <= 0:
        raise ValueError(f"{path}: image size {hwf[0, 1] / factor:g} x {hwf[0, 0] / factor:g} at factor {factor} "
                         f"rounds to zero")
    f = hwf[:, 2] / factor
    intr = np.stack([f / W, f / H, np.full_like(f, 0.5), np.full_like(f, 0.5)], -1)
    return Cameras(llff_to_opencv(poses[:, :, :4]), intr, H, W), bounds.copy()


def write_llff(path, cameras: Cameras, bounds, factor: float = 1):
    """Write poses_bounds.npy from centred cameras with fx = fy in pixels; (h, w, f) are stored at the full
    resolution = our image size * factor."""
    bounds = np.asarray(bounds, dtype=np.float64)
    n = len(cameras)
    if bounds.shape != (n, 2):
        raise ValueError(f"write_llff bounds: expected shape ({n}, 2), got {bounds.shape}")
    if cameras.height is None or cameras.width is None:
        raise ValueError("write_llff: cameras need height and width")
    intr = np.asarray(cameras.intrinsics, dtype=np.float64)
    H, W = cameras.height, cameras.width
    f = intr[:, 0] * W
    if not np.allclose(f, intr[:, 1] * H, rtol=1e-6) or not np.allclose(intr[:, 2:], 0.5, atol=1e-9):
        raise ValueError("write_llff: LLFF stores one focal length and a centred principal point; "
                         "cameras have fx != fy or cx, cy != 0.5")
    hwf = np.stack([np.full(n, H * factor), np.full(n, W * factor), f * factor], -1)[..., None]
    poses = np.concatenate([opencv_to_llff(np.asarray(cameras.c2w)), hwf], -1)
    np.save(path, np.concatenate([poses.reshape(n, 15), bounds], -1))


# --------------------------------------------------------------------------------------------------- COLMAP

# id -> (name, number of params); the first params are the pinhole part, listed in _PINHOLE.
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}
COLMAP_MODEL_IDS = {name: (i, n) for i, (name, n) in COLMAP_MODELS.items()}
_SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"}


@dataclasses.dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # COLMAP order, e.g. SIMPLE_RADIAL: f cx cy k

    def pinhole(self):
        """(fx, fy, cx, cy) in pixels."""
        p = self.params
        return (p[0], p[0], p[1], p[2]) if self.model in _SINGLE_FOCAL else (p[0], p[1], p[2], p[3])

    def intrinsics(self):
        """(4,) normalised (fx/W, fy/H, cx/W, cy/H)."""
        fx, fy, cx, cy = self.pinhole()
        return np.array([fx / self.width, fy / self.height, cx / self.width, cy / self.height])

    def distortion(self):
        """The non-pinhole params (distortion coefficients, FOV omega), in COLMAP order."""
        return np.asarray(self.params[3:] if self.model in _SINGLE_FOCAL else self.params[4:])


@dataclasses.dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # (4,) w x y z, world-to-camera rotation
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int64))

    @property
    def w2c(self):
        return make_c2w(quat_to_matrix(np.asarray(self.qvec, np.float64)), np.asarray(self.tvec, np.float64))

    @property
    def c2w(self):
        return invert_rigid(self.w2c)


@dataclasses.dataclass
class ColmapPoints:
    ids: np.ndarray  # (P,) int64
    xyz: np.ndarray  # (P, 3) float64
    rgb: np.ndarray  # (P, 3) uint8
    error: np.ndarray  # (P,) float64 mean reprojection error
    tracks: list  # P arrays (L, 2) int of (image_id, point2D_idx)

    def __len__(self):
        return len(self.ids)


class _BinReader:
    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.data = self.path.read_bytes()
        self.off = 0

    def read(self, fmt, what):
        n = struct.calcsize("<" + fmt)
        if self.off + n > len(self.data):
            raise ValueError(f"{self.path}: truncated file: needed {n} bytes for {what} at byte {self.off}, "
                             f"only {len(self.data) - self.off} left (file size {len(self.data)})")
        out = struct.unpack_from("<" + fmt, self.data, self.off)
        self.off += n
        return out

    def array(self, dtype, count, what):
        dtype = np.dtype(dtype).newbyteorder("<")
        n = dtype.itemsize * count
        if self.off + n > len(self.data):
            raise ValueError(f"{self.path}: truncated file: needed {n} bytes for {what} at byte {self.off}, "
                             f"only {len(self.data) - self.off} left (file size {len(self.data)})")
        out = np.frombuffer(self.data, dtype, count, self.off)
        self.off += n
        return out

    def cstring(self, what):
        end = self.data.find(b"\x00", self.off)
        if end < 0:
            raise ValueError(f"{self.path}: truncated file: unterminated string for {what} at byte {self.off}")
        try:
            s = self.data[self.off:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {what} at byte {self.off} is not UTF-8 text") from None
        self.off = end + 1
        return s

    def count(self, n, min_record, what):
        """Check a declared count against the bytes left (each record needs at least `min_record` bytes) before
        anything is allocated for it."""
        left = len(self.data) - self.off
        if n * min_record > left:
            raise ValueError(f"{self.path}: bad {what}: the file declares {n} records of at least {min_record} "
                             f"bytes, but only {left} bytes follow (truncated file or corrupt count)")
        return n

    def done(self):
        if self.off != len(self.data):
            raise ValueError(f"{self.path}: {len(self.data) - self.off} unexpected trailing bytes at {self.off}")


def _model_check(path, where, model_id=None, name=None):
    if name is not None:
        if name not in COLMAP_MODEL_IDS:
            raise ValueError(f"{path}: {where}: unknown camera model {name!r}; expected one of "
                             f"{sorted(COLMAP_MODEL_IDS)}")
        return name, COLMAP_MODEL_IDS[name][1]
    if model_id not in COLMAP_MODELS:
        raise ValueError(f"{path}: {where}: unknown camera model id {model_id}; expected 0..10")
    return COLMAP_MODELS[model_id]


def _text_lines(path):
    """(line number, stripped text) of non-comment lines; empty lines kept (images.txt needs them)."""
    lines = _read_text(path).splitlines()
    return [(i + 1, ln.strip()) for i, ln in enumerate(lines) if not ln.lstrip().startswith("#")]


def _colmap_camera(path, where, cid, name, w, h, params) -> ColmapCamera:
    """Validated ColmapCamera: positive size, finite params, positive focal lengths."""
    if w <= 0 or h <= 0:
        raise ValueError(f"{path}: {where}: image size {w} x {h} must be positive")
    params = np.asarray(params, np.float64)
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: {where}: non-finite params {params.tolist()}")
    cam = ColmapCamera(cid, name, w, h, params)
    fx, fy = cam.pinhole()[:2]
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{path}: {where}: focal lengths must be positive, got fx {fx:g}, fy {fy:g}")
    return cam


def _colmap_pose(path, where, qvec, tvec) -> None:
    """Finite qvec / tvec and a non-zero quaternion (it is normalised by `quat_to_matrix`)."""
    if not (np.isfinite(qvec).all() and np.isfinite(tvec).all()):
        raise ValueError(f"{path}: {where}: non-finite pose (qvec {np.asarray(qvec).tolist()}, "
                         f"tvec {np.asarray(tvec).tolist()})")
    with np.errstate(over="ignore"):
        norm = np.linalg.norm(qvec)
    if not 1e-8 <= norm < 1e150:
        what = "zero quaternion" if norm < 1e-8 else "quaternion too large to normalise"
        raise ValueError(f"{path}: {where}: {what} {np.asarray(qvec).tolist()} (no rotation)")


def _duplicate(path, where, what, key, first) -> None:
    if key in first:
        raise ValueError(f"{path}: {where}: duplicate {what} {key} (first at {first[key]})")


def read_colmap_cameras_bin(path) -> dict:
    r = _BinReader(path)
    (n,) = r.read("Q", "num_cameras")
    r.count(n, 24, "num_cameras")
    out, first = {}, {}
    for k in range(n):
        cid, mid, w, h = r.read("iiQQ", f"camera {k} header (camera_id, model_id, width, height)")
        name, npar = _model_check(r.path, f"camera {k}", model_id=mid)
        _duplicate(r.path, f"camera {k}", "camera_id", cid, first)
        first[cid] = f"camera {k}"
        out[cid] = _colmap_camera(r.path, f"camera {k}", cid, name, w, h,
                                  r.read(f"{npar}d", f"camera {k} params ({npar} doubles)"))
    r.done()
    return out


def read_colmap_cameras_txt(path) -> dict:
    out, first = {}, {}
    for ln, text in _text_lines(path):
        if not text:
            continue
        tok = text.split()
        where = f"line {ln}"
        name, npar = _model_check(path, where, name=tok[1] if len(tok) > 1 else "")
        if len(tok) != 4 + npar:
            raise ValueError(f"{path}: line {ln}: {name} expects CAMERA_ID MODEL WIDTH HEIGHT + {npar} params "
                             f"({4 + npar} fields), got {len(tok)}")
        cid = _int_tok(tok[0], f"{path}: {where}", "CAMERA_ID")
        _duplicate(path, where, "CAMERA_ID", cid, first)
        first[cid] = where
        w, h = (_int_tok(t, f"{path}: {where}", k) for t, k in ((tok[2], "WIDTH"), (tok[3], "HEIGHT")))
        out[cid] = _colmap_camera(path, where, cid, name, w, h, _float_toks(tok[4:], f"{path}: {where}", "PARAMS"))
    return out


def write_colmap_cameras_bin(path, cameras: dict):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(cameras)))
        for c in cameras.values():
            mid, npar = COLMAP_MODEL_IDS[c.model]
            if len(c.params) != npar:
                raise ValueError(f"camera {c.id}: {c.model} needs {npar} params, got {len(c.params)}")
            f.write(struct.pack("<iiQQ", c.id, mid, c.width, c.height))
            f.write(struct.pack(f"<{npar}d", *map(float, c.params)))


def write_colmap_cameras_txt(path, cameras: dict):
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(cameras)}"]
    for c in cameras.values():
        lines.append(" ".join([str(c.id), c.model, str(c.width), str(c.height)] + [repr(float(p)) for p in c.params]))
    io.write_text(path, "\n".join(lines) + "\n")


_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_colmap_images_bin(path) -> dict:
    r = _BinReader(path)
    (n,) = r.read("Q", "num_images")
    r.count(n, 64 + 1 + 8, "num_images")
    out, first = {}, {}
    for k in range(n):
        vals = r.read("i7di", f"image {k} header (image_id, qw qx qy qz, tx ty tz, camera_id)")
        name = r.cstring(f"image {k} name")
        where = f"image {k} ({name})"
        if not name:
            raise ValueError(f"{r.path}: image {k}: empty image name")
        _duplicate(r.path, where, "image_id", vals[0], first)
        first[vals[0]] = f"image {k}"
        q, t = np.array(vals[1:5]), np.array(vals[5:8])
        _colmap_pose(r.path, where, q, t)
        (m,) = r.read("Q", f"image {k} num_points2D")
        pts = r.array(_POINT2D, m, f"image {k} points2D ({m} x 24 bytes)")
        xys = np.stack([pts["x"], pts["y"]], -1)
        if not np.isfinite(xys).all():
            raise ValueError(f"{r.path}: {where}: non-finite points2D coordinates")
        out[vals[0]] = ColmapImage(vals[0], q, t, vals[8], name, xys, pts["id"].astype(np.int64))
    r.done()
    return out


def read_colmap_images_txt(path) -> dict:
    lines = _text_lines(path)
    out, first, i = {}, {}, 0
    while i < len(lines):
        ln, text = lines[i]
        if not text:
            i += 1
            continue
        tok = text.split()
        where = f"line {ln}"
        if len(tok) < 10:
            raise ValueError(f"{path}: line {ln}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME "
                             f"(10 fields), got {len(tok)}")
        iid = _int_tok(tok[0], f"{path}: {where}", "IMAGE_ID")
        q, t = _float_toks(tok[1:5], f"{path}: {where}", "QW QX QY QZ"), _float_toks(tok[5:8], f"{path}: {where}",
                                                                                     "TX TY TZ")
        cid = _int_tok(tok[8], f"{path}: {where}", "CAMERA_ID")
        _duplicate(path, where, "IMAGE_ID", iid, first)
        first[iid] = where
        _colmap_pose(path, where, q, t)
        name = " ".join(tok[9:])
        pts = lines[i + 1][1].split() if i + 1 < len(lines) else []
        pwhere = f"line {lines[i + 1][0]}" if i + 1 < len(lines) else where
        if len(pts) % 3:
            raise ValueError(f"{path}: {pwhere}: POINTS2D must be triples X Y POINT3D_ID, got {len(pts)} values")
        xy = _float_toks([p for j, p in enumerate(pts) if j % 3 != 2], f"{path}: {pwhere}", "POINTS2D X Y")
        ids = [_int_tok(p, f"{path}: {pwhere}", "POINT3D_ID") for p in pts[2::3]]
        out[iid] = ColmapImage(iid, q, t, cid, name, xy.reshape(-1, 2), np.array(ids, np.int64).reshape(-1))
        i += 2
    return out


def write_colmap_images_bin(path, images: dict):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for im in images.values():
            f.write(struct.pack("<i7di", im.id, *map(float, im.qvec), *map(float, im.tvec), im.camera_id))
            f.write(im.name.encode("utf-8") + b"\x00")
            xys = np.asarray(im.xys, np.float64).reshape(-1, 2)
            f.write(struct.pack("<Q", len(xys)))
            rec = np.zeros(len(xys), np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]))
            rec["x"], rec["y"], rec["id"] = xys[:, 0], xys[:, 1], np.asarray(im.point3d_ids)
            f.write(rec.tobytes())


def write_colmap_images_txt(path, images: dict):
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(images)}"]
    for im in images.values():
        lines.append(" ".join([str(im.id)] + [repr(float(v)) for v in (*im.qvec, *im.tvec)]
                              + [str(im.camera_id), im.name]))
        lines.append(" ".join(f"{float(x)!r} {float(y)!r} {int(p)}" for (x, y), p in zip(im.xys, im.point3d_ids)))
    io.write_text(path, "\n".join(lines) + "\n")


def _check_points(path, ids, xyz, err, labels) -> None:
    bad = ~(np.isfinite(xyz).all(-1) & np.isfinite(err))
    if bad.any():
        raise ValueError(f"{path}: {labels(int(np.argmax(bad)))}: non-finite xyz or error")
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[np.argmax(counts > 1)]
        where = np.flatnonzero(ids == dup)
        raise ValueError(f"{path}: {labels(int(where[1]))}: duplicate POINT3D_ID {dup} (first at "
                         f"{labels(int(where[0]))})")


def read_colmap_points3d_bin(path) -> ColmapPoints:
    r = _BinReader(path)
    (n,) = r.read("Q", "num_points")
    r.count(n, 51, "num_points")
    ids, xyz, rgb, err, tracks = np.zeros(n, np.int64), np.zeros((n, 3)), np.zeros((n, 3), np.uint8), np.zeros(n), []
    for k in range(n):
        v = r.read("q3d3BdQ", f"point {k} (point3D_id, xyz, rgb, error, track_length)")
        ids[k], xyz[k], rgb[k], err[k] = v[0], v[1:4], v[4:7], v[7]
        tracks.append(r.array("<i4", 2 * v[8], f"point {k} track ({v[8]} x (image_id, point2D_idx))")
                      .reshape(-1, 2).astype(np.int64))
    r.done()
    _check_points(r.path, ids, xyz, err, lambda k: f"point {k}")
    return ColmapPoints(ids, xyz, rgb, err, tracks)


def read_colmap_points3d_txt(path) -> ColmapPoints:
    ids, xyz, rgb, err, tracks, lns = [], [], [], [], [], []
    for ln, text in _text_lines(path):
        if not text:
            continue
        tok = text.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise ValueError(f"{path}: line {ln}: expected POINT3D_ID X Y Z R G B ERROR + (IMAGE_ID, POINT2D_IDX) "
                             f"pairs, got {len(tok)} fields")
        where = f"{path}: line {ln}"
        ids.append(_int_tok(tok[0], where, "POINT3D_ID"))
        xyz.append(_float_toks(tok[1:4], where, "X Y Z"))
        c = [_int_tok(t, where, "R G B") for t in tok[4:7]]
        if not all(0 <= x <= 255 for x in c):
            raise ValueError(f"{where}: R G B must be in 0..255, got {c}")
        rgb.append(c)
        err.append(_float_toks(tok[7:8], where, "ERROR")[0])
        tracks.append(np.array([_int_tok(t, where, "TRACK") for t in tok[8:]], np.int64).reshape(-1, 2))
        lns.append(ln)
    try:
        ids = np.array(ids, np.int64)
    except OverflowError:
        raise ValueError(f"{path}: POINT3D_ID out of the int64 range") from None
    xyz, err = np.array(xyz, np.float64).reshape(-1, 3), np.array(err, np.float64)
    _check_points(path, ids, xyz, err, lambda k: f"line {lns[k]}")
    return ColmapPoints(ids, xyz, np.array(rgb, np.uint8).reshape(-1, 3), err, tracks)


def write_colmap_points3d_bin(path, pts: ColmapPoints):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(pts)))
        for k in range(len(pts)):
            tr = np.asarray(pts.tracks[k], np.int32).reshape(-1, 2)
            f.write(struct.pack("<Q3d3BdQ", int(pts.ids[k]), *map(float, pts.xyz[k]), *map(int, pts.rgb[k]),
                                float(pts.error[k]), len(tr)))
            f.write(tr.astype("<i4").tobytes())


def write_colmap_points3d_txt(path, pts: ColmapPoints):
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for k in range(len(pts)):
        lines.append(" ".join([str(int(pts.ids[k]))] + [repr(float(v)) for v in pts.xyz[k]]
                              + [str(int(v)) for v in pts.rgb[k]] + [repr(float(pts.error[k]))]
                              + [str(int(v)) for v in np.asarray(pts.tracks[k]).reshape(-1)]))
    io.write_text(path, "\n".join(lines) + "\n")


def _find(folder, stem):
    for ext in (".bin", ".txt"):
        p = folder / (stem + ext)
        if p.is_file():
            return p
    return None


_READERS = {
    ("cameras", ".bin"): read_colmap_cameras_bin, ("cameras", ".txt"): read_colmap_cameras_txt,
    ("images", ".bin"): read_colmap_images_bin, ("images", ".txt"): read_colmap_images_txt,
    ("points3D", ".bin"): read_colmap_points3d_bin, ("points3D", ".txt"): read_colmap_points3d_txt,
}
_WRITERS = {
    ("cameras", ".bin"): write_colmap_cameras_bin, ("cameras", ".txt"): write_colmap_cameras_txt,
    ("images", ".bin"): write_colmap_images_bin, ("images", ".txt"): write_colmap_images_txt,
    ("points3D", ".bin"): write_colmap_points3d_bin, ("points3D", ".txt"): write_colmap_points3d_txt,
}


def read_colmap_model(folder):
    """Read cameras, images, points3D (.bin preferred over .txt) from a COLMAP model folder.

    Returns (cameras dict, images dict or None, ColmapPoints or None); cameras are required.
    """
    folder = pathlib.Path(folder)
    out = []
    for stem in ("cameras", "images", "points3D"):
        p = _find(folder, stem)
        if p is None and stem == "cameras":
            raise ValueError(f"{folder}: no cameras.bin or cameras.txt")
        out.append(None if p is None else _READERS[(stem, p.suffix)](p))
    return tuple(out)


def write_colmap_model(folder, cameras: dict, images: dict, points: Optional[ColmapPoints] = None,
                       ext: str = ".bin"):
    if ext not in (".bin", ".txt"):
        raise ValueError(f"write_colmap_model: ext must be '.bin' or '.txt', got {ext!r}")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _WRITERS[("cameras", ext)](folder / f"cameras{ext}", cameras)
    _WRITERS[("images", ext)](folder / f"images{ext}", images)
    if points is not None:
        _WRITERS[("points3D", ext)](folder / f"points3D{ext}", points)


def colmap_to_cameras(cameras: dict, images: dict):
    """COLMAP cameras + images -> (Cameras sorted by image name, names, distortion (N, k) or list).

    Distortion parameters are returned but not applied (use undistorted images for a pinhole model).
    """
    ims = sorted(images.values(), key=lambda im: im.name)
    missing = [im.camera_id for im in ims if im.camera_id not in cameras]
    if missing:
        raise ValueError(f"colmap images refer to camera ids {sorted(set(missing))} absent from cameras")
    cams = [cameras[im.camera_id] for im in ims]
    H, W = _shared_size([c.height for c in cams], [c.width for c in cams], "colmap model")
    c2w = invert_rigid(np.stack([im.w2c for im in ims]))
    intr = np.stack([c.intrinsics() for c in cams])
    return Cameras(c2w, intr, H, W), [im.name for im in ims], [c.distortion() for c in cams]


def cameras_to_colmap(cams: Cameras, names):
    """Cameras -> (COLMAP cameras dict, images dict) with PINHOLE models; one camera shared if all
    intrinsics are equal, else one per image. Image ids are 1..N in the given order."""
    if cams.height is None or cams.width is None:
        raise ValueError("cameras_to_colmap: cameras need height and width")
    if len(names) != len(cams):
        raise ValueError(f"cameras_to_colmap: {len(names)} names for {len(cams)} cameras")
    intr = np.asarray(cams.intrinsics, np.float64)
    H, W = cams.height, cams.width
    shared = bool(np.all(intr == intr[0]))
    cameras, images = {}, {}
    w2c = invert_rigid(np.asarray(cams.c2w, np.float64))
    q = matrix_to_quat(w2c[:, :3, :3])
    for i, name in enumerate(names):
        cid = 1 if shared else i + 1
        if cid not in cameras:
            v = intr[i]
            cameras[cid] = ColmapCamera(cid, "PINHOLE", W, H, np.array([v[0] * W, v[1] * H, v[2] * W, v[3] * H]))
        images[i + 1] = ColmapImage(i + 1, q[i], w2c[i, :3, 3], cid, str(name))
    return cameras, images


# --------------------------------------------------------------------------------------------- RealEstate10K


@dataclasses.dataclass
class RE10KClip:
    url: str
    timestamps: np.ndarray  # (N,) int64 microseconds
    intrinsics: np.ndarray  # (N, 4) normalised fx fy cx cy
    c2w: np.ndarray  # (N, 4, 4) OpenCV

    def cameras(self, height=None, width=None) -> Cameras:
        return Cameras(self.c2w, self.intrinsics, height, width)


def _re10k_frame(tok) -> bool:
    """Whether the tokens of a line form a frame line (19 numbers, the first an integer)."""
    if len(tok) != 19:
        return False
    try:
        int(tok[0]), [float(t) for t in tok[1:]]
    except ValueError:
        return False
    return True


def read_re10k(path, *, repair: bool = False) -> RE10KClip:
    """RealEstate10K pose file: URL line, then per frame `timestamp fx fy cx cy 0 0 <3x4 w2c row-major>`.

    A file whose first line is already a frame line (no URL) keeps every frame, with url '' and a logged warning.
    Timestamps must be distinct integers; intrinsics finite with fx, fy > 0; w2c rotations rigid (`repair`:
    re-orthonormalise nearly rigid ones, `cameras.check_rotations`).
    """
    path = pathlib.Path(path)
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(_read_text(path).splitlines())]
    lines = [x for x in lines if x[1]]
    if not lines:
        raise ValueError(f"{path}: empty RealEstate10K file (expected a URL line then frame lines)")
    if _re10k_frame(lines[0][1].split()):
        log.warning("%s: line %d is a frame line, not the video URL: no URL (url ''), every line read as a frame",
                    path, lines[0][0])
        url = ""
    else:
        url = lines[0][1]
        lines = lines[1:]
    ts, intr, w2c, labels, first = [], [], [], [], {}
    for ln, text in lines:
        tok = text.split()
        where = f"line {ln}"
        if len(tok) != 19:
            raise ValueError(f"{path}: line {ln}: expected 19 values (timestamp, fx fy cx cy, 2 zeros, 12 of a 3x4 "
                             f"world-to-camera), got {len(tok)}")
        t = _int_tok(tok[0], f"{path}: {where}", "timestamp")
        _duplicate(path, where, "timestamp", t, first)
        first[t] = where
        v = _float_toks(tok[1:], f"{path}: {where}", "the camera values")
        ts.append(t)
        intr.append(v[:4])
        w2c.append(np.concatenate([v[6:].reshape(3, 4), [[0.0, 0.0, 0.0, 1.0]]], 0))
        labels.append(f"{path}: {where}")
    if not ts:
        raise ValueError(f"{path}: no frame lines after the URL line")
    intr = check_intrinsics(np.stack(intr), labels)
    w2c, n_rep = check_pose_matrices(np.stack(w2c), labels, repair=repair, what="world-to-camera")
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
    # General inverse (not R^T): the stored 9-decimal rotations are not exactly orthonormal, and the exact
    # inverse makes read -> write reproduce the file.
    return RE10KClip(url, np.array(ts, np.int64), intr, np.linalg.inv(w2c))


def write_re10k(path, clip: RE10KClip, decimals: int = 9):
    """Write a RealEstate10K pose file (values with `decimals` digits, like the originals)."""
    w2c = np.linalg.inv(np.asarray(clip.c2w, np.float64))[:, :3, :].reshape(-1, 12)
    fmt = f"{{:.{decimals}f}}"
    lines = [clip.url]
    for t, k, m in zip(clip.timestamps, np.asarray(clip.intrinsics, np.float64), w2c):
        lines.append(" ".join([str(int(t))] + [fmt.format(v) for v in (*k, 0.0, 0.0, *m)]))
    io.write_text(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------- 3DGS cameras.json


def read_3dgs_cameras(path, *, repair: bool = False):
    """INRIA 3DGS cameras.json -> (Cameras, img_names, ids). position = camera centre, rotation = c2w 3x3
    (OpenCV axes), fx fy in pixels, principal point at the image centre. Ids must be distinct integers, names
    non-empty strings, sizes positive integers, fx fy positive, rotations rigid (`repair`: re-orthonormalise nearly
    rigid ones, `cameras.check_rotations`)."""
    path = pathlib.Path(path)
    entries = _read_json(path)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON list of cameras")
    c2w, intr, hs, ws, names, ids, labels, first = [], [], [], [], [], [], [], {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{path}: entry {i}: expected an object, got {type(e).__name__}")
        for key in ("id", "img_name", "width", "height", "position", "rotation", "fx", "fy"):
            if key not in e:
                raise ValueError(f"{path}: entry {i} has no {key!r}")
        where = f"{path}: entry {i}"
        cid = _json_id(e["id"], f"{where} 'id'")
        _duplicate(path, f"entry {i}", "id", cid, first)
        first[cid] = f"entry {i}"
        if not isinstance(e["img_name"], str) or not e["img_name"]:
            raise ValueError(f"{where} 'img_name': expected a non-empty string, got {_short(e['img_name'])}")
        R = _json_array(e["rotation"], f"{where} 'rotation'", ((3, 3),))
        t = _json_array(e["position"], f"{where} 'position'", ((3,),))
        w = _number(e["width"], f"{where} 'width'", integer=True, positive=True)
        h = _number(e["height"], f"{where} 'height'", integer=True, positive=True)
        fx = _number(e["fx"], f"{where} 'fx'", positive=True)
        fy = _number(e["fy"], f"{where} 'fy'", positive=True)
        c2w.append(make_c2w(R, t))
        intr.append([fx / w, fy / h, 0.5, 0.5])
        hs.append(h), ws.append(w), names.append(e["img_name"]), ids.append(cid)
        labels.append(f"{where} ({e['img_name']})")
    H, W = _shared_size(hs, ws, path)
    c2w, n_rep = check_pose_matrices(np.stack(c2w), labels, repair=repair, what="'rotation'")
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
    return Cameras(c2w, check_intrinsics(np.asarray(intr, np.float64), labels), H, W), names, ids


def write_3dgs_cameras(path, cameras: Cameras, names, ids=None):
    if cameras.height is None or cameras.width is None:
        raise ValueError("write_3dgs_cameras: cameras need height and width")
    if len(names) != len(cameras):
        raise ValueError(f"write_3dgs_cameras: {len(names)} names for {len(cameras)} cameras")
    ids = list(range(len(cameras))) if ids is None else ids
    c2w, intr = np.asarray(cameras.c2w, np.float64), np.asarray(cameras.intrinsics, np.float64)
    H, W = cameras.height, cameras.width
    out = [{"id": int(ids[i]), "img_name": str(names[i]), "width": W, "height": H,
            "position": c2w[i, :3, 3].tolist(), "rotation": c2w[i, :3, :3].tolist(),
            "fx": intr[i, 0] * W, "fy": intr[i, 1] * H} for i in range(len(cameras))]
    io.write_text(path, json.dumps(out))


def read_camera_file(path, *, require_intrinsics: bool = True, repair: bool = False):
    """(c2w (N, 4, 4) OpenCV camera-to-world, intrinsics (N, 4) normalised or None) of a camera / trajectory file,
    float32, as stored (its world frame): a RealEstate10K pose file (``.txt``), a NeRF ``transforms.json``, a
    ``.json`` / ``.npz`` with ``c2w`` and ``intrinsics``, or a ``.npy`` of c2w alone. Without intrinsics in the file
    (``.npy``, or ``.npz`` / ``.json`` with ``c2w`` only) a ValueError when ``require_intrinsics``, else None.
    Poses must be rigid (``repair``: re-orthonormalise nearly rigid rotations) and focal lengths positive."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"camera file {str(path)!r} does not exist")
    intr = None
    if path.suffix == ".txt":
        clip = read_re10k(path, repair=repair)
        c2w, intr = clip.c2w, clip.intrinsics
    elif path.suffix in (".json", ".npz", ".npy"):
        if path.suffix == ".json":
            data = _read_json(path)
        elif path.suffix == ".npz":
            data = io.read_npz(path)
        else:
            data = {"c2w": io.read_npy(path)}
        if path.suffix == ".json" and isinstance(data, dict) and "frames" in data:
            cams = read_transforms_json(path, check_files=False, repair=repair).cameras
            c2w, intr = cams.c2w, cams.intrinsics
        else:
            if not isinstance(data, dict) or "c2w" not in data:
                raise ValueError(f"{path}: field 'c2w' missing (expected c2w (N, 4, 4) and intrinsics (N, 4))")
            c2w, intr = data["c2w"], data.get("intrinsics")
            if path.suffix == ".json":
                c2w = _json_array(c2w, f"{path}: 'c2w'")
                intr = None if intr is None else _json_array(intr, f"{path}: 'intrinsics'")
    else:
        raise ValueError(f"{path}: unknown camera file (expected .npz, .npy, .json, transforms.json or a "
                         "RealEstate10K .txt)")
    c2w = real_array(c2w, f"{path}: 'c2w'")
    intr = None if intr is None else real_array(intr, f"{path}: 'intrinsics'")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) < 1:
        raise ValueError(f"{path}: expected c2w (N, 4, 4), got {c2w.shape}")
    if intr is None and require_intrinsics:
        raise ValueError(f"{path}: fields ['intrinsics'] missing (expected c2w (N, 4, 4) and intrinsics (N, 4))")
    if intr is not None and intr.shape != (len(c2w), 4):
        raise ValueError(f"{path}: expected intrinsics ({len(c2w)}, 4) for c2w (N, 4, 4), got {intr.shape}")
    if not (np.isfinite(c2w).all() and (intr is None or np.isfinite(intr).all())):
        raise ValueError(f"{path}: the cameras are not finite")
    labels = [f"{path}: camera {i}" for i in range(len(c2w))]
    c2w, n_rep = check_pose_matrices(c2w, labels, repair=repair, what="c2w")
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
    if intr is not None:
        check_intrinsics(intr, labels)
    return c2w.astype(np.float32), (None if intr is None else intr.astype(np.float32))
