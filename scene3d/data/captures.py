"""Single captures (one posed image set) read into the scene3d convention, and RE10K / DL3DV style clip folders.

Formats (camera parsing lives in `scene3d.geometry.conventions`; this module pairs cameras with image files):

- NeRF / instant-ngp / nerfstudio `transforms.json` (also DL3DV clips: `<clip>/transforms.json` or
  `<clip>/nerfstudio/transforms.json`): frames whose image file is missing are skipped.
- LLFF: `poses_bounds.npy` + `images_<factor>/` (or `images/` for factor 1), images in sorted name order.
- COLMAP: `sparse/0/{cameras,images,points3D}.{bin,txt}` + `images/`; views sorted by image name; the sparse
  points come along as `points` / `points_rgb`.
- RGB-D sequences (Replica / NICE-SLAM, TUM RGB-D, ScanNet exported frames, 3DMatch): `scene3d.data.rgbd`, whose
  `RGBDCapture` (a Capture) adds metric depth to the scene record; `read_capture` dispatches to it.
- RealEstate10K clip: a folder of frames (png/jpg) plus one pose file (`<clip>.txt` inside or next to the folder,
  or the single .txt inside). Frames named by timestamp (`<timestamp>.png`) are matched to pose lines by
  timestamp, otherwise by sorted order (then the counts must agree).

A `Capture` turns into a scene record (`scene3d.data.multiview` docstring) with `scene_record()`. Lens
distortion is returned but not applied (use undistorted images for the pinhole model).

Bad input raises ValueError naming the file (and frame): the pose files through `scene3d.geometry.conventions`
(see its docstring), and here image paths read from a capture (transforms.json frames, COLMAP image names) and
image files found in its folders must stay inside the capture's folder once symlinks are resolved
(`conventions.confine_path`), and every frame must decode as an image (`multiview.check_image`) before its bytes
go into a scene record, so a crafted capture cannot copy other local files into a dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Optional, Sequence

import numpy as np

from scene3d.data import multiview
from scene3d.geometry import conventions as cv
from scene3d.geometry.cameras import Cameras

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images_in(folder: pathlib.Path) -> list:
    """The image files of a folder (sorted by name), each confined to it (a symlink out of it is refused)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    return [cv.confine_path(folder, p.name, f"{folder}: image {p.name}") if p.is_symlink() else p for p in files]


