"""Procedural tabletop scenes as 3D Gaussians: a square ground tile with one or more primitives standing on it.

The 3DGS counterpart of ``procedural_shapes``: no download, no renderer, any number of scenes, each a
deterministic function of (seed, index). It is the data of Can3Tok's CPU main job (``configs/can3tok.py:runlocal``)
because a scene here is set by a handful of numbers - the ground colour (3), and per object its kind, (x, y)
position (2), size (1) and colour (3) - arranged non-linearly in the Gaussians: moving an object moves which rows
hold its colour. A non-linear autoencoder can learn that map from enough scenes; a linear code (PCA) with the same
number of floats cannot. The built-in rendered rooms (``builtin_gaussians``) have far more degrees of freedom per
scene and only as many scenes as one renders, too few on a CPU for a non-linear code to beat PCA (README,
"What the Can3Tok main job reaches").

A scene of ``num_gaussians`` Gaussians: a third (rounded down to a square number) on a regular grid over the
ground tile [-1.5, 1.5]^2 at z = 0, the rest split evenly between 1..``max_objects`` objects. Each object is a box
(half-extents 1 x 0.8 x 0.9), a sphere (radius 1) or a cylinder (radius 0.7, height 2, with its top disc), scaled by
a size in [0.25, 0.5], standing on the ground at (x, y) uniform in [-0.9, 0.9]^2. Its surface points are a FIXED
sample of the unit shape (the same for every scene with that kind and count), so the scene is a deterministic
function of its generating numbers, not of sampling noise. Gaussians are isotropic (log-scale from the surface
area per point), opaque (logit 4, like the built-in rooms), unrotated and of SH degree 0; object colours are
saturated (one channel >= 0.8), the ground's muted.

Records: ``gaussians`` (N, 14) float32 packed rows (``scene3d.geometry.gaussians.pack`` order) and ``scene_id``.
"""
from __future__ import annotations

import functools

import numpy as np

from scene3d.geometry import gaussians as gs

KINDS = ("box", "sphere", "cylinder")
GROUND_HALF = 1.5
BOX_HALF = np.array([1.0, 0.8, 0.9])
CYLINDER = (0.7, 2.0)  # radius, height
OPACITY_LOGIT = 4.0


def _box_surface(rng, m):
    """m points on the box's five visible faces (area-weighted), base on z = 0."""
    hx, hy, hz = BOX_HALF
    areas = 4.0 * np.array([hx * hy, hx * hz, hx * hz, hy * hz, hy * hz])
    face = rng.choice(5, m, p=areas / areas.sum())
    u, v = rng.uniform(-1, 1, (2, m))
    one = np.ones(m)
    pts = np.select([face[:, None] == k for k in range(5)],
                    [np.stack([u * hx, v * hy, hz * one], 1), np.stack([u * hx, hy * one, v * hz], 1),
                     np.stack([u * hx, -hy * one, v * hz], 1), np.stack([hx * one, u * hy, v * hz], 1),
                     np.stack([-hx * one, u * hy, v * hz], 1)])
    return pts + np.array([0.0, 0.0, hz]), float(areas.sum())


