"""Batches of 3D Gaussian Splatting scenes: filter, crop to exactly N by kNN region growing, normalise, rotate.

Gaussian record (what 3DGS sources return): `gaussians` float (M, 14 + 3K) raw channels in the
`scene3d.geometry.gaussians.pack` order, `scene_id` str. Built-in scene records (tfds or .npz) qualify as they
are (their other fields are ignored); `PlySource` reads INRIA PLY / .splat files.

`GaussianTransform` (grain random map), per scene, in this order:
  1. filter: drop non-finite Gaussians and those with alpha = sigmoid(opacity) < `min_opacity`; clamp infinite
     opacity logits to +-`splat_io.MAX_OPACITY_LOGIT`;
  2. crop: `gs_filter.knn_region_grow` to exactly `num_gaussians` (seeded at the Gaussian nearest the mean, or at
     a random Gaussian with `crop_seed='random'` in training; scenes with fewer are padded by repetition);
  3. normalise: `gaussians.normalise_scene` of the crop (centre at its mean, farthest Gaussian at radius / 1.1;
     log scales shifted), so every example fills the same ball whatever the crop;
  4. augment (training only, `rotate=True`): a Haar-random rotation about the origin applied with
     `gaussians.rotate_gaussians` (positions, quaternions and SH bands);
  5. pack to `num_channels(sh_degree)` channels (higher SH bands dropped, missing ones zero).

Example: `gaussians` float32 (N, C), `center` float32 (3,) and `scale` float32 () of the normalisation
(x_norm = R (x - center) * scale), `rotation` float32 (3, 3) R (identity without augmentation), `scene_id` str.
"""
from __future__ import annotations

import dataclasses
import glob
import pathlib
from typing import Sequence

import grain
import numpy as np

from scene3d.core.config import dataclass_from_config
from scene3d.data import gs_filter, splat_io
from scene3d.geometry import gaussians as gs
from scene3d.geometry import so3


@dataclasses.dataclass(frozen=True)
class GaussianConfig:
    """How 3DGS examples are made (`data.gaussians` in a config)."""

    num_gaussians: int = 2048
    sh_degree: int = 0
    radius: float = 1.0
    crop_seed: str = "center"  # 'center' | 'random' (random only in training; eval always uses 'center')
    knn: int = 16
    min_opacity: float = 0.0
    rotate: bool = True  # random SO(3) augmentation in training

    def __post_init__(self):
        if self.num_gaussians < 1:
            raise ValueError(f"GaussianConfig.num_gaussians: expected >= 1, got {self.num_gaussians}")
        gs.num_rest_coeffs(self.sh_degree)
        if self.crop_seed not in ("center", "random"):
            raise ValueError(f"GaussianConfig.crop_seed: expected 'center' or 'random', got {self.crop_seed!r}")
        if not 0 <= self.min_opacity < 1:
            raise ValueError(f"GaussianConfig.min_opacity: expected a value in [0, 1), got {self.min_opacity}")

    @classmethod
    def from_config(cls, cfg) -> "GaussianConfig":
        """From a dict / ConfigDict (None -> defaults); unknown keys are an error."""
        return cls(**dataclass_from_config(cls, cfg, "config.data.gaussians"))


def set_sh_degree(g: gs.Gaussians, degree: int) -> gs.Gaussians:
    """Drop SH bands above `degree` or append zero bands up to it (unbatched or batched numpy)."""
    k = gs.num_rest_coeffs(degree)
    have = 0 if g.f_rest is None else g.f_rest.shape[-2]
    if k == have:
        return g
    if k == 0:
        return g._replace(f_rest=None)
    if have >= k:
        return g._replace(f_rest=g.f_rest[..., :k, :])
    pad = np.zeros(g.xyz.shape[:-1] + (k - have, 3), g.xyz.dtype)
    return g._replace(f_rest=pad if g.f_rest is None else np.concatenate([g.f_rest, pad], -2))


