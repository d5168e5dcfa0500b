"""Render scenes with the released SceneTok checkpoints, and generate them with the released SceneGen.

    python -m scene3d.release render --scenetok=va-videodc_re10k.ckpt --vavae=vavae-imagenet256-f16d32-dinov2.pt \
        --videodc=F32T4C128_AE.safetensors --input=CAPTURE --out=DIR \
        [--context=I,J,.. | --num_context=12] [--ref=K] [--targets=all | --targets=I:J | --trajectory=FILE |
        --orbit --frames=32 --arc_deg=60 --focus=2] [--size=256] [--steps=25] [--window=8] [--clean=4] [--shift=1]
        [--cfg=1] [--focal_quirk=none|all|context] [--format=gif,mp4,frames] [--seed=0] [--mean_tokens]

    python -m scene3d.release generate --scenegen=scenegen_shift4_re10k.ckpt --scenetok=va-videodc_re10k_scene.ckpt \
        --vavae=... --videodc=... (--input=CAPTURE --cond=I[,J,K] | --image=IMG [--fov_deg=60]) \
        [--anchors=FILE | --anchor_frames=I,J,..] [--trajectory=FILE | --frames=32 ...] [--scenegen_steps=150] ...

``--wan=Wan2.2_VAE.pth`` replaces ``--videodc`` for the DL3DV va-wan model (``--window``/``--clean`` then count
whole groups of 5 latents, e.g. 10 / 5). Architectures are the released ones (the SceneTok variant is recognised
from the checkpoint); ``--scenetok_config`` / ``--scenegen_config`` / ``--vavae_config`` / ``--target_config``
(JSON: the release's description or ``{"variant": ..., ...}``) describe other sizes. Nothing is downloaded
(``scene3d.convert.release`` lists the files).

render: the capture (a folder with transforms.json, COLMAP, LLFF or a RealEstate10K clip; ``scene3d.data.captures``)
is centre-cropped and resized to ``--size``; its context frames (``--context``, else ``--num_context`` spread over
the whole capture) are encoded to scene tokens (a posterior sample as the release, ``--mean_tokens`` for the
mean); the target cameras are the capture's frames (``--targets``, default all of them: the renders are then
compared with the real frames), a trajectory file (.txt RealEstate10K, .json / .npz / .npy c2w, in the capture's
world frame, with context view 0's intrinsics), or an orbit (``--orbit``) around a point ``--focus`` in front of
the reference camera. The trajectory is cut to whole target latents (4 cameras per Video DC-AE latent, 17 per 5
Wan latents). Poses are made relative to context camera ``--ref`` (default: the middle one, as the release's
test) and are not rescaled. The decoder samples the target latents with the release's sliding window
(``--window`` latents per call, ``--clean`` of them already denoised), then the target autoencoder decodes them.

generate: SceneGen samples scene tokens (``--scenegen_steps`` Euler steps with the checkpoint's time shift,
``--scene_cfg`` guidance) from 1-3 conditioning images and the anchor cameras (the extent of the scene to
generate: ``--anchors`` file or ``--anchor_frames`` of the capture; default: the conditioning cameras), then the
frozen SceneTok renders them as above (default trajectory: an orbit around the first conditioning view).

Writes into ``--out``: ``frames/frame_XXXXX.png``, ``render.gif`` / ``render.mp4`` (``--format``), ``context.png``
(the context / conditioning images as the model saw them), ``tokens.npz`` (tokens, cameras in the release frame,
reference pose, frame indices), ``compare.png`` and PSNR / SSIM in ``result.json`` when the targets are real
frames (PSNR on clipped frames, SSIM as scikit-image with sample covariance, LPIPS-VGG with ``--lpips_backbone`` /
``--lpips_lin``: the release's protocol, ``scene3d.metrics.release``), and ``result.json`` (settings, timings, loaded checkpoints and the keys they ignored).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from scene3d.convert import release as loaders
from scene3d.core import io
from scene3d.data import captures, multiview
from scene3d.geometry import conventions, trajectories
from scene3d.metrics import lpips as lpips_lib
from scene3d.metrics import release as release_metrics
from scene3d.models import scenetok_release as rel
from scene3d.render import plots, splat, video

FORMATS = ("gif", "mp4", "frames")


# ------------------------------------------------------------------------------------------------------------
# Inputs


def read_capture(path) -> dict:
    """The scene record (images, c2w, intrinsics normalised) of a capture folder / file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input: capture {path!r} not found (a folder with transforms.json, COLMAP "
                                "sparse/0, LLFF poses_bounds.npy or a RealEstate10K clip)")
    return captures.read_capture(path).scene_record()


