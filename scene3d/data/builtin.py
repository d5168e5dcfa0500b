"""Built-in multi-view scene dataset: rooms assembled from pybullet_data meshes, rendered on the CPU, no network.

Every scene is a deterministic function of one integer seed and a `SceneSpec`: a room (floor quad and four box
walls, textured with images shipped in `pybullet_data`), tables, and props (duck, teddy, mug, lego, jenga, domino,
spheres, trays, r2d2, the 1000 `random_urdfs` blobs) at random poses, sizes, colours and textures, under random
lighting. It is rendered with pybullet's TinyRenderer (DIRECT mode, no GPU or display) from cameras on three
trajectory kinds (`TRAJECTORY_KINDS`): `orbit` (around the scene centre, varying radius and height), `walk`
(moving forward through the room) and `lookat` (random positions looking at random points on objects), in blocks,
or one kind per scene (`SceneSpec.single_trajectory`: smooth clips, the `clips` preset, which also drops the image
textures). A 3DGS version of the scene is lifted from the rendered RGB-D views.

Per-scene dict (`build_scene` output, one compressed .npz per scene on disk; V views, H x W pixels, N Gaussians):

  images      uint8   (V, H, W, 3)  RGB
  depth       float32 (V, H, W)     metric z-depth (along the optical axis); 0 where mask is False
  points      float32 (V, H, W, 3)  world-space point map (pixel centres unprojected); 0 where mask is False.
                                    Omitted on disk when `spec.store_points` is False: `load_scene` recomputes it.
  mask        bool    (V, H, W)     True on geometry; False on background / far plane
  c2w         float32 (V, 4, 4)     camera-to-world, OpenCV axes (x right, y down, z forward), world z up
  intrinsics  float32 (V, 4)        (fx/W, fy/H, cx/W, cy/H); pixel (row i, col j) has its centre at (j+.5, i+.5)
  trajectory  int8    (V,)          index into TRAJECTORY_KINDS
  gaussians   float32 (N, 14)       raw INRIA channels: xyz, f_dc (3), opacity logit, log scale (3), rot (w x y z)
  bounds      float32 (2, 3)        room box (min, max corner) in world coordinates
  near_far    float32 (2,)          clipping planes used for rendering
  seed        int64   ()            the scene seed

`build_dataset` writes `scene_XXXXXX.npz` files (atomically, resumable) plus `index.json` (spec, seeds, files).
Camera conversion: pybullet's OpenGL view matrix V (world -> x right, y up, z backward) gives
c2w = inverse(diag(1, -1, -1, 1) V); TinyRenderer samples pixel column j at NDC x = 2j/W - 1 and row i at
NDC y = 1 - 2(i+1)/H, from which the normalised intrinsics follow exactly (see `intrinsics_from_projection`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import time
from concurrent import futures
from typing import Optional, Sequence, Union

import numpy as np

from scene3d.core import io
from scene3d.geometry import gaussians as gs
from scene3d.geometry import rays

TRAJECTORY_KINDS = ("orbit", "walk", "lookat")
GAUSSIAN_CHANNELS = 14
FORMAT_VERSION = 1
_MIN_SCALE = 1e-4  # metres; floor for kNN distances (coincident points)

_TEXTURES = ("checker_blue.png", "checker_grid.jpg", "tex256.png", "uvmap.png", "colors16.png", "cube.png",
             "duckCM.png", "table/table.png", "jenga/jenga.png", "domino/domino.jpg", "tray/tray.jpg",
             "table_square/checker_grid.jpg")
_TABLES = ("table/table.urdf", "table_square/table_square.urdf")
_PROPS = ("duck_vhacd.urdf", "teddy_vhacd.urdf", "teddy_large.urdf", "objects/mug.urdf", "lego/lego.urdf",
          "jenga/jenga.urdf", "domino/domino.urdf", "sphere2.urdf", "soccerball.urdf", "cube.urdf",
          "tray/traybox.urdf", "r2d2.urdf")


# ----------------------------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """Sizes and randomisation ranges of one built-in scene. Ranges are (low, high) sampled uniformly."""

    num_views: int = 16
    height: int = 64
    width: int = 64
    num_gaussians: int = 2048
    trajectory_weights: tuple = (1.0, 1.0, 1.0)  # share of views per TRAJECTORY_KINDS, contiguous blocks in order
    # True: each scene follows ONE trajectory kind, drawn with probabilities trajectory_weights (smooth clips for
    # view interpolation, e.g. SceneTok); False: every scene has the blocks above.
    single_trajectory: bool = False
    textures: bool = True  # False: plain random colours instead of the image textures (smooth, low-frequency views)
    fov_y_deg: tuple = (50.0, 75.0)  # vertical field of view, one per scene
    near: float = 0.05
    far: float = 30.0
    room_size: tuple = (4.0, 7.0)  # metres, each side
    wall_height: tuple = (2.4, 3.2)
    num_tables: tuple = (1, 3)  # inclusive integer range
    num_props: tuple = (6, 14)  # inclusive integer range
    prop_size: tuple = (0.2, 0.55)  # largest AABB side, metres
    shadows: bool = True  # allow (randomly) shadowed scenes
    opacity_logit: float = 4.0  # raw opacity of every lifted Gaussian (sigmoid -> 0.982)
    knn: int = 3  # neighbours for the isotropic scale
    store_points: bool = True  # write the point map into the .npz (else recomputed by load_scene)

    def __post_init__(self):
        for name in ("num_views", "height", "width", "num_gaussians", "knn"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"SceneSpec.{name}: expected a positive int, got {v!r}")
        if not 0 < self.near < self.far:
            raise ValueError(f"SceneSpec.near/far: expected 0 < near < far, got near={self.near}, far={self.far}")
        w = tuple(self.trajectory_weights)
        if len(w) != len(TRAJECTORY_KINDS) or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"SceneSpec.trajectory_weights: expected {len(TRAJECTORY_KINDS)} non-negative weights "
                             f"for {TRAJECTORY_KINDS} with a positive sum, got {w!r}")
        for name in ("fov_y_deg", "room_size", "wall_height", "num_tables", "num_props", "prop_size"):
            r = tuple(getattr(self, name))
            if len(r) != 2 or r[0] > r[1] or r[0] < 0:
                raise ValueError(f"SceneSpec.{name}: expected a (low, high) range with 0 <= low <= high, got {r!r}")
        if not (0 < self.fov_y_deg[0] and self.fov_y_deg[1] < 170):
            raise ValueError(f"SceneSpec.fov_y_deg: expected degrees in (0, 170), got {self.fov_y_deg!r}")
        if self.room_size[0] < 2.5:
            raise ValueError(f"SceneSpec.room_size: rooms need sides >= 2.5 m, got {self.room_size!r}")

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "SceneSpec":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# name -> (num_scenes, spec). 'runlocal' builds in about a minute on 2 cores; 'full' is the training set.
PRESETS = {
    "runlocal": (32, SceneSpec(num_views=24, height=64, width=64, num_gaussians=2048)),
    "full": (1000, SceneSpec(num_views=48, height=256, width=256, num_gaussians=16384, store_points=False)),
    # Smooth 32 px clips (one orbit or walk per scene, 32 frames): view interpolation on CPU (SceneTok runlocal).
    "clips": (128, SceneSpec(num_views=32, height=32, width=32, num_gaussians=256, trajectory_weights=(1.0, 1.0, 0.0),
                            single_trajectory=True, textures=False)),
}


def preset(name: str):
    """(num_scenes, SceneSpec) of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"builtin dataset preset: unknown {name!r} (known: {sorted(PRESETS)})")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------- pybullet