@dataclasses.dataclass
class Capture:
    """One posed image set. `cameras` has one camera per file in `frames` (OpenCV c2w, normalised intrinsics)."""

    scene_id: str
    frames: list  # image file paths, one per view
    cameras: Cameras
    timestamps: Optional[np.ndarray] = None  # (V,) int64 (RealEstate10K microseconds)
    bounds: Optional[np.ndarray] = None  # (V, 2) near / far (LLFF)
    points: Optional[np.ndarray] = None  # (P, 3) sparse world points (COLMAP)
    points_rgb: Optional[np.ndarray] = None  # (P, 3) uint8
    distortion: Optional[object] = None  # as the format gives it; not applied

    def __post_init__(self):
        if len(self.frames) != len(self.cameras):
            raise ValueError(f"capture {self.scene_id}: {len(self.frames)} frames for {len(self.cameras)} cameras")

    def __len__(self):
        return len(self.frames)

    def load_images(self, indices: Optional[Sequence[int]] = None, size: Optional[tuple] = None,
                    resample: str = "bicubic"):
        """-> (uint8 (V, H, W, 3), intrinsics (V, 4)); with `size=(h, w)` resized + centre-cropped
        (`multiview.resize_and_crop`, intrinsics updated)."""
        idx = range(len(self)) if indices is None else [int(i) for i in indices]
        intr = np.asarray(self.cameras.intrinsics, np.float64)[list(idx)]
        min_size = None
        if size is not None:
            min_size = multiview.crop_resize_geometry(
                multiview.image_size(self.frames[idx[0]], name=self._frame_name(idx[0])), size)[0]
        ims = [multiview.decode_image(self.frames[i], min_size, name=self._frame_name(i)) for i in idx]
        shapes = sorted({im.shape for im in ims})
        if len(shapes) != 1:
            raise ValueError(f"capture {self.scene_id}: frames have different sizes {shapes}")
        images = np.stack(ims)
        self._check_aspect(images.shape[1:3])
        if size is None:
            return images, intr
        out = multiview.resize_and_crop(images, intr, size, resample=resample)
        return out["images"], out["intrinsics"]

    def _frame_name(self, i: int) -> str:
        return f"capture {self.scene_id}: frame {i} ({self.frames[i]})"

    def _check_aspect(self, hw):
        H, W = self.cameras.height, self.cameras.width
        if H and W and abs(hw[0] / hw[1] - H / W) > 0.01 * H / W:
            raise ValueError(f"capture {self.scene_id}: image files are {hw[1]}x{hw[0]} but the cameras were "
                             f"calibrated for {W}x{H} (a different aspect ratio): normalised intrinsics would be wrong")

    def scene_record(self, image_size: Optional[tuple] = None, encode: bool = True) -> dict:
        """Scene record: images as encoded bytes (the original files when `image_size` is None and `encode`,
        else PNG of the resized frames) or uint8 arrays (`encode=False`)."""
        if image_size is None and encode:
            data, size0 = [], None
            for i, f in enumerate(self.frames):  # each frame must decode before its bytes are stored
                data.append(pathlib.Path(f).read_bytes())
                hw = multiview.check_image(data[-1], name=self._frame_name(i))
                if size0 is None:
                    self._check_aspect(hw)
                    size0 = hw
                elif hw != size0:
                    raise ValueError(f"{self._frame_name(i)}: image is {hw[1]}x{hw[0]}, frame 0 is "
                                     f"{size0[1]}x{size0[0]}: the frames of a capture must have one size")
            images = multiview.object_array(data)
            intr = np.asarray(self.cameras.intrinsics, np.float64)
        else:
            arr, intr = self.load_images(size=image_size)
            images = arr
            if encode:
                images = multiview.object_array(multiview.encode_png(a) for a in arr)
        rec = {"scene_id": self.scene_id, "images": images, "c2w": np.asarray(self.cameras.c2w, np.float32),
               "intrinsics": intr.astype(np.float32)}
        if self.timestamps is not None:
            rec["timestamps"] = np.asarray(self.timestamps, np.int64)
        return rec


# ----------------------------------------------------------------------------------------------- readers


def _resolve(root: pathlib.Path, file_path: str) -> pathlib.Path:
    p = cv.resolve_image(root, file_path, f"{root}: image {file_path!r}")
    if p is None:
        raise ValueError(f"{root}: image {file_path} listed in the pose file not found")
    return p


