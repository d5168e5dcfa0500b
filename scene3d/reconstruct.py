"""Reconstruct a user's scene with a stage-1 run: input -> tokens -> decoded outputs, renders and metrics.

    python -m scene3d.reconstruct --workdir=STAGE1_RUN --input=PATH --out=DIR [--step=N] [--no_ema] [--seed=0]
        [--context=I,J,..] [--max_views=32] [--trajectory=FILE | --frames=24 --arc_deg=60 --focus=D] [--scene=K]

The run (its ``config.json`` and checkpoint ``--step``, EMA unless ``--no_ema``) is used through its Tokenizer
adapter (``scene3d.models.tokenizers``): ``encode`` gives the tokens, ``decode`` the outputs. Inputs by family:

Can3Tok (``autoencode`` runs): a 3DGS file (``.ply``, ``.splat``, ``.spz``, ``.sog``) or a built-in scene (``.npz``,
or a built-in dataset folder with ``--scene``: its Gaussians). The run's evaluation data path prepares it
(``gs_pipeline.process_gaussians``: the crop of ``data.gaussians.num_gaussians`` Gaussians a held-out scene gets,
normalised into the unit ball, canonical row order). Writes:

  tokens.npz          tokens (T, E) (posterior mean) and the crop's frame (center, scale)
  input.ply           the crop, recon.ply the decoded Gaussians (world frame, INRIA layout; ``--format=splat|spz|
                      compressed_ply`` writes input.spz / recon.spz etc. instead)
  side_by_side.png    [input | reconstruction] splat renders from ``render.num_cameras`` orbit cameras
  orbit.gif           with ``--frames`` > 0: [input | reconstruction] along an orbit of that many frames
  metrics.json        per-scene L2 (the paper's definition: Frobenius norm of the raw-channel error), failure
                      (l2 > ``metrics.failure_threshold``), MSE overall and per channel group

SceneTok / 3DRAE (``scenetok`` / ``rae3d`` runs): a capture folder (transforms.json, LLFF, COLMAP, RealEstate10K
clip; ``scene3d.data.captures``) or a built-in scene (``.npz`` / dataset folder with ``--scene``). Views are
shaped as in training (``data.views``: resolution, poses relative to the first context view, scale from the context
cameras); the context views are ``--context`` or ``num_context`` frames spread evenly over the capture's middle
``window[1]`` frames (the widest span seen in training). Writes:

  tokens.npz          tokens (K, d), the context frames, their cameras and the frame (ref_c2w, scale)
  views.png           per input camera the input above its render, with the frame index and PSNR ('ctx': a
                      context view; at most ``--max_views`` cameras, evenly spaced, the context included);
                      renders/frame_<i>.png the renders alone
  trajectory.gif      a new trajectory rendered from the tokens alone (+ trajectory.png, a strip of at most 12
                      frames, enlarged to >= 96 px): the cameras of
                      ``--trajectory`` (.npy / .npz 'c2w' (N, 4, 4) OpenCV camera-to-world in the input's world
                      frame, or a RealEstate10K pose .txt) with context view 0's intrinsics, else an arc of
                      ``--arc_deg`` degrees around the point ``--focus`` in front of context view 0 (default: the
                      median decoded depth of that view where the decoder predicts depth, else
                      ``render.orbit.focus_depth``, else 1)
  points.ply          3DRAE with a point head: the decoded point maps of the input views, predicted colours
  metrics.json        PSNR / SSIM of every rendered input view (images in [0, 1]), means over the context and
                      over the other (novel) views

SceneTok's decoder is a rectified flow: renders are samples (``--seed``), ``data.views.num_target`` views per call.
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
from PIL import Image

from scene3d.core import compile_cache, io, runs
from scene3d.core import sharding as sh
from scene3d.data import builtin, captures, gs_pipeline, multiview, splat_io
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import conventions
from scene3d.geometry import gaussians as gs
from scene3d.geometry import trajectories
from scene3d.metrics import gaussians as gmetrics
from scene3d.metrics import image as image_metrics
from scene3d.models import tokenizers
from scene3d.render import plots, ply, splat, video
from scene3d.tasks import autoencode, stage1

GAUSSIAN_FAMILIES = ("autoencode",)
VIEW_FAMILIES = ("scenetok", "rae3d")
GAUSSIAN_SUFFIXES = splat_io.GAUSSIAN_SUFFIXES  # and a SOG meta.json (splat_io.is_gaussian_file)


# ------------------------------------------------------------------------------------------------------------
# Inputs


def input_kind(path) -> str:
    """'gaussians' (a 3DGS file), 'builtin' (a built-in scene: Gaussians and views) or 'views' (a capture) for
    an input path, from its name alone."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    if p.is_file() and splat_io.is_gaussian_file(p):
        return "gaussians"
    if p.suffix.lower() == ".npz" or (p.is_dir() and (p / "index.json").is_file()):
        return "builtin"
    if p.is_dir() or p.suffix == ".json":
        return "views"
    raise ValueError(f"--input {path}: expected a 3DGS file (.ply / .splat / .spz / .sog), a built-in scene "
                     "(.npz or dataset folder) or a capture folder (transforms.json, LLFF, COLMAP, RealEstate10K clip)")