def _pb():
    import pybullet
    return pybullet


def data_path() -> pathlib.Path:
    """The pybullet_data folder holding the meshes and textures."""
    import pybullet_data
    return pathlib.Path(pybullet_data.getDataPath())


def _available(paths: Sequence[str]) -> list:
    root = data_path()
    return [q for q in paths if (root / q).is_file()]


@functools.lru_cache(maxsize=None)
def _random_urdfs() -> tuple:
    root = data_path() / "random_urdfs"
    if not root.is_dir():
        return ()
    return tuple(sorted(f"random_urdfs/{d.name}/{d.name}.urdf" for d in root.iterdir()
                  if (d / f"{d.name}.urdf").is_file()))


_SCRATCH = {}


def _native_extent(path: str) -> float:
    """Largest AABB side of an asset loaded at scale 1 (in a private client, so scene clients stay identical)."""
    if path not in _SCRATCH:
        p = _pb()
        if "client" not in _SCRATCH:
            _SCRATCH["client"] = p.connect(p.DIRECT)
        c = _SCRATCH["client"]
        b = p.loadURDF(str(data_path() / path), useFixedBase=True, physicsClientId=c)
        lo, hi = _body_aabb(c, b)
        p.removeBody(b, physicsClientId=c)
        _SCRATCH[path] = float(np.max(hi - lo))
    return _SCRATCH[path]


