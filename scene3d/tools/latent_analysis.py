"""Latent analysis of a Can3Tok run, as in the paper's Figures 7-8: where rotated copies of one scene land in the
latent space, next to other scenes.

    python -m scene3d.tools.latent_analysis --workdir=RUN [--out=DIR] [--scene=INDEX | --scene=FILE.ply]
        [--split=eval] [--num_interp=36] [--axis=y] [--max_angle=360] [--num_random=200] [--num_other=8]
        [--other_rotations=4] [--method=tsne|pca] [--seed=0] [--batch_size=32] [--step=N] [--no_ema]

The run (an ``autoencode`` run: its config.json and checkpoint ``--step``, EMA unless ``--no_ema``) encodes:

  interp   the query scene under ``--num_interp`` rotations about ``--axis`` by the angles k * max_angle /
           num_interp, k = 0 .. num_interp - 1 (a geodesic of SO(3) through the identity; the default is the
           release's ``tsne_exp.py``: 0, 10, ..., 350 degrees about y), coloured round the hue wheel by angle;
  random   the query scene under ``--num_random`` Haar-random rotations (``so3.random_rotation``), one colour;
  other    ``--num_other`` other scenes of the split, each unrotated and under ``--other_rotations`` random
           rotations, one colour per scene.

The query scene is ``--scene``: an index into the run's own ``--split`` (``config.data``: built-in scenes or PLY
files) or a 3DGS file (.ply / .splat); the other scenes are the split's first ones (the query excepted). Every
example is made as the run's evaluation pipeline makes it (``scene3d.data.gs_pipeline.process_gaussians``: filter,
the centred crop of ``data.gaussians.num_gaussians`` Gaussians, normalised into the ball) and then rotated exactly
as training augmentation rotates (positions, quaternions and SH bands, before the canonical row order and the
row layout): ``rotated_rows``. The latent is the posterior mean (the tokenizer's ``encode``), flattened; batches
of ``--batch_size`` are encoded by one jitted function (the last batch padded).

The 2D embedding is t-SNE (scikit-learn, ``init='pca'``, perplexity min(30, (n - 1) / 3); the exact gradient up to
1000 points) or PCA (numpy SVD; also the fallback when scikit-learn is not installed). Writes into ``--out``
(default RUN/latent_analysis):

  embedding.png        the embedding of all latents (interp: hue by angle, random: one colour, others: one colour
                       per scene; unrotated copies ringed)
  rotation.png         the embedding of the interp latents alone (perplexity 5, as the release), consecutive
                       angles joined: a closed loop when the latent follows the rotation smoothly
  latent_analysis.png  both panels and the figures below
  embedding.csv        one line per latent: group, scene, rotation index, angle (deg), quaternion (w x y z), the
                       joint embedding (x, y) and, for interp latents, the rotation panel's (x_rot, y_rot)
  latents.npz          latents (n, D), rotations (n, 3, 3), group, scene index
  latent_analysis.json settings, counts, the figures, the files

Figures (Euclidean distances between latents, not between embedded points; printed and in the JSON): the mean
pairwise distance between the interp copies, between consecutive interp angles, between the random copies,
between the copies of each other scene (mean over scenes) and between the unrotated scenes; ``random_vs_scenes`` =
random copies / unrotated scenes: well below 1 when a rotation moves the latent much less than a change of scene
does (the scene's copies form one cluster, as in the paper's Figure 8), about 1 or more when it moves it as far;
``query_nearest_scene``, the distance from the unrotated query to the nearest other (unrotated) scene, and
``random_within_nearest``, the share of random copies closer to the unrotated query than that scene is. The mean
is sensitive to one outlying scene: read the embedding next to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import data as data_lib
from scene3d.core import io, runs
from scene3d.core import sharding as sh
from scene3d.data import gs_pipeline, splat_io
from scene3d.geometry import gaussians as gs
from scene3d.geometry import so3
from scene3d.render import plots
from scene3d.tasks import stage1

GROUPS = ("interp", "random", "other")
METHODS = ("tsne", "pca")
AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
RANDOM_COLOUR = (90, 100, 120)
TSNE_EXACT_MAX = 1000  # up to this many points the exact t-SNE gradient (deterministic, O(n^2) per step)


# ------------------------------------------------------------------------------------------------------------
# Rotations and rows


def interpolated_rotations(num: int, axis: str = "y", max_angle_deg: float = 360.0) -> tuple[np.ndarray, np.ndarray]:
    """(rotations (num, 3, 3), angles in degrees (num,)): about the world ``axis`` ('x' | 'y' | 'z') by
    k * max_angle_deg / num, k = 0 .. num - 1 (the identity first)."""
    if axis not in AXES:
        raise ValueError(f"--axis: expected one of {sorted(AXES)}, got {axis!r}")
    angles = np.arange(num, dtype=np.float64) * (float(max_angle_deg) / num)
    rotvec = np.radians(angles)[:, None] * np.asarray(AXES[axis])
    return so3.axis_angle_to_matrix(rotvec), angles


def rotation_angles_deg(rotations) -> np.ndarray:
    """Geodesic angle (degrees, in [0, 180]) of each (n, 3, 3) rotation from the identity."""
    return np.degrees(np.linalg.norm(so3.matrix_to_axis_angle(np.asarray(rotations, np.float64)), axis=-1))


def prepare_scene(g: gs.Gaussians, cfg: gs_pipeline.GaussianConfig, name: str = "gaussians") -> gs.Gaussians:
    """The evaluation crop of a scene (``gs_pipeline.crop_and_normalise``: filtered, ``cfg.num_gaussians``
    Gaussians grown from the one nearest the mean, padded by repetition, normalised)."""
    return gs_pipeline.crop_and_normalise(g, cfg, name=name)[0]


def rotated_rows(crop: gs.Gaussians, cfg: gs_pipeline.GaussianConfig, rotation) -> np.ndarray:
    """The rows training would see for ``crop`` under ``rotation`` (3, 3) (``gs_pipeline.example_rows``)."""
    return gs_pipeline.example_rows(crop, cfg, rotation)


# ------------------------------------------------------------------------------------------------------------
# Examples: which scene under which rotation


@dataclasses.dataclass
class Examples:
    """The latents to compute, one entry per (scene, rotation): ``group`` (index into GROUPS), ``scene`` (index
    into ``names``), ``index`` (the rotation's index within its group and scene), ``rotations`` (n, 3, 3),
    ``angles`` (n,) degrees (interp: the angle about the axis; else the geodesic angle), ``crops`` per scene."""
    names: list
    crops: list
    group: np.ndarray
    scene: np.ndarray
    index: np.ndarray
    rotations: np.ndarray
    angles: np.ndarray

    def __len__(self):
        return len(self.group)

    def rows(self, i: int, cfg: gs_pipeline.GaussianConfig) -> np.ndarray:
        return rotated_rows(self.crops[self.scene[i]], cfg, self.rotations[i])


def make_examples(query: tuple[str, gs.Gaussians], others: list, cfg: gs_pipeline.GaussianConfig, *,
                  num_interp: int, num_random: int, other_rotations: int, axis: str = "y",
                  max_angle_deg: float = 360.0, seed: int = 0) -> Examples:
    """``Examples`` of the module docstring: query = (name, Gaussians), others = [(name, Gaussians), ...]. The
    random rotations come from ``numpy.random.default_rng(seed)``: the query's ``num_random`` first, then
    ``other_rotations`` per other scene in order."""
    names = [query[0]] + [n for n, _ in others]
    crops = [prepare_scene(g, cfg, name=n) for n, g in [query] + list(others)]
    rng = np.random.default_rng(seed)
    r_interp, a_interp = interpolated_rotations(num_interp, axis, max_angle_deg)
    r_random = so3.random_rotation(rng, num_random) if num_random else np.zeros((0, 3, 3))
    group, scene, index, rots, angles = [], [], [], [], []

    def add(g, s, R, a):
        group.extend([GROUPS.index(g)] * len(R))
        scene.extend([s] * len(R))
        index.extend(range(len(R)))
        rots.append(np.asarray(R, np.float64).reshape(-1, 3, 3))
        angles.append(np.asarray(a, np.float64))

    add("interp", 0, r_interp, a_interp)
    add("random", 0, r_random, rotation_angles_deg(r_random) if num_random else [])
    for s in range(1, len(names)):
        r = np.concatenate([np.eye(3)[None], so3.random_rotation(rng, other_rotations)]) if other_rotations \
            else np.eye(3)[None]
        add("other", s, r, rotation_angles_deg(r))
    return Examples(names, crops, np.asarray(group, np.int64), np.asarray(scene, np.int64),
                    np.asarray(index, np.int64), np.concatenate(rots), np.concatenate(angles))


# ------------------------------------------------------------------------------------------------------------
# Encoding


def encode_examples(adapter, model, examples: Examples, cfg: gs_pipeline.GaussianConfig,
                    batch_size: int = 32) -> np.ndarray:
    """(n, D) float32 posterior means (flattened tokens) of every example, ``batch_size`` at a time through one
    jitted encode (the last batch padded with copies of its last example)."""
    encode = nnx.jit(lambda m, r: adapter.bind(m).encode({"gaussians": r}))
    n = len(examples)
    out = []
    for start in range(0, n, batch_size):
        ids = [min(i, n - 1) for i in range(start, start + batch_size)]
        rows = np.stack([examples.rows(i, cfg) for i in ids])
        z = np.asarray(jax.device_get(encode(model, jnp.asarray(rows))), np.float32)
        out.append(z.reshape(len(ids), -1)[:min(batch_size, n - start)])
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------------------
# 2D embeddings and figures


def pca_2d(x) -> np.ndarray:
    """(n, 2) projections of the centred rows of ``x`` onto its first two principal axes (numpy SVD), each axis'
    sign fixed so that its largest loading is positive (deterministic). Fewer than two axes: zero columns."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    signs[signs == 0] = 1.0
    out = np.zeros((len(x), 2))
    out[:, :k] = u[:, :k] * s[:k] * signs
    return out


def _tsne_class():
    """scikit-learn's TSNE, or None when scikit-learn is not installed."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    return TSNE


def tsne_2d(x, *, perplexity: float, seed: int = 0):
    """(n, 2) t-SNE embedding (``init='pca'``, the exact gradient up to ``TSNE_EXACT_MAX`` points), or None when
    scikit-learn is not installed."""
    TSNE = _tsne_class()
    if TSNE is None:
        return None
    x = np.asarray(x, np.float64)
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))
    method = "exact" if len(x) <= TSNE_EXACT_MAX else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=method
                ).fit_transform(x)


def embed_2d(x, method: str = "tsne", *, perplexity: float = 30.0, seed: int = 0) -> tuple[np.ndarray, str]:
    """(xy (n, 2), the method used): t-SNE, or PCA when asked for or when t-SNE is unavailable (or n < 4)."""
    if method not in METHODS:
        raise ValueError(f"--method: expected one of {METHODS}, got {method!r}")
    if method == "tsne" and len(x) >= 4:
        xy = tsne_2d(x, perplexity=perplexity, seed=seed)
        if xy is not None:
            return np.asarray(xy, np.float64), "tsne"
    return pca_2d(x), "pca"


def _mean_pairwise(d, idx) -> float:
    idx = np.asarray(idx)
    if len(idx) < 2:
        return float("nan")
    sub = d[np.ix_(idx, idx)]
    return float(sub[~np.eye(len(idx), dtype=bool)].mean())


def distance_figures(latents, examples: Examples) -> dict:
    """The figures of the module docstring (Euclidean distances between latents)."""
    z = np.asarray(latents, np.float64)
    sq = np.sum(z * z, axis=-1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2.0 * (z @ z.T), 0.0))  # (n, n), no (n, n, D) temporary
    np.fill_diagonal(d, 0.0)
    g = examples.group
    interp = np.flatnonzero(g == GROUPS.index("interp"))
    random = np.flatnonzero(g == GROUPS.index("random"))
    other = g == GROUPS.index("other")
    unrotated = ([interp[0]] if len(interp) else []) + \
        [int(np.flatnonzero(other & (examples.scene == s))[0]) for s in range(1, len(examples.names))]
    per_scene = [_mean_pairwise(d, np.flatnonzero(other & (examples.scene == s)))
                 for s in range(1, len(examples.names))]
    per_scene = [v for v in per_scene if np.isfinite(v)]
    fig = {"interp_pairs": _mean_pairwise(d, interp),
           "interp_step": float(np.mean(d[interp[:-1], interp[1:]])) if len(interp) > 1 else float("nan"),
           "random_pairs": _mean_pairwise(d, random),
           "other_rotated_pairs": float(np.mean(per_scene)) if per_scene else float("nan"),
           "scene_pairs": _mean_pairwise(d, unrotated),
           "latent_norm": float(np.linalg.norm(z, axis=-1).mean())}
    fig["random_vs_scenes"] = fig["random_pairs"] / fig["scene_pairs"] if fig["scene_pairs"] > 0 else float("nan")
    # The query's rotated copies against its nearest other scene (unrotated), from the unrotated query latent.
    nearest = float(d[unrotated[0], unrotated[1:]].min()) if len(unrotated) > 1 and len(interp) else float("nan")
    from_query = d[unrotated[0], random] if len(interp) and len(random) else np.zeros(0)
    fig["query_nearest_scene"] = nearest
    fig["random_from_query"] = float(from_query.mean()) if len(from_query) else float("nan")
    fig["random_within_nearest"] = float((from_query < nearest).mean()) if len(from_query) and \
        np.isfinite(nearest) else float("nan")
    return fig


FIGURE_LINES = (("interp_pairs", "mean distance, interpolated copies"),
                ("interp_step", "mean distance, consecutive angles"),
                ("random_pairs", "mean distance, random-rotation copies"),
                ("other_rotated_pairs", "mean distance, copies of each other scene"),
                ("scene_pairs", "mean distance, different (unrotated) scenes"),
                ("random_vs_scenes", "random copies / different scenes"),
                ("query_nearest_scene", "query to its nearest other scene"),
                ("random_from_query", "random copies to the unrotated query"),
                ("random_within_nearest", "share of random copies nearer than that scene"),
                ("latent_norm", "mean latent norm"))


def figure_lines(fig: dict) -> list[str]:
    return [f"{label:<48s} {fig[key]:.4g}" for key, label in FIGURE_LINES]


def colours(examples: Examples) -> np.ndarray:
    """(n, 3) uint8 colours: interp round the hue wheel by index, random one colour, other scenes per scene."""
    out = np.zeros((len(examples), 3), np.uint8)
    g = examples.group
    interp = g == GROUPS.index("interp")
    ramp = plots.cyclic_ramp(int(interp.sum()))
    out[interp] = ramp[examples.index[interp]]
    out[g == GROUPS.index("random")] = RANDOM_COLOUR
    pal = plots.palette(max(1, len(examples.names) - 1))
    other = g == GROUPS.index("other")
    out[other] = pal[examples.scene[other] - 1]
    return out


def draw_panels(examples: Examples, xy, xy_rot, method: str, title: str, axis: str) -> tuple:
    """(embedding, rotation) figures as PIL images."""
    g = examples.group
    interp = np.flatnonzero(g == GROUPS.index("interp"))
    random = np.flatnonzero(g == GROUPS.index("random"))
    other = np.flatnonzero(g == GROUPS.index("other"))
    cols = colours(examples)
    first = np.zeros(len(examples), bool)
    first[examples.index == 0] = True
    first[random] = False
    radius = np.where(g == GROUPS.index("random"), 2.5, np.where(g == GROUPS.index("interp"), 4.0, 3.5))
    order = np.concatenate([random, other, interp])  # the query's ring of rotations on top
    q = examples.names[0]
    n_other = np.bincount(examples.scene[other], minlength=len(examples.names))
    legend = [(f"query {q}:", None, 0)]
    if len(random):
        legend.append((f"{len(random)} random rotations", RANDOM_COLOUR, 3))
    pal = plots.palette(max(1, len(examples.names) - 1))
    if len(examples.names) > 1:
        legend.append(("other scenes (copies):", None, 0))
    for s in range(1, len(examples.names)):
        legend.append((f"{examples.names[s]} ({n_other[s]})", pal[s - 1], 4))
    legend.append(("unrotated copies", (250, 250, 250), 4, True))
    angles = examples.angles[interp]
    ramp = (plots.cyclic_ramp(len(interp)), "0°", f"{angles[-1]:.0f}°",
            f"query: {len(interp)} rotations about {axis}\n(hue = angle)")
    name = {"tsne": "t-SNE", "pca": "PCA"}[method]
    emb = plots.scatter_plot(xy[order], cols[order], radius=radius[order], outline=first[order], legend=legend,
                             ramp_legend=ramp, title=f"{name}: {title}")
    rot = plots.scatter_plot(xy_rot, cols[interp], radius=5.0, outline=np.arange(len(interp)) == 0,
                             path=np.zeros(len(interp), np.int64), ramp_legend=ramp,
                             legend=[(f"query {q}:", None, 0), ("0° (unrotated)", (250, 250, 250), 5, True)],
                             title=f"{name}: the query rotated about {axis} ({len(interp)} angles)")
    return emb, rot


# ------------------------------------------------------------------------------------------------------------
# Inputs


def _scene_name(rec, i: int) -> str:
    s = rec.get("scene_id", f"scene {i}")
    return s.decode() if isinstance(s, bytes) else str(s)


def load_scenes(config, scene: str, split: str, num_other: int) -> tuple:
    """(query (name, Gaussians), others [(name, Gaussians)], source description) for ``--scene`` (an index into
    ``split`` of ``config.data`` or a 3DGS file) and the split's first ``num_other`` other scenes."""
    text = str(scene).strip()
    is_index = text.lstrip("-").isdigit()
    source = data_lib.get_source(config.data, split) if (is_index or num_other > 0) else None
    where = f"the {split!r} split of config.data ({config.data.get('name')!r})"
    if is_index:
        i = int(text)
        if not 0 <= i < len(source):
            raise ValueError(f"--scene {i}: {where} holds {len(source)} scenes (indices 0..{len(source) - 1})")
        rec = source[i]
        query = (_scene_name(rec, i), gs_pipeline.record_gaussians(rec))
        skip = i
    else:
        p = pathlib.Path(text)
        if p.suffix.lower() not in (".ply", ".splat"):
            raise ValueError(f"--scene {text}: expected a scene index or a 3DGS file (.ply / .splat)")
        if not p.is_file():
            raise FileNotFoundError(f"--scene {text}: no such file")
        g = splat_io.read_gaussians(p, **({"repair": True} if p.suffix.lower() == ".ply" else {}))
        query = (p.stem, g._replace(normals=None))
        skip = -1
    others = []
    if num_other > 0:
        for j in range(len(source)):
            if len(others) == num_other:
                break
            if j != skip:
                rec = source[j]
                others.append((_scene_name(rec, j), gs_pipeline.record_gaussians(rec)))
    return query, others, where


# ------------------------------------------------------------------------------------------------------------
# Outputs


def _save_png(path, img) -> None:
    def write(tmp):
        img.save(tmp, format="PNG")
    io.atomic_write(path, write)


def _save_npz(path, **arrays) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    io.atomic_write(path, write)


def embedding_csv(examples: Examples, xy, xy_rot) -> str:
    quats = so3.matrix_to_quat(examples.rotations)
    interp = np.flatnonzero(examples.group == GROUPS.index("interp"))
    rot_at = {int(i): k for k, i in enumerate(interp)}
    lines = ["group,scene,rotation_index,angle_deg,qw,qx,qy,qz,x,y,x_rot,y_rot"]
    for i in range(len(examples)):
        k = rot_at.get(i)
        extra = f"{xy_rot[k, 0]:.6g},{xy_rot[k, 1]:.6g}" if k is not None and xy_rot is not None else ","
        name = examples.names[examples.scene[i]].replace(",", "_")
        lines.append(f"{GROUPS[examples.group[i]]},{name},{examples.index[i]},{examples.angles[i]:.6g},"
                     + ",".join(f"{v:.9g}" for v in quats[i]) + f",{xy[i, 0]:.6g},{xy[i, 1]:.6g},{extra}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.tools.latent_analysis", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="Can3Tok (autoencode) run directory (config.json + checkpoints/)")
    p.add_argument("--out", default=None, help="output folder (default: WORKDIR/latent_analysis)")
    p.add_argument("--scene", default="0", help="query scene: index into --split, or a .ply / .splat file")
    p.add_argument("--split", default="eval", choices=("train", "eval"), help="data split of the run's config")
    p.add_argument("--num_interp", type=int, default=36, help="rotations about --axis (evenly spaced angles)")
    p.add_argument("--axis", default="y", choices=sorted(AXES), help="axis of the interpolated rotations")
    p.add_argument("--max_angle", type=float, default=360.0, help="angles k * max_angle / num_interp (degrees)")
    p.add_argument("--num_random", type=int, default=200, help="Haar-random rotations of the query scene")
    p.add_argument("--num_other", type=int, default=8, help="other scenes of the split")
    p.add_argument("--other_rotations", type=int, default=4, help="random rotations per other scene (+ unrotated)")
    p.add_argument("--method", default="tsne", choices=METHODS, help="2D embedding (pca without scikit-learn)")
    p.add_argument("--seed", type=int, default=0, help="random rotations and t-SNE")
    p.add_argument("--batch_size", type=int, default=32, help="examples per encoder call")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no_ema", action="store_true", help="use the raw parameters even if the run kept an EMA")
    args = p.parse_args(argv)
    for name in ("num_random", "num_other", "other_rotations"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.num_interp < 1 or args.batch_size < 1:
        p.error(f"--num_interp and --batch_size must be >= 1, got {args.num_interp} and {args.batch_size}")
    if not math.isfinite(args.max_angle):
        p.error(f"--max_angle must be finite, got {args.max_angle}")
    return args


def run(args: argparse.Namespace) -> dict:
    """The analysis of the module docstring; returns the record written to latent_analysis.json (plus the arrays
    under '_arrays', not written)."""
    config = runs.read_config(args.workdir)
    if config.task != "autoencode":
        raise ValueError(f"{args.workdir}: a {config.task!r} run; latent_analysis needs a Can3Tok (autoencode) run")
    cfg = gs_pipeline.GaussianConfig.from_config(config.data.get("gaussians"))
    query, others, where = load_scenes(config, args.scene, args.split, args.num_other)  # input errors first
    config, task, model, info = stage1.load_run(args.workdir, step=args.step, prefer_ema=not args.no_ema)
    examples = make_examples(query, others, cfg, num_interp=args.num_interp, num_random=args.num_random,
                             other_rotations=args.other_rotations, axis=args.axis, max_angle_deg=args.max_angle,
                             seed=args.seed)
    adapter = stage1.tokenizer(config, model)
    with sh.use_mesh(info["mesh"], info["rules"]):
        latents = encode_examples(adapter, model, examples, cfg, args.batch_size)
    token_shape = list(adapter.bind(model).token_shape)
    xy, method = embed_2d(latents, args.method, perplexity=30.0, seed=args.seed)
    interp = np.flatnonzero(examples.group == GROUPS.index("interp"))
    xy_rot, _ = embed_2d(latents[interp], method, perplexity=5.0, seed=args.seed)
    note = None
    if method != args.method:
        note = "t-SNE needs scikit-learn, not installed" if _tsne_class() is None else "t-SNE needs >= 4 latents"
    fig = distance_figures(latents, examples)
    counts = {g: int((examples.group == k).sum()) for k, g in enumerate(GROUPS)}
    title = f"{len(examples)} Can3Tok latents, step {info['step']}"
    emb, rot = draw_panels(examples, xy, xy_rot, method, title, args.axis)
    footer = [f"run {os.path.abspath(args.workdir)} | step {info['step']} ({info['key']}) | latent "
              f"{'x'.join(map(str, token_shape))} posterior mean | {method}",
              f"query {examples.names[0]} | {counts['interp']} interpolated + {counts['random']} random rotations | "
              f"{len(examples.names) - 1} other scenes x {args.other_rotations + 1} ({where})"] + figure_lines(fig)
    sheet = plots.compose([emb, rot], title="Can3Tok latent analysis (paper Figs. 7-8)", footer=footer)

    out = args.out or os.path.join(args.workdir, "latent_analysis")
    os.makedirs(out, exist_ok=True)
    files = {"embedding": "embedding.png", "rotation": "rotation.png", "sheet": "latent_analysis.png",
             "csv": "embedding.csv", "latents": "latents.npz", "summary": "latent_analysis.json"}
    record = {"workdir": os.path.abspath(args.workdir), "step": info["step"], "variables": info["key"],
              "query": examples.names[0], "others": examples.names[1:], "scene_source": where,
              "method": method, "requested_method": args.method, "method_note": note, "token_shape": token_shape,
              "latent_dim": int(latents.shape[1]), "counts": counts, "axis": args.axis,
              "interp_angles_deg": examples.angles[interp].tolist(), "seed": args.seed,
              "figures": fig, "files": files}
    _save_png(os.path.join(out, files["embedding"]), emb)
    _save_png(os.path.join(out, files["rotation"]), rot)
    _save_png(os.path.join(out, files["sheet"]), sheet)
    io.write_text(os.path.join(out, files["csv"]), embedding_csv(examples, xy, xy_rot))
    _save_npz(os.path.join(out, files["latents"]), latents=latents, rotations=examples.rotations.astype(np.float32),
              group=examples.group, scene=examples.scene, index=examples.index, angles=examples.angles,
              xy=xy, names=np.asarray(examples.names))
    io.write_json(os.path.join(out, files["summary"]), _finite(record), indent=1)
    record["out"] = os.path.abspath(out)
    record["_arrays"] = {"latents": latents, "xy": xy, "xy_rot": xy_rot, "examples": examples}
    return record


def _finite(x):
    """NaN / inf -> None, so the JSON is standard."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        record = run(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"scene3d.tools.latent_analysis: {e}") from e
    c = record["counts"]
    print(f"autoencode run {record['workdir']} | step {record['step']} ({record['variables']}) | query "
          f"{record['query']} | {c['interp']} interpolated + {c['random']} random rotations + {c['other']} latents "
          f"of {len(record['others'])} other scenes | {record['method']}"
          + (f" ({record['method_note']})" if record.get("method_note") else ""))
    for line in figure_lines(record["figures"]):
        print("  " + line)
    print(f"  -> {record['out']}")
    print(json.dumps(record["files"]), file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