def views(record: dict, frames, size: int) -> dict:
    """Frames of a record centre-cropped and resized to size x size: images (V, S, S, 3) in [0, 1], c2w (V, 4, 4)
    in the capture's world frame, intrinsics (V, 4) normalised."""
    frames = np.asarray(frames, np.int64)
    cfg = multiview.ViewConfig(num_context=len(frames), num_target=0, resolution=(size, size), relative_poses=False,
                               scale_mode=None, with_depth=False, image_dtype="float32")
    ex = multiview.make_views(record, frames, [], cfg)["context"]
    return {"images": (ex["images"] + 1.0) / 2.0, "c2w": ex["c2w"], "intrinsics": ex["intrinsics"]}


def spread(n: int, k: int) -> np.ndarray:
    """``k`` frames spread evenly over 0..n-1 (all when fewer)."""
    return np.unique(np.round(np.linspace(0, n - 1, min(k, n))).astype(np.int64))


def parse_frames(text: str | None, n: int, flag: str) -> np.ndarray | None:
    """'I,J,K' or 'I:J' (half-open) frame indices of an n-frame capture."""
    if text is None:
        return None
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            out = np.arange(int(a or 0), int(b) if b else n)
        else:
            out = np.asarray([int(v) for v in text.split(",") if v.strip()], np.int64)
    except ValueError:
        raise ValueError(f"--{flag}: expected comma-separated frame indices or I:J, got {text!r}") from None
    if not len(out) or out.min() < 0 or out.max() >= n:
        raise ValueError(f"--{flag} {text}: frame indices must lie in 0..{n - 1} (the capture has {n} frames)")
    return out


# ------------------------------------------------------------------------------------------------------------
# Outputs


def write_outputs(out: str, frames: np.ndarray, formats, fps: float) -> dict:
    files = {}
    u8 = splat.to_uint8(frames)
    if "frames" in formats:
        video.write_frames(os.path.join(out, "frames"), u8)
        files["frames"] = "frames/"
    if "gif" in formats:
        video.write_gif(os.path.join(out, "render.gif"), u8, fps=fps)
        files["gif"] = "render.gif"
    if "mp4" in formats:
        video.write_mp4(os.path.join(out, "render.mp4"), u8, fps=fps)
        files["mp4"] = "render.mp4"
    return files


def strip(images: np.ndarray, max_images: int = 12) -> Image.Image:
    step = max(1, math.ceil(len(images) / max_images))
    row = plots.view_rows([[splat.to_uint8(images[::step])]])
    zoom = max(1, math.ceil(96 / images.shape[1]))
    return Image.fromarray(row.repeat(zoom, 0).repeat(zoom, 1))


# ------------------------------------------------------------------------------------------------------------
# Rendering


def load_pipeline(args):
    """(ReleaseSceneTok, import reports) from the checkpoint flags of either command."""
    return loaders.load_pipeline(
        scenetok=args.scenetok, vavae=args.vavae, videodc=args.videodc, wan=args.wan,
        scenetok_config=loaders.read_config(args.scenetok_config, "scenetok_config"),
        vavae_config=loaders.read_config(args.vavae_config, "vavae_config"),
        target_config=loaders.read_config(args.target_config, "target_config"))


def render_settings(args) -> dict:
    return dict(num_steps=args.steps, window=args.window, clean=args.clean, shift=args.shift, cfg_scale=args.cfg)


