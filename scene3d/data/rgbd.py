"""RGB-D sequences with metric depth: Replica as NICE-SLAM distributes it, TUM RGB-D, ScanNet exported frames and
3DMatch / 7-Scenes frames, read into the capture structure the multi-view pipeline and `inspect` use.

Each reader returns an `RGBDCapture`: a `captures.Capture` (colour frame files, OpenCV camera-to-world poses and
normalised intrinsics of the colour camera) plus one 16-bit depth PNG per frame and the file's depth units per metre.
Its `scene_record()` is the multi-view scene record (`scene3d.data.multiview` docstring) with `depth`: float32
(V, H, W) metric z-depth in the colour camera (0 = unknown), so `MultiViewTransform` emits depth, masks and point
maps for it. Depth is only decoded when asked for (`load_depth`, `scene_record`); a long sequence is thinned with
`stride` (every k-th frame) or `subset`.

Layouts (`detect_layout` tells them apart; `read_rgbd` reads any):

  replica   <seq>/results/frameNNNNNN.jpg + depthNNNNNN.png, <seq>/traj.txt (line k: the 16 numbers of frame k's 4x4
            camera-to-world, row-major, OpenCV axes: NICE-SLAM flips y and z itself after reading), cam_params.json
            in <seq> or its parent (NICE-SLAM keeps one for all scenes: {"camera": {w, h, fx, fy, cx, cy, scale}},
            scale = depth PNG units per metre, 6553.5 for Replica); the flat object without "camera" is accepted.
  tum       rgb.txt and depth.txt ("timestamp file" lines, '#' comments), groundtruth.txt ("timestamp tx ty tz qx qy
            qz qw": pose of the colour camera's optical centre in the motion-capture world, OpenCV axes). Colour and
            depth frames are paired one to one as the TUM tools' associate.py does (`associate`: the closest pairs
            first, |dt| < max_difference, default 0.02 s); each pair takes the ground-truth pose nearest its colour
            timestamp, within max_difference as well. Unpaired frames are dropped (logged). Depth PNG / 5000 = metres.
            Intrinsics: the user's (fx, fy, cx, cy in pixels, or a name of `TUM_INTRINSICS`), else the freiburg
            sensor named in the folder name (rgbd_dataset_freiburg1_desk -> 'freiburg1', the calibrated values the
            TUM benchmark publishes), else the ROS default (525, 525, 319.5, 239.5) with a warning. The published
            lens distortion comes back in `distortion` (not applied, as for the other captures).
  scannet   color/N.jpg, depth/N.png (millimetres), pose/N.txt (4x4 camera-to-world), intrinsic/intrinsic_color.txt
            and intrinsic_depth.txt (4x4 or 3x3, pixels); frames sorted by N. Colour (1296 x 968) and depth (640 x
            480) images differ in size and intrinsics; the depth camera is taken to share the colour camera's pose
            (ScanNet's exported extrinsics are identities), so depth is resampled into the colour camera through the
            two intrinsics alone (`resample_depth`). Frames whose pose is not finite (ScanNet writes -inf where
            tracking failed) are skipped with a warning.
  3dmatch   camera-intrinsics.txt (3x3 K in pixels) in the scene folder (or the sequence folder's parent), seq-XX/
            frame-NNNNNN.color.png + .depth.png (millimetres, 65535 = invalid in 7-Scenes) + .pose.txt (4x4
            camera-to-world, OpenCV axes). A scene folder with several sequences reads the first (`sequence=`).

Bad input raises ValueError naming the file and the frame / line (text that is not UTF-8, wrong number of values,
words or non-finite numbers where numbers belong, duplicate timestamps or frame numbers, non-rigid poses
(`repair=True` re-orthonormalises nearly rigid ones), zero quaternions, non-positive focal lengths, sizes or depth
scales, a depth file that is not a complete single-channel 16-bit PNG, frames of different sizes). File names read
from rgb.txt / depth.txt stay inside the sequence folder once symlinks are resolved (`conventions.confine_path`), and
so do the frame files found in the layout's folders.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

from scene3d.data import captures
from scene3d.data import multiview
from scene3d.geometry import conventions as cv
from scene3d.geometry.cameras import Cameras, check_intrinsics, check_pose_matrices, make_c2w
from scene3d.geometry.so3 import quat_to_matrix

log = logging.getLogger(__name__)

LAYOUTS = ("replica", "tum", "scannet", "3dmatch")
LAYOUT_NAMES = {"replica": "Replica (NICE-SLAM layout)", "tum": "TUM RGB-D", "scannet": "ScanNet exported frames",
                "3dmatch": "3DMatch / 7-Scenes frames"}

# TUM RGB-D intrinsics in pixels of the sensors' 640 x 480 frames (fx, fy, cx, cy; used normalised by 640 x 480, so
# they hold for resized copies too) and the distortion (d0..d4 = k1 k2 p1 p2 k3) its benchmark page publishes per
# sensor; 'ros' is the default calibration the depth was registered with.
TUM_INTRINSICS = {
    "freiburg1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "freiburg2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "freiburg3": ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
    "ros": ((525.0, 525.0, 319.5, 239.5), (0.0, 0.0, 0.0, 0.0, 0.0)),
}
TUM_DEPTH_SCALE = 5000.0
_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I")


# ----------------------------------------------------------------------------------------------- depth maps


def read_depth_png(path, scale: float, invalid: Optional[int] = None, name: Optional[str] = None) -> np.ndarray:
    """A 16-bit single-channel depth PNG -> float32 (H, W) metres (file value / `scale`; 0 and `invalid` -> 0).
    ValueError naming `name` (default: the path) for anything else (8-bit or colour PNG, truncated, not a PNG)."""
    from PIL import Image

    name = name or str(path)
    with multiview._decoding(path, name):
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode not in _DEPTH_MODES:
                raise ValueError(f"{name}: depth must be a single-channel 16-bit PNG, got a {im.format} image of "
                                 f"mode {im.mode}")
            raw = np.asarray(im)
    if raw.dtype != np.uint16:  # mode 'I' (int32) of a 16-bit PNG
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ValueError(f"{name}: depth values outside 0..65535: not a 16-bit depth PNG")
        raw = raw.astype(np.uint16)
    depth = raw.astype(np.float32) / np.float32(scale)
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth


def resample_depth(depth, src_intrinsics, dst_intrinsics, out_hw) -> np.ndarray:
    """Depth (H, W) of a pinhole camera -> the depth (h, w) seen by another pinhole camera at the same centre and
    orientation (only the normalised intrinsics (fx, fy, cx, cy) differ, no skew): each output pixel takes the source
    pixel its centre's ray meets (nearest neighbour, so values stay real measurements; z-depth is shared because the
    axes are), 0 where the ray leaves the source image. The map is separable: u_src = (fx_s (u - cx_d) / fx_d + cx_s)
    in normalised coordinates, likewise v."""
    depth = np.asarray(depth)
    H, W = depth.shape
    h, w = map(int, out_hw)
    ks, kd = np.asarray(src_intrinsics, np.float64), np.asarray(dst_intrinsics, np.float64)

    def index(n_out, n_src, f_d, c_d, f_s, c_s):
        x = ((np.arange(n_out) + 0.5) / n_out - c_d) / f_d  # ray slope of each output pixel centre
        s = np.floor((f_s * x + c_s) * n_src).astype(np.int64)
        return np.clip(s, 0, n_src - 1), (s >= 0) & (s < n_src)

    cols, cok = index(w, W, kd[0], kd[2], ks[0], ks[2])
    rows, rok = index(h, H, kd[1], kd[3], ks[1], ks[3])
    out = depth[rows][:, cols].copy()
    out[~(rok[:, None] & cok[None, :])] = 0
    return out


# ----------------------------------------------------------------------------------------------- capture


@dataclasses.dataclass
class RGBDCapture(captures.Capture):
    """A `Capture` whose frames each have a 16-bit depth PNG (`depth_frames`, same order), `depth_scale` file units per
    metre. `depth_intrinsics` (V, 4) normalised: the depth images' own camera when it is not the colour camera
    (ScanNet), None when depth is registered to colour (same normalised intrinsics). `depth_hw`: (H, W) of the depth
    files. `depth_invalid`: a file value meaning "no measurement" besides 0 (7-Scenes: 65535)."""

    depth_frames: list = dataclasses.field(default_factory=list)
    depth_scale: float = 1000.0
    depth_intrinsics: Optional[np.ndarray] = None
    depth_hw: Optional[tuple] = None
    depth_invalid: Optional[int] = None
    layout: str = ""  # one of LAYOUTS
    intrinsics_source: str = ""  # where the intrinsics came from when the layout does not store them (TUM)

    def __post_init__(self):
        super().__post_init__()
        if len(self.depth_frames) != len(self.frames):
            raise ValueError(f"capture {self.scene_id}: {len(self.depth_frames)} depth frames for {len(self.frames)} "
                             "colour frames")
        if not (np.isfinite(self.depth_scale) and self.depth_scale > 0):
            raise ValueError(f"capture {self.scene_id}: depth scale must be a positive number, got {self.depth_scale}")

    def subset(self, indices: Sequence[int]) -> "RGBDCapture":
        """The capture of the given frames (e.g. `range(0, len(cap), 10)`), in that order."""
        idx = [int(i) for i in indices]
        take = lambda a: None if a is None else np.asarray(a)[idx]  # noqa: E731
        cams = Cameras(np.asarray(self.cameras.c2w)[idx], np.asarray(self.cameras.intrinsics)[idx],
                       self.cameras.height, self.cameras.width)
        return dataclasses.replace(self, frames=[self.frames[i] for i in idx], cameras=cams,
                                   depth_frames=[self.depth_frames[i] for i in idx],
                                   timestamps=take(self.timestamps), bounds=take(self.bounds),
                                   depth_intrinsics=take(self.depth_intrinsics))

    def depth_cameras(self) -> Cameras:
        """The cameras of the depth images as stored (their own intrinsics and size; the colour poses)."""
        intr = self.cameras.intrinsics if self.depth_intrinsics is None else self.depth_intrinsics
        h, w = self.depth_hw if self.depth_hw is not None else (None, None)
        return Cameras(self.cameras.c2w, intr, h, w)

    def _depth_name(self, i: int) -> str:
        return f"capture {self.scene_id}: frame {i} depth ({self.depth_frames[i]})"

    def load_depth(self, indices: Optional[Sequence[int]] = None, size: Optional[tuple] = None,
                   aligned: bool = True) -> np.ndarray:
        """-> float32 (V, h, w) metric z-depth, 0 = unknown.

        aligned=True: in the colour camera of `load_images(indices, size)` (the colour image size, or `size` after
        the same resize + centre crop; registered depth of that size is taken as is or cropped with
        `multiview.crop_resize_maps`, anything else resampled with `resample_depth`). aligned=False: the depth files
        as stored (`depth_cameras()`), `size` not allowed.
        """
        idx = range(len(self)) if indices is None else [int(i) for i in indices]
        if not aligned and size is not None:
            raise ValueError("load_depth: size needs aligned=True (depth as stored has its own size)")
        hc, wc = self.cameras.height, self.cameras.width
        if aligned and (hc is None or wc is None):
            raise ValueError(f"capture {self.scene_id}: colour image size unknown: cannot align depth to it")
        src_k = np.asarray(self.cameras.intrinsics if self.depth_intrinsics is None else self.depth_intrinsics,
                           np.float64)
        out = []
        for i in idx:
            d = read_depth_png(self.depth_frames[i], self.depth_scale, self.depth_invalid, self._depth_name(i))
            if self.depth_hw is not None and d.shape != tuple(self.depth_hw):
                raise ValueError(f"{self._depth_name(i)}: depth is {d.shape[1]}x{d.shape[0]}, the sequence's depth "
                                 f"frames are {self.depth_hw[1]}x{self.depth_hw[0]}")
            if aligned:
                registered = self.depth_intrinsics is None and d.shape == (hc, wc)
                if size is None:
                    d = d if registered else resample_depth(d, src_k[i], self.cameras.intrinsics[i], (hc, wc))
                elif registered:
                    d = multiview.crop_resize_maps({"d": d[None]}, (hc, wc), size)["d"][0]
                else:
                    k = multiview.crop_resize_intrinsics(self.cameras.intrinsics[i], (hc, wc), size)
                    d = resample_depth(d, src_k[i], k, size)
            out.append(d)
        shapes = sorted({d.shape for d in out})
        if len(shapes) > 1:
            raise ValueError(f"capture {self.scene_id}: depth frames have different sizes {shapes}")
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0, 0), np.float32)

    def scene_record(self, image_size: Optional[tuple] = None, encode: bool = True) -> dict:
        """`Capture.scene_record` plus `depth` float32 (V, H, W) metres in the colour camera of the record's images."""
        rec = super().scene_record(image_size, encode)
        rec["depth"] = self.load_depth(size=image_size)
        return rec


