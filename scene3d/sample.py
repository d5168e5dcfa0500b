"""Sample from a stage-2 run: ``python -m scene3d.sample --workdir=RUN [--step=N] [--num=4] [--out=DIR]``.

Loads the run's ``config.json`` and the model variables of its checkpoint (EMA when kept; the frozen stage-1
tokenizer is part of the stage-2 state, so the stage-1 run is read for its config.json only), samples ``num``
scenes (noise drawn with ``--seed``; ``--steps``, ``--sampler``, ``--cfg_scale`` override the run's flow settings)
and decodes them through the tokenizer. What it writes depends on the run's task:

Can3Tok latent diffusion (task ``generate`` with a tokenizer; ``--cond`` per ``config.cond.kind``: label -> a
colour name or index, text -> a caption, image -> an image path; one for all samples or ``|``-separated)::

    python -m scene3d.sample --workdir=LDM_RUN --num=4 --cond="a bright scene, mostly white" [--gif] [--size=128]

  sample_{i}.ply        the Gaussians (INRIA binary PLY, float32), in the normalised frame of the training crops;
                        ``--format=splat|spz|compressed_ply``: sample_{i}.splat / .spz / .compressed.ply instead
  sample_{i}.png        a render from the first of ``--views`` orbit cameras (``--renderer=splat``: the JAX
                        rasteriser; ``points``: the numpy splat preview)
  sample_{i}_orbit.gif  with ``--gif``: all orbit views as an animation

Image to 3DGS (task ``image_to_gs``): the decoded prediction for each ``--cond`` image (``|``-separated; ``--num``
is their count), written as above (``sample_{i}.ply``, ``sample_{i}.png``, ``samples.png``) with ``inputs.png``
(the images as the run sees them: centre-cropped and resized to its ``cond.image_size``)::

    python -m scene3d.sample --workdir=IMG2GS_RUN --cond=view.png --out=DIR

SceneGen (task ``scenegen``): scene tokens generated from 1..``data.views.num_context`` conditioning views
(``cond.layout='release'``: 1..``cond.max_views``) (``--image``, repeated; centre-cropped and resized to the run's resolution; the first one is the reference frame)
with the context cameras as anchors (``--anchors=FILE``, else the first at the identity and the others on an arc
of ``--arc`` degrees around the point ``--focus`` in front of it, horizontal field of view ``--fov``), rendered by
the frozen SceneTok along ``--trajectory=FILE`` (else the run's ``render.orbit``)::

    python -m scene3d.sample --workdir=SCENEGEN_RUN --image=view.png [--image=view2.png] [--trajectory=cams.npz]

3DDiT (task ``dit3d``): ``--mode`` uncond | one_view | views | trajectory | views_trajectory (default: views /
one_view with ``--image``, uncond without; ``trajectory`` modes condition on the ``--trajectory`` cameras, else on
an arc of ``render.trajectory_frames`` cameras), decoded by the frozen 3DRAE along the trajectory (size: the run's
``data.views.resolution`` or ``--size``)::

    python -m scene3d.sample --workdir=DIT3D_RUN --image=view.png --mode=one_view --num=2

  sample_{i}.gif / sample_{i}.png / sample_{i}_frames.png   the rendered trajectory, its first frame, all frames
  sample_{i}_points.ply                                       (3DDiT with a point head) decoded point maps, colours
  tokens.npz            the sampled tokens (num, K, d) and the cameras (in the frame of the first view)

Camera files (``--anchors``, ``--trajectory``): ``.npz`` / ``.json`` with ``c2w`` (N, 4, 4) OpenCV and
``intrinsics`` (N, 4) normalised (fx/W, fy/H, cx/W, cy/H), a RealEstate10K pose file (``.txt``) or a NeRF
``transforms.json``. Poses are re-expressed in the frame of the first anchor (with an anchors file) or of the
trajectory's first camera; their scale is used as given (the runs were trained on ``data.views.scale_mode``).
Every run also writes ``samples.png`` (first frames side by side) and ``samples.json`` (arguments, step, files).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from scene3d.core import compile_cache
from scene3d.core import sharding as sh
from scene3d.data import splat_io
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import conventions
from scene3d.geometry import gaussians as gs
from scene3d.geometry import trajectories
from scene3d.render import plots
from scene3d.tasks import stage1

FAMILIES = ("latent", "img2gs", "scenegen", "dit3d")


def family(task) -> str | None:
    """Which sampler of this module a task's runs use: 'latent' (Can3Tok latent diffusion), 'scenegen', 'dit3d',
    or None (the task cannot sample)."""
    from scene3d.tasks import dit3d, generate, image_to_gs, scenegen
    for cls, name in ((generate.LatentFlowTask, "latent"), (image_to_gs.ImageToGSTask, "img2gs"),
                      (scenegen.SceneGenTask, "scenegen"), (dit3d.DiT3DTask, "dit3d")):
        if isinstance(task, cls):
            return name
    return None


def load_model(workdir: str, *, step: int | None = None, mesh=None, prefer_ema: bool = True):
    """(task, model, info) of a stage-2 run: the config from ``workdir/config.json``, the variables of checkpoint
    ``step`` (default: latest; EMA if kept) restored straight into their shardings on ``mesh`` (default: all
    devices along fsdp); info: step, key (ema|params), workdir, mesh, rules."""
    config, task, model, info = stage1.load_run(workdir, step=step, mesh=mesh, prefer_ema=prefer_ema)
    if family(task) is None:
        raise ValueError(f"{workdir}: task {config.task!r} cannot sample (scene3d.sample samples latent-diffusion "
                         "runs on a tokenizer, image_to_gs, scenegen and dit3d runs)")
    return task, model, info


def render_views(g: gs.Gaussians, cams: cam_lib.Cameras, renderer: str = "splat", background=1.0) -> np.ndarray:
    """uint8 frames (views, H, W, 3) of ``g`` from ``cams``."""
    if renderer == "splat":
        from scene3d.render import video
        return video.render_trajectory(g, cams, background=background)
    if renderer == "points":
        from scene3d.render.points import render_gaussians
        frames = [render_gaussians(g, cams.c2w[i], cams.intrinsics[i], cams.height, cams.width,
                                   background=background).image for i in range(len(cams))]
        return np.stack([plots.to_uint8(f) for f in frames])
    raise ValueError(f"--renderer: expected 'splat' or 'points', got {renderer!r}")


# ============================================================================================ Can3Tok-LDM

_SAMPLERS: dict = {}


def _sampler(task, num, num_steps, method, cfg_scale):
    """The jitted sampler for these static settings (cached: repeated calls, e.g. other seeds, reuse it)."""
    key = (id(task), num, num_steps, method, cfg_scale)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = nnx.jit(lambda m, r, c: task.sample(m, r, num=num, cond_inputs=c, num_steps=num_steps,
                                                             method=method, cfg_scale=cfg_scale))
    return _SAMPLERS[key]


def generate(task, model, *, num: int, cond: list, seed: int = 0, cfg_scale: float | None = None,
             num_steps: int | None = None, method: str | None = None, mesh=None, rules=None) -> np.ndarray:
    """``num`` scenes as raw Gaussians (num, N, C) float32 for the user conditions ``cond`` (one per sample, see
    the task's ``cond_inputs``), from noise drawn with ``seed``."""
    cond_inputs = {k: jnp.asarray(v) for k, v in task.cond_inputs(cond).items()}
    with sh.use_mesh(mesh, rules):
        rows = _sampler(task, num, num_steps, method, cfg_scale)(model, jax.random.key(seed), cond_inputs)
    return np.asarray(jax.device_get(rows), np.float32)


def write_samples(out: str, rows: np.ndarray, *, size: int = 128, views: int = 8, gif: bool = False,
                  renderer: str = "splat", comments=(), radius: float = 1.0, fmt: str = "ply") -> dict:
    """Write Gaussian (``fmt``: one of ``splat_io.FORMATS``) + PNG (+ GIF) files of scenes ``rows`` (num, N, C) into
    ``out``; returns {name: [paths]} (the Gaussian files under 'ply' whatever their format). The orbit cameras frame
    the ball of ``radius`` (the run's ``data.gaussians.radius``: scenes normalised into it)."""
    from scene3d.render import video
    os.makedirs(out, exist_ok=True)
    cams = trajectories.orbit_cameras(max(1, views), size, distance=2.6 * float(radius))
    files = {"ply": [], "png": [], "gif": []}
    firsts = []
    for i, raw in enumerate(rows):
        g = gs.unpack(np.asarray(raw, np.float32))
        if not all(np.isfinite(np.asarray(a)).all() for a in g if a is not None):
            raise ValueError(f"sample {i}: the decoded Gaussians are not finite")
        ply = os.path.join(out, f"sample_{i}{splat_io.output_suffix(fmt)}")
        splat_io.write_gaussians(ply, g, format=fmt, **({"comments": [f"scene3d sample {i}", *comments]}
                                                        if fmt.endswith("ply") else {}))
        files["ply"].append(ply)
        frames = render_views(g, cams if gif else cams[0], renderer)
        png = os.path.join(out, f"sample_{i}.png")
        Image.fromarray(frames[0]).save(png)
        files["png"].append(png)
        firsts.append(frames[0])
        if gif:
            path = os.path.join(out, f"sample_{i}_orbit.gif")
            video.write_gif(path, frames, fps=8)
            files["gif"].append(path)
    files["grid"] = [_contact_sheet(out, firsts)]
    return files


def _contact_sheet(out: str, firsts) -> str:
    grid = os.path.join(out, "samples.png")
    plots.contact_sheet(firsts, labels=[f"sample {i}" for i in range(len(firsts))]).save(grid)
    return grid


def _radius(task) -> float:
    """The radius of the ball the run's scenes are normalised into (``data.gaussians.radius``, default 1)."""
    return float(((task.config.get("data") or {}).get("gaussians") or {}).get("radius", 1.0))


def sample_latent(task, model, info, args, out: str) -> dict:
    if getattr(task, "cond_kind", "none") != "none":
        if args.cond is None:
            raise SystemExit(f"--cond is required: the run is conditioned on {task.cond_kind!r}")
        cond = args.cond.split("|") if "|" in args.cond else [args.cond] * args.num
        if len(cond) != args.num:
            raise SystemExit(f"--cond gives {len(cond)} conditions for --num={args.num} samples")
    else:
        cond = []
    rows = generate(task, model, num=args.num, cond=cond, seed=args.seed, cfg_scale=args.cfg_scale,
                    num_steps=args.steps, method=args.sampler, mesh=info["mesh"], rules=info["rules"])
    files = write_samples(out, rows, size=args.size or 128, views=args.views, gif=args.gif, renderer=args.renderer,
                          comments=[f"workdir {os.path.abspath(args.workdir)}", f"step {info['step']}",
                                    f"seed {args.seed}"], radius=_radius(task), fmt=args.format)
    return {"cond": cond, "files": files}


def sample_img2gs(task, model, info, args, out: str) -> dict:
    """Image to 3DGS: the decoded prediction of each ``--cond`` image (deterministic; ``--num`` = their count)."""
    if args.cond is None:
        raise SystemExit("--cond is required: an image path (several: '|'-separated)")
    cond = args.cond.split("|")
    args.num = len(cond)
    rows = generate(task, model, num=len(cond), cond=cond, mesh=info["mesh"], rules=info["rules"])
    files = write_samples(out, rows, size=args.size or 128, views=args.views, gif=args.gif, renderer=args.renderer,
                          comments=[f"workdir {os.path.abspath(args.workdir)}", f"step {info['step']}"],
                          radius=_radius(task), fmt=args.format)
    files["inputs"] = [os.path.join(out, "inputs.png")]
    plots.contact_sheet([plots.to_uint8(im) for im in task.cond_inputs(cond)["cond_image"]],
                        labels=[os.path.basename(c) for c in cond]).save(files["inputs"][0])
    return {"cond": cond, "files": files}


# ============================================================================================ posed views


def load_views(paths, size: tuple[int, int]) -> np.ndarray:
    """Images (V, H, W, 3) float32 in [-1, 1]: each file covered-resized (aspect kept) and centre-cropped to
    ``size``."""
    from scene3d.data import multiview
    out = []
    for path in paths:
        try:
            im = np.asarray(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"--image {path!r}: cannot read an image: {e}") from None
        res = multiview.resize_and_crop(im[None], np.full((1, 4), 0.5), size)
        out.append(res["images"][0].astype(np.float32) / 127.5 - 1.0)
    return np.stack(out)


def _fov_intrinsics(n: int, fov_deg: float, size) -> np.ndarray:
    return np.asarray(cam_lib.intrinsics_from_fov(np.full(n, math.radians(fov_deg)), size[0], size[1]), np.float32)


def view_cameras(args, num: int, size) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(c2w (num, 4, 4), intrinsics (num, 4)) of the conditioning / anchor views in the first one's frame, and the
    inverse of the first anchor's world pose (None without an anchors file)."""
    if args.anchors:
        c2w, intr = conventions.read_camera_file(args.anchors)
        if len(c2w) < num:
            raise ValueError(f"--anchors {args.anchors}: {len(c2w)} cameras for {num} views")
        ref = np.linalg.inv(c2w[0].astype(np.float64))
        return (ref @ c2w[:num]).astype(np.float32), intr[:num], ref
    c2w = trajectories.focus_orbit(num, args.focus or 1.0, arc_deg=args.arc) if num > 1 else np.eye(4)[None]
    return c2w.astype(np.float32), _fov_intrinsics(num, args.fov, size), None


def trajectory_cameras(args, ref, default) -> tuple[np.ndarray, np.ndarray]:
    """The ``--trajectory`` cameras in the frame of the first view (``ref``: the anchors' world-to-view-0, else
    the trajectory's own first camera), else ``default()``."""
    if not args.trajectory:
        return default()
    c2w, intr = conventions.read_camera_file(args.trajectory)
    ref = np.linalg.inv(c2w[0].astype(np.float64)) if ref is None else ref
    return (ref @ c2w).astype(np.float32), intr


def _tile(x, n: int) -> jax.Array:
    return jnp.asarray(np.broadcast_to(np.asarray(x, np.float32)[None], (n,) + np.shape(x)))


def write_views(out: str, frames: np.ndarray, *, fps: float = 8.0, points=None) -> dict:
    """Per sample i: ``sample_{i}.gif`` (frames (num, n, H, W, 3) in [-1, 1]), ``sample_{i}.png`` (its first frame),
    ``sample_{i}_frames.png`` (all frames in a row) and, with ``points`` = (point maps, colours) each (num, n,
    H, W, 3), ``sample_{i}_points.ply`` (finite points)."""
    from scene3d.render import ply, video
    os.makedirs(out, exist_ok=True)
    files = {"gif": [], "png": [], "frames": [], "ply": []}
    u8 = plots.signed_to_uint8(frames)
    for i, seq in enumerate(u8):
        files["gif"].append(os.path.join(out, f"sample_{i}.gif"))
        video.write_gif(files["gif"][-1], seq, fps=fps)
        files["png"].append(os.path.join(out, f"sample_{i}.png"))
        Image.fromarray(seq[0]).save(files["png"][-1])
        files["frames"].append(os.path.join(out, f"sample_{i}_frames.png"))
        Image.fromarray(plots.view_rows([[seq]])).save(files["frames"][-1])
        if points is not None:
            pts, rgb = (np.asarray(a[i], np.float32).reshape(-1, 3) for a in points)
            ok = np.isfinite(pts).all(-1)
            files["ply"].append(os.path.join(out, f"sample_{i}_points.ply"))
            ply.write_point_ply(files["ply"][-1], pts[ok], np.clip((rgb[ok] + 1) * 0.5, 0, 1))
    files["grid"] = [_contact_sheet(out, [seq[0] for seq in u8])]
    return {k: v for k, v in files.items() if v}


def _save_tokens(out: str, tokens, **cameras) -> str:
    path = os.path.join(out, "tokens.npz")
    np.savez(path, tokens=np.asarray(tokens, np.float32), **{k: np.asarray(v, np.float32) for k, v in cameras.items()})
    return path


def sample_scenegen(task, model, info, args, out: str) -> dict:
    size = tuple(task.tokenizer.resolution)
    n_ctx, n_cond = task.num_context, task.num_cond
    if not args.image:
        raise SystemExit(f"--image is required: a scenegen run generates a scene from 1..{n_cond} views")
    if len(args.image) > n_cond:
        raise SystemExit(f"{len(args.image)} --image views; the run conditions on at most {n_cond} (its "
                         f"'{task.cond_layout}' conditioning layout)")
    views = load_views(args.image, size)
    c2w, intr, ref = view_cameras(args, n_ctx, size)  # every context camera is an anchor, with a view or not
    images = np.zeros((n_cond,) + views.shape[1:], np.float32)
    images[:len(views)] = views
    slot = np.minimum(np.arange(n_cond), n_ctx - 1)  # conditioning view i sits at anchor camera i
    mask = np.broadcast_to(np.arange(n_cond) < len(views), (args.num, n_cond))
    from scene3d.tasks import scenetok as stok
    traj_c2w, traj_intr = trajectory_cameras(args, ref, lambda: stok.orbit_cameras(task.config.get("render"),
                                                                                  intr[0]))

    def run(m, im, cw, k, cm, key):
        inputs = {"cond_latents": task.tokenizer.bind(m.tokenizer).image_latents(im), "context_c2w": cw,
                  "context_intrinsics": k, "cond_c2w": cw[:, slot], "cond_intrinsics": k[:, slot]}
        return task.generate(m, inputs, key, cm, num_steps=args.steps, cfg_scale=args.cfg_scale)

    r_gen, r_render = jax.random.split(jax.random.key(args.seed))
    with sh.use_mesh(info["mesh"], info["rules"]):
        tokens = nnx.jit(run)(model, _tile(images, args.num), _tile(c2w, args.num), _tile(intr, args.num),
                              jnp.asarray(mask), r_gen)
        frames = task.render_views(model, tokens, _tile(traj_c2w, args.num), _tile(traj_intr, args.num), r_render)
    fps = float(((task.config.get("render") or {}).get("orbit") or {}).get("fps", 8.0))
    files = write_views(out, frames, fps=fps)
    files["tokens"] = [_save_tokens(out, jax.device_get(tokens), anchor_c2w=c2w, anchor_intrinsics=intr,
                                    trajectory_c2w=traj_c2w, trajectory_intrinsics=traj_intr)]
    files["views"] = [os.path.join(out, "views.png")]
    Image.fromarray(plots.view_rows([[plots.signed_to_uint8(views)]])).save(files["views"][0])
    return {"images": list(args.image), "files": files}


def sample_dit3d(task, model, info, args, out: str) -> dict:
    from scene3d.models import dit3d as dit3d_lib
    rc = task.render_cfg
    res = (task.config.data.get("views") or {}).get("resolution")
    if not (args.size or res):
        raise SystemExit("--size is required: the run's config has no data.views.resolution")
    size = (args.size, args.size) if args.size else tuple(int(v) for v in res)
    mode = args.mode or ("views" if len(args.image or ()) > 1 else "one_view" if args.image else "uncond")
    if mode not in dit3d_lib.CONDITIONS:
        raise SystemExit(f"--mode: expected one of {dit3d_lib.CONDITIONS}, got {mode!r}")
    n_views = {"uncond": 0, "trajectory": 0, "one_view": 1}.get(mode, len(args.image or ()))
    if len(args.image or ()) < max(n_views, 1 if mode in ("views", "views_trajectory") else 0):
        raise SystemExit(f"--mode={mode} needs --image views")
    views = load_views(args.image[:max(n_views, 1)], size) if n_views else np.zeros((1,) + size + (3,), np.float32)
    c2w, intr, ref = view_cameras(args, len(views), size)
    n = int(rc.get("trajectory_frames", 12))

    def arc(focus):
        c = trajectories.focus_orbit(n, focus, arc_deg=float(rc.get("arc_deg", 60.0)),
                                     elevation_deg=float(rc.get("elevation_deg", 10.0)), centred=True)
        return c.astype(np.float32), np.broadcast_to(intr[0], (n, 4)).astype(np.float32)

    with_traj = mode in ("trajectory", "views_trajectory")
    traj_c2w, traj_intr = trajectory_cameras(args, ref, lambda: arc(args.focus or 1.0))
    num = args.num
    batch = {"context_images": _tile(views, num), "context_c2w": _tile(c2w, num),
             "context_intrinsics": _tile(intr, num), "target_c2w": _tile(traj_c2w, num),
             "target_intrinsics": _tile(traj_intr, num)}
    vm = jnp.broadcast_to(jnp.arange(len(views)) < n_views, (num, len(views)))
    tm = jnp.full((num, len(traj_c2w)), with_traj)

    def run(m, b, key):
        cond = None if mode == "uncond" else task.cond(m, b, vm, tm)
        return task.sample(m, cond, key, batch_size=num, num_steps=args.steps, cfg_scale=args.cfg_scale,
                           method=args.sampler)

    decode = nnx.jit(lambda m, t, c, k: task.decode(m, t, c, k, size))
    with sh.use_mesh(info["mesh"], info["rules"]):
        tokens = nnx.jit(run)(model, batch, jax.random.key(args.seed))
        if not (with_traj or args.trajectory or args.focus):  # an arc around the scene's median depth at view 0
            first = decode(model, tokens, batch["context_c2w"][:, :1], batch["context_intrinsics"][:, :1])
            if "depth" in first:
                traj_c2w, traj_intr = arc(float(np.clip(np.median(np.asarray(first["depth"])), 0.1, 100.0)))
        outs = jax.device_get(decode(model, tokens, _tile(traj_c2w, num), _tile(traj_intr, num)))
    points = (outs["point_maps"], outs["images"]) if "point_maps" in outs else None
    files = write_views(out, outs["images"], fps=float(rc.get("fps", 8.0)), points=points)
    files["tokens"] = [_save_tokens(out, jax.device_get(tokens), view_c2w=c2w[:n_views], view_intrinsics=intr[:n_views],
                                    trajectory_c2w=traj_c2w, trajectory_intrinsics=traj_intr)]
    return {"mode": mode, "images": list(args.image or ()), "files": files}


SAMPLERS = {"latent": sample_latent, "img2gs": sample_img2gs, "scenegen": sample_scenegen, "dit3d": sample_dit3d}


# ============================================================================================ command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.sample", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="stage-2 run directory (config.json + checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--out", default=None, help="output folder (default: WORKDIR/samples/STEP)")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: config.flow.cfg_scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: config.flow.sample_steps)")
    p.add_argument("--sampler", choices=("euler", "heun"), default=None, help="(latent diffusion, 3DDiT)")
    p.add_argument("--no_ema", action="store_true", help="use the raw parameters even if the run kept an EMA")
    p.add_argument("--size", type=int, default=None,
                   help="render size in pixels (latent diffusion: default 128; 3DDiT: default the run's resolution)")
    g = p.add_argument_group("Can3Tok latent diffusion")
    g.add_argument("--cond", default=None, help="condition for all samples, or one per sample separated by '|'")
    g.add_argument("--views", type=int, default=8, help="orbit views for the GIF")
    g.add_argument("--gif", action="store_true", help="also write an orbit GIF per sample")
    g.add_argument("--renderer", choices=("splat", "points"), default="splat")
    g.add_argument("--format", choices=splat_io.FORMATS, default="ply",
                   help="Gaussian file format: ply (INRIA), splat (antimatter15), spz (Niantic SPZ v3), "
                        "compressed_ply (PlayCanvas); spz / compressed_ply open directly in web viewers")
    g = p.add_argument_group("SceneGen and 3DDiT (posed views)")
    g.add_argument("--image", action="append", default=None, help="a conditioning view (repeat for several)")
    g.add_argument("--anchors", default=None, help="camera file: the cameras of the conditioning / anchor views")
    g.add_argument("--trajectory", default=None, help="camera file: the cameras to render (3DDiT: and condition on)")
    g.add_argument("--mode", default=None, help="3DDiT condition: uncond | one_view | views | trajectory | "
                                                "views_trajectory")
    g.add_argument("--fov", type=float, default=60.0, help="horizontal field of view of the views without --anchors")
    g.add_argument("--focus", type=float, default=None,
                   help="depth of the point the default anchors and trajectories circle (default 1; 3DDiT renders: "
                        "the median decoded depth of the first view)")
    g.add_argument("--arc", type=float, default=30.0, help="arc (degrees) of the default anchor cameras")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")
    for path in (args.image or []) + [f for f in (args.anchors, args.trajectory) if f]:
        if not os.path.isfile(path):
            p.error(f"{path!r} does not exist")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    compile_cache.enable_for_run(args.workdir)  # before anything compiles: a second sampling loads the programs
    task, model, info = load_model(args.workdir, step=args.step, prefer_ema=not args.no_ema)
    out = args.out or os.path.join(args.workdir, "samples", str(info["step"]))
    result = SAMPLERS[family(task)](task, model, info, args, out)
    record = {"workdir": os.path.abspath(args.workdir), "step": info["step"], "variables": info["key"],
              "task": family(task), "num": args.num, "seed": args.seed, "cfg_scale": args.cfg_scale,
              "steps": args.steps, "sampler": args.sampler, **result}
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.num} samples to {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