def render_tokens(model: rel.ReleaseSceneTok, tokens, c2w, intrinsics, key, size: int, settings: dict):
    """Frames (T, S, S, 3) in [0, 1] and latents of release-frame cameras (P, 4, 4) rendered from tokens (K, d)."""
    fn = nnx.jit(lambda m, t, c, k, r: m.render(t, c, k, r, image_size=(size, size), **settings))
    out = fn(model, jnp.asarray(tokens)[None], jnp.asarray(c2w)[None], jnp.asarray(intrinsics)[None], key)
    return np.asarray(out["images"][0]), np.asarray(out["latents"][0])


def target_cameras(args, record, ctx: dict, ref_world: np.ndarray, n: int, size: int):
    """(c2w (P, 4, 4) world frame, intrinsics (P, 4), real frames or None, indices or None, description)."""
    if args.trajectory:
        c2w, intr = conventions.read_camera_file(args.trajectory, require_intrinsics=False)
        intr = (np.broadcast_to(ctx["intrinsics"][0], (len(c2w), 4)) if intr is None else intr)
        return np.asarray(c2w, np.float32), np.asarray(intr, np.float32), None, None, {"source": args.trajectory}
    if args.orbit or record is None:
        traj = trajectories.focus_orbit(int(args.frames), float(args.focus), arc_deg=float(args.arc_deg),
                                        centred=True)
        c2w = (ref_world.astype(np.float64) @ traj).astype(np.float32)
        intr = np.broadcast_to(ctx["intrinsics"][0], (len(c2w), 4)).astype(np.float32)
        return c2w, intr, None, None, {"source": "orbit", "frames": int(args.frames), "arc_deg": args.arc_deg,
                                       "focus": args.focus}
    idx = parse_frames(args.targets, n, "targets") if args.targets not in (None, "all") else np.arange(n)
    tv = views(record, idx, size)
    return tv["c2w"], tv["intrinsics"], tv["images"], idx, {"source": "capture frames", "frames": len(idx)}


def finish(args, model, tokens, cams: dict, real, target_idx, desc, out, timings, record_extra) -> dict:
    key = jax.random.key(args.seed)
    t0 = time.time()
    frames, latents = render_tokens(model, tokens, cams["target_c2w"][0], cams["target_intrinsics"][0],
                                    jax.random.fold_in(key, 1), args.size, render_settings(args))
    timings["render_s"] = round(time.time() - t0, 2)
    files = write_outputs(out, frames, args.format, args.fps)
    strip(frames).save(os.path.join(out, "strip.png"))
    files["strip"] = "strip.png"
    result = {"frames": int(len(frames)), "latents": list(latents.shape), "targets": desc, "timings": timings,
              "files": files, **record_extra}
    if real is not None:
        real = real[:len(frames)]
        lp = None
        if args.lpips_backbone:
            lp = lpips_lib.LPIPS.from_files(loaders.check_file(args.lpips_backbone, "lpips_backbone", "the "
                                                               "torchvision vgg16 state_dict"),
                                            loaders.check_file(args.lpips_lin, "lpips_lin", "the lpips v0.1 vgg.pth"),
                                            net="vgg")
        per = release_metrics.frame_metrics(frames, real, lp)
        psnr = per["psnr"]
        result["metrics"] = {k: float(np.mean(v)) for k, v in per.items()}
        result["metrics"]["lpips_note"] = release_metrics.describe_lpips(lp, "--lpips_backbone / --lpips_lin")
        result["metrics"]["per_frame"] = [dict(frame=int(i), **{k: float(v[j]) for k, v in per.items()})
                                          for j, i in enumerate(target_idx[:len(frames)])]
        pairs = [plots.view_rows([[splat.to_uint8(real[i:i + 1])], [splat.to_uint8(frames[i:i + 1])]])
                 for i in range(len(frames))]
        labels = [f"{int(i)} {p:.1f} dB" for i, p in zip(target_idx, psnr)]
        sel = spread(len(pairs), 16)
        plots.contact_sheet([pairs[i] for i in sel], [labels[i] for i in sel],
                            cell=max(200, 2 * args.size + 2)).save(os.path.join(out, "compare.png"))
        files["compare"] = "compare.png"
    np.savez(os.path.join(out, "tokens.npz"), tokens=np.asarray(tokens), **{k: np.asarray(v[0]) for k, v in
                                                                           cams.items() if v is not None})
    files["tokens"] = "tokens.npz"
    return result


