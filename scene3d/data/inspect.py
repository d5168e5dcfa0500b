"""`python -m scene3d.data.inspect PATH [--out FILE.png]`: what a scene file or folder holds, plus a preview PNG.

Accepted inputs (the kind is detected from the path):

  built-in dataset folder (index.json + scene_*.npz)     built-in scene file (.npz)
  capture folder with transforms.json / poses_bounds.npy / sparse/0 (COLMAP) / cameras.json (3DGS output)
  transforms.json file    COLMAP sparse folder (cameras, images, points3D .bin or .txt) or one of its files
  3DGS cameras.json       RealEstate10K pose file (.txt)     LLFF poses_bounds.npy     3DGS .ply / .splat
  3DGS compressed: Niantic .spz, PlayCanvas compressed .ply, SOG (.sog bundle, meta.json, or its folder)
  RGB-D sequence folder (Replica / NICE-SLAM, TUM RGB-D, ScanNet exported frames, 3DMatch; `scene3d.data.rgbd`):
  colour and depth thumbnails, and the depth of up to 24 frames fused into world points for the top-down plot
  prepared tfds ArrayRecord dataset folder (records in the `scene3d.data.multiview` scene layout) or a data_dir
  holding one

It prints the kind, counts, image size, intrinsics, scene bounds, camera centre spread, SH degree, opacity
statistics and repairs (infinite opacity logits clamped), and writes a PNG (default `<name>_inspect.png` in the
working directory): a contact sheet of views when there are images, or renders of the Gaussians (alpha-composited
splats coloured by SH DC, from cameras orbiting the scene centre), next to a top-down plot of camera frustums
and points on the plane orthogonal to the mean camera up (or `--up`). A file it cannot read gives exit status 1
and one line on stderr naming the file; `--debug` shows the traceback instead.

Use from Python: `insp = inspect_path(path); print("\\n".join(insp.lines())); make_figure(insp).save(...)`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import re
import sys
import textwrap
import warnings
import zipfile
from typing import Optional

import numpy as np

PROG = "scene3d.data.inspect"
MAX_THUMBS = 12
THUMB_SIDE = 320
MAX_PLOT_POINTS = 80000
_COLMAP_STEMS = ("cameras", "images", "points3D")

@dataclasses.dataclass
class Inspection:
    """What `inspect_path` found. `summary` holds (key, value) lines in print order; `counts` the key numbers."""

    path: str
    kind: str = ""
    summary: list = dataclasses.field(default_factory=list)
    counts: dict = dataclasses.field(default_factory=dict)
    cameras: Optional[object] = None  # scene3d.geometry.Cameras
    images: list = dataclasses.field(default_factory=list)  # (label, (H, W, 3) uint8) thumbnails
    points: Optional[np.ndarray] = None  # (P, 3) points for the top-down plot
    point_colors: Optional[np.ndarray] = None  # (P, 3) uint8
    point_label: str = ""
    gaussians: Optional[object] = None  # scene3d.geometry.gaussians.Gaussians
    up: Optional[np.ndarray] = None
    up_source: str = ""
    notes: list = dataclasses.field(default_factory=list)

    def add(self, key: str, value) -> None:
        self.summary.append((key, str(value)))

    def lines(self) -> list:
        rows = [("path", self.path), ("kind", self.kind)] + list(self.summary)
        if self.up is not None:
            rows.append(("up", f"{_vec(self.up)} ({self.up_source})"))
        rows += [("note", n) for n in self.notes]
        width = max(len(k) for k, _ in rows) + 2
        return [f"{k + ':':<{width}}{v}" for k, v in rows]


# ------------------------------------------------------------------------------------------------ formatting


def _g(x, p: int = 4) -> str:
    return f"{float(x):.{p}g}"


def _vec(v, p: int = 4) -> str:
    return "(" + ", ".join(_g(x, p) for x in np.asarray(v).reshape(-1)) + ")"


def _range(a, p: int = 4) -> str:
    a = np.asarray(a, np.float64)
    lo, hi = np.min(a), np.max(a)
    return _g(lo, p) if np.isclose(lo, hi, rtol=1e-9, atol=1e-12) else f"{_g(lo, p)}..{_g(hi, p)}"


# ------------------------------------------------------------------------------------------------ detection


def _colmap_model_dir(folder: pathlib.Path) -> Optional[pathlib.Path]:
    """The COLMAP model folder at/under `folder` (itself, sparse/0, sparse), or None."""
    for cand in (folder, folder / "sparse" / "0", folder / "sparse"):
        if any((cand / f"cameras{e}").is_file() for e in (".bin", ".txt")):
            return cand
    return None


def _is_arrayrecord_dir(folder: pathlib.Path) -> bool:
    return any(next(folder.glob("*/" * k + "*.array_record*"), None) is not None for k in range(4))


def _tfds_dirs(folder: pathlib.Path) -> list:
    """Prepared tfds dataset folders (dataset_info.json + *.array_record*) at or up to 3 levels under `folder`."""
    cands = [folder] + sorted({p.parent for k in range(1, 4) for p in folder.glob("*/" * k + "dataset_info.json")})
    return [d for d in cands if (d / "dataset_info.json").is_file() and next(d.glob("*.array_record*"), None)]


def _latest_3dgs_ply(folder: pathlib.Path) -> Optional[pathlib.Path]:
    its = []
    for d in folder.glob("point_cloud/iteration_*"):
        m = re.fullmatch(r"iteration_(\d+)", d.name)
        if m and (d / "point_cloud.ply").is_file():
            its.append((int(m.group(1)), d / "point_cloud.ply"))
    return max(its)[1] if its else None


_RGBD_FILES = ("rgb.txt", "depth.txt", "groundtruth.txt", "traj.txt", "camera-intrinsics.txt")


def _rgbd_layout(folder: pathlib.Path) -> Optional[str]:
    from scene3d.data import rgbd
    return rgbd.detect_layout(folder)


def detect(path) -> tuple:
    """(kind, path to read) for a file or folder; ValueError naming the path if it is not a recognised input."""
    p = pathlib.Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or directory")
    if p.is_dir():
        if (p / "index.json").is_file():
            return "builtin_dataset", p
        if (p / "transforms.json").is_file():
            return "transforms_capture", p
        if (p / "poses_bounds.npy").is_file():
            return "llff_capture", p
        model = _colmap_model_dir(p)
        if model == p:
            return "colmap_model", p
        if model is not None:
            return "colmap_capture", p
        if _rgbd_layout(p) is not None:
            return "rgbd_sequence", p
        if (p / "cameras.json").is_file() or _latest_3dgs_ply(p) is not None:
            return "3dgs_output", p
        if _is_arrayrecord_dir(p):
            return "arrayrecord_dataset", p
        if (p / "meta.json").is_file() and _is_sog_meta(p / "meta.json"):
            return "gaussians", p / "meta.json"
        if not any(p.iterdir()):
            raise ValueError(f"{p}: empty folder")
        raise ValueError(f"{p}: not a recognised scene folder (expected index.json (built-in dataset), "
                         f"transforms.json, poses_bounds.npy, sparse/0 or cameras.bin/.txt (COLMAP), cameras.json "
                         f"or point_cloud/ (3DGS output), an RGB-D sequence (Replica results/ + traj.txt, TUM "
                         f"rgb.txt + depth.txt, ScanNet color/ depth/ pose/, 3DMatch camera-intrinsics.txt + seq-*/), "
                         f"or *.array_record files)")
    suffix = p.suffix.lower()
    if suffix in (".ply", ".splat", ".spz", ".sog"):
        return "gaussians", p
    if suffix == ".npz":
        return "builtin_scene", p
    if suffix == ".npy":
        return "llff_capture", p
    if p.stem in _COLMAP_STEMS and suffix in (".bin", ".txt"):
        return "colmap_model", p.parent
    if suffix == ".json":
        if p.name == "index.json":
            return "builtin_dataset", p.parent
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("frames"), list):
            return "transforms_json", p
        if isinstance(data, dict) and "means" in data and "quats" in data:
            return "gaussians", p  # SOG meta.json
        if isinstance(data, list) and data and isinstance(data[0], dict) and "img_name" in data[0]:
            return "3dgs_cameras", p
        what = f"object with keys {sorted(data)[:8]}" if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{p}: JSON {what} is neither a transforms.json (object with a 'frames' list) nor a 3DGS "
                         f"cameras.json (list of cameras with 'img_name')")
    if suffix == ".txt" and p.name in _RGBD_FILES and _rgbd_layout(p.parent) is not None:
        return "rgbd_sequence", p.parent
    if suffix == ".txt":
        return "re10k", p
    raise ValueError(f"{p}: unrecognised file type {p.suffix or '(no suffix)'!r} (expected a folder, .ply, .splat, "
                     f".spz, .sog, .json, .txt (RealEstate10K or COLMAP), .npy (LLFF), .npz (built-in scene))")


# ------------------------------------------------------------------------------------------------ summaries


def _summarise_cameras(insp: Inspection, cams, distortion=None, size_note: str = "") -> None:
    c2w = np.asarray(cams.c2w, np.float64)
    intr = np.asarray(cams.intrinsics, np.float64)
    n = len(c2w)
    good = np.isfinite(c2w).all((1, 2)) & np.isfinite(intr).all(1)
    insp.counts["cameras"] = n
    insp.add("cameras", n)
    if not good.all():
        insp.add("non-finite cameras", f"{int((~good).sum())} (skipped in the plot)")
    if cams.height is not None and cams.width is not None:
        insp.add("image size", f"{int(cams.width)} x {int(cams.height)} (W x H){size_note}")
        insp.counts["image_size"] = (int(cams.height), int(cams.width))
    else:
        insp.add("image size", "unknown (poses only)" + size_note)
    if not good.any():
        return
    ig, cg = intr[good], c2w[good]
    shared = bool(np.allclose(ig, ig[0], rtol=1e-9, atol=1e-12))
    names = ("fx/W", "fy/H", "cx/W", "cy/H")
    vals = ", ".join(f"{nm} {_range(ig[:, k])}" for k, nm in enumerate(names))
    insp.add("intrinsics", ("shared: " if shared else "per view: ") + vals)
    fov_x, fov_y = np.degrees(2 * np.arctan(0.5 / ig[:, 0])), np.degrees(2 * np.arctan(0.5 / ig[:, 1]))
    insp.add("field of view", f"{_range(fov_x, 3)} x {_range(fov_y, 3)} deg (x by y, centred approximation)")
    if cams.height is not None and cams.width is not None:
        W, H = float(cams.width), float(cams.height)
        insp.add("intrinsics px", f"fx {_range(ig[:, 0] * W, 6)}, fy {_range(ig[:, 1] * H, 6)}, "
                                  f"cx {_range(ig[:, 2] * W, 6)}, cy {_range(ig[:, 3] * H, 6)}")
    if distortion:
        insp.add("distortion", distortion + " (not applied)")
    R = cg[:, :3, :3]
    ortho = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max()
    if ortho > 1e-3:
        insp.notes.append(f"camera rotations are not orthonormal (max |R R^T - I| = {_g(ortho)})")
    cen = cg[:, :3, 3]
    mean = cen.mean(0)
    insp.add("camera centres", f"mean {_vec(mean)}, std {_vec(cen.std(0))}")
    insp.add("camera spread", f"extent {_vec(cen.max(0) - cen.min(0))}, mean distance to centroid "
                              f"{_g(np.linalg.norm(cen - mean, axis=1).mean())}, path length "
                              f"{_g(np.linalg.norm(np.diff(cen, axis=0), axis=1).sum())}")


def _summarise_points(insp: Inspection, xyz, label: str) -> None:
    xyz = np.asarray(xyz, np.float64)
    good = np.isfinite(xyz).all(-1)
    insp.add(f"{label} bounds", f"min {_vec(xyz[good].min(0))}, max {_vec(xyz[good].max(0))}" if good.any()
             else "none (no finite points)")
    if good.sum() > 10:
        lo, hi = np.percentile(xyz[good], [1, 99], axis=0)
        insp.add(f"{label} 1-99%", f"min {_vec(lo)}, max {_vec(hi)}")
    if not good.all():
        insp.add(f"{label} non-finite", int((~good).sum()))


def _summarise_gaussians(insp: Inspection, g, num_inf: int = 0, num_repaired: int = 0, extra: str = "") -> None:
    from scene3d.geometry.gaussians import activate_opacity, dc_to_rgb

    n = int(g.xyz.shape[0])
    insp.counts.update(gaussians=n, sh_degree=g.sh_degree, inf_opacity=num_inf, repaired=num_repaired)
    insp.add("gaussians", f"{n}{extra}")
    insp.add("SH degree", f"{g.sh_degree}" + (", normals stored" if g.normals is not None else ""))
    if n == 0:
        insp.notes.append("the file holds no Gaussians (a valid, empty scene): nothing to summarise or render")
        return
    op = np.asarray(g.opacity, np.float64)
    alpha = activate_opacity(op)
    fin = np.isfinite(op)
    insp.add("opacity", f"alpha mean {_g(alpha.mean(), 3)}, median {_g(np.median(alpha), 3)}, "
                        f"{100 * (alpha > 0.5).mean():.1f}% > 0.5, {100 * (alpha < 0.05).mean():.1f}% < 0.05; logit "
                        f"{_range(op[fin], 4) if fin.any() else 'n/a'}")
    insp.add("inf/NaN repaired", f"{num_repaired} (infinite opacity logits found: {num_inf})")
    s = np.exp(np.asarray(g.scale, np.float64))
    med, p99 = np.percentile(s.max(-1), [50, 99])
    aniso = np.median(s.max(-1) / np.maximum(s.min(-1), 1e-30))
    insp.add("scale", f"largest axis median {_g(med, 3)}, 99% {_g(p99, 3)}, max {_g(s.max(), 3)}; "
                      f"median anisotropy {_g(aniso, 3)}")
    rgb = dc_to_rgb(np.asarray(g.f_dc, np.float64))
    insp.add("colour (DC)", f"mean RGB {_vec(rgb.mean(0), 3)}, "
                            f"{100 * ((rgb < 0) | (rgb > 1)).any(-1).mean():.1f}% outside [0, 1]")
    _summarise_points(insp, g.xyz, "gaussian")


def _thumb(path: pathlib.Path, side: int = THUMB_SIDE) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (side, side))  # fast JPEG decoding at reduced size
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.BILINEAR)
        return np.asarray(im)


def _add_thumbs(insp: Inspection, files: list, labels: Optional[list] = None) -> None:
    """Thumbnails of up to MAX_THUMBS evenly spaced existing files."""
    idx = [i for i, f in enumerate(files) if f is not None and pathlib.Path(f).is_file()]
    if not idx:
        return
    pick = [idx[int(round(k))] for k in np.linspace(0, len(idx) - 1, min(MAX_THUMBS, len(idx)))]
    for i in dict.fromkeys(pick):
        try:
            insp.images.append(((labels or [None] * len(files))[i] or f"{i}: {pathlib.Path(files[i]).name}",
                                _thumb(pathlib.Path(files[i]))))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt image; a note, not a failure
            insp.notes.append(f"cannot read image {files[i]}: {type(e).__name__}: {e}")


def _set_up(insp: Inspection, override: Optional[np.ndarray], default=None, source: str = "") -> None:
    from scene3d.render.plots import up_from_cameras

    if override is not None:
        insp.up, insp.up_source = override, "from --up"
        return
    if default is not None:
        insp.up, insp.up_source = np.asarray(default, np.float64), source
        return
    if insp.cameras is not None:
        c2w = np.asarray(insp.cameras.c2w, np.float64)
        c2w = c2w[np.isfinite(c2w).all((1, 2))]
        if len(c2w):
            up, agree = up_from_cameras(c2w)
            if agree > 0.3:
                insp.up, insp.up_source = up, f"mean camera up, agreement {agree:.2f}"
                return
    insp.up, insp.up_source = np.array([0.0, 0.0, 1.0]), "assumed world +z; no cameras to tell (set --up)"


# ------------------------------------------------------------------------------------------------ readers


def _attach_colmap_points(insp: Inspection, model_dir: pathlib.Path, points=None) -> None:
    from scene3d.geometry import conventions as cv

    if points is None:
        p = next((model_dir / f"points3D{e}" for e in (".bin", ".txt") if (model_dir / f"points3D{e}").is_file()),
                 None)
        if p is None:
            return
        points = cv.read_colmap_points3d_bin(p) if p.suffix == ".bin" else cv.read_colmap_points3d_txt(p)
    n = len(points)
    insp.counts["points"] = n
    tl = np.array([len(t) for t in points.tracks]) if n else np.zeros(0)
    insp.add("points3D", f"{n} (COLMAP, {model_dir})" + (f"; mean track length {_g(tl.mean(), 3)}, mean reprojection "
                                                          f"error {_g(points.error.mean(), 3)} px" if n else ""))
    if n:
        _summarise_points(insp, points.xyz, "points")
        insp.points, insp.point_colors, insp.point_label = points.xyz, points.rgb, "COLMAP points3D"


def _read_colmap(insp: Inspection, model_dir: pathlib.Path, image_root: Optional[pathlib.Path]) -> None:
    from scene3d.geometry import conventions as cv
    from scene3d.geometry.cameras import Cameras

    cams, images, points = cv.read_colmap_model(model_dir)
    insp.add("COLMAP model", str(model_dir))
    for c in cams.values():
        insp.add(f"camera {c.id}", f"{c.model} {c.width} x {c.height}, params {_vec(c.params, 6)}")
    if images:
        ims = sorted(images.values(), key=lambda im: im.name)
        missing = sorted({im.camera_id for im in ims if im.camera_id not in cams})
        if missing:
            raise ValueError(f"{model_dir}: images refer to camera ids {missing} absent from the cameras file")
        sizes = {(cams[im.camera_id].height, cams[im.camera_id].width) for im in ims}
        (H, W), = sizes if len(sizes) == 1 else ((None, None),)
        c2w = np.stack([im.c2w for im in ims])
        intr = np.stack([cams[im.camera_id].intrinsics() for im in ims])
        insp.cameras = Cameras(c2w, intr, H, W)
        dist = {cams[im.camera_id].model for im in ims}
        _summarise_cameras(insp, insp.cameras, distortion=f"COLMAP models {sorted(dist)}",
                           size_note="" if H else f" (several sizes: {sorted(sizes)})")
        insp.add("images", f"{len(ims)} registered; mean {np.mean([len(im.xys) for im in ims]):.0f} 2D points each")
        if image_root is not None:
            _add_thumbs(insp, [cv.resolve_image(image_root, im.name) for im in ims],
                        [f"{i}: {im.name}" for i, im in enumerate(ims)])
    else:
        insp.add("images", "no images.bin/.txt: camera poses unknown")
    _attach_colmap_points(insp, model_dir, points)


def _inspect_colmap_model(insp, path, up):
    insp.kind = "COLMAP sparse model"
    _read_colmap(insp, path, None)
    if insp.cameras is None:  # COLMAP's world frame is usually its first camera's: OpenCV y down
        _set_up(insp, up, [0.0, -1.0, 0.0], "assumed -y (COLMAP world ~ first camera, y down); set --up")
    else:
        _set_up(insp, up)


def _inspect_colmap_capture(insp, path, up):
    insp.kind = "COLMAP capture folder"
    model = _colmap_model_dir(path)
    root = next((path / d for d in ("images", "input") if (path / d).is_dir()), None)
    _read_colmap(insp, model, root)
    _set_up(insp, up)


def _read_transforms(insp: Inspection, path: pathlib.Path) -> None:
    from scene3d.geometry import conventions as cv

    try:
        td = cv.read_transforms_json(path)
    except ValueError as e:
        if "no frames with existing images" not in str(e):
            raise
        td = cv.read_transforms_json(path, check_files=False)
        insp.notes.append("none of the listed image files exists: poses only")
    total = len(td.file_paths) + td.num_skipped
    insp.counts["frames_in_json"] = total
    insp.counts["skipped"] = td.num_skipped
    dist = ", ".join(f"{k} {_g(v)}" for k, v in td.distortion.items())
    _summarise_cameras(insp, td.cameras, distortion=dist or None)
    insp.add("frames", f"{total} in the json, {len(td.file_paths)} with an image file, {td.num_skipped} skipped "
                       f"(image absent)")
    if td.meta:
        insp.add("other keys", ", ".join(f"{k}={v}" if not isinstance(v, (list, dict)) else k
                                         for k, v in sorted(td.meta.items())))
    insp.cameras = td.cameras
    _add_thumbs(insp, [cv.resolve_image(path.parent, fp) for fp in td.file_paths],
                [f"{i}: {pathlib.Path(fp).name}" for i, fp in enumerate(td.file_paths)])
    model = _colmap_model_dir(path.parent)
    if model is not None and model != path.parent:
        _attach_colmap_points(insp, model)


def _inspect_transforms_json(insp, path, up):
    insp.kind = "transforms.json (NeRF / instant-ngp, OpenGL c2w converted to OpenCV)"
    _read_transforms(insp, path)
    _set_up(insp, up)


def _inspect_transforms_capture(insp, path, up):
    insp.kind = "capture folder with transforms.json"
    _read_transforms(insp, path / "transforms.json")
    _set_up(insp, up)


def _inspect_llff(insp, path, up):
    from scene3d.data import multiview
    from scene3d.geometry import conventions as cv

    folder = path if path.is_dir() else path.parent
    insp.kind = "LLFF capture (poses_bounds.npy)" if path.is_dir() else "LLFF poses_bounds.npy"
    npy = path / "poses_bounds.npy" if path.is_dir() else path
    try:
        cams, bounds = cv.read_llff(npy)
    except (ValueError, EOFError, OSError) as e:
        if isinstance(e, ValueError) and str(npy) in str(e):
            raise
        raise ValueError(f"{npy}: cannot read as an (N, 17) LLFF array ({e})") from None
    insp.cameras = cams
    _summarise_cameras(insp, cams, size_note=" at full resolution (poses_bounds hwf)")
    insp.add("near/far bounds", f"near {_range(bounds[:, 0])}, far {_range(bounds[:, 1])}")
    folders = []
    for d in sorted(folder.glob("images*")):
        files = sorted(f for f in d.iterdir() if f.suffix in cv.IMAGE_EXTENSIONS) if d.is_dir() else []
        if files:
            h, w = multiview.image_size(files[0])
            folders.append((d, files, (w, h)))
    if folders:
        insp.add("image folders", "; ".join(f"{d.name}: {len(f)} x {s[0]} x {s[1]}" for d, f, s in folders))
        usable = [x for x in folders if len(x[1]) == len(cams)]
        if usable:
            d, files, _ = min(usable, key=lambda x: x[2][0])
            _add_thumbs(insp, files, [f"{i}: {f.name}" for i, f in enumerate(files)])
        else:
            insp.notes.append(f"no image folder holds {len(cams)} images (one per pose): no contact sheet")
    model = _colmap_model_dir(folder)
    if model is not None and model != folder:
        _attach_colmap_points(insp, model)
    _set_up(insp, up)


def _inspect_re10k(insp, path, up):
    from scene3d.geometry import conventions as cv

    insp.kind = "RealEstate10K pose file"
    clip = cv.read_re10k(path)
    insp.add("url", clip.url)
    insp.counts["frames"] = len(clip.timestamps)
    insp.add("frames", f"{len(clip.timestamps)}, {(clip.timestamps[-1] - clip.timestamps[0]) / 1e6:.2f} s of video")
    insp.cameras = clip.cameras()
    _summarise_cameras(insp, insp.cameras)
    _set_up(insp, up)


def _inspect_3dgs_cameras(insp, path, up):
    from scene3d.geometry import conventions as cv

    insp.kind = "3DGS cameras.json"
    cams, names, _ = cv.read_3dgs_cameras(path)
    insp.cameras = cams
    _summarise_cameras(insp, cams)
    insp.add("image names", f"{names[0]} .. {names[-1]}")
    _set_up(insp, up)


def _is_sog_meta(path) -> bool:
    from scene3d.data import sog
    return sog.is_sog_meta(path)


def _gaussian_format(path: pathlib.Path) -> str:
    from scene3d.data import splat_io
    return splat_io.format_of(path)


def _read_gaussians_into(insp: Inspection, path: pathlib.Path) -> None:
    from scene3d.data import splat_io

    fmt = _gaussian_format(path)
    if fmt in ("ply", "compressed_ply"):
        g, info = splat_io.read_ply(path, repair=True, return_info=True)
        if info.compressed:
            extra = (" (PlayCanvas compressed PLY: chunks of 256, 11/10/11-bit positions and log scales, 8-bit "
                     "colour/alpha, 2+3x10-bit rotations, 8-bit SH)")
        else:
            extra = f" (INRIA PLY, {len(info.layout.properties)} properties" + (
                f", ignored {list(info.ignored_properties)}" if info.ignored_properties else "") + ")"
        _summarise_gaussians(insp, g, info.num_inf_opacity, info.num_repaired, extra)
    elif fmt == "spz":
        from scene3d.data import spz
        g, info = spz.read_spz(path, return_info=True)
        _summarise_gaussians(insp, g, 0, 0, f" (Niantic SPZ version {info.version}: 24-bit positions with "
                             f"{info.fractional_bits} fraction bits, 8-bit colour/alpha/log scale, "
                             f"{'3x8-bit' if info.version < 3 else 'smallest-three 10-bit'} rotations, "
                             f"stored SH degree {info.sh_degree}" + (", antialiased" if info.antialiased else "") + ")")
    elif fmt == "sog":
        g = splat_io.read_gaussians(path)
        _summarise_gaussians(insp, g, 0, 0, " (PlayCanvas SOG v2: WebP textures, 16-bit log positions, codebook "
                                            "scales / colours, 8-bit rotations and alpha, SH palette)")
    else:
        g = splat_io.read_splat(path)
        _summarise_gaussians(insp, g, 0, 0, " (.splat, 32 bytes each: SH degree 0, 8-bit colour/opacity/rotation)")
    if g.xyz.shape[0] == 0:
        return
    insp.gaussians = g
    insp.points = np.asarray(g.xyz, np.float64)
    from scene3d.render.points import gaussian_preview_inputs
    insp.point_colors = np.rint(gaussian_preview_inputs(g)[1] * 255).astype(np.uint8)
    insp.point_label = "Gaussian centres"


def _inspect_gaussians(insp, path, up):
    insp.kind = "3D Gaussian Splatting " + {"ply": "PLY", "splat": ".splat", "spz": "SPZ", "sog": "SOG"}.get(
        _gaussian_format(path), "PLY")
    _read_gaussians_into(insp, path)
    _set_up(insp, up)


def _inspect_3dgs_output(insp, path, up):
    from scene3d.geometry import conventions as cv

    insp.kind = "3DGS output folder"
    if (path / "cameras.json").is_file():
        cams, _, _ = cv.read_3dgs_cameras(path / "cameras.json")
        insp.cameras = cams
        _summarise_cameras(insp, cams)
    ply = _latest_3dgs_ply(path)
    if ply is not None:
        insp.add("point cloud", str(ply))
        _read_gaussians_into(insp, ply)
    _set_up(insp, up)


RGBD_FUSED_FRAMES = 24  # frames whose depth is fused into the top-down plot (evenly spaced)
RGBD_SHOWN_FRAMES = 6  # frames shown as colour + depth thumbnails


def _inspect_rgbd(insp, path, up):
    """RGB-D sequence (`scene3d.data.rgbd`): the colour cameras, depth facts, colour and depth thumbnails of a few
    frames, and the depth of up to RGBD_FUSED_FRAMES frames (read at <= 160 px) fused into world points."""
    from scene3d.data import rgbd
    from scene3d.render.plots import heatmap

    cap = rgbd.read_rgbd(path)
    insp.kind = f"RGB-D sequence ({rgbd.LAYOUT_NAMES[cap.layout]})"
    insp.cameras = cap.cameras
    insp.counts["frames"] = len(cap)
    dist = ", ".join(f"{k} {_g(v)}" for k, v in cap.distortion.items()) if cap.distortion else None
    _summarise_cameras(insp, cap.cameras, distortion=dist,
                       size_note=f" (intrinsics: {cap.intrinsics_source})" if cap.intrinsics_source else "")
    insp.add("frames", f"{len(cap)}: {pathlib.Path(cap.frames[0]).name} .. {pathlib.Path(cap.frames[-1]).name}")
    if cap.timestamps is not None and len(cap) > 1:
        insp.add("timestamps", f"{(cap.timestamps[-1] - cap.timestamps[0]) / 1e6:.2f} s")
    dh, dw = cap.depth_hw
    insp.add("depth files", f"{dw} x {dh} 16-bit PNG, {_g(cap.depth_scale, 6)} units per metre" + (
        "" if cap.depth_intrinsics is None else
        f", own camera (fx/W {_g(cap.depth_intrinsics[0, 0])}): resampled into the colour camera"))
    pick = [int(round(k)) for k in np.linspace(0, len(cap) - 1, min(RGBD_FUSED_FRAMES, len(cap)))]
    pick = list(dict.fromkeys(pick))
    H, W = cap.cameras.height, cap.cameras.width
    f = min(1.0, 160 / max(H, W))
    size = (max(1, int(round(H * f))), max(1, int(round(W * f))))
    sub = cap.subset(pick)
    depth = sub.load_depth(size=size)
    valid = depth[depth > 0]
    insp.add("depth", f"valid on {100 * (depth > 0).mean():.1f}% of pixels, {_range(valid) if valid.size else 'n/a'}"
                      f" m, median {_g(np.median(valid)) if valid.size else 'n/a'} m (frames {len(pick)} of "
                      f"{len(cap)}, read at {size[1]} x {size[0]})")
    pts, cols = rgbd.fuse_points(sub, size=size)
    insp.counts["points"] = len(pts)
    insp.add("fused depth", f"{len(pts)} points from {len(pick)} frames")
    if len(pts):
        _summarise_points(insp, pts, "fused points")
        if len(pts) > MAX_PLOT_POINTS:
            sel = np.sort(np.random.default_rng(0).choice(len(pts), MAX_PLOT_POINTS, replace=False))
            pts, cols = pts[sel], cols[sel]
        insp.points, insp.point_colors, insp.point_label = pts, cols, "fused depth points"
    shown = list(dict.fromkeys(int(round(k)) for k in np.linspace(0, len(pick) - 1, min(RGBD_SHOWN_FRAMES,
                                                                                          len(pick)))))
    vmax = float(np.percentile(valid, 99)) if valid.size else 1.0
    for k in shown:
        name = pathlib.Path(cap.frames[pick[k]]).name
        insp.images.append((f"{pick[k]}: {name}", _thumb(pathlib.Path(cap.frames[pick[k]]))))
        insp.images.append((f"{pick[k]}: depth 0..{_g(vmax, 3)} m", heatmap(depth[k], vmax)))
    _set_up(insp, up)


def _decode(data, name: Optional[str] = None) -> np.ndarray:
    """Encoded image bytes (PNG / JPEG) or an array -> (H, W, 3) uint8 (ValueError naming `name` if it does not
    decode)."""
    if isinstance(data, (bytes, bytearray, memoryview, np.bytes_)):
        from scene3d.data import multiview
        return multiview.decode_image(bytes(data), name=name)
    from scene3d.render.plots import to_uint8
    return to_uint8(data)


def _scene_record_into(insp: Inspection, s: dict, where: str) -> None:
    """Summarise one scene dict: a built-in .npz scene or a multi-view record (scene3d.data.multiview layout:
    images (V,) encoded bytes or (V, H, W, 3) uint8, c2w, intrinsics, optional depth / mask / points, gaussians,
    trajectory, timestamps, bounds, near_far)."""
    from scene3d.data import builtin
    from scene3d.geometry import rays
    from scene3d.geometry.cameras import Cameras
    from scene3d.geometry.gaussians import unpack

    for key in ("images", "c2w", "intrinsics"):
        if key not in s:
            raise ValueError(f"{where}: scene record has no {key!r} (fields: {sorted(s)})")
    c2w = np.asarray(s["c2w"], np.float64)
    intr = np.asarray(s["intrinsics"], np.float64)
    images = s["images"]
    V = len(c2w)
    encoded = isinstance(images, np.ndarray) and images.dtype == object or isinstance(images, (list, tuple))
    if c2w.shape != (V, 4, 4) or intr.shape != (V, 4) or len(images) != V or (
            not encoded and (np.ndim(images) != 4 or np.shape(images)[-1] != 3)):
        raise ValueError(f"{where}: expected images (V, H, W, 3) or V encoded frames, c2w (V, 4, 4), intrinsics "
                         f"(V, 4); got images {np.shape(images)}, c2w {c2w.shape}, intrinsics {intr.shape}")
    first = _decode(images[0], f"{where}: view 0") if V else np.zeros((0, 0, 3), np.uint8)
    H, W = first.shape[:2]
    insp.counts["views"] = V
    insp.cameras = Cameras(c2w, intr, H, W)
    if "scene_id" in s:
        sid = s["scene_id"]
        insp.add("scene id", sid.decode() if isinstance(sid, bytes) else sid)
    if "seed" in s:
        insp.add("scene seed", int(np.asarray(s["seed"])))
    kinds = None
    if "trajectory" in s:
        kinds = [builtin.TRAJECTORY_KINDS[k] if 0 <= k < len(builtin.TRAJECTORY_KINDS) else f"kind {k}"
                 for k in np.asarray(s["trajectory"]).tolist()]
        insp.add("views", f"{V} (" + ", ".join(f"{k} {kinds.count(k)}" for k in dict.fromkeys(kinds)) + ")")
    else:
        insp.add("views", f"{V}" + (" (encoded frames)" if encoded else ""))
    if "timestamps" in s and V > 1:
        ts = np.asarray(s["timestamps"], np.int64)
        insp.add("timestamps", f"{ts[0]}..{ts[-1]}")
    _summarise_cameras(insp, insp.cameras)
    labels = [f"{i}: {kinds[i]}" if kinds else f"view {i}" for i in range(V)]
    pick = list(dict.fromkeys(int(round(k)) for k in np.linspace(0, V - 1, min(MAX_THUMBS - 1, V)))) if V else []
    decoded = {0: first}
    if "depth" in s or "points" in s:
        decoded.update({i: _decode(images[i], f"{where}: view {i}") for i in range(1, V)})
    insp.images += [(labels[i], decoded[i] if i in decoded else _decode(images[i], f"{where}: view {i}"))
                    for i in pick]
    mask = np.asarray(s["mask"], bool) if "mask" in s else (np.asarray(s["depth"]) > 0 if "depth" in s else None)
    if "depth" in s:
        d = np.asarray(s["depth"])[mask]
        insp.add("depth / mask", f"geometry on {100 * mask.mean():.1f}% of pixels, depth "
                                 f"{_range(d) if d.size else 'n/a'}" + (f"; near/far {_vec(s['near_far'])}"
                                                                       if "near_far" in s else ""))
    if "bounds" in s:
        insp.add("room bounds", f"min {_vec(s['bounds'][0])}, max {_vec(s['bounds'][1])}")
    if mask is not None:
        pts = np.asarray(s["points"]) if "points" in s else rays.depth_to_points(np.asarray(s["depth"], np.float64),
                                                                                 c2w, intr)
        rgb = np.stack([decoded[i] for i in range(V)])
        if rgb.shape[:3] != mask.shape:
            raise ValueError(f"{where}: images {rgb.shape} and depth / mask {mask.shape} sizes differ")
        pts, cols = pts[mask], rgb[mask]
        insp.counts["points"] = len(pts)
        insp.add("point maps", f"{len(pts)} valid points over {V} views")
        if len(pts) > MAX_PLOT_POINTS:
            sel = np.sort(np.random.default_rng(0).choice(len(pts), MAX_PLOT_POINTS, replace=False))
            pts, cols = pts[sel], cols[sel]
        insp.points, insp.point_colors, insp.point_label = pts, cols, "point maps"
    if "gaussians" in s:
        g = unpack(np.asarray(s["gaussians"], np.float64))
        insp.gaussians = g
        _summarise_gaussians(insp, g, extra=" (lifted from the RGB-D views)" if "depth" in s else "")
        if V and H and W:
            from scene3d.render.points import render_gaussians
            f = max(1, 128 // max(H, W))
            r = render_gaussians(g, c2w[0], intr[0], H * f, W * f, background=1.0)
            insp.images.append(("3DGS from view 0", r.image))


def _builtin_scene_into(insp: Inspection, path: pathlib.Path) -> None:
    from scene3d.data import builtin

    try:
        s = builtin.load_scene(path)
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: cannot read as a built-in scene .npz ({e})") from None
    insp.add("scene file", path.name)
    _scene_record_into(insp, s, str(path))


def _inspect_builtin_scene(insp, path, up):
    insp.kind = "built-in scene file (.npz)"
    _builtin_scene_into(insp, path)
    _set_up(insp, up, [0.0, 0.0, 1.0], "world +z (built-in convention)")


def _inspect_builtin_dataset(insp, path, up, scene: int = 0):
    insp.kind = "built-in dataset folder"
    index_path = path / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index_path}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("scenes"), list):
        raise ValueError(f"{index_path}: not a built-in dataset index (expected an object with a 'scenes' list)")
    files = [path / str(e.get("file", "")) for e in index["scenes"] if isinstance(e, dict)]
    present = [f for f in files if f.is_file()]
    insp.counts["scenes"] = len(files)
    insp.counts["scenes_present"] = len(present)
    insp.add("scenes", f"{len(files)} listed, {len(present)} present" + (
        f", seed {index['seed']}" if "seed" in index else ""))
    spec = index.get("spec") or {}
    if spec:
        insp.add("spec", ", ".join(f"{k} {spec[k]}" for k in ("num_views", "height", "width", "num_gaussians")
                                   if k in spec))
    if not present:
        raise ValueError(f"{path}: index.json lists {len(files)} scenes but none of the scene files exists")
    if not 0 <= scene < len(files):
        raise ValueError(f"{path}: --scene {scene} out of range (0..{len(files) - 1})")
    if not files[scene].is_file():
        raise ValueError(f"{files[scene]}: scene {scene} is listed in index.json but the file is missing")
    insp.add("showing", f"scene {scene} (--scene to pick another)")
    _builtin_scene_into(insp, files[scene])
    _set_up(insp, up, [0.0, 0.0, 1.0], "world +z (built-in convention)")


def _inspect_arrayrecord(insp, path, up, scene: int = 0, split: Optional[str] = None):
    dirs = _tfds_dirs(path)
    if not dirs:
        raise ValueError(f"{path}: *.array_record files but no tfds dataset_info.json beside them "
                         f"(not a prepared tfds dataset)")
    d = dirs[0]
    if len(dirs) > 1:
        insp.notes.append(f"{len(dirs)} datasets under {path}: showing {d}; pass another's folder to see it")
    import tensorflow_datasets as tfds

    try:
        b = tfds.builder_from_directory(str(d))
        splits = {k: int(v.num_examples) for k, v in b.info.splits.items()}
    except Exception as e:  # noqa: BLE001 - tfds raises many types for a broken folder
        raise ValueError(f"{d}: cannot open as a tfds dataset ({type(e).__name__}: {_one_line(e)})") from None
    cfg = b.builder_config.name if b.builder_config else ""
    insp.kind = f"ArrayRecord dataset folder (tfds {b.name}{'/' + cfg if cfg else ''} {b.version})"
    insp.add("dataset", str(d))
    insp.counts["records"] = sum(splits.values())
    insp.counts["splits"] = splits
    insp.add("splits", ", ".join(f"{k} {n}" for k, n in splits.items()))
    feats = b.info.features
    insp.add("features", ", ".join(f"{k} {tuple(v.shape)} {np.dtype(v.np_dtype).name}"
                                   for k, v in sorted(feats.items())) if hasattr(feats, "items") else str(feats))
    if not splits:
        raise ValueError(f"{d}: dataset has no splits")
    split = split or ("train" if "train" in splits else next(iter(splits)))
    if split not in splits:
        raise ValueError(f"{d}: no split {split!r} (has {sorted(splits)})")
    if not 0 <= scene < splits[split]:
        raise ValueError(f"{d}: --scene {scene} out of range for split {split!r} ({splits[split]} records)")
    insp.add("showing", f"record {scene} of split {split!r} (--scene / --split to pick another)")
    rec = dict(b.as_data_source(split=split)[scene])
    _scene_record_into(insp, rec, f"{d} [{split}][{scene}]")
    if b.name == "scene3d_builtin":
        _set_up(insp, up, [0.0, 0.0, 1.0], "world +z (built-in convention)")
    else:
        _set_up(insp, up)


_INSPECTORS = {
    "builtin_dataset": _inspect_builtin_dataset, "builtin_scene": _inspect_builtin_scene,
    "transforms_capture": _inspect_transforms_capture, "transforms_json": _inspect_transforms_json,
    "llff_capture": _inspect_llff, "colmap_model": _inspect_colmap_model, "colmap_capture": _inspect_colmap_capture,
    "3dgs_output": _inspect_3dgs_output, "3dgs_cameras": _inspect_3dgs_cameras, "re10k": _inspect_re10k,
    "gaussians": _inspect_gaussians, "arrayrecord_dataset": _inspect_arrayrecord, "rgbd_sequence": _inspect_rgbd,
}


class _Collect(logging.Handler):
    def __init__(self, notes):
        super().__init__(logging.INFO)
        self.notes = notes

    def emit(self, record):
        self.notes.append(record.getMessage())


@contextlib.contextmanager
def _capture(notes: list):
    """Route scene3d log records and Python warnings into `notes` (so stderr stays for errors)."""
    handler = _Collect(notes)
    saved = []
    for name, level in (("scene3d", logging.INFO), ("absl", logging.WARNING)):  # absl: tfds' logger
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            yield
        notes.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def parse_up(text: Optional[str]) -> Optional[np.ndarray]:
    """'x', '-y', '+z' or 'a,b,c' -> unit vector; None/'auto' -> None."""
    if text is None or text == "auto":
        return None
    t = text.strip().lower()
    m = re.fullmatch(r"([+-]?)([xyz])", t)
    if m:
        v = np.zeros(3)
        v["xyz".index(m.group(2))] = -1.0 if m.group(1) == "-" else 1.0
        return v
    try:
        v = np.array([float(x) for x in t.split(",")])
    except ValueError:
        v = np.zeros(0)
    if v.shape != (3,) or not np.isfinite(v).all() or np.linalg.norm(v) == 0:
        raise ValueError(f"--up: expected auto, x, y, z, -x, -y, -z or 'a,b,c' (non-zero), got {text!r}")
    return v / np.linalg.norm(v)


def inspect_path(path, up=None, scene: int = 0, split: Optional[str] = None) -> Inspection:
    """Detect the kind of `path`, read it and summarise it. up: override vector (None: auto); scene / split: which
    scene of a built-in dataset or ArrayRecord dataset. ValueError / OSError on unreadable input."""
    kind, target = detect(path)
    insp = Inspection(path=str(path))
    with _capture(insp.notes):
        if kind == "builtin_dataset":
            _inspect_builtin_dataset(insp, target, up, scene)
        elif kind == "arrayrecord_dataset":
            _inspect_arrayrecord(insp, target, up, scene, split)
        else:
            _INSPECTORS[kind](insp, target, up)
    return insp


# ------------------------------------------------------------------------------------------------ figure


def _splat_panel(insp: Inspection, side: int = 250) -> "Image.Image":
    from PIL import Image
    from scene3d.render import plots
    from scene3d.render.points import gaussian_preview_inputs, orbit_camera, render_gaussians

    g = insp.gaussians
    xyz, _, alpha, _ = gaussian_preview_inputs(g)
    w = alpha > 0.05
    core = xyz[w] if w.sum() > 10 else xyz
    center = np.median(core, 0)
    radius = float(np.percentile(np.linalg.norm(core - center, axis=1), 97)) or 1.0
    e1, e2, n = plots.plane_basis(insp.up)
    views = []
    for k, az in enumerate((-90.0, 0.0, 90.0, 180.0)):
        c2w, intr = orbit_camera(center, radius, n, math.radians(az), math.radians(20), basis=(e1, e2))
        views.append(render_gaussians(g, c2w, intr, side, side, background=1.0).image)
    return plots.contact_sheet(views, [f"azimuth {az:g} deg, elevation 20" for az in (-90, 0, 90, 180)], cols=2,
                               cell=side, title="Gaussians (SH DC colour, alpha-composited discs)")


def make_figure(insp: Inspection) -> "Image.Image":
    """The preview PNG: contact sheet (or splat renders) | top-down plot, with the summary underneath."""
    from scene3d.render import plots

    panels = []
    if insp.images:
        panels.append(plots.contact_sheet([im for _, im in insp.images], [lab for lab, _ in insp.images],
                                          cell=180 if len(insp.images) > 4 else 250,
                                          title=f"views ({len(insp.images)} shown)"))
    elif insp.gaussians is not None:
        panels.append(_splat_panel(insp))
    cams = insp.cameras
    what = [x for x in (f"{len(cams)} cameras" if cams is not None else "",
                        f"{insp.point_label}" if insp.points is not None else "") if x]
    up = insp.up if insp.up is not None else np.array([0.0, 0.0, 1.0])
    panels.append(plots.topdown_plot(None if cams is None else cams.c2w, None if cams is None else cams.intrinsics,
                                     insp.points, insp.point_colors, up=up,
                                     size=max(420, min(560, max((p.size[1] for p in panels), default=560))),
                                     title="top-down: " + (", ".join(what) or "nothing to plot")))
    footer = []
    for line in insp.lines():  # wrap long values under their column
        indent = len(line) - len(line.split(":", 1)[1].lstrip()) if ":" in line else 0
        footer += textwrap.wrap(line, 150, subsequent_indent=" " * min(indent, 40)) or [""]
    return plots.compose(panels, title=f"{insp.path} - {insp.kind}", footer=footer, max_footer_lines=60)


# ------------------------------------------------------------------------------------------------ CLI


def default_out(path) -> pathlib.Path:
    p = pathlib.Path(path)
    name = p.resolve().name if p.exists() else p.name
    stem = pathlib.Path(name).stem if pathlib.Path(name).suffix else name
    return pathlib.Path.cwd() / f"{stem or 'scene'}_inspect.png"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                 description="Summarise a scene file or folder and write a preview PNG.")
    ap.add_argument("path", help="dataset / capture folder or camera / splat file")
    ap.add_argument("--out", default=None, help="PNG to write (default: <name>_inspect.png in the working directory)")
    ap.add_argument("--up", default="auto", help="plot up axis: auto (mean camera up), x, y, z, -x, -y, -z or "
                                                 "a,b,c (write --up=-y for a leading minus)")
    ap.add_argument("--scene", type=int, default=0, help="scene index in a built-in or ArrayRecord dataset")
    ap.add_argument("--split", default=None, help="split of an ArrayRecord dataset (default: train)")
    ap.add_argument("--no-png", action="store_true", help="print the summary only")
    ap.add_argument("--debug", action="store_true", help="let exceptions raise with their traceback")
    args = ap.parse_args(argv)
    path = args.path
    try:
        up = parse_up(args.up)
        insp = inspect_path(path, up=up, scene=args.scene, split=args.split)
        out = None
        if not args.no_png:
            out = pathlib.Path(args.out) if args.out else default_out(path)
            with _capture(insp.notes):
                fig = make_figure(insp)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.save(out)
        print("\n".join(insp.lines()))
        if out is not None:
            print(f"wrote {out} ({fig.size[0]} x {fig.size[1]})")
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI turns every failure into one line
        if args.debug:
            raise
        if isinstance(e, OSError) and getattr(e, "filename", None):
            msg = f"{e.filename}: {e.strerror or e}"
        elif isinstance(e, (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError,
                            UnicodeDecodeError)):
            msg = str(e)
            if str(path) not in msg and os.fspath(pathlib.Path(path)) not in msg:
                msg = f"{path}: {msg}"
        else:
            msg = f"{path}: unexpected {type(e).__name__}: {e} (run with --debug to see the traceback)"
        print(f"{PROG}: error: {_one_line(msg)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