def _body_aabb(client: int, body: int):
    """(min, max) of the collision AABB over all links of a body."""
    p = _pb()
    boxes = [p.getAABB(body, -1, physicsClientId=client)]
    boxes += [p.getAABB(body, j, physicsClientId=client) for j in range(p.getNumJoints(body, physicsClientId=client))]
    lo = np.min([b[0] for b in boxes], axis=0)
    hi = np.max([b[1] for b in boxes], axis=0)
    return lo, hi


def c2w_from_view_matrix(view) -> np.ndarray:
    """pybullet (OpenGL, column-major 16-list) world->camera view matrix -> OpenCV camera-to-world (4, 4)."""
    V = np.asarray(view, np.float64).reshape(4, 4).T
    w2c = np.diag([1.0, -1.0, -1.0, 1.0]) @ V
    R, t = w2c[:3, :3], w2c[:3, 3]
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = -R.T @ t
    return c2w


def intrinsics_from_projection(proj, height: int, width: int) -> np.ndarray:
    """pybullet (OpenGL, column-major) projection matrix -> normalised (fx/W, fy/H, cx/W, cy/H) of TinyRenderer images.

    TinyRenderer maps NDC to screen with sx = (x_ndc + 1) W / 2, rasterises at integer sx (= column j), and flips
    rows (row i = H - 1 - sy). With OpenCV pixel centres at (j + 0.5, i + 0.5) this gives
    fx = P00 W/2, cx = W/2 (1 - P02) + 1/2, fy = P11 H/2, cy = H/2 (1 + P12) - 1/2.
    """
    P = np.asarray(proj, np.float64).reshape(4, 4).T
    if abs(P[3, 2] + 1) > 1e-6 or abs(P[0, 1]) > 1e-9 or abs(P[1, 0]) > 1e-9 or P[3, 3] != 0:
        raise ValueError(f"intrinsics_from_projection: not an OpenGL perspective matrix:\n{P}")
    return np.array([P[0, 0] / 2, P[1, 1] / 2, (1 - P[0, 2]) / 2 + 0.5 / width, (1 + P[1, 2]) / 2 - 0.5 / height])


def near_far_from_projection(proj):
    """(near, far) encoded in an OpenGL projection matrix (as TinyRenderer reads them)."""
    P = np.asarray(proj, np.float64)
    return P[14] / (P[10] - 1), P[14] / (P[10] + 1)


def render_view(client: int, eye, target, up, height: int, width: int, fov_y_deg: float, near: float, far: float,
                light: Optional[dict] = None) -> dict:
    """Render one view with TinyRenderer. Returns rgb (H, W, 3) uint8, depth (H, W) metric float32 (0 off-mask),
    mask (H, W) bool, c2w (4, 4) OpenCV float64, intrinsics (4,) normalised float64."""
    p = _pb()
    view = p.computeViewMatrix(list(map(float, eye)), list(map(float, target)), list(map(float, up)),
                               physicsClientId=client)
    proj = p.computeProjectionMatrixFOV(float(fov_y_deg), width / height, near, far, physicsClientId=client)
    _, _, rgba, zbuf, seg = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER,
                                             physicsClientId=client, **(light or {}))
    rgb = np.asarray(rgba, np.uint8).reshape(height, width, 4)[..., :3]
    zbuf = np.asarray(zbuf, np.float64).reshape(height, width)
    seg = np.asarray(seg).reshape(height, width)
    n, f = near_far_from_projection(proj)
    depth = f * n / (f - (f - n) * zbuf)
    mask = (seg >= 0) & (zbuf < 1.0) & (depth < f * (1 - 1e-4))
    return dict(rgb=np.ascontiguousarray(rgb), depth=np.where(mask, depth, 0).astype(np.float32), mask=mask,
                c2w=c2w_from_view_matrix(view), intrinsics=intrinsics_from_projection(proj, height, width))


# ----------------------------------------------------------------------------------------------- assembly


def _u(rng, r):
    return float(rng.uniform(r[0], r[1]))


def _quad_visual(client, corners, normal, tiles):
    p = _pb()
    uvs = [[0, 0], [tiles[0], 0], [tiles[0], tiles[1]], [0, tiles[1]]]
    return p.createVisualShape(p.GEOM_MESH, vertices=[list(map(float, c)) for c in corners],
                               indices=[0, 1, 2, 0, 2, 3], uvs=uvs, normals=[list(map(float, normal))] * 4,
                               physicsClientId=client)