def read_input(path, *, scene: int = 0) -> dict:
    """{'kind': ``input_kind``, 'gaussians': Gaussians (3DGS file / built-in scene), 'record': scene record
    (capture / built-in scene), 'name'} of an input path (module docstring)."""
    p, kind = pathlib.Path(path), input_kind(path)
    if kind == "gaussians":
        return {"kind": kind, "gaussians": splat_io.read_gaussians(p, repair=True),
                "name": p.parent.name if p.suffix.lower() == ".json" else p.stem}  # SOG meta.json: its folder
    if kind == "views":
        capture = captures.read_capture(p)
        return {"kind": kind, "record": capture.scene_record(), "name": capture.scene_id}
    if p.is_dir():  # a built-in dataset folder
        files = sorted(p.glob("scene_*.npz"))
        if not 0 <= scene < len(files):
            raise ValueError(f"--scene {scene}: {p} holds {len(files)} built-in scenes")
        p = files[scene]
    s = builtin.load_scene(p)
    record = {"scene_id": p.stem, **{k: s[k] for k in ("images", "c2w", "intrinsics", "depth", "mask", "points")}}
    return {"kind": kind, "gaussians": gs.unpack(np.asarray(s["gaussians"], np.float64)), "record": record,
            "name": p.stem}


def default_context(num_frames: int, num_context: int, window: int) -> np.ndarray:
    """``num_context`` frames spread evenly over the middle ``window + 1`` frames (all frames when fewer)."""
    span = min(int(window), num_frames - 1)
    start = (num_frames - 1 - span) // 2
    return np.unique(np.round(np.linspace(start, start + span, num_context)).astype(np.int64))


def view_frames(num_frames: int, context, max_views: int) -> np.ndarray:
    """The input frames rendered: all of them, or ``max_views`` evenly spaced ones plus the context frames."""
    if num_frames <= max_views:
        return np.arange(num_frames)
    picked = np.round(np.linspace(0, num_frames - 1, max_views)).astype(np.int64)
    return np.union1d(picked, np.asarray(context, np.int64))


# ------------------------------------------------------------------------------------------------------------
# Can3Tok: 3DGS file -> tokens -> Gaussians


