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
  5. pack to `num_channels(sh_degree)` channels (higher SH bands dropped, missing ones zero);
  6. order (`order`): put the rows in a canonical order that depends only on the final (normalised, rotated)
     Gaussians, so that row i means roughly the same part of space in every example (a row-wise reconstruction
     loss is otherwise best answered by the mean Gaussian; see `canonical_order`);
  7. rows (`rows='release18'`): prefix each row with its voxel centre (3) and voxel id (1) on the `voxel_grid`^3
     grid over [-radius, radius]^3, the official release's 18-channel layout (`release_rows`).

Example: `gaussians` float32 (N, C) (C + 4 with `rows='release18'`), `center` float32 (3,) and `scale` float32 ()
of the normalisation (x_norm = R (x - center) * scale), `rotation` float32 (3, 3) R (identity without
augmentation), `scene_id` str.

Per-scene conditions (``SIDE_FIELDS``) pass through unchanged when a record has them: `caption` str (a text
description of the scene) and `cond_image` uint8 (H, W, 3) (a conditioning view of the whole scene). `PlySource`
reads them from files next to each PLY (`side_files`); a generator's task decides whether it needs them.
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

ORDERS = ("none", "voxel", "morton", "kdtree")
ROWS = ("raw", "release18")
RELEASE_PREFIX = 4  # release18 rows: voxel centre xyz, voxel id, then the packed channels
SIDE_FIELDS = ("caption", "cond_image")  # optional per-scene conditions, passed through GaussianTransform
MAX_VOXEL_GRID = 256  # voxel ids < 2^24 stay exact in float32 rows


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
    order: str = "none"  # 'none' (crop growth order) | 'voxel' | 'morton' | 'kdtree': see canonical_order
    voxel_grid: int = 16  # cells per axis over [-radius, radius]^3 for order 'voxel' / 'morton' and release18 rows
    rows: str = "raw"  # 'raw' (the packed channels) | 'release18' (voxel centre, voxel id, then the channels)
    # Records already filtered, cropped to exactly num_gaussians and normalised (scene3d.data.prepare_3dgs): steps
    # 1-3 are skipped, `center` / `scale` are the record's; rotation, SH degree, order and rows still apply.
    prepared: bool = False

    def __post_init__(self):
        if self.num_gaussians < 1:
            raise ValueError(f"GaussianConfig.num_gaussians: expected >= 1, got {self.num_gaussians}")
        gs.num_rest_coeffs(self.sh_degree)
        if self.crop_seed not in ("center", "random"):
            raise ValueError(f"GaussianConfig.crop_seed: expected 'center' or 'random', got {self.crop_seed!r}")
        if not 0 <= self.min_opacity < 1:
            raise ValueError(f"GaussianConfig.min_opacity: expected a value in [0, 1), got {self.min_opacity}")
        if self.order not in ORDERS:
            raise ValueError(f"GaussianConfig.order: expected one of {ORDERS}, got {self.order!r}")
        if self.rows not in ROWS:
            raise ValueError(f"GaussianConfig.rows: expected one of {ROWS}, got {self.rows!r}")
        if not 1 <= self.voxel_grid <= MAX_VOXEL_GRID:
            raise ValueError(f"GaussianConfig.voxel_grid: expected 1..{MAX_VOXEL_GRID} cells per axis, "
                             f"got {self.voxel_grid}")

    @property
    def row_offset(self) -> int:
        """Columns in front of the packed channels in each row (4 for 'release18', else 0)."""
        return RELEASE_PREFIX if self.rows == "release18" else 0

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
                      training: bool = False, name: str = "gaussians",
                      transform: gs.SceneTransform = None) -> dict:
    """Steps 1-7 of the module docstring on one numpy scene -> example dict (without scene_id). With
    `cfg.prepared`, steps 1-3 are skipped and `transform` (default: the identity) is the scene's normalisation."""
    if cfg.prepared:
        if g.xyz.shape[0] != cfg.num_gaussians:
            raise ValueError(f"{name}: prepared scene has {g.xyz.shape[0]} Gaussians, expected num_gaussians = "
                             f"{cfg.num_gaussians}")
        tf = transform if transform is not None else gs.SceneTransform(np.zeros(3), 1.0)
    else:
        g, tf = crop_and_normalise(g, cfg, rng, training, name)
    R = so3.random_rotation(rng, 1)[0] if training and cfg.rotate else np.eye(3)
    return {"gaussians": example_rows(g, cfg, R), "center": tf.center.astype(np.float32),
            "scale": np.float32(tf.scale), "rotation": R.astype(np.float32)}


