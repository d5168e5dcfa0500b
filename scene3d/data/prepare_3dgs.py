"""`python -m scene3d.data.prepare_3dgs`: a folder of 3DGS scenes -> a Can3Tok training dataset (ArrayRecord).

    python -m scene3d.data.prepare_3dgs --src=SCENES --out=DIR --num_gaussians=40000 [--radius=1.0] [--knn=16]
        [--eval_fraction=0.1 | --eval_scenes=a,b] [--seed=0] [--seed_point=x,y,z] [--segmenter=module:function]
        [--min_opacity=0] [--sh_degree=0] [--pad] [--strict] [--workers=1] [--preview_scenes=4]

Train on it with the data section ``dict(name="prepared_3dgs", path=DIR, gaussians=...)`` (``scene3d.data``): the
training transform then only rotates, orders and lays out the rows (``GaussianConfig.prepared``), it does not crop
or normalise again; ``gaussians.num_gaussians`` and ``radius`` must be the dataset's.

Scenes. Every folder under --src (--src itself included; hidden folders and --out left out) that holds a Gaussian
file or a camera file is one scene, and folders below a scene are not searched. Its id is its path relative to
--src, '/'-separated (the folder's name when --src is itself a scene). A scene folder holds:

  Gaussians    exactly one of: an INRIA 3DGS PLY (`*.ply`, or the latest `point_cloud/iteration_*/point_cloud.ply`
               of a 3DGS output folder, or a PlayCanvas compressed PLY), an antimatter15 `.splat`, a Niantic `.spz`,
               a PlayCanvas `.sog` bundle (`splat_io.read_gaussians`), or a `.npy` array as the Can3Tok release stores
               its crops: (M, 14) columns [xyz, f_dc 3, opacity logit, log scale 3, rot wxyz] (23 / 38 / 59 columns
               with SH bands; the release's 18-column training rows [voxel centre 3, voxel id, then the 14] are read
               too, the voxel prefix dropped). A PLY without the 3DGS properties (a COLMAP / SfM point cloud) or an
               .npy of another shape is skipped with a warning naming it; a folder left with no Gaussian file is
               skipped with a warning, one with several is an error (which one is meant?).
  cameras      optional, the first found of: `cameras.json` (the 3DGS training output), `transforms.json` (NeRF /
               instant-ngp, also `nerfstudio/transforms.json`), a COLMAP model (`sparse/0/`, `sparse/` or the folder
               itself). Read by `scene3d.geometry.conventions`, sorted by image name. Image names in them must stay
               inside the scene folder (a name that leaves it rejects the scene); the images are not needed.
  mask.png     optional seed mask drawn on the image of the middle camera (index V // 2 of the sorted cameras, the
               release's choice): any resolution with the images' aspect ratio, white (grey > 127) = the region.
  caption.txt  optional caption (stored stripped; '' when absent).

Per scene, what the Can3Tok release's groundedSAM.py does, with a given mask in place of its LangSAM segmentation:
  1. filter: `gs_pipeline.filter_gaussians` (non-finite Gaussians dropped, alpha < --min_opacity dropped, infinite
     opacity logits clamped);
  2. seed: with a mask (mask.png, or the mask a segmenter returns for the scene), the centroid of the Gaussians in
     front of the middle camera whose centre projects into the mask (the release's "mean pick"); else --seed_point
     (in the file's world frame); else the mean position of the scene;
  3. crop: `gs_filter.knn_region_grow` from the Gaussian nearest the seed over the --knn nearest-neighbour graph to
     exactly --num_gaussians (a scene with fewer Gaussians is skipped with a warning, or repeated cyclically with
     --pad);
  4. normalise, the release's convention: the crop is centred at its mean position and scaled so that its farthest
     Gaussian lies at --radius / 1.1 (the release uses a target radius of 10; the default here is 1.0, the radius of
     the training configs), log scales shifted by log(scale factor) (`gaussians.normalise_scene`); the cameras get
     the same similarity, as the release's sfm_camera_norm.py moves its cameras with the SfM points: centres moved,
     rotations and intrinsics unchanged, so every Gaussian projects to the same pixel as before;
  5. SH bands above --sh_degree dropped (missing ones zero), packed to 14 + 3K raw channels in crop growth order.

Segmenter hook: a callable ``seed_fn(scene: SceneInput) -> mask or None`` (``prepare(..., seed_fn=f)``, or
``--segmenter=module:function``) gives the seed mask of scenes without mask.png: a bool / 0-1 array (H, W) over the
middle camera's image (any resolution with its aspect ratio), or None for no opinion (then --seed_point / the
centre). `SceneInput` holds the filtered Gaussians and the cameras in the file's world frame, the middle camera's
index and image file (when the scene folder has it) and the caption.

Output (--out): the tfds dataset `scene3d_prepared3dgs/<config>/1.0.0/` (`tfds_builders.Scene3dPrepared3dgs`)
with splits 'train' and 'eval' (an empty split is left out), and `prepare_3dgs.json` (settings, the dataset
folder, per split the scene ids, the skipped scenes and why, per scene its file, seed and camera source). One
example per scene:

  gaussians     float32 (N, 14 + 3K)  raw packed channels (`gaussians.pack` order), normalised frame
  scene_id      str                   folder path relative to --src
  center, scale float64 (3,), ()      the normalisation x_norm = (x - center) * scale (x in the file's frame)
  seed          float32 (3,)          the seed point, normalised frame;  seed_source: 'mask' | 'segmenter' |
                                      'point' | 'center'
  c2w           float32 (V, 4, 4)     OpenCV camera-to-world after the normalisation (V = 0 without cameras)
  intrinsics    float32 (V, 4)        normalised (fx/W, fy/H, cx/W, cy/H);  image_size int32 (2,) (H, W), 0 if none
  camera_names  bytes (V,)            image names, sorted;  caption str;  source_file str;  num_input int64 (M
                                      after filtering)

Splits: --eval_scenes names the held-out scenes; else each scene is held out when the hash of (--seed, its id) falls
below --eval_fraction, independently of the other scenes (adding scenes never moves one), with at least one scene
in each split when there are two or more.

Resuming and determinism: each scene's example is written to `work/` under --out as soon as it is made, keyed by
the settings and the size and time of its input files; a rerun reuses it, so an interrupted run goes on where it
stopped and a finished one rebuilds nothing. The dataset is written to a temporary folder and renamed by tfds, and
`prepare_3dgs.json` (what readers open) is written last, atomically. The same inputs and settings give the same
example arrays (nothing is random; --workers only changes the speed). A progress line with the rate and ETA goes
to stderr; `preview.png` in --out shows, for the first --preview_scenes scenes, the input and the prepared crop
rendered from the middle camera (an orbit camera without cameras), before and after the normalisation.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import sys
import time
from concurrent import futures
from typing import Callable, Optional

import numpy as np

from scene3d.core import io
from scene3d.data import gs_filter, gs_pipeline, splat_io
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import conventions as cv
from scene3d.geometry import gaussians as gs

log = logging.getLogger(__name__)

PROG = "prepare_3dgs"
FORMAT_VERSION = 1
SUMMARY_FILE = "prepare_3dgs.json"
WORK_DIR = "work"
BUILDER_DIR = "scene3d_prepared3dgs"  # tfds' snake-case name of tfds_builders.Scene3dPrepared3dgs
GAUSSIAN_SUFFIXES = (".ply", ".splat", ".spz", ".sog", ".npy")
NOT_GAUSSIAN_FILES = ("poses_bounds.npy",)  # LLFF poses: never a Gaussian array
MASK_FILE = "mask.png"
CAPTION_FILE = "caption.txt"
NPY_COLUMNS = (14, 23, 38, 59)  # raw packed channels, SH degree 0..3
RELEASE_ROWS = gs.BASE_CHANNELS + gs_pipeline.RELEASE_PREFIX  # the release's 18-column training rows
_3DGS_PROPERTIES = ("opacity", "scale_0", "rot_0")
MAX_DEPTH = 8  # folder levels searched under --src


class NotGaussians(ValueError):
    """A file of a Gaussian suffix that holds no 3DGS scene (a point-cloud PLY, an .npy of another shape)."""


class SkipScene(ValueError):
    """A scene folder that is skipped with a warning, also with --strict (no usable Gaussian file, too few)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an example depends on besides the scene's files (the key of the per-scene work files)."""

    num_gaussians: int
    radius: float = 1.0
    knn: int = 16
    min_opacity: float = 0.0
    sh_degree: int = 0
    seed_point: Optional[tuple] = None
    pad: bool = False
    segmenter: Optional[str] = None  # 'module:function', or the name of a seed_fn given in Python

    def __post_init__(self):
        if int(self.num_gaussians) != self.num_gaussians or self.num_gaussians < 1:
            raise ValueError(f"--num_gaussians: expected a positive integer, got {self.num_gaussians}")
        if not self.radius > 0:
            raise ValueError(f"--radius: expected a value > 0, got {self.radius}")
        if int(self.knn) != self.knn or self.knn < 1:
            raise ValueError(f"--knn: expected a positive integer, got {self.knn}")
        if not 0 <= self.min_opacity < 1:
            raise ValueError(f"--min_opacity: expected a value in [0, 1), got {self.min_opacity}")
        gs.num_rest_coeffs(self.sh_degree)
        if self.seed_point is not None:
            p = tuple(float(v) for v in self.seed_point)
            if len(p) != 3 or not all(math.isfinite(v) for v in p):
                raise ValueError(f"--seed_point: expected three finite numbers x,y,z, got {self.seed_point}")
            object.__setattr__(self, "seed_point", p)

    @property
    def num_channels(self) -> int:
        return gs.num_channels(self.sh_degree)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass
class SceneInput:
    """What a segmenter (`seed_fn`) sees of one scene, in the file's world frame."""

    scene_id: str
    folder: pathlib.Path
    gaussians: gs.Gaussians  # filtered, unbatched numpy
    cameras: Optional[cam_lib.Cameras]  # sorted by image name; None without a camera file
    camera_names: list
    middle: Optional[int]  # index of the middle camera (V // 2), the one a mask is drawn on
    middle_image: Optional[pathlib.Path]  # its image file when the scene folder has it
    caption: str


# ------------------------------------------------------------------------------------------------ discovery


def check_inside(root, rel: str, where: str, base: str = ".") -> pathlib.Path:
    """`root / base / rel` for a path `rel` read from a user file (relative to the folder `base` of `root`);
    ValueError naming `where` when `rel` is absolute or its '..' parts leave `root` (checked on the names, so
    links the user placed inside the folder are allowed)."""
    text = str(rel).replace("\\", "/")
    norm = os.path.normpath(os.path.join(str(base), text))
    if not text or os.path.isabs(text) or re.match(r"^[A-Za-z]:", text) or norm == ".." or \
            norm.startswith("../") or os.path.isabs(norm):
        raise ValueError(f"{where}: path {rel!r} leaves the scene folder {root}")
    return pathlib.Path(root) / norm