def find_transforms_json(path) -> pathlib.Path:
    """A transforms.json path from a file or a folder (`folder/transforms.json`, `folder/nerfstudio/...`)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    for cand in (path / "transforms.json", path / "nerfstudio" / "transforms.json"):
        if cand.is_file():
            return cand
    raise ValueError(f"{path}: no transforms.json (looked for transforms.json and nerfstudio/transforms.json)")


def read_transforms_capture(path, scene_id: Optional[str] = None) -> Capture:
    """NeRF / instant-ngp / nerfstudio transforms.json (a file or its folder) -> Capture (missing frames skipped)."""
    path = find_transforms_json(path)
    data = cv.read_transforms_json(path, check_files=True)
    frames = [_resolve(path.parent, fp) for fp in data.file_paths]
    sid = scene_id or (path.parent.parent.name if path.parent.name == "nerfstudio" else path.parent.name)
    return Capture(sid, frames, data.cameras, distortion=data.distortion or None)


def read_llff_capture(root, factor: int = 8, scene_id: Optional[str] = None) -> Capture:
    """LLFF folder (poses_bounds.npy + images_<factor>/) -> Capture with near/far `bounds`."""
    root = pathlib.Path(root)
    cams, bounds = cv.read_llff(root, factor=factor)
    folder = root / ("images" if factor == 1 else f"images_{factor}")
    if not folder.is_dir():
        raise ValueError(f"{root}: no image folder {folder.name}/ for factor {factor}")
    frames = _images_in(folder)
    if len(frames) != len(cams):
        raise ValueError(f"{folder}: {len(frames)} images but poses_bounds.npy has {len(cams)} poses")
    return Capture(scene_id or root.name, frames, cams, bounds=bounds)


def read_colmap_capture(root, model: str = "sparse/0", images: str = "images",
                        scene_id: Optional[str] = None) -> Capture:
    """COLMAP reconstruction (`root/model` + `root/images`) -> Capture sorted by image name, with sparse points."""
    root = pathlib.Path(root)
    cameras, ims, pts = cv.read_colmap_model(root / model)
    if ims is None:
        raise ValueError(f"{root / model}: no images.bin or images.txt (camera poses are needed)")
    cams, names, dist = cv.colmap_to_cameras(cameras, ims)
    listing = next(p for p in (root / model / "images.bin", root / model / "images.txt") if p.is_file())
    frames = [cv.confine_path(root / images, n, f"{listing}: image {n!r}") for n in names]
    missing = [str(f) for f in frames if not f.is_file()]
    if missing:
        raise ValueError(f"{listing}: {len(missing)} images listed by COLMAP not found in {root / images}, e.g. "
                         f"{missing[0]}")
    return Capture(scene_id or root.name, frames, cams, distortion=dist,
                   points=None if pts is None else pts.xyz, points_rgb=None if pts is None else pts.rgb)


def _re10k_pose_file(clip: pathlib.Path) -> pathlib.Path:
    for cand in (clip / f"{clip.name}.txt", clip.with_suffix(".txt")):
        if cand.is_file():
            return cand
    txt = sorted(clip.glob("*.txt"))
    if len(txt) == 1:
        return txt[0]
    raise ValueError(f"{clip}: expected one RealEstate10K pose file ({clip.name}.txt inside or next to the folder, "
                     f"or a single .txt inside), found {[p.name for p in txt]}")


def read_re10k_clip(clip, pose_file=None, scene_id: Optional[str] = None) -> Capture:
    """RealEstate10K-style clip folder (frames + pose file) -> Capture with timestamps.

    Frames are the images in the folder (or its `frames/` / `images/` subfolder). If every frame is named by an
    integer timestamp present in the pose file, frames and poses are matched by timestamp (poses without a frame
    are dropped); otherwise by order, and the counts must agree.
    """
    clip = pathlib.Path(clip)
    pose_file = pathlib.Path(pose_file) if pose_file is not None else _re10k_pose_file(clip)
    data = cv.read_re10k(pose_file)
    folder = next((clip / s for s in ("frames", "images") if (clip / s).is_dir()), clip)
    frames = _images_in(folder)
    if not frames:
        raise ValueError(f"{folder}: no frames (png/jpg) in the clip folder")
    stems = [f.stem for f in frames]
    ts = {int(t): i for i, t in enumerate(data.timestamps)}
    if all(s.isdigit() for s in stems) and all(int(s) in ts for s in stems):
        if len({int(s) for s in stems}) != len(stems):
            dup = sorted(s for s in stems if sum(int(t) == int(s) for t in stems) > 1)
            raise ValueError(f"{folder}: frames {dup} name the same timestamp: cannot pair them with poses")
        order = sorted(range(len(frames)), key=lambda j: int(stems[j]))
        frames = [frames[j] for j in order]
        rows = np.array([ts[int(f.stem)] for f in frames])
    elif len(frames) == len(data.timestamps):
        rows = np.arange(len(frames))
    else:
        raise ValueError(f"{clip}: {len(frames)} frames but {pose_file.name} has {len(data.timestamps)} poses, and "
                         "frame names are not the pose timestamps: cannot pair them")
    cams = Cameras(data.c2w[rows], data.intrinsics[rows])
    return Capture(scene_id or clip.name, frames, cams, timestamps=data.timestamps[rows])


def _rgbd():
    from scene3d.data import rgbd  # imports this module: imported when first needed
    return rgbd


def read_capture(path, kind: str = "auto", **kwargs) -> Capture:
    """Read any supported capture; `kind` 'auto' | 'transforms' | 'llff' | 'colmap' | 're10k', or an RGB-D layout
    'replica' | 'tum' | 'scannet' | '3dmatch' (an `rgbd.RGBDCapture`, whose scene record carries metric depth)."""
    path = pathlib.Path(path)
    if kind == "auto":
        if path.suffix == ".json" or (path / "transforms.json").is_file() or \
                (path / "nerfstudio" / "transforms.json").is_file():
            kind = "transforms"
        elif (path / "poses_bounds.npy").is_file():
            kind = "llff"
        elif (path / kwargs.get("model", "sparse/0")).is_dir():
            kind = "colmap"
        elif _rgbd().detect_layout(path) is not None:
            kind = _rgbd().detect_layout(path)
        elif path.is_dir() and (list(path.glob("*.txt")) or path.with_suffix(".txt").is_file()):
            kind = "re10k"
        else:
            raise ValueError(f"{path}: cannot tell the capture format (no transforms.json, poses_bounds.npy, "
                             "sparse/0/, RGB-D sequence layout or RealEstate10K .txt pose file)")
    readers = {"transforms": read_transforms_capture, "llff": read_llff_capture, "colmap": read_colmap_capture,
               "re10k": read_re10k_clip}
    if kind in _rgbd().LAYOUTS:  # RGB-D sequences with metric depth (`scene3d.data.rgbd`)
        return _rgbd().read_rgbd(path, kind, **kwargs)
    if kind not in readers:
        raise ValueError(f"read_capture kind: expected 'auto' or one of {sorted(readers) + list(_rgbd().LAYOUTS)}, "
                         f"got {kind!r}")
    return readers[kind](path, **kwargs)


# ----------------------------------------------------------------------------------------------- clip folders

LAYOUTS = ("re10k", "dl3dv")


def list_clips(root, layout: str = "re10k") -> list:
    """Clip folders under `root` (sorted by name): for 're10k' folders holding frames, for 'dl3dv' folders holding
    a transforms.json (directly or in nerfstudio/)."""
    root = pathlib.Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"clip layout: expected one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise ValueError(f"{root}: clip folder not found")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if layout == "dl3dv":
            if (d / "transforms.json").is_file() or (d / "nerfstudio" / "transforms.json").is_file():
                out.append(d)
        elif _images_in(d) or any((d / s).is_dir() for s in ("frames", "images")):
            out.append(d)
    return out


def read_clip(clip, layout: str = "re10k") -> Capture:
    """One clip folder of a RE10K ('re10k') or DL3DV ('dl3dv', transforms.json) layout -> Capture."""
    if layout == "re10k":
        return read_re10k_clip(clip)
    if layout == "dl3dv":
        return read_transforms_capture(clip)
    raise ValueError(f"clip layout: expected one of {LAYOUTS}, got {layout!r}")


def split_clips(clips: Sequence, eval_fraction: float) -> tuple:
    """Deterministic (train, eval) split by a hash of the clip name: the ceil(fraction * n) clips with the
    smallest sha1 go to eval (none when the fraction is 0)."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval_fraction: expected a value in [0, 1), got {eval_fraction}")
    clips = list(clips)
    n_eval = int(np.ceil(eval_fraction * len(clips))) if eval_fraction > 0 else 0
    ranked = sorted(clips, key=lambda c: hashlib.sha1(pathlib.Path(c).name.encode()).hexdigest())
    held = {str(c) for c in ranked[:n_eval]}
    return [c for c in clips if str(c) not in held], [c for c in clips if str(c) in held]


class CaptureSource:
    """Random-access scene records from a list of captures (or paths, read with `read_capture`)."""

    def __init__(self, captures: Sequence, image_size: Optional[tuple] = None):
        self.captures = [c if isinstance(c, Capture) else read_capture(c) for c in captures]
        self.image_size = image_size

    def __len__(self):
        return len(self.captures)

    def __getitem__(self, i):
        return self.captures[i].scene_record(self.image_size)