def crop_and_normalise(g: gs.Gaussians, cfg: GaussianConfig, rng: np.random.Generator = None,
                       training: bool = False, name: str = "gaussians") -> tuple[gs.Gaussians, gs.SceneTransform]:
    """Steps 1-3: filter, the kNN crop of exactly `cfg.num_gaussians` (seeded at a random Gaussian in training with
    `crop_seed='random'`, else at the one nearest the mean), normalised -> (crop, its SceneTransform)."""
    g = filter_gaussians(g, cfg.min_opacity, name)
    seed = None
    if training and cfg.crop_seed == "random" and g.xyz.shape[0] > cfg.num_gaussians:
        seed = np.asarray(g.xyz[int(rng.integers(g.xyz.shape[0]))], np.float64)
    # A scene of exactly N Gaussians is its own crop; growth order matters only without a canonical order.
    if g.xyz.shape[0] != cfg.num_gaussians or cfg.order == "none":
        g = gs_filter.crop_gaussians(g, cfg.num_gaussians, seed=seed, k=cfg.knn, pad=True)
    return gs.normalise_scene(g, radius=cfg.radius)


def example_rows(g: gs.Gaussians, cfg: GaussianConfig, rotation=None) -> np.ndarray:
    """Steps 4-7 on a normalised crop with a given `rotation` (3, 3) (None or the identity: no rotation): rotate
    positions, quaternions and SH bands, pack to `cfg.sh_degree`, canonical row order, row layout -> (N, C) float32
    rows (C + 4 with `rows='release18'`)."""
    if rotation is not None and not np.array_equal(np.asarray(rotation), np.eye(3)):
        g = gs.rotate_gaussians(g, np.asarray(rotation, np.float64))
    g = set_sh_degree(g._replace(normals=None), cfg.sh_degree)
    rows = gs.pack(g).astype(np.float32)
    rows = rows[canonical_order(rows, cfg.order, grid=cfg.voxel_grid, radius=cfg.radius)]
    if cfg.rows == "release18":
        rows = release_rows(rows, cfg.voxel_grid, cfg.radius)
    return rows


# ------------------------------------------------------------------------------------------- canonical order


def voxel_coords(xyz, grid: int, radius: float) -> np.ndarray:
    """int64 (N, 3) cell (i, j, k) of each position on the grid^3 lattice over [-radius, radius]^3 (clamped)."""
    size = 2.0 * radius / grid
    ijk = np.floor((np.asarray(xyz, np.float64) + radius) / size)
    return np.clip(ijk, 0, grid - 1).astype(np.int64)


def voxel_ids(ijk, grid: int) -> np.ndarray:
    """Raster voxel id (i * grid + j) * grid + k (x slowest, z fastest) of int cells (N, 3)."""
    ijk = np.asarray(ijk, np.int64)
    return (ijk[..., 0] * grid + ijk[..., 1]) * grid + ijk[..., 2]


def voxel_centers(ijk, grid: int, radius: float) -> np.ndarray:
    """Centres (N, 3) float64 of int cells (N, 3)."""
    size = 2.0 * radius / grid
    return (np.asarray(ijk, np.float64) + 0.5) * size - radius