def _sphere_surface(rng, m):
    d = rng.normal(size=(m, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d + np.array([0.0, 0.0, 1.0]), 4.0 * np.pi


def _cylinder_surface(rng, m):
    r, h = CYLINDER
    side, top = 2 * np.pi * r * h, np.pi * r * r
    on_top = rng.uniform(size=m) < top / (side + top)
    th = rng.uniform(0, 2 * np.pi, m)
    z = rng.uniform(0, h, m)
    rr = r * np.sqrt(rng.uniform(size=m))
    pts = np.where(on_top[:, None], np.stack([rr * np.cos(th), rr * np.sin(th), np.full(m, h)], 1),
                   np.stack([r * np.cos(th), r * np.sin(th), z], 1))
    return pts, float(side + top)


@functools.lru_cache(maxsize=64)
def unit_surface(kind: str, m: int) -> tuple[np.ndarray, float]:
    """The fixed sample of ``m`` surface points of the unit ``kind`` (read-only array) and its surface area."""
    if kind not in KINDS:
        raise ValueError(f"tabletop: unknown object kind {kind!r} (known: {KINDS})")
    rng = np.random.default_rng([20_251_207, KINDS.index(kind), m])
    pts, area = {"box": _box_surface, "sphere": _sphere_surface, "cylinder": _cylinder_surface}[kind](rng, m)
    pts.setflags(write=False)
    return pts, area


def make_scene(index: int, *, num_gaussians: int = 512, seed: int = 0, max_objects: int = 2) -> gs.Gaussians:
    """Scene ``index`` of the set ``seed``: identical for identical arguments."""
    if max_objects < 1:
        raise ValueError(f"tabletop: max_objects must be >= 1, got {max_objects}")
    side = int(np.sqrt(num_gaussians // 3))
    if side < 2 or num_gaussians - side * side < max_objects:
        raise ValueError(f"tabletop: num_gaussians={num_gaussians} is too few for a ground grid and {max_objects} "
                         "objects (need >= 12 + max_objects)")
    rng = np.random.default_rng([int(seed), int(index)])
    k = int(rng.integers(1, max_objects + 1))
    u = (np.arange(side) + 0.5) / side * 2 * GROUND_HALF - GROUND_HALF
    gx, gy = np.meshgrid(u, u, indexing="ij")
    n_ground = side * side
    xyz = [np.stack([gx.ravel(), gy.ravel(), np.zeros(n_ground)], 1)]
    rgb = [np.tile(rng.uniform(0.15, 0.85, 3), (n_ground, 1))]
    log_scale = [np.full(n_ground, np.log(0.6 * 2 * GROUND_HALF / side))]
    rest = num_gaussians - n_ground
    for j in range(k):
        m = rest // k + (1 if j < rest % k else 0)
        kind = KINDS[int(rng.integers(len(KINDS)))]
        centre = np.array([*rng.uniform(-0.9, 0.9, 2), 0.0])
        size = rng.uniform(0.25, 0.5)
        colour = rng.uniform(0.0, 1.0, 3)
        colour[rng.integers(3)] = rng.uniform(0.8, 1.0)
        pts, area = unit_surface(kind, m)
        xyz.append(pts * size + centre)
        rgb.append(np.tile(colour, (m, 1)))
        log_scale.append(np.full(m, np.log(0.6 * size * np.sqrt(area / m))))
    xyz, rgb, log_scale = np.concatenate(xyz), np.concatenate(rgb), np.concatenate(log_scale)
    n = xyz.shape[0]
    return gs.Gaussians(xyz=xyz.astype(np.float32), f_dc=np.asarray(gs.rgb_to_dc(rgb), np.float32),
                        opacity=np.full(n, OPACITY_LOGIT, np.float32),
                        scale=np.repeat(log_scale[:, None], 3, 1).astype(np.float32),
                        rot=np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (n, 1)))


class TabletopSource:
    """grain-compatible random-access source of tabletop scenes (records as ``builtin_gaussians`` gives them)."""

    def __init__(self, num_scenes: int, *, num_gaussians: int = 512, seed: int = 0, max_objects: int = 2):
        if num_scenes < 1:
            raise ValueError(f"tabletop: num_scenes must be >= 1, got {num_scenes}")
        self.num_scenes, self.num_gaussians = int(num_scenes), int(num_gaussians)
        self.seed, self.max_objects = int(seed), int(max_objects)
        make_scene(0, num_gaussians=self.num_gaussians, seed=self.seed, max_objects=self.max_objects)  # validates

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} tabletop scenes")
        g = make_scene(index, num_gaussians=self.num_gaussians, seed=self.seed, max_objects=self.max_objects)
        return {"gaussians": gs.pack(g).astype(np.float32), "scene_id": f"tabletop-{self.seed}-{index:06d}"}