def reports_summary(reports: dict) -> dict:
    return {k: {"consumed": len(r.consumed), "ignored": sorted(r.ignored)[:20], "ignored_count": len(r.ignored),
                "initialised": sorted(r.initialised)} for k, r in reports.items()}


def run_render(args) -> dict:
    t0 = time.time()
    model, reports = load_pipeline(args)
    timings = {"load_s": round(time.time() - t0, 2)}
    record = read_capture(args.input)
    n = multiview.num_frames(record)
    ctx_idx = parse_frames(args.context, n, "context")
    if ctx_idx is None:
        ctx_idx = spread(n, args.num_context)
    ctx = views(record, ctx_idx, args.size)
    ref = len(ctx_idx) // 2 if args.ref is None else args.ref
    if not 0 <= ref < len(ctx_idx):
        raise ValueError(f"--ref {ref}: must index one of the {len(ctx_idx)} context views")
    c2w_t, k_t, real, tgt_idx, desc = target_cameras(args, record, ctx, ctx["c2w"][ref], n, args.size)
    cams = rel.release_cameras(ctx["c2w"][None], ctx["intrinsics"][None], c2w_t[None], k_t[None], ref_index=ref,
                               quirk=args.focal_quirk)
    key = jax.random.key(args.seed)
    t0 = time.time()
    enc = nnx.jit(lambda m, i, c, k, r: m.encode(i, c, k, r))
    tokens = np.asarray(enc(model, jnp.asarray(ctx["images"])[None], cams["context_c2w"],
                            cams["context_intrinsics"], None if args.mean_tokens else key)[0])
    timings["encode_s"] = round(time.time() - t0, 2)
    os.makedirs(args.out, exist_ok=True)
    strip(ctx["images"]).save(os.path.join(args.out, "context.png"))
    extra = {"command": "render", "input": os.path.abspath(args.input), "context": ctx_idx.tolist(), "ref": ref,
             "target": model.target_kind, "settings": render_settings(args), "seed": args.seed,
             "focal_quirk": args.focal_quirk, "checkpoints": reports_summary(reports)}
    result = finish(args, model, tokens, cams, real, tgt_idx, desc, args.out, timings, extra)
    result["files"]["context"] = "context.png"
    io.write_json(os.path.join(args.out, "result.json"), result, indent=1)
    return result


# ------------------------------------------------------------------------------------------------------------
# SceneGen


def read_images(paths: str, size: int, fov_deg: float) -> dict:
    """Conditioning images from files: centre-cropped, resized, identity-ish cameras side by side (one image is
    the usual case) with the given vertical field of view."""
    imgs = []
    for p in paths.split(","):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"--image: {p!r} not found")
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                imgs.append(np.asarray(im.resize((size, size), Image.BICUBIC), np.float32) / 255.0)
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"--image {p}: cannot decode as an image ({e})") from None
    f = 0.5 / math.tan(math.radians(fov_deg) / 2)
    c2w = np.broadcast_to(np.eye(4, dtype=np.float32), (len(imgs), 4, 4)).copy()
    return {"images": np.stack(imgs), "c2w": c2w,
            "intrinsics": np.broadcast_to(np.asarray([f, f, 0.5, 0.5], np.float32), (len(imgs), 4)).copy()}