def latest_3dgs_ply(folder) -> Optional[pathlib.Path]:
    """`point_cloud/iteration_<max>/point_cloud.ply` of a 3DGS training output folder, or None."""
    its = []
    for d in pathlib.Path(folder).glob("point_cloud/iteration_*"):
        m = re.fullmatch(r"iteration_(\d+)", d.name)
        if m and (d / "point_cloud.ply").is_file():
            its.append((int(m.group(1)), d / "point_cloud.ply"))
    return max(its)[1] if its else None


def gaussian_candidates(folder) -> list:
    """Files of a scene folder that may hold its Gaussians (sorted; the latest 3DGS output PLY last)."""
    folder = pathlib.Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in GAUSSIAN_SUFFIXES and p.name not in NOT_GAUSSIAN_FILES)
    latest = latest_3dgs_ply(folder)
    return files + ([latest] if latest is not None else [])


def _colmap_dir(folder: pathlib.Path) -> Optional[pathlib.Path]:
    for cand in (folder / "sparse" / "0", folder / "sparse", folder):
        if any((cand / f"cameras{e}").is_file() for e in (".bin", ".txt")):
            return cand
    return None


def _transforms_json(folder: pathlib.Path) -> Optional[pathlib.Path]:
    for cand in (folder / "transforms.json", folder / "nerfstudio" / "transforms.json"):
        if cand.is_file():
            return cand
    return None


def _camera_file(folder: pathlib.Path):
    """(kind, path) of the scene's camera file, or None."""
    if (folder / "cameras.json").is_file():
        return "cameras.json", folder / "cameras.json"
    tj = _transforms_json(folder)
    if tj is not None:
        return "transforms.json", tj
    cd = _colmap_dir(folder)
    if cd is not None:
        return "colmap", cd
    return None


def _is_scene(folder: pathlib.Path) -> bool:
    return bool(gaussian_candidates(folder)) or _camera_file(folder) is not None


def find_scenes(src, exclude=()) -> list:
    """[(scene id, folder)] under `src`, sorted by id (module docstring: what makes a scene folder)."""
    src = pathlib.Path(src)
    if not src.is_dir():
        raise ValueError(f"--src {src}: not a folder")
    skip = {pathlib.Path(e).resolve() for e in exclude}
    if _is_scene(src):
        return [(src.resolve().name, src)]
    out = []

    def walk(d: pathlib.Path, depth: int):
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.resolve() in skip:
                continue
            if _is_scene(sub):
                out.append((sub.relative_to(src).as_posix(), sub))
            elif depth < MAX_DEPTH:
                walk(sub, depth + 1)

    walk(src, 1)
    return sorted(out)


# ------------------------------------------------------------------------------------------------- reading


def _ply_is_3dgs(path: pathlib.Path) -> bool:
    """Whether a PLY header declares the 3DGS vertex properties (opacity, scale_*, rot_*); a file that is no PLY
    at all counts as 3DGS here, so that `splat_io.read_ply` reports what is wrong with it."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.startswith(b"ply"):
        return True
    names = {ln.split()[-1] for ln in head.split(b"end_header")[0].decode("ascii", "replace").splitlines()
             if ln.startswith("property ") and len(ln.split()) >= 3}
    return all(n in names for n in _3DGS_PROPERTIES) or "packed_position" in names  # or a compressed PLY


def read_gaussian_file(path) -> gs.Gaussians:
    """One Gaussian file (module docstring) -> Gaussians. NotGaussians when the file holds no 3DGS scene, another
    ValueError naming the file when it is corrupt."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        if not _ply_is_3dgs(path):
            raise NotGaussians(f"{path}: a PLY without the 3DGS vertex properties {list(_3DGS_PROPERTIES)} (a point "
                               "cloud, e.g. COLMAP points3D): not a 3DGS scene")
        return splat_io.read_ply(path, repair=True)
    if suffix in (".splat", ".spz", ".sog"):
        return splat_io.read_gaussians(path)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: cannot read the .npy file ({e})") from None
        if arr.ndim != 2 or arr.dtype.kind != "f" or arr.shape[1] not in NPY_COLUMNS + (RELEASE_ROWS,):
            raise NotGaussians(f"{path}: array {arr.dtype} {arr.shape} is not a Gaussian array (expected floats "
                               f"(M, C), C in {NPY_COLUMNS} raw channels or {RELEASE_ROWS} release rows)")
        if arr.shape[1] == RELEASE_ROWS:
            arr = arr[:, gs_pipeline.RELEASE_PREFIX:]
        if arr.shape[0] == 0:
            raise ValueError(f"{path}: empty Gaussian array")
        return gs.unpack(np.ascontiguousarray(arr))
    raise NotGaussians(f"{path}: not a Gaussian file type (expected {GAUSSIAN_SUFFIXES})")


def read_scene_gaussians(folder) -> tuple:
    """(Gaussians, file) of a scene folder; files that hold no 3DGS scene are skipped with a warning. SkipScene
    when none is left, ValueError when several are."""
    folder = pathlib.Path(folder)
    found, notes = [], []
    for f in gaussian_candidates(folder):
        try:
            found.append((read_gaussian_file(f), f))
        except NotGaussians as e:
            log.warning("%s", e)
            notes.append(f.name)
    if not found:
        extra = f" ({', '.join(notes)} skipped: not 3DGS)" if notes else ""
        raise SkipScene(f"{folder}: no 3DGS file (.ply / .splat / .spz / .sog / .npy){extra}")
    if len(found) > 1:
        raise ValueError(f"{folder}: several 3DGS files {[str(f.relative_to(folder)) for _, f in found]}: keep one "
                         "per scene folder")
    return found[0]