def reconstruct_gaussians(task, adapter, model, config, g: gs.Gaussians, out: str, *, seed: int = 0, fmt: str = "ply",
                          frames: int = 24, name: str = "scene") -> dict:
    """The Can3Tok outputs of the module docstring for scene ``g``; returns the metrics record."""
    gcfg = gs_pipeline.GaussianConfig.from_config(config.data.get("gaussians"))
    ex = gs_pipeline.process_gaussians(g, gcfg, np.random.default_rng(seed), training=False, name=name)
    rows = ex["gaussians"][None].astype(np.float32)
    run = nnx.jit(lambda m, r: _can3tok_round_trip(adapter.bind(m), r))
    tokens, rec = (np.asarray(jax.device_get(a), np.float32) for a in run(model, jnp.asarray(rows)))
    target = task.target(rows)
    d = rec.astype(np.float64) - target.astype(np.float64)
    l2 = float(np.asarray(gmetrics.per_scene_l2(rec, target))[0])
    threshold = float((config.get("metrics") or {}).get("failure_threshold", gmetrics.DEFAULT_FAILURE_THRESHOLD))
    metrics = {"l2": l2, "failure": float(l2 > threshold), "failure_threshold": threshold,
               "mse": float(np.mean(d ** 2)),
               **{f"mse_{k}": float(np.mean(d[..., sl] ** 2)) for k, sl in task.groups.items()}}
    frame = {"center": ex["center"], "scale": ex["scale"]}
    np.savez(os.path.join(out, "tokens.npz"), tokens=tokens[0], **frame)
    suffix = splat_io.output_suffix(fmt)
    files = {"tokens": "tokens.npz", "input": "input" + suffix, "recon": "recon" + suffix,
             "side_by_side": "side_by_side.png"}
    for key, raw in (("input", target[0]), ("recon", rec[0])):
        comments = {"comments": [f"scene3d reconstruct {key}", f"input {name}"]} if fmt.endswith("ply") else {}
        splat_io.write_gaussians(os.path.join(out, files[key]), autoencode.to_world(raw, **frame), format=fmt,
                                 **comments)
    rc = config.get("render") or {}
    view = dict(distance=float(rc.get("distance", 2.6)), elevation_deg=float(rc.get("elevation_deg", 35.0)),
                fov_deg=float(rc.get("fov_deg", 45.0)))
    size = int(rc.get("size", 128))
    g_in, g_rec = gs.unpack(target[0]), gs.unpack(rec[0])
    cams = trajectories.orbit_cameras(int(rc.get("num_cameras", 3)), size, **view)
    Image.fromarray(splat.render_side_by_side(g_in, g_rec, cams)).save(os.path.join(out, files["side_by_side"]))
    if frames > 0:
        orbit = trajectories.orbit_cameras(frames, size, **view)
        pair = [video.render_trajectory(x, orbit) for x in (g_in, g_rec)]
        gap = np.full(pair[0].shape[:2] + (4, 3), 255, np.uint8)
        video.write_gif(os.path.join(out, "orbit.gif"), np.concatenate([pair[0], gap, pair[1]], axis=2), fps=8)
        files["orbit"] = "orbit.gif"
    return {"metrics": metrics, "files": files, "num_gaussians": int(rows.shape[1])}


def _can3tok_round_trip(tok, rows):
    tokens = tok.encode({"gaussians": rows})
    return tokens, tok.decode(tokens)["gaussians"]


# ------------------------------------------------------------------------------------------------------------
# SceneTok / 3DRAE: posed views -> tokens -> views


def _views_config(config, num_context: int, num_target: int) -> multiview.ViewConfig:
    vc = multiview.ViewConfig.from_config(config.data.get("views"))
    return dataclasses.replace(vc, num_context=num_context, num_target=num_target, relative_poses=True,
                               image_dtype="float32")