def run_generate(args) -> dict:
    if args.image is None and args.input is None:
        raise ValueError("generate: give the conditioning view(s) with --image=IMG[,IMG2] or --input=CAPTURE "
                         "--cond=I[,J,K]")
    t0 = time.time()
    model, reports = load_pipeline(args)
    gen, r_gen = loaders.load_scenegen(args.scenegen, loaders.read_config(args.scenegen_config, "scenegen_config"))
    reports["scenegen"] = r_gen
    timings = {"load_s": round(time.time() - t0, 2)}
    record = None
    if args.image is not None:
        cond = read_images(args.image, args.size, args.fov_deg)
        cond_idx = list(range(len(cond["images"])))
    else:
        record = read_capture(args.input)
        n = multiview.num_frames(record)
        cond_idx = parse_frames(args.cond or "0", n, "cond")
        cond = views(record, cond_idx, args.size)
    if not 1 <= len(cond["images"]) <= gen.max_cond_views:
        raise ValueError(f"generate: SceneGen takes 1..{gen.max_cond_views} conditioning views, got "
                         f"{len(cond['images'])}")
    if args.anchors:
        a_c2w, a_k = conventions.read_camera_file(args.anchors, require_intrinsics=False)
        a_k = np.broadcast_to(cond["intrinsics"][0], (len(a_c2w), 4)) if a_k is None else a_k
    elif args.anchor_frames and record is not None:
        av = views(record, parse_frames(args.anchor_frames, multiview.num_frames(record), "anchor_frames"),
                   args.size)
        a_c2w, a_k = av["c2w"], av["intrinsics"]
    else:
        a_c2w, a_k = cond["c2w"], cond["intrinsics"]
    # Release frame: everything relative to conditioning view 0 (the scene's origin, as SceneGen was trained).
    cams = rel.release_cameras(cond["c2w"][None], cond["intrinsics"][None], np.asarray(a_c2w, np.float32)[None],
                               np.asarray(a_k, np.float32)[None], ref_index=0, quirk=args.focal_quirk)
    key = jax.random.key(args.seed)
    t0 = time.time()

    def sample(m, g, images, c_c2w, c_k, a_c2w, a_k, rng):
        lat = m.context_latents(images, None)
        return g.sample(rng, lat, a_c2w, a_k, c_c2w, c_k, num_steps=args.scenegen_steps, shift=args.scene_shift,
                        cfg_scale=args.scene_cfg)

    tokens = np.asarray(nnx.jit(sample)(model, gen, jnp.asarray(cond["images"])[None], cams["context_c2w"],
                                        cams["context_intrinsics"], cams["target_c2w"], cams["target_intrinsics"],
                                        key)[0])
    timings["generate_s"] = round(time.time() - t0, 2)
    # Trajectory to render, in the conditioning view 0 frame.
    ref_world = cond["c2w"][0]
    args.orbit = args.orbit or not args.trajectory
    c2w_t, k_t, real, tgt_idx, desc = target_cameras(args, None, cond, ref_world, 0, args.size)
    rcams = rel.release_cameras(cond["c2w"][None], cond["intrinsics"][None], c2w_t[None], k_t[None], ref_index=0,
                                quirk=args.focal_quirk)
    rcams["anchor_c2w"], rcams["anchor_intrinsics"] = cams["target_c2w"], cams["target_intrinsics"]
    os.makedirs(args.out, exist_ok=True)
    strip(cond["images"]).save(os.path.join(args.out, "context.png"))
    extra = {"command": "generate", "cond": [int(i) for i in cond_idx], "target": model.target_kind,
             "settings": dict(render_settings(args), scenegen_steps=args.scenegen_steps, scene_cfg=args.scene_cfg,
                              scene_shift=args.scene_shift if args.scene_shift is not None else gen.shift),
             "seed": args.seed, "checkpoints": reports_summary(reports)}
    result = finish(args, model, tokens, rcams, None, None, desc, args.out, timings, extra)
    result["files"]["context"] = "context.png"
    io.write_json(os.path.join(args.out, "result.json"), result, indent=1)
    return result