def _tint(rng, lo=0.55):
    return [float(x) for x in rng.uniform(lo, 1.0, 3)] + [1.0]


def _assemble(client: int, rng: np.random.Generator, spec: SceneSpec) -> dict:
    """Build the room in `client`; returns layout info (bounds, object AABBs, centre, wall height)."""
    p = _pb()
    root = data_path()
    texture_files, loaded = _available(_TEXTURES), {}

    def texture():  # a random texture id, loaded on first use (loading all of them costs more than rendering)
        name = texture_files[rng.integers(len(texture_files))]
        if name not in loaded:
            loaded[name] = p.loadTexture(str(root / name), physicsClientId=client)
        return loaded[name]

    def paint(body):
        """A random texture with a pale tint, or (spec.textures False) a plain random colour."""
        if spec.textures:
            p.changeVisualShape(body, -1, textureUniqueId=texture(), rgbaColor=_tint(rng), physicsClientId=client)
        else:
            p.changeVisualShape(body, -1, rgbaColor=_tint(rng, 0.1), physicsClientId=client)

    sx, sy = _u(rng, spec.room_size), _u(rng, spec.room_size)
    hx, hy, wall_h = sx / 2, sy / 2, _u(rng, spec.wall_height)

    # Floor: one textured quad, random tiling.
    tile = rng.uniform(1.0, 3.0)  # metres per texture repeat (TinyRenderer has no mipmaps)
    fv = _quad_visual(client, [[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0]], [0, 0, 1],
                      (sx / tile, sy / tile))
    floor = p.createMultiBody(0, -1, fv, physicsClientId=client)
    paint(floor)
    # Walls: thin boxes, each its own texture and tint.
    th = 0.05
    for cx, cy, ex, ey in ((hx + th, 0, th, hy + 2 * th), (-hx - th, 0, th, hy + 2 * th),
                           (0, hy + th, hx + 2 * th, th), (0, -hy - th, hx + 2 * th, th)):
        wv = p.createVisualShape(p.GEOM_BOX, halfExtents=[ex, ey, wall_h / 2], physicsClientId=client)
        w = p.createMultiBody(0, -1, wv, basePosition=[cx, cy, wall_h / 2], physicsClientId=client)
        if rng.uniform() < 0.75:
            paint(w)
        else:
            p.changeVisualShape(w, -1, rgbaColor=_tint(rng, 0.2), physicsClientId=client)

    objects = []  # (lo, hi) AABBs of tables and props
    footprints = []  # 2D (lo, hi) occupied on the floor

    def free(lo, hi, margin=0.05):
        return all(np.any(hi[:2] + margin < a[:2]) or np.any(b[:2] + margin < lo[:2]) for a, b in footprints)

    def place(path, scale, orn, support_z, region, tries=20, origin_on_support=False):
        """Load at a random xy inside region (xlo, ylo, xhi, yhi) resting on support_z; None if it does not fit.

        The collision AABB's bottom rests on the support, or the body origin when `origin_on_support` (tables:
        their legs are visual-only, the collision box is just the top)."""
        b = p.loadURDF(str(root / path), [0, 0, 0], orn, useFixedBase=True, globalScaling=scale,
                       physicsClientId=client)
        lo, hi = _body_aabb(client, b)
        half = (hi - lo)[:2] / 2
        for _ in range(tries):
            xlo, ylo, xhi, yhi = region[0] + half[0], region[1] + half[1], region[2] - half[0], region[3] - half[1]
            if xlo > xhi or ylo > yhi:
                break
            c = np.array([rng.uniform(xlo, xhi), rng.uniform(ylo, yhi)])
            dz = support_z - (0.0 if origin_on_support else lo[2])
            shift = np.array([c[0] - (lo[0] + hi[0]) / 2, c[1] - (lo[1] + hi[1]) / 2, dz])
            nlo, nhi = lo + shift, hi + shift
            if support_z > 0 or free(nlo, nhi):
                p.resetBasePositionAndOrientation(b, shift.tolist(), orn, physicsClientId=client)
                return b, nlo, nhi
        p.removeBody(b, physicsClientId=client)
        return None

    def yaw_quat():
        return p.getQuaternionFromEuler([0, 0, float(rng.uniform(0, 2 * np.pi))])

    # Tables near the centre.
    tables = _available(_TABLES)
    tops = []
    inner = (-0.6 * hx, -0.6 * hy, 0.6 * hx, 0.6 * hy)
    for _ in range(int(rng.integers(spec.num_tables[0], spec.num_tables[1] + 1))):
        if not tables:
            break
        path = tables[rng.integers(len(tables))]
        got = place(path, float(rng.uniform(0.9, 1.3)), yaw_quat(), 0.0, inner, origin_on_support=True)
        if got is None:
            continue
        b, lo, hi = got
        lo[2] = 0.0  # legs are visual-only in these URDFs: the body stands on the floor
        objects.append((lo, hi))
        footprints.append((lo, hi))
        tops.append((lo, hi))
        if rng.uniform() < 0.6:
            paint(b)

    # Props on tables and on the floor.
    named, blobs = _available(_PROPS), _random_urdfs()
    walls = (-hx + 0.3, -hy + 0.3, hx - 0.3, hy - 0.3)
    for _ in range(int(rng.integers(spec.num_props[0], spec.num_props[1] + 1))):
        if blobs and (not named or rng.uniform() < 0.5):
            path = blobs[rng.integers(len(blobs))]
            q = rng.normal(size=4)
            orn = tuple(float(x) for x in q / np.linalg.norm(q))
        else:
            path = named[rng.integers(len(named))]
            orn = yaw_quat()
        scale = _u(rng, spec.prop_size) / max(_native_extent(path), 1e-6)
        if tops and rng.uniform() < 0.6:
            tlo, thi = tops[rng.integers(len(tops))]
            got = place(path, scale, orn, float(thi[2]), (tlo[0] + 0.05, tlo[1] + 0.05, thi[0] - 0.05, thi[1] - 0.05))
        else:
            got = place(path, scale, orn, 0.0, walls)
            if got is not None:
                footprints.append((got[1], got[2]))
        if got is None:
            continue
        b, lo, hi = got
        objects.append((lo, hi))
        r = rng.uniform()
        if r < 0.3:
            paint(b)
        elif r < 0.7:
            p.changeVisualShape(b, -1, rgbaColor=[float(x) for x in rng.uniform(0.05, 1.0, 3)] + [1.0],
                                physicsClientId=client)

    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(35), np.radians(85))
    light = dict(lightDirection=[float(np.cos(el) * np.cos(az)), float(np.cos(el) * np.sin(az)), float(np.sin(el))],
                 lightColor=[float(x) for x in rng.uniform(0.8, 1.0, 3)],
                 lightDistance=float(rng.uniform(6, 12)),
                 shadow=int(spec.shadows and rng.uniform() < 0.5),
                 lightAmbientCoeff=float(rng.uniform(0.45, 0.7)),
                 lightDiffuseCoeff=float(rng.uniform(0.3, 0.55)),
                 lightSpecularCoeff=float(rng.uniform(0.0, 0.15)))
    top = max([hi[2] for _, hi in objects], default=0.5)
    return dict(bounds=np.array([[-hx, -hy, 0.0], [hx, hy, wall_h]]), objects=objects, wall_height=wall_h,
                centre=np.array([0.0, 0.0, min(0.6, top / 2)]), light=light)