def reconstruct_views(config, adapter, model, record: dict, out: str, *, context=None, max_views: int = 32,
                      trajectory=None, frames: int = 24, arc_deg: float = 60.0, focus: float | None = None,
                      seed: int = 0) -> dict:
    """The SceneTok / 3DRAE outputs of the module docstring for a scene record; returns the metrics record."""
    n = multiview.num_frames(record)
    base = multiview.ViewConfig.from_config(config.data.get("views"))
    if context is None:
        context = default_context(n, base.num_context, base.window[1])
    context = np.asarray(sorted(set(int(i) for i in context)), np.int64)
    if not len(context) or context.min() < 0 or context.max() >= n:
        raise ValueError(f"--context {context.tolist()}: frame indices must lie in 0..{n - 1} (the input has {n})")
    targets = view_frames(n, context, max_views)
    ex = multiview.make_views(record, context, targets, _views_config(config, len(context), len(targets)))
    ctx, tgt = ex["context"], ex["target"]
    size = tuple(int(v) for v in tgt["images"].shape[1:3])
    key = jax.random.key(int(seed))
    encode = nnx.jit(lambda m, i, c, k: adapter.bind(m).encode({"images": i, "c2w": c, "intrinsics": k}))
    decode = nnx.jit(lambda m, t, c, k, r: adapter.bind(m).decode(t, tokenizers.Cameras(c, k, size), r))
    tokens = encode(model, *(jnp.asarray(ctx[k][None]) for k in ("images", "c2w", "intrinsics")))
    dec = jax.tree.map(lambda a: np.asarray(jax.device_get(a))[0], decode(
        model, tokens, jnp.asarray(tgt["c2w"][None]), jnp.asarray(tgt["intrinsics"][None]), key))
    pred, gt = np.clip((dec["images"] + 1) / 2, 0, 1), (tgt["images"] + 1) / 2
    psnr = np.asarray(image_metrics.psnr(pred, gt), np.float64)
    ssim = np.asarray(image_metrics.ssim(pred, gt), np.float64)
    is_ctx = np.isin(targets, context)
    views = [{"frame": int(f), "context": bool(c), "psnr": float(p), "ssim": float(s)}
             for f, c, p, s in zip(targets, is_ctx, psnr, ssim)]
    metrics = {}
    for part, sel in (("context", is_ctx), ("novel", ~is_ctx)):
        if sel.any():
            metrics.update({f"psnr_{part}": float(psnr[sel].mean()), f"ssim_{part}": float(ssim[sel].mean())})
    files = {"tokens": "tokens.npz", "views": "views.png", "renders": "renders", "trajectory": "trajectory.gif"}
    np.savez(os.path.join(out, "tokens.npz"), tokens=np.asarray(tokens)[0], context=context,
             context_c2w=ctx["c2w"], context_intrinsics=ctx["intrinsics"], ref_c2w=ex["ref_c2w"], scale=ex["scale"])
    u8 = plots.signed_to_uint8
    pairs = [plots.view_rows([[u8(tgt["images"][i:i + 1])], [u8(dec["images"][i:i + 1])]]) for i in range(len(views))]
    labels = [f"{v['frame']}{' ctx' if v['context'] else ''} {v['psnr']:.1f} dB" for v in views]
    plots.contact_sheet(pairs, labels, cell=max(200, 2 * size[0] + 2)).save(os.path.join(out, files["views"]))
    os.makedirs(os.path.join(out, files["renders"]), exist_ok=True)
    for v, im in zip(views, u8(dec["images"])):
        Image.fromarray(im).save(os.path.join(out, files["renders"], f"frame_{v['frame']:04d}.png"))
    # The new trajectory, in context view 0's (scaled) frame.
    if trajectory is not None:
        traj = cam_lib.scale_poses(np.linalg.inv(np.asarray(ex["ref_c2w"], np.float64)) @ trajectory,
                                   np.float64(ex["scale"]))
        traj_info = {"source": "file", "frames": len(traj)}
    else:
        if focus is None:
            if "depth" in dec:
                focus = float(np.median(dec["depth"][int(np.flatnonzero(targets == context[0])[0])]))
            else:
                focus = float(((config.get("render") or {}).get("orbit") or {}).get("focus_depth", 1.0))
        focus = float(np.clip(focus, 1e-3, 1e3))
        traj = trajectories.focus_orbit(int(frames), focus, arc_deg=float(arc_deg), centred=True)
        traj_info = {"source": "arc", "frames": int(frames), "arc_deg": float(arc_deg), "focus": focus}
    intr = np.broadcast_to(ctx["intrinsics"][0], (len(traj), 4)).astype(np.float32)
    frames_out = np.asarray(jax.device_get(decode(model, tokens, jnp.asarray(traj[None], jnp.float32),
                                                  jnp.asarray(intr[None]), jax.random.fold_in(key, 1))["images"]))[0]
    video.write_gif(os.path.join(out, files["trajectory"]), u8(frames_out), fps=8)
    step = max(1, math.ceil(len(frames_out) / 12))
    strip = plots.view_rows([[u8(frames_out[::step])]])
    zoom = max(1, math.ceil(96 / size[0]))  # small renders: nearest-neighbour enlarged to be seen
    Image.fromarray(strip.repeat(zoom, 0).repeat(zoom, 1)).save(os.path.join(out, "trajectory.png"))
    files["trajectory_strip"] = "trajectory.png"
    if "point_maps" in dec:
        pts, rgb = dec["point_maps"].reshape(-1, 3), pred.reshape(-1, 3)
        keep = np.isfinite(pts).all(-1)
        if "confidence" in dec:
            conf = dec["confidence"].reshape(-1)
            keep &= conf >= np.quantile(conf, 1.0 - float((config.get("render") or {}).get("ply_keep", 0.8)))
        ply.write_point_ply(os.path.join(out, "points.ply"), pts[keep], rgb[keep])
        files["points"] = "points.ply"
    return {"metrics": metrics, "views": views, "context": context.tolist(), "resolution": list(size),
            "trajectory": traj_info, "files": files}