# ------------------------------------------------------------------------------------------------------------
# CLI


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenetok", required=True, help=loaders.EXPECTED["scenetok"])
    p.add_argument("--vavae", required=True, help=loaders.EXPECTED["vavae"])
    p.add_argument("--videodc", default=None, help=loaders.EXPECTED["videodc"])
    p.add_argument("--wan", default=None, help=loaders.EXPECTED["wan"])
    p.add_argument("--scenetok_config", default=None, help="JSON: SceneTok architecture (default: recognised)")
    p.add_argument("--vavae_config", default=None, help="JSON: VA-VAE architecture (default: f16d32)")
    p.add_argument("--target_config", default=None, help="JSON: target autoencoder architecture (default: released)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=256, help="image size (square, as the release)")
    p.add_argument("--trajectory", default=None, help="camera file of the target trajectory")
    p.add_argument("--orbit", action="store_true", help="render an orbit around --focus instead of the frames")
    p.add_argument("--frames", type=int, default=32, help="orbit frames")
    p.add_argument("--arc_deg", type=float, default=60.0, help="orbit arc")
    p.add_argument("--focus", type=float, default=2.0, help="orbit centre: distance in front of the reference view")
    p.add_argument("--steps", type=int, default=25, help="Euler steps per target latent")
    p.add_argument("--window", type=int, default=8, help="target latents per decoder call")
    p.add_argument("--clean", type=int, default=4, help="already denoised latents at the start of later windows")
    p.add_argument("--shift", type=float, default=1.0, help="time shift of the render schedule ('shifted' models)")
    p.add_argument("--cfg", type=float, default=1.0, help="decoder classifier-free guidance (release: 1)")
    p.add_argument("--focal_quirk", default="none", choices=rel.FOCAL_QUIRKS,
                   help="DL3DV checkpoints' focal-length bug: 'all' (va-videodc_dl3dv), 'context' (va-wan_dl3dv)")
    p.add_argument("--format", default="gif,frames", help=f"outputs, comma-separated from {FORMATS}")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.release", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="context images + cameras -> scene tokens -> frames along a trajectory")
    _common(r)
    r.add_argument("--input", required=True, help="capture folder / file")
    r.add_argument("--context", default=None, help="context frames I,J,.. or I:J")
    r.add_argument("--num_context", type=int, default=12, help="context frames spread over the capture")
    r.add_argument("--ref", type=int, default=None, help="reference context view (default: the middle one)")
    r.add_argument("--targets", default=None, help="target frames of the capture: all (default), I,J,.. or I:J")
    r.add_argument("--lpips_backbone", default=None, help="torchvision vgg16 state_dict: adds LPIPS-VGG")
    r.add_argument("--lpips_lin", default=None, help="the lpips package's v0.1 vgg.pth (with --lpips_backbone)")
    r.add_argument("--mean_tokens", action="store_true", help="posterior mean tokens instead of a sample")
    g = sub.add_parser("generate", help="SceneGen: image(s) + anchor cameras -> scene tokens -> frames")
    _common(g)
    g.add_argument("--scenegen", required=True, help=loaders.EXPECTED["scenegen"])
    g.add_argument("--scenegen_config", default=None, help="JSON: SceneGen architecture (default: released)")
    g.add_argument("--input", default=None, help="capture folder / file holding the conditioning frames")
    g.add_argument("--cond", default=None, help="conditioning frames of --input (1-3)")
    g.add_argument("--image", default=None, help="conditioning image file(s), comma-separated")
    g.add_argument("--fov_deg", type=float, default=60.0, help="vertical field of view of --image")
    g.add_argument("--anchors", default=None, help="camera file of the anchor cameras (scene extent)")
    g.add_argument("--anchor_frames", default=None, help="anchor cameras: frames of --input")
    g.add_argument("--scenegen_steps", type=int, default=150)
    g.add_argument("--scene_cfg", type=float, default=1.0, help="SceneGen classifier-free guidance")
    g.add_argument("--scene_shift", type=float, default=None, help="time shift (default: the checkpoint's)")
    args = p.parse_args(argv)
    if args.command == "generate":
        args.lpips_backbone = args.lpips_lin = None
    elif (args.lpips_backbone is None) != (args.lpips_lin is None):
        p.error("--lpips_backbone and --lpips_lin go together")
    fmts = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = sorted(set(fmts) - set(FORMATS))
    if bad or not fmts:
        p.error(f"--format: choose from {FORMATS}, got {args.format!r}")
    args.format = fmts
    if args.size < 1 or args.steps < 1 or args.window < 1 or not 0 <= args.clean < args.window or args.frames < 1:
        p.error("need --size, --steps, --window, --frames >= 1 and 0 <= --clean < --window")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        result = run_render(args) if args.command == "render" else run_generate(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    m = result.get("metrics")
    print(f"{result['frames']} frames ({result['target']}) -> {args.out}"
          + (f"; PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f} against the real frames" if m else ""))
    return result


if __name__ == "__main__":
    main()
