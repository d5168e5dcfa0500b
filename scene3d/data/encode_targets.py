"""Precompute SceneTok target latents for a dataset of clips, as the release's convert scripts do.

    # everything from a release-layout training config (its data.source, data.resolution, data.path, target):
    python -m scene3d.data.encode_targets --config=configs/scenetok.py:release_runlocal
    # RealEstate10K-style clip folders (train/ and test/ subfolders) through the released Video DC-AE:
    python -m scene3d.data.encode_targets --source=clips --source_dir=/data/re10k --layout=re10k \\
        --resolution=256 --weights=/ckpt/F32T4C128_AE.safetensors --out=/data/re10k_videodc
    # capture folders (transforms.json / LLFF / COLMAP / RE10K clip), random tiny autoencoder (tests, smoke runs):
    python -m scene3d.data.encode_targets --source=captures --paths=a,b --resolution=32 --random_tiny --out=/tmp/x

Each clip's frames are resized (Lanczos, aspect kept) and centre-cropped to ``--resolution``, the leading
``frames_used`` of them (whole latents) encoded by the target autoencoder, then again mirrored left-right (unless
``--no_flip``), and written with every frame (PNG), camera and the latents to an ArrayRecord dataset
(``scene3d.data.target_latents``: the layout, the reader and the release's view sampler). A progress line with
the rate and ETA goes to stderr; finished shards are skipped, so an interrupted run resumes; the output depends
only on the clips and the settings (deterministic). A clip that cannot be read or encoded is a ValueError naming
it; clips shorter than ``--min_frames`` (the release's 32) are skipped and listed in target_latents.json.

Autoencoders (``--target``):
  videodc  the Open-Sora v2 Video DC-AE: ``encode(2 x - 1) * 0.493``, 4 frames per latent; weights from
           ``--weights`` (the official F32T4C128_AE.safetensors layout; ``--ae_config`` a config.json for another
           architecture), encoded as the release's precompute does: tiles of 16 frames, no overlap (each tile on
           its own), 256 px spatial tiles.
  wan      the Wan 2.2 VAE: each 17-frame group encoded on its own -> 5 latents, scaling 1.
``--random_tiny``: a randomly initialised small autoencoder (``target_latents.RANDOM_TINY_AE``; ``--seed``,
``--ae_overrides`` JSON for another architecture): the release_runlocal config's, for tests and CPU runs only.

What is stored for the context views: the frames themselves (PNG at the training size), not VA-VAE latents. The
run's image compressor encodes the sampled context views on the fly: the frames serve any compressor (the
frozen VA-VAE with its weights, pixel patches, a VAE trained alongside), are the ground truth the evaluation
scores rendered frames against, and the mirrored copy is the same frames flipped. The release precomputes one
VA-VAE posterior sample per frame instead (12 context latents of 16 x 16 x 32 per example, cheaper per step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scene3d import data as data_lib
from scene3d.data import target_latents as tl

SOURCES = ("builtin", "clips", "captures")
UNIT_FRAMES = {"videodc": 16, "wan": 17}  # frames per encoder call: the release's temporal tile / Wan group


def _hw(text) -> tuple[int, int]:
    if isinstance(text, (list, tuple)):
        vals = [int(v) for v in text]
    else:
        vals = [int(v) for v in str(text).replace("x", ",").split(",") if v.strip()]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise ValueError(f"--resolution: expected H,W or one size, got {text!r}")
    return vals[0], vals[1]


def build_autoencoder(target: dict, *, dtype=jnp.float32):
    """(model, description) of the target autoencoder: ``target`` = {kind, variant, overrides, weights, config,
    seed}. Weights (official layout) when given, else a random init from ``seed``."""
    kind = target.get("kind", "videodc")
    if kind not in tl.KINDS:
        raise ValueError(f"target autoencoder: kind must be one of {tl.KINDS}, got {kind!r}")
    overrides = dict(target.get("overrides") or {})
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    weights, config = target.get("weights") or None, target.get("config") or None
    if kind == "videodc":
        from scene3d.models.video_dcae import VideoDCAE
        variant = target.get("variant") or "dc-ae-f32t4c128"
        # The release's precompute: temporal tiles of 16 frames without overlap, 256 px spatial tiles.
        kw = dict(temporal_tile_size=16, tile_overlap_factor=0.0, spatial_tile_size=256, dtype=dtype)
        if weights:
            from scene3d.convert import video_dcae as conv
            if config:
                model, report = conv.model_from_official(config, weights, **kw)
            else:
                model, report = conv.LAYOUT.build(lambda: VideoDCAE(variant, rngs=nnx.Rngs(0), **kw, **overrides),
                                                  weights)
        else:
            model, report = VideoDCAE(variant, rngs=nnx.Rngs(int(target.get("seed") or 0)), **kw, **overrides), None
    else:
        from scene3d.models.wan_vae import WanVAE
        variant = target.get("variant") or "wan2.2"
        if weights:
            from scene3d.convert import wan_vae as conv
            if config:
                model, report = conv.model_from_official(config, weights, dtype=dtype)
            else:
                model, report = conv.LAYOUT.build(lambda: WanVAE(variant, rngs=nnx.Rngs(0), dtype=dtype,
                                                                 **overrides), weights)
        else:
            model, report = WanVAE(variant, rngs=nnx.Rngs(int(target.get("seed") or 0)), dtype=dtype,
                                   **overrides), None
    desc = dict(kind=kind, variant=variant, overrides=json.loads(json.dumps(overrides)),
                weights=os.path.abspath(weights) if weights else None,
                config=os.path.abspath(config) if isinstance(config, str) else config,
                seed=None if weights else int(target.get("seed") or 0))
    if report is not None:
        print(f"encode_targets: {kind} weights from {weights} ({report})", file=sys.stderr)
    else:
        print(f"encode_targets: RANDOM {kind} autoencoder ({variant}, seed {desc['seed']}): tests and smoke runs "
              "only", file=sys.stderr)
    return model, desc


class ClipEncoder:
    """frames (T, H, W, 3) float32 in [0, 1] (T = frames_used) -> scaled target latents (t, h, w, C) float32, in
    units of 16 frames (videodc) / 17 frames (wan) encoded on their own (the release's temporal tiles without
    overlap), up to ``batch`` units per call; the last 4, 8 or 12 frames of a videodc clip form one shorter unit."""

    def __init__(self, model, kind: str, resolution, batch: int = 4):
        from scene3d.models.scenetok_release import VIDEODC_SCALING
        self.kind, self.unit, self.batch = kind, UNIT_FRAMES[kind], max(1, int(batch))
        scale = VIDEODC_SCALING if kind == "videodc" else 1.0
        self.fn = nnx.jit(lambda m, x: m.encode(2.0 * x - 1.0) * scale)
        self.model = model
        h, w = resolution
        probe = nnx.eval_shape(lambda m, x: m.encode(x) * scale, model,
                               jax.ShapeDtypeStruct((1, self.unit, h, w, 3), jnp.float32))
        self.latent_shape = tuple(int(s) for s in probe.shape[2:])

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        t = len(frames)
        n_full, rest = divmod(t, self.unit)
        out = []
        for lo in range(0, n_full, self.batch):  # batches of at most `batch` units: at most `batch` programs
            k = min(self.batch, n_full - lo)
            x = frames[lo * self.unit:(lo + k) * self.unit].reshape((k, self.unit) + frames.shape[1:])
            z = np.asarray(jax.device_get(self.fn(self.model, jnp.asarray(x))))
            out.append(z.reshape((-1,) + z.shape[2:]))
        if rest:
            z = np.asarray(jax.device_get(self.fn(self.model, jnp.asarray(frames[n_full * self.unit:][None]))))
            out.append(z[0])
        return np.concatenate(out) if out else np.zeros((0,) + self.latent_shape, np.float32)


def _source_config(args) -> dict:
    if args.source == "builtin":
        d = dict(name="builtin", preset=args.preset)
    elif args.source == "clips":
        if not args.source_dir:
            raise ValueError("--source=clips needs --source_dir (the folder of clips)")
        d = dict(name="clips", source_dir=args.source_dir, layout=args.layout, eval_fraction=args.eval_fraction)
    elif args.source == "captures":
        if not args.paths:
            raise ValueError("--source=captures needs --paths (comma-separated capture folders)")
        d = dict(name="captures", paths=[p for p in args.paths.split(",") if p])
    else:
        raise ValueError(f"--source must be one of {SOURCES}, got {args.source!r}")
    if args.data_dir:
        d["data_dir"] = args.data_dir
    return d


def _from_config(spec: str) -> dict:
    from scene3d.core.config import load_config
    c = load_config(spec)
    if c.get("layout") != "release" or c.data.get("name") != "target_latents":
        raise ValueError(f"--config={spec}: not a release-layout config (config.layout='release', "
                         "data.name='target_latents')")
    as_dict = lambda x: x.to_dict() if hasattr(x, "to_dict") else dict(x or {})  # noqa: E731
    return dict(out=c.data.path, source=as_dict(c.data.get("source")), resolution=tuple(c.data.resolution),
                target=as_dict(c.get("target")))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m scene3d.data.encode_targets", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a release-layout training config (configs/X.py:ARGS): its data.path, "
                                    "data.source, data.resolution and target; flags below override")
    p.add_argument("--out", help="output folder (the run's data.path)")
    p.add_argument("--source", choices=SOURCES, help="clips to encode: built-in dataset, clip folders, captures")
    p.add_argument("--preset", default="clips", help="--source=builtin: preset (default clips)")
    p.add_argument("--source_dir", help="--source=clips: folder of clips")
    p.add_argument("--layout", default="re10k", help="--source=clips: re10k | dl3dv")
    p.add_argument("--eval_fraction", type=float, default=0.0, help="--source=clips without train/ test/ folders")
    p.add_argument("--paths", help="--source=captures: comma-separated capture folders")
    p.add_argument("--data_dir", help="tfds folder of the source dataset (default $SCENE3D_DATA_DIR or ~/.cache)")
    p.add_argument("--resolution", help="H,W (or one size) of the frames the latents are computed from")
    p.add_argument("--target", choices=tl.KINDS, help="target autoencoder (default videodc)")
    p.add_argument("--weights", help="official autoencoder weights (safetensors / .pt / .pth)")
    p.add_argument("--ae_config", help="official config.json of another autoencoder architecture")
    p.add_argument("--random_tiny", action="store_true", help="random tiny autoencoder (tests, smoke runs)")
    p.add_argument("--ae_overrides", help="JSON: architecture overrides of the random autoencoder")
    p.add_argument("--seed", type=int, default=None, help="seed of the random autoencoder")
    p.add_argument("--no_flip", action="store_true", help="do not encode the mirrored clips")
    p.add_argument("--splits", default="train,eval", help="splits to encode (a missing one is skipped)")
    p.add_argument("--shard_size", type=int, default=256, help="clips per shard (the unit of resuming)")
    p.add_argument("--min_frames", type=int, default=32, help="skip shorter clips (the release: 32)")
    p.add_argument("--batch", type=int, default=4, help="encoder units (16 / 17 frames) per call")
    return p.parse_args(argv)


def resolve(args) -> dict[str, Any]:
    """Flags (+ --config) -> {out, source, resolution, target}."""
    base = _from_config(args.config) if args.config else {}
    out = args.out or base.get("out")
    if not out:
        raise ValueError("--out (or --config with data.path) is required")
    source = _source_config(args) if args.source else base.get("source")
    if not source:
        raise ValueError("--source (or --config with data.source) is required")
    res = _hw(args.resolution) if args.resolution else base.get("resolution")
    if not res:
        raise ValueError("--resolution (or --config with data.resolution) is required")
    target = dict(base.get("target") or {})
    if args.random_tiny:
        target = {k: v for k, v in tl.RANDOM_TINY_AE.items()}
    if args.target:
        target["kind"] = args.target
        if args.random_tiny and args.target == "wan":
            target.update(variant="tiny", overrides={})
    target.setdefault("kind", "videodc")
    if args.ae_overrides:
        target["overrides"] = json.loads(args.ae_overrides)
    if args.seed is not None:
        target["seed"] = args.seed
    if args.weights:
        target["weights"] = args.weights
    if args.ae_config:
        target["config"] = args.ae_config
    if args.random_tiny and (args.weights or args.ae_config):
        raise ValueError("--random_tiny and --weights / --ae_config exclude each other")
    if not target.get("weights") and target.get("seed") is None:  # a random autoencoder only when asked for
        raise ValueError("give --weights=PATH (official autoencoder weights) or --random_tiny")
    return dict(out=os.path.expanduser(str(out)), source=source, resolution=tuple(int(r) for r in res),
                target=target)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    job = resolve(args)
    model, desc = build_autoencoder(job["target"])
    kind = desc["kind"]
    encoder = ClipEncoder(model, kind, job["resolution"], batch=args.batch)
    src_cfg = ml_collections.ConfigDict(job["source"])
    sources = {}
    for split in [s for s in args.splits.split(",") if s]:
        try:
            sources[split] = data_lib.get_source(src_cfg, split)
        except ValueError as e:
            if "no split" not in str(e):
                raise
            print(f"encode_targets: the source has no split {split!r}; skipped", file=sys.stderr)
    if not sources:
        raise ValueError(f"the source {job['source']} has none of the splits {args.splits!r}")
    settings = dict(kind=kind, resolution=list(job["resolution"]), latent_shape=list(encoder.latent_shape),
                    flip=not args.no_flip, min_frames=int(args.min_frames), autoencoder=desc,
                    scaling=0.493 if kind == "videodc" else 1.0, frames_per_unit=UNIT_FRAMES[kind],
                    source=json.loads(json.dumps(job["source"], default=str)))
    print(f"encode_targets: {', '.join(f'{k} {len(v)} clips' for k, v in sources.items())} -> {job['out']} "
          f"({kind}, {job['resolution'][0]}x{job['resolution'][1]} px, latents {tuple(encoder.latent_shape)}, "
          f"flip {'on' if not args.no_flip else 'off'})", file=sys.stderr)
    out = tl.write_dataset(job["out"], sources, encoder, settings=settings, shard_size=args.shard_size)
    for split, info in out["splits"].items():
        print(f"encode_targets: {split}: {info['clips'] - len(info['skipped'])} clips written in {info['shards']} "
              f"shard(s), {len(info['skipped'])} skipped", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