def fuse_points(capture: RGBDCapture, indices: Optional[Sequence[int]] = None, size: Optional[tuple] = None,
                max_depth: Optional[float] = None) -> tuple:
    """World points of the valid depth pixels of the chosen frames with their colours: ((P, 3) float32, (P, 3)
    uint8). `size` (h, w): read the frames resized + centre-cropped (fewer points); `max_depth`: drop farther ones."""
    from scene3d.geometry import rays

    images, intr = capture.load_images(indices, size=size)
    depth = capture.load_depth(indices, size=size)
    idx = range(len(capture)) if indices is None else [int(i) for i in indices]
    c2w = np.asarray(capture.cameras.c2w, np.float64)[list(idx)]
    pts, cols = [], []
    for d, im, k, m in zip(depth, images, intr, c2w):
        ok = (d > 0) if max_depth is None else (d > 0) & (d <= max_depth)
        p = rays.depth_to_points(d.astype(np.float64), m, k)
        pts.append(p[ok].astype(np.float32))
        cols.append(im[ok])
    if not pts:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    return np.concatenate(pts), np.concatenate(cols)


# ----------------------------------------------------------------------------------------------- parsing helpers


def _numbered(folder: pathlib.Path, pattern: str, what: str) -> dict:
    """{frame number: file} of the files in `folder` whose name fully matches `pattern` (group 1: the number), each
    confined to the folder (a symlink out of it is refused); two files with one number are an error."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: {what} folder not found")
    rx = re.compile(pattern, re.IGNORECASE)
    out = {}
    for p in sorted(folder.iterdir()):
        m = rx.fullmatch(p.name)
        if m is None or not p.is_file():
            continue
        n = int(m.group(1))
        if n in out:
            raise ValueError(f"{folder}: {out[n].name} and {p.name} are both {what} {n}")
        out[n] = cv.confine_path(folder, p.name, f"{folder}: {what} {p.name}") if p.is_symlink() else p
    return out


def _data_lines(path) -> list:
    """(line number, tokens) of the non-empty lines that are not '#' comments."""
    rows = [(i + 1, ln.split()) for i, ln in enumerate(cv._read_text(path).splitlines())]
    return [(n, t) for n, t in rows if t and not t[0].startswith("#")]


def _matrix_file(path, allow_nonfinite: bool = False) -> np.ndarray:
    """A text file holding one 4x4 (or 3x3) matrix, whitespace separated -> float64 (4, 4) or (3, 3)."""
    toks = [t for _, row in _data_lines(path) for t in row]
    if len(toks) not in (9, 16):
        raise ValueError(f"{path}: expected a 4x4 (16 values) or 3x3 (9 values) matrix, got {len(toks)} values")
    try:
        v = np.array([float(t) for t in toks], np.float64)
    except ValueError:
        raise ValueError(f"{path}: the matrix values must be numbers, got {cv._short(' '.join(toks))}") from None
    if not allow_nonfinite and not np.isfinite(v).all():
        raise ValueError(f"{path}: the matrix values must be finite")
    return v.reshape(4, 4) if len(v) == 16 else v.reshape(3, 3)


def _pixel_intrinsics(K: np.ndarray, path, h: int, w: int) -> np.ndarray:
    """3x3 (or the top-left of a 4x4) pixel K -> normalised (fx/W, fy/H, cx/W, cy/H) for an h x w image."""
    K = K[:3, :3]
    if K[0, 1] != 0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(f"{path}: expected a pinhole K [[fx 0 cx] [0 fy cy] [0 0 1]], got {K.tolist()}")
    return check_intrinsics(np.array([[K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h]]), [str(path)])[0]


def _poses(mats, labels, repair: bool, path) -> np.ndarray:
    c2w, n_rep = check_pose_matrices(np.stack(mats), labels, repair=repair, what="camera-to-world")
    if n_rep:
        log.warning("%s: re-orthonormalised %d nearly rigid rotations (repair=True)", path, n_rep)
    return c2w


def _thin(n: int, stride: int) -> list:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    return list(range(0, n, int(stride)))


# ----------------------------------------------------------------------------------------------- Replica


def _replica_params(path: pathlib.Path) -> dict:
    data = cv._read_json(path)
    cam = data.get("camera", data) if isinstance(data, dict) else None
    if not isinstance(cam, dict):
        raise ValueError(f"{path}: expected an object (optionally under 'camera') with w, h, fx, fy, cx, cy, scale")
    missing = [k for k in ("w", "h", "fx", "fy", "cx", "cy", "scale") if k not in cam]
    if missing:
        raise ValueError(f"{path}: fields {missing} missing (expected w, h, fx, fy, cx, cy and scale = depth PNG "
                         f"units per metre)")
    out = {k: cv._number(cam[k], f"{path}: '{k}'", integer=k in ("w", "h"), positive=k != "cx" and k != "cy")
           for k in ("w", "h", "fx", "fy", "cx", "cy", "scale")}
    out["w"], out["h"] = int(out["w"]), int(out["h"])
    return out


def _replica_cam_params(root: pathlib.Path, cam_params) -> pathlib.Path:
    if cam_params is not None:
        return pathlib.Path(cam_params)
    for cand in (root / "cam_params.json", root.parent / "cam_params.json"):
        if cand.is_file():
            return cand
    raise ValueError(f"{root}: no cam_params.json in the sequence folder or its parent (NICE-SLAM's Replica keeps it "
                     f"next to the scene folders); pass cam_params=")


def read_replica(root, cam_params=None, stride: int = 1, scene_id: Optional[str] = None, *,
                 repair: bool = False) -> RGBDCapture:
    """Replica sequence as NICE-SLAM distributes it (module docstring) -> RGBDCapture. `cam_params`: the json's path
    (default: <root>/cam_params.json, else <root>/../cam_params.json)."""
    root = pathlib.Path(root)
    results = root / "results"
    colour = _numbered(results, r"frame(\d+)\.(?:jpg|jpeg|png)", "colour frame")
    depth = _numbered(results, r"depth(\d+)\.png", "depth frame")
    if not colour:
        raise ValueError(f"{results}: no colour frames (frameNNNNNN.jpg)")
    traj_path = root / "traj.txt"
    rows = _data_lines(traj_path)
    mats, labels = [], []
    for ln, toks in rows:
        where = f"{traj_path}: line {ln}"
        if len(toks) != 16:
            raise ValueError(f"{where}: expected 16 values (a 4x4 camera-to-world, row-major), got {len(toks)}")
        mats.append(cv._float_toks(toks, where, "the pose values").reshape(4, 4))
        labels.append(where)
    nums = sorted(colour)
    if nums[-1] >= len(mats):
        raise ValueError(f"{traj_path}: {len(mats)} poses, but {results} has frame {nums[-1]} "
                         f"({colour[nums[-1]].name}): one pose line per frame, frame k on line k + 1")
    missing = [n for n in nums if n not in depth]
    if missing:
        raise ValueError(f"{results}: colour frame {colour[missing[0]].name} has no depth{missing[0]:06d}.png "
                         f"({len(missing)} frames without depth)")
    nums = [nums[i] for i in _thin(len(nums), stride)]
    c2w = _poses([mats[n] for n in nums], [labels[n] for n in nums], repair, traj_path)
    pp = _replica_cam_params(root, cam_params)
    p = _replica_params(pp)
    h, w = multiview.image_size(colour[nums[0]])
    if (h, w) != (p["h"], p["w"]):
        raise ValueError(f"{pp}: cameras calibrated for {p['w']}x{p['h']}, but {colour[nums[0]].name} is {w}x{h}")
    dh, dw = multiview.image_size(depth[nums[0]])
    intr = np.broadcast_to([p["fx"] / w, p["fy"] / h, p["cx"] / w, p["cy"] / h], (len(nums), 4)).copy()
    return RGBDCapture(scene_id or root.name, [colour[n] for n in nums], Cameras(c2w, intr, h, w),
                       depth_frames=[depth[n] for n in nums], depth_scale=p["scale"], depth_hw=(dh, dw),
                       layout="replica")


# ----------------------------------------------------------------------------------------------- TUM RGB-D


def associate(first, second, max_difference: float = 0.02, offset: float = 0.0) -> np.ndarray:
    """One-to-one pairing of two timestamp lists as the TUM benchmark's associate.py does: of all pairs with
    |a - (b + offset)| < max_difference, take the closest first, each timestamp used at most once. -> (M, 2) int64
    indices (into `first`, into `second`) sorted by the first. Candidates come from a sorted search, so long lists
    cost O((n + m) log m + candidates)."""
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64) + offset
    order = np.argsort(b, kind="stable")
    bs = b[order]
    lo = np.searchsorted(bs, a - max_difference, side="left")
    hi = np.searchsorted(bs, a + max_difference, side="right")
    ia = np.repeat(np.arange(len(a)), hi - lo)
    ib = order[np.concatenate([np.arange(s, e) for s, e in zip(lo, hi)]) if len(a) else np.zeros(0, np.int64)]
    diff = np.abs(a[ia] - b[ib])
    keep = diff < max_difference
    ia, ib, diff = ia[keep], ib[keep], diff[keep]
    used_a, used_b, pairs = np.zeros(len(a), bool), np.zeros(len(b), bool), []
    for k in np.lexsort((b[ib], a[ia], diff)):  # closest first; ties by timestamp, as associate.py sorts tuples
        if not used_a[ia[k]] and not used_b[ib[k]]:
            used_a[ia[k]] = used_b[ib[k]] = True
            pairs.append((ia[k], ib[k]))
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


def _nearest(first, second, max_difference: float) -> np.ndarray:
    """Index into sorted `second` of the value nearest each of `first`, -1 where none is within max_difference."""
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    j = np.clip(np.searchsorted(b, a), 1, len(b) - 1) if len(b) > 1 else np.zeros(len(a), np.int64)
    if len(b) > 1:
        j = np.where(np.abs(b[j - 1] - a) <= np.abs(b[j] - a), j - 1, j)
    return np.where(np.abs(b[j] - a) < max_difference, j, -1) if len(b) else np.full(len(a), -1)


def _tum_timestamp(tok: str, where: str) -> float:
    return float(cv._float_toks([tok], where, "the timestamp")[0])


def _tum_list(root: pathlib.Path, name: str) -> tuple:
    """(timestamps (N,), files) of rgb.txt / depth.txt, each file confined to the sequence folder and present."""
    path = root / name
    ts, files, first = [], [], {}
    for ln, toks in _data_lines(path):
        where = f"{path}: line {ln}"
        if len(toks) != 2:
            raise ValueError(f"{where}: expected 'timestamp filename', got {len(toks)} values")
        t = _tum_timestamp(toks[0], where)
        if t in first:
            raise ValueError(f"{where}: timestamp {toks[0]} repeats line {first[t]}")
        first[t] = ln
        f = cv.confine_path(root, toks[1], where)
        if not f.is_file():
            raise ValueError(f"{where}: file {toks[1]} not found in {root}")
        ts.append(t)
        files.append(f)
    if not ts:
        raise ValueError(f"{path}: no frames listed")
    return np.array(ts, np.float64), files


def _tum_groundtruth(path: pathlib.Path) -> tuple:
    """(timestamps (N,) sorted, c2w (N, 4, 4) unvalidated, labels) of groundtruth.txt."""
    ts, mats, labels, first = [], [], [], {}
    for ln, toks in _data_lines(path):
        where = f"{path}: line {ln}"
        if len(toks) != 8:
            raise ValueError(f"{where}: expected 8 values (timestamp tx ty tz qx qy qz qw), got {len(toks)}")
        t = _tum_timestamp(toks[0], where)
        if t in first:
            raise ValueError(f"{where}: timestamp {toks[0]} repeats line {first[t]}")
        first[t] = ln
        v = cv._float_toks(toks[1:], where, "the pose values")
        q = v[[6, 3, 4, 5]]  # w x y z
        if np.linalg.norm(q) < 1e-6:
            raise ValueError(f"{where}: zero quaternion")
        if abs(np.linalg.norm(q) - 1) > 1e-2:
            raise ValueError(f"{where}: quaternion norm {np.linalg.norm(q):.6g} is not 1 (not a rotation)")
        ts.append(t)
        mats.append(make_c2w(quat_to_matrix(q), v[:3]))
        labels.append(where)
    if not ts:
        raise ValueError(f"{path}: no poses listed")
    order = np.argsort(ts, kind="stable")
    return np.array(ts)[order], np.stack(mats)[order], [labels[i] for i in order]


def _tum_intrinsics(root: pathlib.Path, intrinsics, h: int, w: int) -> tuple:
    """(normalised (4,) intrinsics, distortion dict or None, description); named intrinsics are for 640 x 480,
    given ones (pixels) for the frames' h x w."""
    if intrinsics is None:
        m = re.search(r"freiburg(\d)", root.resolve().name, re.IGNORECASE)
        if m and f"freiburg{m.group(1)}" in TUM_INTRINSICS:
            intrinsics = f"freiburg{m.group(1)}"
        else:
            log.warning("%s: folder name names no freiburg sensor: ROS default intrinsics (525, 525, 319.5, 239.5) "
                        "used; pass intrinsics= (fx, fy, cx, cy) or 'freiburg1' / 'freiburg2' / 'freiburg3'", root)
            intrinsics = "ros"
    if isinstance(intrinsics, str):
        if intrinsics not in TUM_INTRINSICS:
            raise ValueError(f"TUM intrinsics: expected (fx, fy, cx, cy) or one of {sorted(TUM_INTRINSICS)}, "
                             f"got {intrinsics!r}")
        k, d = TUM_INTRINSICS[intrinsics]
        dist = dict(zip(("k1", "k2", "p1", "p2", "k3"), d)) if any(d) else None
        return np.array(k) / [640, 480, 640, 480], dist, f"TUM {intrinsics}"
    k = tuple(cv._number(x, f"TUM intrinsics (fx, fy, cx, cy) {list(intrinsics)!r}") for x in intrinsics)
    if len(k) != 4 or k[0] <= 0 or k[1] <= 0:
        raise ValueError(f"TUM intrinsics: expected (fx, fy, cx, cy) in pixels with fx, fy > 0, got {intrinsics!r}")
    return np.array(k) / [w, h, w, h], None, "given"