# ----------------------------------------------------------------------------------------------- trajectories


def _view_counts(num_views: int, weights) -> list:
    w = np.asarray(weights, np.float64)
    exact = num_views * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[:num_views - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _inside_any(x, objects, margin=0.15):
    return any(np.all(x > lo - margin) and np.all(x < hi + margin) for lo, hi in objects)


def _orbit(rng, n, layout):
    (xlo, ylo, _), (xhi, yhi, _) = layout["bounds"]
    half = min(xhi - xlo, yhi - ylo) / 2
    top = max([hi[2] for _, hi in layout["objects"]], default=0.5)
    r0 = rng.uniform(0.45, 0.8) * half
    h_lo = min(top + 0.2, layout["wall_height"] - 0.3)
    h0 = rng.uniform(h_lo, max(h_lo, min(2.3, layout["wall_height"] - 0.2)))
    th0, span = rng.uniform(0, 2 * np.pi), rng.uniform(np.pi, 2 * np.pi) * rng.choice([-1, 1])
    fr, fh, ph = rng.uniform(0.5, 2), rng.uniform(0.5, 2), rng.uniform(0, 2 * np.pi, 2)
    target = layout["centre"] + np.append(rng.uniform(-0.3, 0.3, 2), 0)
    out = []
    for i in range(n):
        s = i / n
        r = r0 * (1 + 0.15 * np.sin(2 * np.pi * fr * s + ph[0]))
        h = np.clip(h0 + 0.25 * np.sin(2 * np.pi * fh * s + ph[1]), h_lo, layout["wall_height"] - 0.1)
        th = th0 + span * s
        out.append((np.array([r * np.cos(th), r * np.sin(th), h]), target))
    return out


def _walk(rng, n, layout):
    (xlo, ylo, _), (xhi, yhi, _) = layout["bounds"]
    top = max([hi[2] for _, hi in layout["objects"]], default=0.5)
    axis, sign = int(rng.integers(2)), float(rng.choice([-1, 1]))
    lo, hi = np.array([xlo, ylo]), np.array([xhi, yhi])
    start = np.zeros(2)
    start[axis] = (lo[axis] + 0.4) if sign > 0 else (hi[axis] - 0.4)
    start[1 - axis] = rng.uniform(0.3, 0.7) * (hi[1 - axis] - lo[1 - axis]) + lo[1 - axis]
    yaw0 = (0.0 if axis == 0 else np.pi / 2) + (0.0 if sign > 0 else np.pi) + rng.uniform(-0.35, 0.35)
    d = np.array([np.cos(yaw0), np.sin(yaw0)])
    # Walk length: stay 0.4 m inside the room.
    tmax = min(((hi[k] - 0.4 - start[k]) / d[k] if d[k] > 1e-6 else (lo[k] + 0.4 - start[k]) / d[k]
                if d[k] < -1e-6 else np.inf) for k in range(2))
    length = rng.uniform(0.4, 0.75) * max(tmax, 0.0)
    eye_h = np.clip(rng.uniform(1.3, 1.8), min(top + 0.15, layout["wall_height"] - 0.3), layout["wall_height"] - 0.2)
    pitch, sway, fs, ph = rng.uniform(0.1, 0.45), rng.uniform(0, 0.25), rng.uniform(0.5, 1.5), rng.uniform(0, 6.3)
    out = []
    for i in range(n):
        s = i / max(n - 1, 1)
        xy = start + d * length * s
        yaw = yaw0 + sway * np.sin(2 * np.pi * fs * s + ph)
        eye = np.array([xy[0], xy[1], eye_h])
        fwd = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), -np.sin(pitch)])
        out.append((eye, eye + 2.0 * fwd))
    return out