def filter_gaussians(g: gs.Gaussians, min_opacity: float = 0.0, name: str = "gaussians") -> gs.Gaussians:
    """Clamp infinite opacity logits, drop non-finite Gaussians and those with alpha < min_opacity."""
    op = np.clip(np.asarray(g.opacity), -splat_io.MAX_OPACITY_LOGIT, splat_io.MAX_OPACITY_LOGIT)
    g = g._replace(opacity=op.astype(np.asarray(g.opacity).dtype))
    keep = np.ones(g.xyz.shape[0], bool)
    for a in g:
        if a is not None:
            keep &= np.isfinite(np.asarray(a)).reshape(a.shape[0], -1).all(-1)
    if min_opacity > 0:
        keep &= gs.sigmoid(op.astype(np.float64)) >= min_opacity
    if not keep.any():
        raise ValueError(f"{name}: no Gaussian left after filtering (min_opacity={min_opacity}, non-finite dropped)")
    return g if keep.all() else g.take(np.flatnonzero(keep))


def process_gaussians(g: gs.Gaussians, cfg: GaussianConfig, rng: np.random.Generator = None,
                      training: bool = False, name: str = "gaussians") -> dict:
    """Steps 1-5 of the module docstring on one numpy scene -> example dict (without scene_id)."""
    g = filter_gaussians(g, cfg.min_opacity, name)
    seed = None
    if training and cfg.crop_seed == "random" and g.xyz.shape[0] > cfg.num_gaussians:
        seed = np.asarray(g.xyz[int(rng.integers(g.xyz.shape[0]))], np.float64)
    g = gs_filter.crop_gaussians(g, cfg.num_gaussians, seed=seed, k=cfg.knn, pad=True)
    g, tf = gs.normalise_scene(g, radius=cfg.radius)
    R = np.eye(3)
    if training and cfg.rotate:
        R = so3.random_rotation(rng, 1)[0]
        g = gs.rotate_gaussians(g, R)
    g = set_sh_degree(g._replace(normals=None), cfg.sh_degree)
    return {"gaussians": gs.pack(g).astype(np.float32), "center": tf.center.astype(np.float32),
            "scale": np.float32(tf.scale), "rotation": R.astype(np.float32)}


def _scene_id(rec) -> str:
    s = rec.get("scene_id", "?")
    return s.decode() if isinstance(s, bytes) else str(s)


def record_gaussians(rec: dict) -> gs.Gaussians:
    """Gaussian record -> Gaussians (validated: (M, 14 + 3K) raw channels)."""
    if "gaussians" not in rec:
        raise ValueError(f"scene {_scene_id(rec)}: record has no 'gaussians' (has {sorted(rec)})")
    raw = np.asarray(rec["gaussians"])
    if raw.ndim != 2:
        raise ValueError(f"scene {_scene_id(rec)}: gaussians expected shape (M, 14 + 3K), got {raw.shape}")
    try:
        return gs.unpack(raw)
    except ValueError as e:
        raise ValueError(f"scene {_scene_id(rec)}: {e}") from None


class GaussianTransform(grain.transforms.RandomMap):
    """grain random map: Gaussian record -> 3DGS example (module docstring)."""

    def __init__(self, cfg: GaussianConfig, training: bool = True):
        self.cfg, self.training = cfg, bool(training)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        sid = _scene_id(element)
        out = process_gaussians(record_gaussians(element), self.cfg, rng, self.training, name=f"scene {sid}")
        out["scene_id"] = sid
        return out


class PlySource:
    """Gaussian records from INRIA PLY / .splat files (a list of paths, a folder, or a glob pattern)."""

    def __init__(self, paths):
        if isinstance(paths, (str, pathlib.Path)):
            p = pathlib.Path(paths)
            if p.is_dir():
                files = sorted(q for q in p.rglob("*") if q.suffix.lower() in (".ply", ".splat"))
            elif any(c in str(paths) for c in "*?["):
                files = sorted(pathlib.Path(q) for q in glob.glob(str(paths), recursive=True))
            else:
                files = [p] if p.is_file() else []
        else:
            files = [pathlib.Path(q) for q in paths]
        if not files:
            raise ValueError(f"PlySource: no .ply / .splat files in {paths!r}")
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        f = self.files[i]
        g = splat_io.read_gaussians(f, repair=True) if f.suffix.lower() == ".ply" else splat_io.read_gaussians(f)
        return {"gaussians": gs.pack(g._replace(normals=None)), "scene_id": f.stem}


class GaussianSubset:
    """View of a scene source that keeps only `gaussians` and `scene_id` (e.g. the built-in tfds scenes)."""

    def __init__(self, source: Sequence):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = self.source[i]
        return {"gaussians": rec["gaussians"], "scene_id": _scene_id(rec)}
