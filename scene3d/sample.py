"""Sample scenes from a stage-2 run: checkpoint -> latents -> Gaussians -> PLY files + renders.

    python -m scene3d.sample --workdir=STAGE2_DIR [--step=N] --num=4 --cond="a bright scene, mostly white" \
        --out=DIR [--cfg_scale=3] [--seed=0] [--steps=50] [--sampler=heun] [--size=128] [--views=8] [--gif]

Loads the run's ``config.json`` and the model variables of its checkpoint (EMA when kept; the frozen stage-1
tokenizer is part of the stage-2 state, so the stage-1 run is read for its config.json only), draws ``num``
latents with classifier-free guidance, decodes them with the tokenizer and writes, per sample i:

  sample_{i}.ply            the Gaussians (INRIA binary PLY, float32, SH degree of the tokenizer; readable by
                            ``scene3d.data.splat_io.read_ply``), in the normalised frame of the training crops
  sample_{i}.png            a render from the first of ``views`` orbit cameras (``--renderer=splat``: the JAX
                            rasteriser of ``scene3d.render.splat``; ``points``: the numpy splat preview)
  sample_{i}_orbit.gif      with ``--gif``: all orbit views as an animation (``scene3d.render.video``)

plus ``samples.png`` (first views side by side) and ``samples.json`` (arguments, step, condition, files).
The condition (``--cond``, one for all samples or ``|``-separated, one per sample) follows the run's
``config.cond.kind``: label -> a colour name or index; text -> a caption; image -> an image path.
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

from scene3d import tasks as tasks_lib
from scene3d.core import sharding as sh
from scene3d.data import splat_io
from scene3d.geometry import cameras as cam_lib
from scene3d.geometry import gaussians as gs
from scene3d.geometry import trajectories
from scene3d.render import plots
from scene3d.tasks import stage1


def load_model(workdir: str, *, step: int | None = None, mesh=None, prefer_ema: bool = True):
    """(task, model, info) of a stage-2 run: the config from ``workdir/config.json``, the variables of checkpoint
    ``step`` (default: latest; EMA if kept) restored straight into their shardings on ``mesh`` (default: all
    devices along fsdp)."""
    config = stage1.stage1_config(workdir)
    task = tasks_lib.get_task(config)
    if not hasattr(task, "sample"):
        raise ValueError(f"{workdir}: task {config.task!r} cannot sample")
    mesh = sh.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}) if mesh is None else mesh
    rules = sh.rules_from_config(config.sharding.get("rules") if "sharding" in config else None)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    shardings = sh.state_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    state, info = stage1.restore_variables(workdir, target, step=step, prefer_ema=prefer_ema)
    return task, nnx.merge(graphdef, state), {**info, "mesh": mesh, "rules": rules}


def orbit_cameras(views: int, size: int, *, distance: float = 2.6, elevation_deg: float = 30.0,
                  fov_deg: float = 45.0) -> cam_lib.Cameras:
    """``views`` square cameras circling the origin (normalised crops fill the unit ball; z up)."""
    c2w = trajectories.orbit(np.zeros(3), distance, views, elevation_deg=elevation_deg)
    intr = cam_lib.intrinsics_from_fov(np.full(views, math.radians(fov_deg)), size, size)
    return cam_lib.Cameras(c2w, intr, size, size)


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
                  renderer: str = "splat", comments=()) -> dict:
    """Write PLY + PNG (+ GIF) files of scenes ``rows`` (num, N, C) into ``out``; returns {name: [paths]}."""
    from scene3d.render import video
    os.makedirs(out, exist_ok=True)
    cams = orbit_cameras(max(1, views), size)
    files = {"ply": [], "png": [], "gif": []}
    firsts = []
    for i, raw in enumerate(rows):
        g = gs.unpack(np.asarray(raw, np.float32))
        if not all(np.isfinite(np.asarray(a)).all() for a in g if a is not None):
            raise ValueError(f"sample {i}: the decoded Gaussians are not finite")
        ply = os.path.join(out, f"sample_{i}.ply")
        splat_io.write_ply(ply, g, comments=[f"scene3d sample {i}", *comments])
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
    grid = os.path.join(out, "samples.png")
    plots.contact_sheet(firsts, labels=[f"sample {i}" for i in range(len(firsts))]).save(grid)
    files["grid"] = [grid]
    return files


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.sample", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="stage-2 run directory (config.json + checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--cond", default=None, help="condition for all samples, or one per sample separated by '|'")
    p.add_argument("--out", default=None, help="output folder (default: WORKDIR/samples/STEP)")
    p.add_argument("--cfg_scale", type=float, default=None, help="guidance scale (default: config.flow.cfg_scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: config.flow.sample_steps)")
    p.add_argument("--sampler", choices=("euler", "heun"), default=None)
    p.add_argument("--size", type=int, default=128, help="render size in pixels")
    p.add_argument("--views", type=int, default=8, help="orbit views for the GIF")
    p.add_argument("--gif", action="store_true", help="also write an orbit GIF per sample")
    p.add_argument("--renderer", choices=("splat", "points"), default="splat")
    p.add_argument("--no_ema", action="store_true", help="use the raw parameters even if the run kept an EMA")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    task, model, info = load_model(args.workdir, step=args.step, prefer_ema=not args.no_ema)
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
    out = args.out or os.path.join(args.workdir, "samples", str(info["step"]))
    files = write_samples(out, rows, size=args.size, views=args.views, gif=args.gif, renderer=args.renderer,
                          comments=[f"workdir {os.path.abspath(args.workdir)}", f"step {info['step']}",
                                    f"seed {args.seed}"])
    record = {"workdir": os.path.abspath(args.workdir), "step": info["step"], "variables": info["key"],
              "num": args.num, "cond": cond, "seed": args.seed, "cfg_scale": args.cfg_scale, "steps": args.steps,
              "sampler": args.sampler, "files": files}
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {len(rows)} samples to {out}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