def read_tum(root, intrinsics=None, max_difference: float = 0.02, stride: int = 1, scene_id: Optional[str] = None,
             *, repair: bool = False) -> RGBDCapture:
    """TUM RGB-D sequence folder (module docstring) -> RGBDCapture with `timestamps` (colour, microseconds)."""
    root = pathlib.Path(root)
    t_rgb, rgb = _tum_list(root, "rgb.txt")
    t_dep, dep = _tum_list(root, "depth.txt")
    gt_path = root / "groundtruth.txt"
    if not gt_path.is_file():
        raise ValueError(f"{root}: no groundtruth.txt: the frames have no poses (the TUM benchmark withholds them for "
                         f"its validation sequences)")
    t_gt, gt_c2w, gt_labels = _tum_groundtruth(gt_path)
    pairs = associate(t_rgb, t_dep, max_difference)
    pose = _nearest(t_rgb[pairs[:, 0]], t_gt, max_difference) if len(pairs) else np.zeros(0, np.int64)
    keep = pose >= 0
    dropped_rgb, dropped_pose = len(t_rgb) - len(pairs), int((~keep).sum())
    if dropped_rgb or dropped_pose:
        log.info("%s: %d of %d colour frames have no depth frame within %g s, %d more no ground-truth pose within "
                 "%g s: dropped", root, dropped_rgb, len(t_rgb), max_difference, dropped_pose, max_difference)
    pairs, pose = pairs[keep], pose[keep]
    if not len(pairs):
        raise ValueError(f"{root}: no colour frame has both a depth frame and a ground-truth pose within "
                         f"{max_difference} s (rgb.txt {len(t_rgb)}, depth.txt {len(t_dep)}, groundtruth.txt "
                         f"{len(t_gt)} entries)")
    sel = _thin(len(pairs), stride)
    pairs, pose = pairs[sel], pose[sel]
    c2w = _poses(gt_c2w[pose], [gt_labels[j] for j in pose], repair, gt_path)
    f0 = rgb[pairs[0, 0]]
    h, w = multiview.image_size(f0)
    d0 = dep[pairs[0, 1]]
    dh, dw = multiview.image_size(d0)
    k, dist, source = _tum_intrinsics(root, intrinsics, h, w)
    intr = np.broadcast_to(k, (len(pairs), 4)).copy()
    ts = np.array([int(round(t * 1e6)) for t in t_rgb[pairs[:, 0]]], np.int64)
    return RGBDCapture(scene_id or root.name, [rgb[i] for i in pairs[:, 0]], Cameras(c2w, intr, h, w),
                       timestamps=ts, distortion=dist, depth_frames=[dep[j] for j in pairs[:, 1]],
                       depth_scale=TUM_DEPTH_SCALE, depth_hw=(dh, dw), layout="tum", intrinsics_source=source)