# ------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.reconstruct", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="stage-1 run directory (config.json + checkpoints/)")
    p.add_argument("--input", required=True, help="3DGS file, built-in scene (.npz / dataset folder) or capture")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--no_ema", action="store_true", help="use the raw parameters even if the run kept an EMA")
    p.add_argument("--seed", type=int, default=0, help="decoder randomness (SceneTok) and Gaussian crops")
    p.add_argument("--scene", type=int, default=0, help="scene index in a built-in dataset folder")
    p.add_argument("--context", default=None, help="context frame indices, comma-separated (views families)")
    p.add_argument("--max_views", type=int, default=32, help="input cameras rendered at most")
    p.add_argument("--trajectory", default=None, help=".npy / .npz ('c2w') or RealEstate10K .txt camera poses")
    p.add_argument("--format", choices=splat_io.FORMATS, default="ply",
                   help="Can3Tok: file format of input / recon Gaussians (ply, splat, spz: Niantic SPZ v3, "
                        "compressed_ply: PlayCanvas)")
    p.add_argument("--frames", type=int, default=24, help="frames of the default arc / Can3Tok orbit (0: none)")
    p.add_argument("--arc_deg", type=float, default=60.0, help="the default arc's angle")
    p.add_argument("--focus", type=float, default=None, help="distance of the arc's centre from context view 0")
    args = p.parse_args(argv)
    if args.max_views < 1 or args.frames < 0:
        p.error(f"--max_views must be >= 1 and --frames >= 0, got {args.max_views} and {args.frames}")
    if args.context is not None:
        try:
            args.context = [int(v) for v in args.context.split(",") if v.strip()]
        except ValueError:
            p.error(f"--context: expected comma-separated frame indices, got {args.context!r}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Reconstruct ``args.input`` with the run in ``args.workdir`` into ``args.out``; returns the record."""
    family = runs.read_config(args.workdir).task
    if family not in GAUSSIAN_FAMILIES + VIEW_FAMILIES:
        raise ValueError(f"{args.workdir}: a {family!r} run; reconstruct needs a stage-1 run (task "
                         f"{' | '.join(GAUSSIAN_FAMILIES + VIEW_FAMILIES)}); stage-2 runs sample with scene3d.sample")
    kind = input_kind(args.input)
    if family in GAUSSIAN_FAMILIES and kind == "views":
        raise ValueError(f"--input {args.input}: a Can3Tok run reconstructs 3DGS scenes (.ply / .splat / .spz / .sog / "
                         "built-in .npz), not posed images")
    if family in VIEW_FAMILIES and kind == "gaussians":
        raise ValueError(f"--input {args.input}: a {family} run reconstructs posed views (a capture folder or a "
                         "built-in scene), not a 3DGS file")
    data = read_input(args.input, scene=args.scene)
    trajectory = (conventions.read_camera_file(args.trajectory, require_intrinsics=False)[0].astype(np.float64)
                  if args.trajectory else None)
    config, task, model, info = stage1.load_run(args.workdir, step=args.step, prefer_ema=not args.no_ema)
    adapter = stage1.tokenizer(config, model)
    os.makedirs(args.out, exist_ok=True)
    with sh.use_mesh(info["mesh"], info["rules"]):
        if family in GAUSSIAN_FAMILIES:
            result = reconstruct_gaussians(task, adapter, model, config, data["gaussians"], args.out,
                                           seed=args.seed, frames=args.frames, name=data["name"], fmt=args.format)
        else:
            result = reconstruct_views(config, adapter, model, data["record"], args.out, context=args.context,
                                       max_views=args.max_views, trajectory=trajectory, frames=args.frames,
                                       arc_deg=args.arc_deg, focus=args.focus, seed=args.seed)
    record = {"workdir": os.path.abspath(args.workdir), "task": family, "step": info["step"],
              "variables": info["key"], "input": os.path.abspath(args.input), "seed": args.seed, **result}
    io.write_json(os.path.join(args.out, "metrics.json"), record, indent=1)
    return record


def main(argv=None) -> dict:
    args = parse_args(argv)
    compile_cache.enable_for_run(args.workdir)  # before anything compiles: a second call loads the programs
    try:
        record = run(args)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"scene3d.reconstruct: {e}") from e
    m = record["metrics"]
    print(f"{record['task']} run {record['workdir']} | step {record['step']} ({record['variables']}) | "
          f"{record['input']} -> {os.path.abspath(args.out)}")
    print("  " + " | ".join(f"{k} {v:.4g}" for k, v in m.items()))
    print(json.dumps(record["files"]), file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