def _check_names(folder, names, where) -> None:
    for i, n in enumerate(names):  # image names of cameras.json / COLMAP are relative to images/
        check_inside(folder, n, f"{where}: camera {i}", base="images")


def read_scene_cameras(folder) -> tuple:
    """(Cameras sorted by image name, names, source) of a scene folder, or (None, [], '') without a camera file.
    Image names that leave the folder are a ValueError naming the camera file and the camera."""
    folder = pathlib.Path(folder)
    found = _camera_file(folder)
    if found is None:
        return None, [], ""
    kind, path = found
    if kind == "cameras.json":
        cams, names, _ = cv.read_3dgs_cameras(path)
        _check_names(folder, names, path)
    elif kind == "transforms.json":
        try:
            frames = json.loads(path.read_text()).get("frames")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a transforms.json ({e})") from None
        rels = [f.get("file_path", "") if isinstance(f, dict) else "" for f in (frames or [])]
        for i, r in enumerate(rels):  # before the reader opens any image (for its size) or looks for files
            check_inside(folder, r, f"{path}: frames[{i}].file_path", base=os.path.relpath(path.parent, folder))
        data = cv.read_transforms_json(path, check_files=False)
        cams, names = data.cameras, list(data.file_paths)
    else:
        cameras, images, _ = cv.read_colmap_model(path)
        if images is None:
            raise ValueError(f"{path}: COLMAP model without images.bin / images.txt (the camera poses)")
        cams, names, _ = cv.colmap_to_cameras(cameras, images)
        _check_names(folder, names, path)
        return cams, list(names), f"colmap:{path.relative_to(folder).as_posix() or '.'}"
    order = sorted(range(len(names)), key=lambda i: str(names[i]))
    cams = cam_lib.Cameras(np.asarray(cams.c2w)[order], np.asarray(cams.intrinsics)[order], cams.height, cams.width)
    return cams, [str(names[i]) for i in order], f"{kind}:{path.relative_to(folder).as_posix()}"


def middle_image(folder, names, middle, source: str) -> Optional[pathlib.Path]:
    """The middle camera's image file in the scene folder (names were checked by `read_scene_cameras`), or None."""
    if middle is None:
        return None
    folder = pathlib.Path(folder)
    if source.startswith("transforms.json:"):
        return cv.resolve_image((folder / source.split(":", 1)[1]).parent, names[middle])
    return cv.resolve_image(folder / "images", names[middle])