def _spread_bits(v):
    """Insert two zero bits between the low 21 bits of each int (the 3D Morton interleave)."""
    v = np.asarray(v, np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_codes(ijk) -> np.ndarray:
    """Morton (Z-order) code of int cells (N, 3): bits interleaved as ... i1 j1 k1 i0 j0 k0 (int64)."""
    ijk = np.asarray(ijk, np.int64)
    code = (_spread_bits(ijk[..., 0]) << np.uint64(2)) | (_spread_bits(ijk[..., 1]) << np.uint64(1)) | \
        _spread_bits(ijk[..., 2])
    return code.astype(np.int64)


def _content_order(rows) -> np.ndarray:
    """Indices sorting rows lexicographically by their values (channel 0 first): the tie-break that makes an
    order depend on the set of rows only (equal rows are interchangeable)."""
    rows = np.asarray(rows)
    return np.lexsort(rows.T[::-1])


def kdtree_order(xyz, base=None) -> np.ndarray:
    """Balanced k-d tree serialisation: split at the median along x (the lower floor(n / 2) first), each half
    at its median along y, then z, x, ... until single points. Every row index then has a fixed place in the
    tree (a fixed sequence of lower / upper half choices), whatever the scene. Ties follow ``base`` (a
    permutation, default the identity). Returns int64 indices (N,)."""
    xyz = np.asarray(xyz, np.float64)
    n = xyz.shape[0]
    perm = np.arange(n) if base is None else np.asarray(base, np.int64)
    seg = np.zeros(n, np.int64)  # segment id of each position (non-decreasing along the positions)
    ar = np.arange(n)
    axis = 0
    while n > 1:
        o = np.lexsort((ar, xyz[perm, axis], seg))
        perm, seg = perm[o], seg[o]
        first = np.r_[True, seg[1:] != seg[:-1]]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.r_[starts, n])
        if sizes.max() <= 1:
            break
        sid = np.cumsum(first) - 1
        rank = ar - starts[sid]
        seg = 2 * sid + (rank >= sizes[sid] // 2)
        axis = (axis + 1) % 3
    return perm


def canonical_order(rows, order: str, grid: int = 16, radius: float = 1.0) -> np.ndarray:
    """int64 permutation putting packed rows (N, C) (xyz first) in a canonical order that depends only on the
    set of rows (the same for any permutation of the input):

      'none'    the identity (keep the crop's growth order);
      'voxel'   by raster voxel id on the grid^3 lattice over [-radius, radius]^3, then distance to the voxel
                centre, then row values;
      'morton'  as 'voxel' with the voxels in Morton (Z-curve) order, so neighbouring rows stay close in space;
      'kdtree'  balanced k-d tree order (`kdtree_order`), ties by row values: row i always sits in the same
                cell of a median-split tree, so its expected position does not drift with how many Gaussians
                other voxels hold (the most learnable order for a row-wise loss on CPU-scale experiments).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] < 3:
        raise ValueError(f"canonical_order: expected rows (N, C >= 3) with xyz first, got {rows.shape}")
    if order not in ORDERS:
        raise ValueError(f"canonical_order: order must be one of {ORDERS}, got {order!r}")
    if order == "none":
        return np.arange(rows.shape[0])
    base = _content_order(rows)
    if order == "kdtree":
        return kdtree_order(rows[:, :3], base)
    xyz = rows[:, :3].astype(np.float64)
    ijk = voxel_coords(xyz, grid, radius)
    key = voxel_ids(ijk, grid) if order == "voxel" else morton_codes(ijk)
    dist = np.linalg.norm(xyz - voxel_centers(ijk, grid, radius), axis=-1)
    return base[np.lexsort((dist[base], key[base]))]


def release_rows(rows, grid: int, radius: float) -> np.ndarray:
    """The official release's row layout: [voxel centre xyz, raster voxel id, packed channels] (N, 4 + C)."""
    rows = np.asarray(rows)
    ijk = voxel_coords(rows[:, :3], grid, radius)
    prefix = np.concatenate([voxel_centers(ijk, grid, radius), voxel_ids(ijk, grid)[:, None]], axis=1)
    return np.concatenate([prefix.astype(rows.dtype), rows], axis=1)


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
        tf = None
        if self.cfg.prepared and "center" in element:  # the record's own normalisation (prepare_3dgs)
            tf = gs.SceneTransform(np.asarray(element["center"], np.float64), float(element["scale"]))
        out = process_gaussians(record_gaussians(element), self.cfg, rng, self.training, name=f"scene {sid}",
                                transform=tf)
        out["scene_id"] = sid
        out.update({k: element[k] for k in SIDE_FIELDS if k in element})
        return out


class PlySource:
    """Gaussian records from 3DGS files (`splat_io.GAUSSIAN_SUFFIXES`: INRIA / compressed PLY, .splat, .spz, .sog; a
    list of paths, a folder, or a glob pattern)."""

    def __init__(self, paths):
        if isinstance(paths, (str, pathlib.Path)):
            p = pathlib.Path(paths)
            if p.is_dir():
                files = sorted(q for q in p.rglob("*") if q.suffix.lower() in splat_io.GAUSSIAN_SUFFIXES)
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
        g = splat_io.read_gaussians(f, repair=True)
        return {"gaussians": gs.pack(g._replace(normals=None)), "scene_id": f.stem, **side_files(f)}


CAPTION_FILES = ("{stem}.txt", "caption.txt")  # first found wins, in the PLY's own folder
IMAGE_FILES = ("{stem}.png", "{stem}.jpg", "cond.png", "cond.jpg")


def side_files(path) -> dict:
    """The optional conditions of the scene in PLY ``path`` from files in its folder: ``caption`` (str, the
    stripped text of the first of ``CAPTION_FILES``) and ``cond_image`` (uint8 (H, W, 3), the first of
    ``IMAGE_FILES``); absent files give no field. An empty or unreadable file is a ValueError naming it."""
    path = pathlib.Path(path)
    out = {}
    for field, names in (("caption", CAPTION_FILES), ("cond_image", IMAGE_FILES)):
        found = next((q for q in (path.parent / n.format(stem=path.stem) for n in names) if q.is_file()), None)
        if found is None:
            continue
        try:
            if field == "caption":
                value = found.read_text(encoding="utf-8").strip()
                if not value:
                    raise ValueError("empty caption")
            else:
                from PIL import Image
                with Image.open(found) as im:
                    value = np.asarray(im.convert("RGB"), np.uint8)
        except (OSError, ValueError) as e:
            raise ValueError(f"{found}: cannot read the scene's {field} ({e})") from None
        out[field] = value
    return out


class GaussianSubset:
    """View of a scene source that keeps only `gaussians` and `scene_id` (e.g. the built-in tfds scenes)."""

    def __init__(self, source: Sequence):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = self.source[i]
        return {"gaussians": rec["gaussians"], "scene_id": _scene_id(rec)}