def _lookat(rng, n, layout):
    lo_b, hi_b = layout["bounds"]
    objects = layout["objects"] or [(layout["centre"] - 0.2, layout["centre"] + 0.2)]
    out = []
    for _ in range(n):
        olo, ohi = objects[rng.integers(len(objects))]
        target = olo + (ohi - olo) * rng.uniform(0.25, 0.75, 3)
        eye = None
        for _ in range(50):
            az, el, dist = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(10), np.radians(60)), rng.uniform(0.7, 2.8)
            cand = target + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            if (np.all(cand > lo_b + [0.3, 0.3, 0.3]) and np.all(cand < hi_b - [0.3, 0.3, 0.15])
                    and not _inside_any(cand, layout["objects"])):
                eye = cand
                break
        if eye is None:  # fall back to a high point in the middle of the room
            eye = np.array([0.0, 0.0, layout["wall_height"] - 0.2])
            eye[:2] += np.sign(target[:2] + 1e-3) * -0.5
        out.append((eye, target))
    return out


_TRAJECTORIES = {"orbit": _orbit, "walk": _walk, "lookat": _lookat}


# ----------------------------------------------------------------------------------------------- 3DGS lifting


def gaussians_from_views(images, points, mask, depth, intrinsics, num: int, rng: np.random.Generator,
                         opacity_logit: float = 4.0, knn: int = 3) -> np.ndarray:
    """Lift exactly `num` isotropic Gaussians (N, 14) raw from RGB-D views.

    Pixels are drawn without replacement with weights proportional to their surface footprint (depth^2 / (fx fy)),
    so the cloud is roughly uniform over surfaces rather than over pixels; if there are fewer valid pixels than
    `num`, all are taken and the rest repeated. Position = point map, f_dc = gaussians.rgb_to_dc(rgb), scale = log of the
    mean distance to the `knn` nearest distinct Gaussians, rotation identity, opacity = `opacity_logit`.
    """
    from scipy.spatial import cKDTree

    V, H, W = mask.shape
    if images.shape != (V, H, W, 3) or points.shape != (V, H, W, 3) or depth.shape != (V, H, W):
        raise ValueError(f"gaussians_from_views: expected images/points (V, H, W, 3), depth/mask (V, H, W); got "
                         f"{images.shape}, {points.shape}, {depth.shape}, {mask.shape}")
    m = mask.reshape(-1)
    xyz = points.reshape(-1, 3)[m].astype(np.float64)
    rgb = images.reshape(-1, 3)[m].astype(np.float64) / 255.0
    M = xyz.shape[0]
    if M == 0:
        raise ValueError("gaussians_from_views: no valid pixel in any view (mask is all False)")
    foot = (depth.astype(np.float64) ** 2 / (intrinsics[:, None, None, 0] * W * intrinsics[:, None, None, 1] * H))
    w = foot.reshape(-1)[m]
    if M >= num:
        keys = np.log(rng.uniform(size=M)) / np.maximum(w, 1e-12)  # Efraimidis-Spirakis weighted sampling
        idx = np.sort(np.argpartition(-keys, num - 1)[:num])
    else:
        idx = np.concatenate([np.arange(M), rng.choice(M, num - M, replace=True)])
    uniq, inv = np.unique(idx, return_inverse=True)
    pts = xyz[uniq]
    k = min(knn, len(uniq) - 1)
    if k > 0:
        d, _ = cKDTree(pts).query(pts, k=k + 1)
        dist = d[:, 1:].mean(-1)
    else:
        dist = np.full(len(uniq), 0.01)
    log_s = np.log(np.maximum(dist, _MIN_SCALE))[inv]
    out = np.zeros((num, GAUSSIAN_CHANNELS), np.float32)
    out[:, 0:3] = xyz[idx]
    out[:, 3:6] = gs.rgb_to_dc(rgb[idx])
    out[:, 6] = opacity_logit
    out[:, 7:10] = log_s[:, None]
    out[:, 10] = 1.0
    return out