# ----------------------------------------------------------------------------------------------- ScanNet


def _scannet_intrinsics(path: pathlib.Path, hw: tuple, calib_hw: Optional[tuple]) -> np.ndarray:
    """Normalised intrinsics of intrinsic_color / intrinsic_depth.txt for frames of size hw. The file describes the
    sensor's frames; frames exported resized (SensReader's image_size) need the calibration size `calib_hw`, and
    without it a principal point outside the frames is refused rather than silently mis-normalised."""
    K = _matrix_file(path)
    h, w = calib_hw if calib_hw is not None else hw
    if calib_hw is None and not (0 < K[0, 2] < w and 0 < K[1, 2] < h):
        raise ValueError(f"{path}: principal point ({K[0, 2]:g}, {K[1, 2]:g}) lies outside the {w}x{h} frames: the "
                         f"frames were exported resized; pass the calibration size (H, W) of the sensor's frames "
                         f"(ScanNet colour: (968, 1296))")
    return _pixel_intrinsics(K, path, h, w)


def read_scannet(root, stride: int = 1, scene_id: Optional[str] = None, *, color_calibration_hw: Optional[tuple] = None,
                 depth_calibration_hw: Optional[tuple] = None, repair: bool = False) -> RGBDCapture:
    """ScanNet exported frames (module docstring) -> RGBDCapture (depth resampled into the colour camera).
    `color_calibration_hw` / `depth_calibration_hw`: the (H, W) the intrinsic files refer to when the frames were
    exported at another size (same aspect); default: the frames' own size."""
    root = pathlib.Path(root)
    colour = _numbered(root / "color", r"(\d+)\.(?:jpg|jpeg|png)", "colour frame")
    depth = _numbered(root / "depth", r"(\d+)\.png", "depth frame")
    poses = _numbered(root / "pose", r"(\d+)\.txt", "pose")
    if not colour:
        raise ValueError(f"{root / 'color'}: no colour frames (N.jpg)")
    nums = sorted(colour)
    for n in nums:
        if n not in depth:
            raise ValueError(f"{root / 'depth'}: no depth frame {n}.png for colour frame {colour[n].name}")
        if n not in poses:
            raise ValueError(f"{root / 'pose'}: no pose {n}.txt for colour frame {colour[n].name}")
    nums = [nums[i] for i in _thin(len(nums), stride)]
    mats, good, bad = [], [], []
    for n in nums:
        m = _matrix_file(poses[n], allow_nonfinite=True)
        if m.shape != (4, 4):
            raise ValueError(f"{poses[n]}: expected a 4x4 camera-to-world, got 3x3")
        if not np.isfinite(m).all():
            bad.append(poses[n].name)
            continue
        mats.append(m)
        good.append(n)
    if bad:
        log.warning("%s: %d frames have no valid pose (non-finite, e.g. -inf where tracking failed) and are skipped: "
                    "%s", root / "pose", len(bad), ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not good:
        raise ValueError(f"{root / 'pose'}: no frame has a finite pose")
    c2w = _poses(mats, [str(poses[n]) for n in good], repair, root / "pose")
    h, w = multiview.image_size(colour[good[0]])
    dh, dw = multiview.image_size(depth[good[0]])
    intr_dir = root / "intrinsic"
    kc = _scannet_intrinsics(intr_dir / "intrinsic_color.txt", (h, w), color_calibration_hw)
    kd = _scannet_intrinsics(intr_dir / "intrinsic_depth.txt", (dh, dw), depth_calibration_hw)
    V = len(good)
    return RGBDCapture(scene_id or root.name, [colour[n] for n in good],
                       Cameras(c2w, np.broadcast_to(kc, (V, 4)).copy(), h, w),
                       depth_frames=[depth[n] for n in good], depth_scale=1000.0,
                       depth_intrinsics=np.broadcast_to(kd, (V, 4)).copy(), depth_hw=(dh, dw), layout="scannet")


# ----------------------------------------------------------------------------------------------- 3DMatch


def _3dmatch_sequences(root: pathlib.Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("seq-"))


def read_3dmatch(root, sequence: Optional[str] = None, stride: int = 1, scene_id: Optional[str] = None, *,
                 repair: bool = False) -> RGBDCapture:
    """3DMatch / 7-Scenes frames (module docstring): a scene folder (camera-intrinsics.txt + seq-XX/) or one
    sequence folder (intrinsics in its parent) -> RGBDCapture of one sequence (`sequence`: its folder name; default
    the first)."""
    root = pathlib.Path(root)
    if (root / "camera-intrinsics.txt").is_file() and _3dmatch_sequences(root):
        seqs = _3dmatch_sequences(root)
        if sequence is None:
            if len(seqs) > 1:
                log.info("%s: %d sequences (%s): reading %s (pass sequence= for another)", root, len(seqs),
                         ", ".join(s.name for s in seqs), seqs[0].name)
            seq = seqs[0]
        else:
            seq = cv.confine_path(root, sequence, f"{root}: sequence")
            if not seq.is_dir():
                raise ValueError(f"{root}: no sequence folder {sequence!r} (has {[s.name for s in seqs]})")
        k_path, sid = root / "camera-intrinsics.txt", f"{root.name}/{seq.name}"
    else:
        seq = root
        k_path = next((p / "camera-intrinsics.txt" for p in (root, root.parent)
                       if (p / "camera-intrinsics.txt").is_file()), None)
        if k_path is None:
            raise ValueError(f"{root}: no camera-intrinsics.txt in the folder or its parent")
        sid = f"{root.parent.name}/{root.name}"
    colour = _numbered(seq, r"frame-(\d+)\.color\.(?:png|jpg|jpeg)", "colour frame")
    depth = _numbered(seq, r"frame-(\d+)\.depth\.png", "depth frame")
    poses = _numbered(seq, r"frame-(\d+)\.pose\.txt", "pose")
    if not colour:
        raise ValueError(f"{seq}: no frames (frame-NNNNNN.color.png)")
    nums = sorted(colour)
    for n in nums:
        for what, files, ext in (("depth", depth, "depth.png"), ("pose", poses, "pose.txt")):
            if n not in files:
                raise ValueError(f"{seq}: no frame-{n:06d}.{ext} for colour frame {colour[n].name}")
    nums = [nums[i] for i in _thin(len(nums), stride)]
    mats = [_matrix_file(poses[n]) for n in nums]
    for n, m in zip(nums, mats):
        if m.shape != (4, 4):
            raise ValueError(f"{poses[n]}: expected a 4x4 camera-to-world, got 3x3")
    c2w = _poses(mats, [str(poses[n]) for n in nums], repair, seq)
    h, w = multiview.image_size(colour[nums[0]])
    dh, dw = multiview.image_size(depth[nums[0]])
    k = _pixel_intrinsics(_matrix_file(k_path), k_path, h, w)
    return RGBDCapture(scene_id or sid, [colour[n] for n in nums],
                       Cameras(c2w, np.broadcast_to(k, (len(nums), 4)).copy(), h, w),
                       depth_frames=[depth[n] for n in nums], depth_scale=1000.0, depth_hw=(dh, dw),
                       depth_invalid=65535, layout="3dmatch")


# ----------------------------------------------------------------------------------------------- dispatch


def detect_layout(path) -> Optional[str]:
    """The RGB-D layout of a folder ('replica', 'tum', 'scannet', '3dmatch') or None."""
    p = pathlib.Path(path)
    if not p.is_dir():
        return None
    if (p / "results").is_dir() and (p / "traj.txt").is_file():
        return "replica"
    if (p / "rgb.txt").is_file() and (p / "depth.txt").is_file():
        return "tum"
    if all((p / d).is_dir() for d in ("color", "depth", "pose")):
        return "scannet"
    if ((p / "camera-intrinsics.txt").is_file() and _3dmatch_sequences(p)) or \
            next(p.glob("frame-*.pose.txt"), None) is not None:
        return "3dmatch"
    return None


def read_rgbd(path, layout: str = "auto", **kwargs) -> RGBDCapture:
    """Read an RGB-D sequence folder; `layout` 'auto' or one of LAYOUTS; kwargs go to the layout's reader."""
    path = pathlib.Path(path)
    if layout == "auto":
        layout = detect_layout(path)
        if layout is None:
            raise ValueError(f"{path}: not an RGB-D sequence folder (expected results/ + traj.txt (Replica), rgb.txt "
                             "+ depth.txt (TUM), color/ depth/ pose/ (ScanNet) or camera-intrinsics.txt + seq-*/ or "
                             "frame-*.pose.txt (3DMatch))")
    readers = {"replica": read_replica, "tum": read_tum, "scannet": read_scannet, "3dmatch": read_3dmatch}
    if layout not in readers:
        raise ValueError(f"read_rgbd layout: expected 'auto' or one of {LAYOUTS}, got {layout!r}")
    return readers[layout](path, **kwargs)