def read_mask(path) -> np.ndarray:
    """bool (H, W) from an image file: grey value > 127 (alpha ignored)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except OSError as e:
        raise ValueError(f"{path}: cannot read the mask image ({e})") from None


def read_caption(folder) -> str:
    p = pathlib.Path(folder) / CAPTION_FILE
    if not p.is_file():
        return ""
    try:
        return p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read the caption ({e})") from None


# ------------------------------------------------------------------------------------------------ seeding


def mask_seed(xyz, cams: cam_lib.Cameras, index: int, mask, where: str) -> tuple:
    """(centroid (3,) float64, count) of the Gaussians in front of camera `index` whose centre projects into the
    bool image `mask` (H, W) (any resolution with the cameras' aspect ratio). ValueError naming `where` when the
    aspect ratio differs or the mask holds no Gaussian."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ValueError(f"{where}: a seed mask must be a 2-D image (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    H, W = mask.shape
    if cams.height and cams.width and abs(H / W - cams.height / cams.width) > 0.01 * cams.height / cams.width:
        raise ValueError(f"{where}: mask is {W}x{H} but the middle camera's image is {cams.width}x{cams.height} (a "
                         "different aspect ratio)")
    xyz = np.asarray(xyz, np.float64)
    px, z = cam_lib.project(xyz, np.asarray(cams.c2w[index], np.float64), np.asarray(cams.intrinsics[index],
                                                                                     np.float64), H, W)
    sel = cam_lib.in_image(px, z, H, W)
    ij = np.floor(px[sel]).astype(np.int64)
    sel[sel] = mask[ij[:, 1], ij[:, 0]]
    if not sel.any():
        raise ValueError(f"{where}: the seed mask holds none of the {len(xyz)} Gaussians (none in front of the "
                         f"middle camera projects into it)")
    return xyz[sel].mean(0), int(sel.sum())


def load_segmenter(spec: str) -> Callable:
    """'module:function' -> the function (a `seed_fn`)."""
    mod, _, fn = str(spec).partition(":")
    if not mod or not fn:
        raise ValueError(f"--segmenter: expected module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--segmenter {spec}: cannot import it ({e})") from None


def _fn_name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


# ------------------------------------------------------------------------------------------------ one scene


def prepare_scene(folder, scene_id: str, settings: Settings, seed_fn: Optional[Callable] = None) -> tuple:
    """(record, info) of one scene folder (module docstring, steps 1-5). SkipScene / ValueError name the files."""
    folder = pathlib.Path(folder)
    g, gfile = read_scene_gaussians(folder)
    cams, names, cam_source = read_scene_cameras(folder)
    caption = read_caption(folder)
    g = gs_pipeline.filter_gaussians(g._replace(normals=None), settings.min_opacity, name=str(gfile))
    m = int(g.xyz.shape[0])
    if m < settings.num_gaussians and not settings.pad:
        raise SkipScene(f"{gfile}: {m} Gaussians after filtering, fewer than --num_gaussians={settings.num_gaussians}"
                        " (--pad repeats them)")
    middle = len(cams) // 2 if cams is not None and len(cams) else None
    mask, seed_source, where = None, "", ""
    if (folder / MASK_FILE).is_file():
        if middle is None:
            raise ValueError(f"{folder / MASK_FILE}: a seed mask needs the scene's cameras (no cameras.json, "
                             "transforms.json or COLMAP model in the folder)")
        mask, seed_source, where = read_mask(folder / MASK_FILE), "mask", str(folder / MASK_FILE)
    elif seed_fn is not None and middle is not None:
        scene = SceneInput(scene_id, folder, g, cams, names, middle, middle_image(folder, names, middle, cam_source),
                           caption)
        mask = seed_fn(scene)
        seed_source, where = "segmenter", f"{folder}: segmenter {_fn_name(seed_fn)}"
    xyz = np.asarray(g.xyz, np.float64)
    if mask is not None:
        seed, _ = mask_seed(xyz, cams, middle, mask, where)
    elif settings.seed_point is not None:
        seed, seed_source = np.asarray(settings.seed_point, np.float64), "point"
    else:
        seed, seed_source = xyz.mean(0), "center"
    crop = gs_filter.crop_gaussians(g, settings.num_gaussians, seed=seed, k=settings.knn, pad=settings.pad)
    c2w = np.zeros((0, 4, 4)) if cams is None else np.asarray(cams.c2w, np.float64)
    crop, tf, c2w = gs.normalise_scene(crop, radius=settings.radius, cameras_c2w=c2w)
    crop = gs_pipeline.set_sh_degree(crop, settings.sh_degree)
    rec = {
        "scene_id": scene_id,
        "gaussians": gs.pack(crop).astype(np.float32),
        "center": np.asarray(tf.center, np.float64),
        "scale": np.float64(tf.scale),
        "seed": tf.apply_points(seed).astype(np.float32),
        "seed_source": seed_source,
        "c2w": c2w.astype(np.float32),
        "intrinsics": np.zeros((0, 4), np.float32) if cams is None else np.asarray(cams.intrinsics, np.float32),
        "image_size": np.array([0, 0] if cams is None else [cams.height or 0, cams.width or 0], np.int32),
        "camera_names": np.array(names, dtype=str).reshape(-1),
        "caption": caption,
        "source_file": gfile.relative_to(folder).as_posix(),
        "num_input": np.int64(m),
    }
    info = dict(file=rec["source_file"], num_input=m, seed_source=seed_source, cameras=cam_source,
                num_cameras=0 if cams is None else len(cams),
                mask_camera=None if middle is None or seed_source not in ("mask", "segmenter") else names[middle],
                seed_world=[float(v) for v in seed])
    return rec, info


def input_fingerprint(folder) -> list:
    """(relative path, size, mtime_ns) of the files a scene is read from (its own files, the COLMAP / nerfstudio
    folders, the latest 3DGS output PLY)."""
    folder = pathlib.Path(folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    for sub in ("sparse/0", "sparse", "nerfstudio"):
        if (folder / sub).is_dir():
            files += [p for p in (folder / sub).iterdir() if p.is_file()]
    latest = latest_3dgs_ply(folder)
    files += [latest] if latest is not None else []
    out = []
    for p in sorted(set(files)):
        st = p.stat()
        out.append([p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def work_file(out, scene_id: str, folder, settings: Settings) -> pathlib.Path:
    key = json.dumps([FORMAT_VERSION, settings.to_json(), scene_id, input_fingerprint(folder)], sort_keys=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scene_id.replace("/", "__"))[:80]
    return pathlib.Path(out) / WORK_DIR / f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"


def _save_record(path: pathlib.Path, rec: dict) -> None:
    arrays = {k: (np.array(v) if isinstance(v, str) else np.asarray(v)) for k, v in rec.items()}

    def write(tmp):  # a file object: np.savez on a name would append '.npz'
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    io.atomic_write(path, write)


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s")


def _run_scene(folder: str, scene_id: str, settings: Settings, seed_fn, target: str, strict: bool) -> dict:
    """Prepare and save one scene -> {status: 'done' | 'skipped', reason, info} (worker processes too)."""
    if isinstance(seed_fn, str):
        seed_fn = load_segmenter(seed_fn)
    try:
        rec, info = prepare_scene(folder, scene_id, settings, seed_fn)
    except SkipScene as e:
        return dict(status="skipped", reason=str(e))
    except (ValueError, OSError) as e:  # corrupt or unreadable files: named in the message
        if strict:
            raise
        return dict(status="skipped", reason=str(e))
    _save_record(pathlib.Path(target), rec)
    io.write_json(pathlib.Path(target).with_suffix(".json"), info, sort_keys=True)
    return dict(status="done", info=info)


# ------------------------------------------------------------------------------------------------- splits


def _unit_hash(seed: int, scene_id: str) -> float:
    h = hashlib.sha1(f"{int(seed)}:{scene_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def split_scenes(ids, eval_fraction: float = 0.1, eval_scenes=None, seed: int = 0) -> dict:
    """{'train': ids, 'eval': ids} (module docstring: Splits), each in the order of `ids`."""
    ids = list(ids)
    if eval_scenes:
        held = set(eval_scenes)
    else:
        if not 0 <= eval_fraction < 1:
            raise ValueError(f"--eval_fraction: expected a value in [0, 1), got {eval_fraction}")
        u = {s: _unit_hash(seed, s) for s in ids}
        held = {s for s in ids if u[s] < eval_fraction}
        if eval_fraction > 0 and len(ids) >= 2:
            ranked = sorted(ids, key=lambda s: u[s])
            if not held:
                held = {ranked[0]}
            if len(held) == len(ids):
                held.discard(ranked[-1])
    return {"train": [s for s in ids if s not in held], "eval": [s for s in ids if s in held]}


# ------------------------------------------------------------------------------------------------- progress


class Progress:
    """A stderr line per scene (at most every `every` seconds, and the last): count, rate, ETA, what happened.
    Reused scenes count as done but not towards the rate."""

    def __init__(self, total: int, every: float = 2.0, stream=None):
        self.total, self.every, self.stream = int(total), float(every), stream
        self.done, self.reused, self.start, self.last = 0, 0, time.monotonic(), -1e9

    def tick(self, text: str, reused: bool = False) -> None:
        from scene3d.core.metrics import format_duration
        self.done += 1
        self.reused += int(reused)
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = (self.done - self.reused) / max(now - self.start, 1e-9)
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        print(f"{PROG}: {self.done}/{self.total} scenes | {rate:.2f} scenes/s | ETA {eta} | {text}",
              file=self.stream or sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ dataset


def prepare(src, out, settings: Settings, *, eval_fraction: float = 0.1, eval_scenes=None, seed: int = 0,
            seed_fn: Optional[Callable] = None, strict: bool = False, workers: int = 1,
            preview_scenes: int = 4) -> dict:
    """Prepare every scene of `src` into the dataset under `out` (module docstring); returns the summary written
    to `out/prepare_3dgs.json` plus `reused` / `computed` counts of this run."""
    from scene3d.data import tfds_builders

    src, out = pathlib.Path(src), pathlib.Path(out)
    spec = seed_fn if isinstance(seed_fn, str) else (settings.segmenter if seed_fn is None else None)
    if spec:  # 'module:function': imported here, and by name in worker processes
        seed_fn = load_segmenter(spec)
    if seed_fn is not None:
        settings = dataclasses.replace(settings, segmenter=spec or _fn_name(seed_fn))
    worker_fn = spec or seed_fn
    scenes = find_scenes(src, exclude=[out])
    if not scenes:
        raise ValueError(f"--src {src}: no scene folders (a folder with a .ply / .splat / .npy Gaussian file or a "
                         "camera file)")
    if eval_scenes:
        unknown = sorted(set(eval_scenes) - {sid for sid, _ in scenes})
        if unknown:
            raise ValueError(f"--eval_scenes: no scene folder {unknown} under {src} (scenes: "
                             f"{[sid for sid, _ in scenes]})")
    (out / WORK_DIR).mkdir(parents=True, exist_ok=True)
    targets = {sid: work_file(out, sid, folder, settings) for sid, folder in scenes}
    progress = Progress(len(scenes))
    results, todo = {}, []
    for sid, folder in scenes:
        t = targets[sid]
        if t.is_file() and t.with_suffix(".json").is_file():
            results[sid] = dict(status="done", reused=True, info=json.loads(t.with_suffix(".json").read_text()))
            progress.tick(f"{sid}: reused", reused=True)
        else:
            todo.append((sid, folder))

    def report(sid, r):
        results[sid] = r
        progress.tick(f"{sid}: {'skipped' if r['status'] == 'skipped' else 'done'}")
        if r["status"] == "skipped":
            log.warning("scene %s skipped: %s", sid, r["reason"])

    if workers > 1 and len(todo) > 1:
        import multiprocessing
        with futures.ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(logging.getLogger().level,)) as ex:
            jobs = {ex.submit(_run_scene, str(folder), sid, settings, worker_fn, str(targets[sid]), strict): sid
                    for sid, folder in todo}
            for job in futures.as_completed(jobs):
                report(jobs[job], job.result())
    else:
        for sid, folder in todo:
            report(sid, _run_scene(str(folder), sid, settings, worker_fn, str(targets[sid]), strict))
    ok = [sid for sid, _ in scenes if results[sid]["status"] == "done"]
    skipped = {sid: results[sid]["reason"] for sid, _ in scenes if results[sid]["status"] == "skipped"}
    if eval_scenes:
        lost = sorted(set(eval_scenes) & set(skipped))
        if lost:
            log.warning("--eval_scenes %s were skipped (see above)", lost)
    if not ok:
        raise ValueError(f"--src {src}: every scene was skipped ({len(skipped)}): " +
                         "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    splits = split_scenes(ok, eval_fraction, eval_scenes, seed)
    plan = {s: [targets[sid].name for sid in ids] for s, ids in splits.items()}
    name = f"n{settings.num_gaussians}_c{settings.num_channels}_" + \
        hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]
    dataset = pathlib.Path(BUILDER_DIR) / name / str(tfds_builders.Scene3dPrepared3dgs.VERSION)
    if not (out / dataset / "dataset_info.json").is_file():
        config = tfds_builders.Prepared3dgsConfig(
            name=name, version=str(tfds_builders.Scene3dPrepared3dgs.VERSION), num_gaussians=settings.num_gaussians,
            num_channels=settings.num_channels, description=f"3DGS scenes prepared from {src.resolve()}")
        builder = tfds_builders.Scene3dPrepared3dgs(
            data_dir=str(out), config=config,
            examples={s: [str(targets[sid]) for sid in ids] for s, ids in splits.items()})
        tfds_builders.prepare(builder)
    summary = dict(
        format=FORMAT_VERSION, src=str(src.resolve()), settings=settings.to_json(), seed=int(seed),
        eval_fraction=float(eval_fraction), eval_scenes=sorted(eval_scenes) if eval_scenes else None,
        dataset=dataset.as_posix(), num_gaussians=settings.num_gaussians, num_channels=settings.num_channels,
        radius=settings.radius, sh_degree=settings.sh_degree,
        num_captioned=sum(1 for sid in ok if _caption_of(targets[sid])),
        splits={s: ids for s, ids in splits.items() if ids}, skipped=skipped,
        scenes={sid: dict(results[sid]["info"], work=targets[sid].name) for sid in ok})
    io.write_json(out / SUMMARY_FILE, summary, indent=1, sort_keys=True)
    builder_root = out / BUILDER_DIR
    for old in builder_root.iterdir():  # earlier datasets of this folder, no longer referenced
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    downloads = out / "downloads"  # tfds makes it (and an empty extracted/); nothing is downloaded
    if downloads.is_dir():
        for d in sorted(downloads.rglob("*"), reverse=True) + [downloads]:
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    if preview_scenes > 0:
        quiet = logging.getLogger(splat_io.__name__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its warnings about the input files were given once already
        try:
            write_preview(out / "preview.png", [(sid, f) for sid, f in scenes if sid in ok][:preview_scenes],
                          {sid: targets[sid] for sid in ok})
        except Exception as e:  # noqa: BLE001 - a preview must never lose the dataset
            log.warning("preview.png not written: %s: %s", type(e).__name__, e)
        finally:
            quiet.setLevel(level)
    summary["reused"] = sum(1 for sid in ok if results[sid].get("reused"))
    summary["computed"] = len(ok) - summary["reused"]
    return summary


def _caption_of(work: pathlib.Path) -> str:
    with np.load(work, allow_pickle=False) as z:
        return str(z["caption"])


# ------------------------------------------------------------------------------------------------ reading


def read_summary(path) -> dict:
    """`prepare_3dgs.json` of a prepared dataset folder (the --out folder)."""
    root = pathlib.Path(os.path.expanduser(str(path)))
    f = root / SUMMARY_FILE
    if not f.is_file():
        raise ValueError(f"{root}: not a prepared 3DGS dataset (no {SUMMARY_FILE}); write one with "
                         f"`python -m scene3d.data.{PROG} --src=SCENES --out={root} --num_gaussians=N`")
    try:
        summary = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    for key in ("dataset", "num_gaussians", "radius", "splits"):
        if key not in summary:
            raise ValueError(f"{f}: field {key!r} missing")
    return summary


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class PreparedSource:
    """Training records of one split ('train' | 'eval') of a prepared dataset: `gaussians`, `scene_id`, `center`,
    `scale`, and `caption` when the dataset has captions ('' for the scenes without). `full=True` gives every field
    of the example (cameras, seed, ...; text fields as str)."""

    def __init__(self, path, split: str, full: bool = False):
        from scene3d.data import tfds_builders
        if not path:
            raise ValueError("config.data.path: 'prepared_3dgs' needs the folder written by "
                             f"`python -m scene3d.data.{PROG}`")
        self.root = pathlib.Path(os.path.expanduser(str(path)))
        self.summary = read_summary(self.root)
        self.split, self.full = split, bool(full)
        self.captions = int(self.summary.get("num_captioned", 0)) > 0
        self.source = tfds_builders.prepared_3dgs_source(self.root / self.summary["dataset"], split)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = self.source[i]
        if self.full:
            rec = dict(rec)
            for k in ("scene_id", "seed_source", "caption", "source_file"):
                rec[k] = _text(rec[k])
            return rec
        out = {"gaussians": rec["gaussians"], "scene_id": _text(rec["scene_id"]), "center": rec["center"],
               "scale": rec["scale"]}
        if self.captions:
            out["caption"] = _text(rec["caption"])
        return out

    def __repr__(self):
        return f"PreparedSource({self.root}:{self.split}, {len(self)} scenes)"


def training_config(path, gaussians_cfg=None) -> gs_pipeline.GaussianConfig:
    """`GaussianConfig` (from `config.data.gaussians`) for training on the prepared dataset `path`, with `prepared`
    set; ValueError when its num_gaussians or radius differ from the dataset's."""
    summary = read_summary(path)
    cfg = dataclasses.replace(gs_pipeline.GaussianConfig.from_config(gaussians_cfg), prepared=True)
    where = pathlib.Path(os.path.expanduser(str(path))) / SUMMARY_FILE
    if cfg.num_gaussians != int(summary["num_gaussians"]):
        raise ValueError(f"config.data.gaussians.num_gaussians={cfg.num_gaussians} but {where} holds "
                         f"{summary['num_gaussians']} Gaussians per scene")
    if not math.isclose(cfg.radius, float(summary["radius"]), rel_tol=1e-9):
        raise ValueError(f"config.data.gaussians.radius={cfg.radius} but {where} was normalised to radius "
                         f"{summary['radius']}")
    return cfg


# ------------------------------------------------------------------------------------------------ preview


def write_preview(path, scenes, works, size: int = 200) -> None:
    """PNG, a row per scene: the filtered input and the prepared crop (back in the input frame) from the middle
    camera, and the normalised crop from the normalised middle camera, which must look the same as the crop (an
    orbit camera around the crop for scenes without cameras). Preview splats (`render.points.render_gaussians`)."""
    from scene3d.render import plots
    from scene3d.render.points import orbit_camera, render_gaussians

    images, labels = [], []
    for sid, folder in scenes:
        with np.load(works[sid], allow_pickle=False) as z:
            rec = {k: z[k] for k in z.files}
        g_in = gs_pipeline.filter_gaussians(read_gaussian_file(pathlib.Path(folder) / str(rec["source_file"]))
                                            ._replace(normals=None), name=sid)
        tf = gs.SceneTransform(rec["center"].astype(np.float64), float(rec["scale"]))
        crop_n = gs.unpack(rec["gaussians"].astype(np.float64))
        crop = gs.denormalise_scene(crop_n, tf)
        if len(rec["c2w"]):
            m = len(rec["c2w"]) // 2
            c2w_n, intr = rec["c2w"][m].astype(np.float64), rec["intrinsics"][m].astype(np.float64)
            H, W = (int(v) for v in rec["image_size"])
            f = size / max(H, W)
            h, w, cam = max(1, round(H * f)), max(1, round(W * f)), "camera " + plots.elide(
                str(rec["camera_names"][m]), 12)
        else:
            c2w_n, intr = orbit_camera(np.zeros(3), 1.5 * float(np.linalg.norm(crop_n.xyz, axis=-1).max()),
                                       (0.0, 0.0, 1.0))
            h = w = size
            cam = "orbit"
        c2w = tf.invert_c2w(c2w_n)
        for g, c, text in ((g_in, c2w, "input"), (crop, c2w, "crop"), (crop_n, c2w_n, "normalised")):
            images.append(render_gaussians(g, c, intr, h, w, background=1.0).image)
            labels.append(f"{plots.elide(sid, 14)} {text}" + (f", {cam}" if text == "input" else ""))
    if images:
        sheet = plots.contact_sheet(images, labels, cols=3, cell=size,
                                    title="prepare_3dgs: input | crop | normalised crop (normalised camera)")
        io.atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


# ------------------------------------------------------------------------------------------------------ CLI


def _floats(text: str, n: int, flag: str) -> tuple:
    try:
        vals = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{flag}: expected {n} comma-separated numbers, got {text!r}") from None
    if len(vals) != n:
        raise ValueError(f"{flag}: expected {n} comma-separated numbers, got {text!r}")
    return vals


def parse_args(argv):
    p = argparse.ArgumentParser(prog=f"python -m scene3d.data.{PROG}", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--src", required=True, help="folder of scene folders (or one scene folder)")
    p.add_argument("--out", required=True, help="output folder (the dataset, work/, prepare_3dgs.json)")
    p.add_argument("--num_gaussians", type=int, required=True, help="N: Gaussians per example")
    p.add_argument("--radius", type=float, default=1.0, help="normalised radius (farthest Gaussian at radius / 1.1)")
    p.add_argument("--knn", type=int, default=16, help="neighbours per step of the kNN region growing")
    p.add_argument("--min_opacity", type=float, default=0.0, help="drop Gaussians with a smaller alpha first")
    p.add_argument("--sh_degree", type=int, default=0, help="SH degree kept (0: 14 channels, the release's)")
    p.add_argument("--eval_fraction", type=float, default=0.1, help="held-out fraction (hash of the scene id)")
    p.add_argument("--eval_scenes", help="comma-separated held-out scene ids (instead of --eval_fraction)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    p.add_argument("--seed_point", help="x,y,z: crop seed (file's world frame) for scenes without a mask")
    p.add_argument("--segmenter", help="module:function, a seed_fn(SceneInput) -> mask (H, W) or None")
    p.add_argument("--pad", action="store_true", help="repeat the Gaussians of scenes with fewer than N")
    p.add_argument("--strict", action="store_true", help="a corrupt scene is an error, not a skipped scene")
    p.add_argument("--workers", type=int, default=1, help="scenes prepared in parallel processes")
    p.add_argument("--preview_scenes", type=int, default=4, help="scenes shown in preview.png (0: none)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings(num_gaussians=args.num_gaussians, radius=args.radius, knn=args.knn,
                        min_opacity=args.min_opacity, sh_degree=args.sh_degree,
                        seed_point=_floats(args.seed_point, 3, "--seed_point") if args.seed_point else None,
                        pad=args.pad, segmenter=args.segmenter)
    eval_scenes = [s.strip().strip("/") for s in args.eval_scenes.split(",") if s.strip()] if args.eval_scenes \
        else None
    summary = prepare(args.src, args.out, settings, eval_fraction=args.eval_fraction, eval_scenes=eval_scenes,
                      seed=args.seed, seed_fn=args.segmenter, strict=args.strict, workers=args.workers,
                      preview_scenes=args.preview_scenes)
    counts = ", ".join(f"{s} {len(ids)}" for s, ids in summary["splits"].items())
    print(f"{PROG}: {counts} scenes ({summary['computed']} prepared now, {summary['reused']} reused), "
          f"{len(summary['skipped'])} skipped -> {pathlib.Path(args.out) / summary['dataset']}", file=sys.stderr)
    for sid, why in summary["skipped"].items():
        print(f"{PROG}: skipped {sid}: {why}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s", force=True)
    main()