# ----------------------------------------------------------------------------------------------- scenes


def build_scene(seed: int, spec: SceneSpec = SceneSpec()) -> dict:
    """Assemble, render and lift one scene; a deterministic function of (seed, spec). Format: module docstring."""
    if not isinstance(spec, SceneSpec):
        raise ValueError(f"build_scene spec: expected a SceneSpec, got {type(spec).__name__}")
    p = _pb()
    rng = np.random.default_rng(int(seed))
    client = p.connect(p.DIRECT)
    try:
        layout = _assemble(client, rng, spec)
        fov = _u(rng, spec.fov_y_deg)
        poses, kinds = [], []
        if spec.single_trajectory:
            w = np.asarray(spec.trajectory_weights, np.float64)
            counts = [0] * len(TRAJECTORY_KINDS)
            counts[int(rng.choice(len(w), p=w / w.sum()))] = spec.num_views
        else:
            counts = _view_counts(spec.num_views, spec.trajectory_weights)
        for k, (kind, n) in enumerate(zip(TRAJECTORY_KINDS, counts)):
            if n:
                poses += _TRAJECTORIES[kind](rng, n, layout)
                kinds += [k] * n
        views = [render_view(client, eye, target, (0.0, 0.0, 1.0), spec.height, spec.width, fov, spec.near,
                             spec.far, layout["light"]) for eye, target in poses]
    finally:
        p.disconnect(client)
    out = dict(
        images=np.stack([v["rgb"] for v in views]),
        depth=np.stack([v["depth"] for v in views]),
        mask=np.stack([v["mask"] for v in views]),
        c2w=np.stack([v["c2w"] for v in views]).astype(np.float32),
        intrinsics=np.stack([v["intrinsics"] for v in views]).astype(np.float32),
        trajectory=np.asarray(kinds, np.int8),
        bounds=layout["bounds"].astype(np.float32),
        near_far=np.array([spec.near, spec.far], np.float32),
        seed=np.asarray(int(seed), np.int64),
    )
    pts = rays.depth_to_points(out["depth"].astype(np.float64), np.stack([v["c2w"] for v in views]),
                               np.stack([v["intrinsics"] for v in views]))
    out["points"] = np.where(out["mask"][..., None], pts, 0).astype(np.float32)
    out["gaussians"] = gaussians_from_views(out["images"], out["points"], out["mask"], out["depth"],
                                            out["intrinsics"].astype(np.float64), spec.num_gaussians, rng,
                                            spec.opacity_logit, spec.knn)
    return out


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene `index` in a dataset built with `seed` (independent streams per scene)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def scene_filename(index: int) -> str:
    return f"scene_{index:06d}.npz"


def load_scene(path) -> dict:
    """Read one scene .npz into the `build_scene` dict (recomputing `points` when it was not stored)."""
    path = pathlib.Path(path)
    out = io.read_npz(path)  # bounded: ValueError naming the file for a truncated / corrupt archive
    missing = {"images", "depth", "mask", "c2w", "intrinsics", "trajectory", "gaussians"} - set(out)
    if missing:
        raise ValueError(f"{path}: not a built-in scene file, missing fields {sorted(missing)}")
    if "points" not in out:
        pts = rays.depth_to_points(out["depth"].astype(np.float64), out["c2w"].astype(np.float64),
                                   out["intrinsics"].astype(np.float64))
        out["points"] = np.where(out["mask"][..., None], pts, 0).astype(np.float32)
    return out


def _build_and_save(out_dir: str, index: int, seed: int, spec_json: dict) -> dict:
    spec = SceneSpec.from_json(spec_json)
    t0 = time.perf_counter()
    scene = build_scene(seed, spec)
    if not spec.store_points:
        scene.pop("points")
    final = pathlib.Path(out_dir) / scene_filename(index)
    def write(tmp):  # a file object: np.savez on a name would append '.npz'
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **scene)

    io.atomic_write(final, write)
    return dict(index=index, seconds=time.perf_counter() - t0)


def build_dataset(out_dir, num_scenes: Optional[int] = None, spec: Union[SceneSpec, str] = "runlocal",
                  seed: int = 0, num_workers: int = 1, verbose: bool = False) -> dict:
    """Write `num_scenes` scenes as `out_dir/scene_XXXXXX.npz` plus `out_dir/index.json`; returns the index.

    `spec` is a SceneSpec or a preset name (then `num_scenes` defaults to the preset's). Scene i uses
    `scene_seed(seed, i)`. Files already present are kept (resumable); an existing index built with another
    spec or seed is an error. Each file is written to a temporary name and renamed, so a crash leaves no partial
    scene. `num_workers` > 1 renders scenes in parallel processes.
    """
    if isinstance(spec, str):
        n_preset, spec = preset(spec)
        num_scenes = n_preset if num_scenes is None else num_scenes
    if not isinstance(spec, SceneSpec):
        raise ValueError(f"build_dataset spec: expected a SceneSpec or preset name, got {type(spec).__name__}")
    if num_scenes is None or num_scenes < 0:
        raise ValueError(f"build_dataset num_scenes: expected a non-negative int, got {num_scenes!r}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if old.get("spec") != spec.to_json() or old.get("seed") != int(seed):
            raise ValueError(f"{index_path}: existing dataset was built with spec={old.get('spec')} "
                             f"seed={old.get('seed')}, not spec={spec.to_json()} seed={seed}; use another out_dir")
    seeds = [scene_seed(seed, i) for i in range(num_scenes)]
    todo = [i for i in range(num_scenes) if not (out / scene_filename(i)).exists()]
    t0 = time.perf_counter()
    args = [(str(out), i, seeds[i], spec.to_json()) for i in todo]
    if num_workers > 1 and len(todo) > 1:
        import multiprocessing
        with futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            for r in ex.map(_build_and_save, *zip(*args)):
                if verbose:
                    print(f"scene {r['index']}: {r['seconds']:.2f}s", flush=True)
    else:
        for a in args:
            r = _build_and_save(*a)
            if verbose:
                print(f"scene {r['index']}: {r['seconds']:.2f}s", flush=True)
    index = dict(format_version=FORMAT_VERSION, seed=int(seed), num_scenes=num_scenes, spec=spec.to_json(),
                 trajectory_kinds=list(TRAJECTORY_KINDS),
                 scenes=[dict(index=i, file=scene_filename(i), seed=seeds[i]) for i in range(num_scenes)],
                 built_now=len(todo), seconds=time.perf_counter() - t0)
    io.write_json(index_path, index, indent=1)
    return index


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build the built-in pybullet scene dataset.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="runlocal", choices=sorted(PRESETS))
    ap.add_argument("--num_scenes", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    idx = build_dataset(a.out, a.num_scenes, a.preset, a.seed, a.workers, verbose=True)
    print(f"built {idx['built_now']} of {idx['num_scenes']} scenes in {idx['seconds']:.1f}s -> {a.out}")


if __name__ == "__main__":
    main()
