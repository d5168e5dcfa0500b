"""Evaluate a run's checkpoint on a whole data split: every example exactly once, per-example values and split
figures.

    python -m scene3d.evaluate --workdir=RUN [--split=eval] [--step=N] [--batch_size=B] [--seed=0] [--no_ema] \
        [--out=FILE] [--index=FILE] [--views_sweep=2,4,8,16,32]

Loads the run's ``config.json`` and the model variables of checkpoint ``--step`` (default: the latest; the EMA
when the run kept one, unless ``--no_ema``), reads the split in order (no shuffle, no repeat) through the same
data transforms as training, evaluates the task on every example once, prints a table (mean, std, min, max over
the examples) and writes ``<workdir>/eval_<split>_<step>.json`` (``--out`` elsewhere): the run, the split, the
split figures (``metrics``) and every example's values (``per_example``, in split order). A progress line with
the ETA goes to stderr.

Splits: the datasets have a training and a held-out split, ``train`` and ``eval``; ``test`` names the held-out
split too (files are named after the split as given).

The last partial batch is padded to a whole batch with copies of the split's last example and the padded rows are
masked out of every value (one compiled shape, any split size, any process count).

What is computed, per task:
- a task with ``evaluate_examples(model, batch, rng) -> {name: (B,) array}`` (Can3Tok ``autoencode``: per-scene L2
  (the paper's definition), failure indicator, MSE per channel group, KL; ``rae3d``: PSNR / SSIM of target and
  context views, LPIPS when ``metrics.lpips`` is set, L1, point-map error) gives per-example values directly; its
  ``summarize_examples(values, batch_size)`` turns the split's values into the split figures (e.g. Can3Tok's
  ``l2_batch``, the release's batch figure over consecutive batches of ``--batch_size`` scenes, and
  ``failure_rate``; 3DRAE's pixel-weighted point error); the rng of a batch is ``fold_in(key(seed), i)`` for
  the index i of its first example. A task with ``evaluation_convention(batch_size)`` states what its figures
  mean: Can3Tok prints e.g. "Can3Tok convention: posterior sample (...); per-scene L2 = ||pred - target||_F over
  N=40000 Gaussians x C=14 raw channels of crops normalised to radius 10; failure: L2 > 1000; ..." above the table
  and stores the definitions (``posterior`` mean | sample, ``eval_seed``, ``radius``, ``num_gaussians``,
  ``channels``, ``failure_threshold``, ...) under ``convention`` in the json file;
- any other task (``scenetok``: PSNR / SSIM / LPIPS of renders from the context's tokens, render variance over
  ``metrics.render_samples`` renders; ``scenegen`` / ``dit3d``: the stage-1 metrics of renders of generated tokens
  against the held-out targets; ``generate``: validation losses) has its ``evaluate(model, batch, rng)`` run on
  each example as a batch of one (``jax.vmap`` over the batch) with the key ``fold_in(key(seed), example
  index)``: the values do not depend on the batch size. Metrics that a task computes over a whole batch and
  lists in ``task.batch_metrics`` (SceneTok's ``psnr_mean_image`` baseline, the mean of the batch's targets) are
  left out: for one example they would be meaningless. The split figure of each value is its mean over the
  examples.

3DRAE runs also give scale-aligned depth AbsRel / delta < 1.25, the Chamfer distance of the fused point maps and
the PSNR of two baselines (the task's ``evaluation_convention`` line states the protocol) and, with
``--views_sweep=2,4,8,16,32`` (or ``config.metrics.views_sweep``), a view-count sweep printed as a table and stored
under ``views_sweep``: every scene of the split evaluated with the same targets (``sweep_frames``: the run's
``data.views.num_target`` frames spread over the clip's interior) and n context views spread evenly over its other
frames (the first frame, the scene frame, always among them), for each n the scenes can hold. 3DDiT runs print
their sample figures per condition type (uncond, one_view, views, trajectory, views_trajectory) and the diversity
across seeds as a second table (a task's ``summary_rows``).

Generation / reconstruction distribution metrics (``scene3d.metrics.fid``), when the network weights are given
(``config.metrics.inception_weights`` / ``i3d_weights``, or ``--inception_weights`` / ``--i3d_weights``; files
only, nothing downloads): the task's frames of every example (``metric_frames(model, batch, rng) -> {'fake',
'real'}``, (B, V, H, W, 3) in [-1, 1]: SceneTok / 3DRAE the target views rendered from the context's tokens vs the
ground truth, SceneGen / 3DDiT renders of generated tokens vs the held-out targets) go through the FID Inception-v3
(each view a frame: FID and KID on the 2048-d pool features) and the Kinetics I3D (each example's V views a clip,
resampled to ``metrics.fvd_frames`` (16) frames when it has fewer: FVD on the 400 logits). Split figures
``{p}fid``, ``{p}kid``, ``{p}kid_std``, ``{p}fvd`` with p = ``r`` (reconstructions: SceneTok, 3DRAE) or ``g``
(samples: SceneGen, 3DDiT), and one line saying what they were computed on, or that they were not and why.

``--index=FILE`` (SceneTok runs): the SceneTok release's evaluation protocol. FILE is one of its evaluation index
files (``assets/evaluation_index/*.json``, read by ``scene3d.data.eval_index``: {scene key: {"context": [frame
ids], "target": [frame ids]}}). Every scene of the index that the split holds (looked up by its ``scene_id``: a
RealEstate10K clip folder's name is its key) is evaluated once with exactly its context and target frames, shaped
by ``data.views`` (resolution, poses relative to the first context frame, scale from the context cameras): the
context frames are encoded (posterior mean), every target frame is rendered from those tokens alone
(``data.views.num_target`` cameras per decoder call, one key per call from ``fold_in(key(seed), the scene's
position in the index)``) and scored against its ground-truth frame by ``scene3d.metrics.release``: PSNR (clipped
to [0, 1]), SSIM as scikit-image computes it (Gaussian 11 x 11, sample covariance) and LPIPS when
``config.metrics.lpips`` names weights (the release's is net='vgg'; the output says when it is not computed, or
not VGG). Figures: per frame, per scene and overall (``psnr``: the mean over all scored frames, the release's
number; ``psnr_scene_mean``: the mean of the scene means). Scenes of the index missing from the split are
counted and the first few listed, not an error (unless none is found). Writes
``<workdir>/eval_<split>_<step>_<index file stem>.json``: the figures, ``per_example`` (scene means in index
order), ``scenes`` ({key: context, target, per-frame values, means}), ``missing``, ``index_skipped`` (null
entries) and ``lpips`` (which LPIPS, or why none). ``--batch_size`` and ``--data_seed`` do not apply. The
release scores its decoded target latents as ground truth when its latents are precomputed; here the ground
truth is the dataset's frames.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import grain
import jax
import numpy as np
from flax import nnx

from scene3d import data as data_lib
from scene3d.core import chrono as chrono_lib
from scene3d.core import compile_cache
from scene3d.core import io
from scene3d.core import metrics as metrics_lib
from scene3d.core import runs
from scene3d.core import sharding as sh
from scene3d.data import eval_index, multiview, pipeline
from scene3d.metrics import fid as fid_lib
from scene3d.metrics import release
from scene3d.tasks import stage1

SPLITS = {"train": "train", "eval": "eval", "test": "eval"}  # --split -> the data split it reads


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_run(workdir: str, *, step: int | None = None, prefer_ema: bool = True, mesh=None):
    """(task, model, info) of any run (``tasks.stage1.load_run``), on ``mesh`` (default: the run's
    ``config.mesh`` when it fits the devices here, else all devices along fsdp). info: step, key, workdir, mesh,
    rules, config."""
    if mesh is None:
        try:
            mesh = sh.make_mesh(dict(runs.read_config(workdir).mesh))
        except (ValueError, KeyError, AttributeError):
            mesh = None  # load_run's default
    config, task, model, info = stage1.load_run(workdir, step=step, mesh=mesh, prefer_ema=prefer_ema)
    return task, model, {**info, "config": config}


# ------------------------------------------------------------------------------------------------------------
# Data: the whole split once, padded to whole batches


class PaddedSource:
    """``source`` followed by copies of its last example up to ``length`` examples."""

    def __init__(self, source, length: int):
        self.source, self.n, self.length = source, len(source), int(length)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.source[min(int(i), self.n - 1)]


def split_batches(config, task, split: str, batch_size: int, *, seed: int = 0, source=None):
    """(iterator of this process's rows of each global batch, number of examples in the split, number of
    batches): the data split (``source``: default ``data.get_source(config.data, split)``) read in order once,
    through the dataset's and the task's transforms (random ones seeded by ``seed`` and the example index), the
    last batch padded (``PaddedSource``)."""
    source = data_lib.get_source(config.data, split) if source is None else source
    n = len(source)
    if n == 0:
        raise ValueError(f"config.data ({config.data.get('name')!r}): the {split!r} split is empty")
    num_batches = math.ceil(n / batch_size)
    read = grain.ReadOptions(num_threads=int(config.data.get("num_threads", 2)),
                             prefetch_buffer_size=int(config.data.get("prefetch", 4)))
    it = pipeline.make_batch_iterator(
        PaddedSource(source, num_batches * batch_size), global_batch_size=batch_size, seed=seed, shuffle=False,
        num_epochs=1, transforms=data_lib.get_transforms(config.data, split) + list(task.data_transforms(split)),
        read_options=read)
    return it, n, num_batches


def resolve_batch_size(requested: int | None, config, num_examples: int | None = None) -> int:
    """``requested`` (else ``config.eval_batch_size``, else ``global_batch_size``), no larger than the split
    needs, rounded up to a multiple of the process count."""
    b = int(requested or config.get("eval_batch_size") or config.global_batch_size)
    if b < 1:
        raise ValueError(f"--batch_size: expected >= 1, got {b}")
    p = jax.process_count()
    if num_examples is not None:
        b = min(b, num_examples)
    return -(-b // p) * p


# ------------------------------------------------------------------------------------------------------------
# FID / KID / FVD: features of the task's frames, pooled over the split


def metric_frames_fn(task):
    """(model, batch, rng) -> {'fake', 'real'} frames (B, V, H, W, 3) in [-1, 1] of the task, and its metric prefix
    ('r' reconstructions, 'g' samples); (None, reason) for a task without them. 3DRAE (``render``: decoder outputs
    of the context's tokens) is read here, through its ``render``: target views vs the ground truth."""
    if hasattr(task, "metric_frames"):
        return task.metric_frames, getattr(task, "metric_kind", "r")
    if getattr(getattr(task, "config", None), "task", None) == "rae3d" and hasattr(task, "render"):
        def rae(model, batch, rng):
            del rng  # the 3DRAE decoder is deterministic
            out, _, _ = task.render(model, batch, None, with_context=False)
            return {"fake": out["rgb"], "real": batch["target_images"]}
        return rae, "r"
    return None, f"the {type(task).__name__} task has no generated or reconstructed frames (metric_frames)"


class FeatureMetrics:
    """FID / KID (FID Inception-v3 pool features of every frame) and FVD (Kinetics I3D logits of every clip) of a
    split: ``add(fake, real)`` per batch (host arrays (n, V, H, W, 3) in [-1, 1], padded rows already dropped),
    ``figures(prefix)`` at the end. Networks from ``scene3d.convert.inception`` / ``i3d`` (files only)."""

    def __init__(self, inception_weights: str | None = None, i3d_weights: str | None = None, *, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, fvd_frames: int = 16, chunk: int = 8, seed: int = 0):
        from scene3d.convert import i3d as i3d_convert
        from scene3d.convert import inception as inception_convert
        self.inception = inception_convert.load(inception_weights)[0] if inception_weights else None
        self.i3d = i3d_convert.load(i3d_weights)[0] if i3d_weights else None
        self.kid_subsets, self.kid_subset_size, self.seed = int(kid_subsets), int(kid_subset_size), int(seed)
        self.fvd_frames, self.chunk = int(fvd_frames), max(int(chunk), 1)
        if self.fvd_frames < 9:
            raise ValueError(f"config.metrics.fvd_frames={fvd_frames}: the I3D head needs clips of at least 9 frames")
        self.feats = {"fid_fake": [], "fid_real": [], "fvd_fake": [], "fvd_real": []}
        self.views = None
        self._inception_fn = nnx.jit(lambda net, x: net(fid_lib.prepare_frames(x, fid_lib.INCEPTION_SIZE)))
        self._i3d_fn = nnx.jit(lambda net, x: net(fid_lib.prepare_frames(x, fid_lib.I3D_SIZE))["logits"])

    @classmethod
    def from_config(cls, config, *, inception_weights=None, i3d_weights=None) -> "FeatureMetrics | None":
        """From ``config.metrics`` (``inception_weights``, ``i3d_weights``, ``kid_subsets``, ``kid_subset_size``,
        ``fvd_frames``), the arguments overriding the weights; None when neither network is given."""
        mc = dict(config.get("metrics") or {})
        inc, i3d = inception_weights or mc.get("inception_weights"), i3d_weights or mc.get("i3d_weights")
        if not inc and not i3d:
            return None
        return cls(inc or None, i3d or None, kid_subsets=mc.get("kid_subsets", 100),
                   kid_subset_size=mc.get("kid_subset_size", 1000), fvd_frames=mc.get("fvd_frames", 16))

    def _run(self, fn, net, x):
        return np.concatenate([np.asarray(jax.device_get(fn(net, x[i:i + self.chunk])), np.float64)
                               for i in range(0, len(x), self.chunk)])

    def clip(self, frames: np.ndarray) -> np.ndarray:
        """(n, V, H, W, 3) -> (n, max(V, fvd_frames), H, W, 3): each view held for equal time when V is short."""
        v = frames.shape[1]
        return frames if v >= self.fvd_frames else frames[:, (np.arange(self.fvd_frames) * v) // self.fvd_frames]

    def add(self, fake: np.ndarray, real: np.ndarray) -> None:
        if fake.shape != real.shape or fake.ndim != 5:
            raise ValueError(f"metric_frames: expected fake and real frames (B, V, H, W, 3) of one shape, got "
                             f"{fake.shape} and {real.shape}")
        if len(fake) == 0:
            return
        self.views = fake.shape[1]
        for name, x in (("fake", fake), ("real", real)):
            if self.inception is not None:
                self.feats[f"fid_{name}"].append(self._run(self._inception_fn, self.inception,
                                                           x.reshape((-1,) + x.shape[2:])))
            if self.i3d is not None:
                self.feats[f"fvd_{name}"].append(self._run(self._i3d_fn, self.i3d, self.clip(x)))

    def figures(self, prefix: str) -> dict:
        out = {}
        if self.inception is not None and self.feats["fid_fake"]:
            f, r = np.concatenate(self.feats["fid_fake"]), np.concatenate(self.feats["fid_real"])
            out[f"{prefix}fid"] = fid_lib.frechet_distance_of(f, r)
            out[f"{prefix}kid"], out[f"{prefix}kid_std"] = fid_lib.kid(
                f, r, subsets=self.kid_subsets, subset_size=self.kid_subset_size, seed=self.seed)
        if self.i3d is not None and self.feats["fvd_fake"]:
            out[f"{prefix}fvd"] = fid_lib.frechet_distance_of(np.concatenate(self.feats["fvd_fake"]),
                                                             np.concatenate(self.feats["fvd_real"]))
        return out

    def describe(self, prefix: str) -> str:
        """One line: what the figures were computed on."""
        kind = "reconstructed" if prefix == "r" else "generated"
        parts = []
        if self.inception is not None:
            n = sum(len(f) for f in self.feats["fid_fake"])
            parts.append(f"{prefix}FID / {prefix}KID: {n} {kind} vs {n} real frames (FID Inception-v3 pool, "
                         f"{fid_lib.INCEPTION_SIZE} px; KID: {self.kid_subsets} subsets of "
                         f"{min(self.kid_subset_size, n)})")
        else:
            parts.append("FID / KID: not computed (no config.metrics.inception_weights / --inception_weights)")
        if self.i3d is not None:
            n = sum(len(f) for f in self.feats["fvd_fake"])
            views = self.views or 0
            held = f", {views} views resampled to {self.fvd_frames} frames" if views < self.fvd_frames else ""
            parts.append(f"{prefix}FVD: {n} {kind} vs {n} real clips (Kinetics I3D logits, {fid_lib.I3D_SIZE} px"
                         f"{held})")
        else:
            parts.append("FVD: not computed (no config.metrics.i3d_weights / --i3d_weights)")
        small = " Few samples bias FID / FVD upwards: compare figures on equal sample counts only."
        return "; ".join(parts) + "." + small


NOT_CONFIGURED = ("FID / KID / FVD: not computed (no network weights configured: set config.metrics."
                  "inception_weights / i3d_weights or pass --inception_weights / --i3d_weights; README, "
                  "'Generation metrics')")


# ------------------------------------------------------------------------------------------------------------
# Evaluation


def per_example_fn(task):
    """(model, batch, base key, example indices (B,)) -> {name: (B,)} (module docstring), and its mode name."""
    if hasattr(task, "evaluate_examples"):
        def fn(model, batch, base, index):
            return task.evaluate_examples(model, batch, jax.random.fold_in(base, index[0]))
        return fn, "evaluate_examples"

    batch_level = set(getattr(task, "batch_metrics", ()))

    def fn(model, batch, base, index):
        def one(example, i):
            out = task.evaluate(model, jax.tree.map(lambda x: x[None], example), jax.random.fold_in(base, i))
            return {k: v for k, v in out.items() if k not in batch_level}
        return jax.vmap(one)(batch, index)

    return fn, "evaluate per example (vmap)"


def batch_frames_fn(task, frames):
    """``frames`` (``metric_frames_fn``) on a batch with the keys of ``per_example_fn``: the batch's first example
    index for a task with ``evaluate_examples``, else per example (vmap) with ``fold_in(base, index)``."""
    if hasattr(task, "evaluate_examples"):
        return lambda model, batch, base, index: frames(model, batch, jax.random.fold_in(base, index[0]))

    def fn(model, batch, base, index):
        def one(example, i):
            out = frames(model, jax.tree.map(lambda x: x[None], example), jax.random.fold_in(base, i))
            return jax.tree.map(lambda x: x[0], out)
        return jax.vmap(one)(batch, index)
    return fn


def _progress(done: int, total: int, examples: int, rates: dict, out, unit: str = "batch",
              counted: str = "examples", rate: str = "ex/s") -> None:
    line = (f"\revaluating: {unit} {done}/{total} | {examples} {counted} | "
            f"{rates['examples_per_sec']:.3g} {rate} | ETA {metrics_lib.format_duration(rates['eta_sec'])}")
    if out.isatty():
        out.write(line + ("\n" if done == total else ""))
    else:
        out.write(line[1:] + "\n")
    out.flush()


def evaluate_split(task, model, config, *, split: str = "eval", batch_size: int | None = None, seed: int = 0,
                   data_seed: int = 0, mesh=None, rules=None, progress=sys.stderr,
                   features: FeatureMetrics | None = None) -> dict:
    """Evaluate ``model`` on every example of data split ``split`` once (module docstring). Returns {metrics,
    per_example (name -> list in split order, plus ``index``), num_examples, batch_size, num_batches, padded,
    mode, wall_sec, generation (one line: the FID / KID / FVD of ``features``, or why there are none)}."""
    if split not in ("train", "eval"):
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    source = data_lib.get_source(config.data, split)
    b = resolve_batch_size(batch_size, config, len(source))
    it, n, num_batches = split_batches(config, task, split, b, seed=data_seed, source=source)
    fn, mode = per_example_fn(task)
    eval_fn = nnx.jit(fn) if mesh is None else nnx.jit(fn, out_shardings=sh.replicated(mesh))
    frames, prefix = metric_frames_fn(task)
    generation = None  # a task without frames (Can3Tok's Gaussians, ...): nothing to say unless asked
    if frames is None:
        if features is not None:
            generation, features = f"FID / KID / FVD: not computed ({prefix})", None
    elif features is None:
        generation = NOT_CONFIGURED
    if features is not None:
        ffn = batch_frames_fn(task, frames)
        frames_fn = nnx.jit(ffn) if mesh is None else nnx.jit(ffn, out_shardings=sh.replicated(mesh))
    base = jax.random.key(int(seed))
    chrono = chrono_lib.Chrono(num_batches, b)
    values: dict[str, list] = {}
    start = time.perf_counter()
    with sh.use_mesh(mesh, rules):
        for j in range(num_batches):
            batch = next(it)
            batch = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biufc"}
            index = np.arange(j * b, (j + 1) * b, dtype=np.int32)
            out = eval_fn(model, pipeline.to_global(batch, mesh), base, index)
            valid = index < n
            if features is not None:
                fr = frames_fn(model, pipeline.to_global(batch, mesh), base, index)
                features.add(*(np.asarray(jax.device_get(fr[k]), np.float32)[valid] for k in ("fake", "real")))
            for k, v in out.items():
                v = np.asarray(jax.device_get(v), np.float64)
                if v.shape != (b,):
                    raise ValueError(f"task {config.task!r}: metric {k!r} has shape {v.shape} per batch; expected one "
                                     f"value per example ({b},)")
                values.setdefault(k, []).append(v[valid])
            if "scene_index" in batch and jax.process_count() == 1:
                values.setdefault("scene_index", []).append(np.asarray(batch["scene_index"])[valid])
            if progress is not None and jax.process_index() == 0:
                _progress(j + 1, num_batches, int(min((j + 1) * b, n)), chrono.tick(j + 1), progress)
    per = {k: np.concatenate(v) for k, v in values.items()}
    ids = per.pop("scene_index", None)
    if hasattr(task, "summarize_examples"):
        summary = task.summarize_examples(per, b)
    else:
        summary = {k: float(np.mean(v)) for k, v in per.items()}
    if features is not None:
        summary.update(features.figures(prefix))
        generation = features.describe(prefix)
    per_example = {"index": list(range(n))}
    if ids is not None:
        per_example["scene_index"] = ids.astype(int).tolist()
    per_example.update({k: v.tolist() for k, v in per.items()})
    out = {"metrics": summary, "per_example": per_example, "num_examples": n, "batch_size": b,
           "num_batches": num_batches, "padded": num_batches * b - n, "mode": mode,
           "wall_sec": time.perf_counter() - start, "generation": generation}
    if hasattr(task, "evaluation_convention"):
        out["convention"] = task.evaluation_convention(b)
    return out


# ------------------------------------------------------------------------------------------------------------
# The SceneTok release's protocol: an evaluation index file


def _apply(transforms, example):
    for t in transforms:
        example = t.map(example) if hasattr(t, "map") else t(example)
    return example


def evaluate_index(task, model, config, index: eval_index.EvalIndex, *, split: str = "eval", seed: int = 0,
                   mesh=None, rules=None, source=None, progress=sys.stderr, max_listed: int = 10) -> dict:
    """The release's protocol (module docstring, ``--index``) on the scenes of ``index`` that data split ``split``
    (``source``: default ``data.get_source(config.data, split)``) holds. Returns {metrics, per_example, scenes,
    index, index_scenes, index_skipped, missing, lpips, num_examples, mode, wall_sec}."""
    if not (hasattr(task, "context_tokens") and hasattr(task, "render_views")):
        raise ValueError(f"--index: evaluation index files apply to SceneTok runs (task 'scenetok'), not task "
                         f"{config.task!r}")
    if jax.process_count() > 1:
        raise ValueError("--index evaluates on one process; run it without the multi-process launcher")
    if split not in ("train", "eval"):
        raise ValueError(f"split: expected 'train' or 'eval', got {split!r}")
    from scene3d.tasks.scenetok import relative_to_first
    start = time.perf_counter()
    source = data_lib.get_source(config.data, split) if source is None else source
    found, missing = eval_index.find_scenes(source, index.keys())
    if not found:
        raise ValueError(f"{index.path}: none of its {len(index)} scenes (first: {list(index)[:3]}) is in the "
                         f"{split!r} split of config.data ({config.data.get('name')!r}, {len(source)} scenes)")
    views = dataclasses.replace(multiview.ViewConfig.from_config(config.data.get("views")), image_dtype="float32")
    transforms = list(task.data_transforms(split))
    position = {k: i for i, k in enumerate(index)}
    base = jax.random.key(int(seed))
    chrono = chrono_lib.Chrono(len(found), 1)
    scenes, frames_done = {}, 0
    with sh.use_mesh(mesh, rules):
        for j, (key, at) in enumerate(found.items()):
            entry = index[key]
            ex = _apply(transforms, eval_index.index_example(source[at], entry, views, key))
            host = {k: np.asarray(v)[None] for k, v in ex.items() if k.startswith(("context_", "target_"))}
            tokens = task.context_tokens(model, host)
            cams = relative_to_first(host["context_c2w"], host["target_c2w"])
            rendered = task.render_views(model, tokens, cams, host["target_intrinsics"],
                                         jax.random.fold_in(base, position[key]))
            pred = np.clip((np.asarray(rendered[0], np.float32) + 1.0) / 2.0, 0.0, 1.0)
            gt = np.clip((host["target_images"][0].astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
            fig = release.scene_metrics(pred, gt, task.lpips)
            scenes[key] = {"source_index": int(at), "context": list(entry.context), "target": list(entry.target),
                           **fig}
            frames_done += fig["num_frames"]
            if progress is not None:
                _progress(j + 1, len(found), frames_done, chrono.tick(j + 1), progress, unit="scene",
                          counted="target frames", rate="scenes/s")
    per_example = {"index": [position[k] for k in scenes]}
    for name in release.NAMES:
        if all(name in s["mean"] for s in scenes.values()):
            per_example[name] = [s["mean"][name] for s in scenes.values()]
    return {"metrics": release.summarize(scenes), "per_example": per_example, "scenes": scenes,
            "index": os.path.abspath(index.path) if index.path else "", "index_scenes": len(index) + len(index.skipped),
            "index_skipped": list(index.skipped), "missing": {"count": len(missing), "first": missing[:max_listed]},
            "lpips": release.describe_lpips(task.lpips), "num_examples": len(scenes), "mode": "index",
            "wall_sec": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------------------
# View-count sweep (3DRAE): the same target views from more and more context views


def sweep_frames(num_frames: int, num_target: int, num_context: int) -> tuple[np.ndarray, np.ndarray]:
    """(context, target) frame indices of one scene in the view-count sweep: ``num_target`` targets spread over
    the clip's interior (never its first or last frame), ``num_context`` context views spread evenly over all
    its other frames, from the first (the scene frame) to the last (``tasks.dit3d.spread_views``)."""
    from scene3d.tasks.dit3d import spread_views
    f, vt, n = int(num_frames), int(num_target), int(num_context)
    if f < vt + max(n, 1):
        raise ValueError(f"views sweep: a scene of {f} frames cannot hold {vt} targets and {n} context views")
    target = np.unique(np.round(np.linspace(0, f - 1, vt + 2)).astype(np.int64)[1:-1]) if vt else \
        np.zeros(0, np.int64)
    if len(target) < vt:  # short clips: the first interior frames instead
        target = np.arange(1, vt + 1)
    rest = np.setdiff1d(np.arange(f), target)
    return rest[spread_views(len(rest), n)], target


def parse_counts(spec) -> tuple[int, ...]:
    """'2,4,8' / (2, 4, 8) -> (2, 4, 8): positive, increasing order, no repeats."""
    if spec is None or (isinstance(spec, str) and not spec.strip()) or (not isinstance(spec, str) and len(spec) == 0):
        return ()  # '' / () / [] (a run's config.json stores an empty tuple as [])
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        counts = sorted({int(x) for x in items if str(x).strip()})
    except ValueError as e:
        raise ValueError(f"--views_sweep: expected comma-separated view counts, e.g. 2,4,8,16,32; got {spec!r}") from e
    if not counts or counts[0] < 1:
        raise ValueError(f"--views_sweep: view counts must be >= 1, got {spec!r}")
    return tuple(counts)


def views_sweep(task, model, config, counts, *, split: str = "eval", batch_size: int | None = None, mesh=None,
                rules=None, source=None, progress=sys.stderr) -> dict:
    """Evaluate a 3DRAE run on every scene of ``split`` with the same targets and n = each of ``counts`` context
    views (``sweep_frames``; counts above what every scene can hold, frames minus targets, are dropped and
    reported). Examples are shaped by ``data.views`` (resolution, poses relative to the first context view, scale
    from the context cameras) and the task's transforms; the values are the task's ``evaluate_examples`` and the
    figures its ``summarize_examples``. Returns {counts, requested, dropped, max_views, num_target, num_examples,
    figures {n: {...}}, per_example {n: {...}}, protocol, wall_sec}."""
    if not (hasattr(task, "evaluate_examples") and getattr(task.config, "task", None) == "rae3d"):
        raise ValueError(f"--views_sweep applies to 3DRAE runs (task 'rae3d'), not task {config.task!r}")
    if jax.process_count() > 1:
        raise ValueError("--views_sweep evaluates on one process; run it without the multi-process launcher")
    start = time.perf_counter()
    source = data_lib.get_source(config.data, split) if source is None else source
    if not len(source):
        raise ValueError(f"config.data ({config.data.get('name')!r}): the {split!r} split is empty")
    views = dataclasses.replace(multiview.ViewConfig.from_config(config.data.get("views")), image_dtype="float32")
    vt = views.num_target
    frames = [multiview.num_frames(source[i]) for i in range(len(source))]
    max_views = min(frames) - vt
    requested = parse_counts(counts)
    kept = tuple(n for n in requested if n <= max_views)
    if not kept:
        raise ValueError(f"--views_sweep {','.join(map(str, requested))}: the {split!r} split's shortest scene has "
                         f"{min(frames)} frames, so at most {max_views} context views beside its {vt} targets")
    transforms = list(task.data_transforms(split))
    b = resolve_batch_size(batch_size, config, len(source))
    fn = nnx.jit(task.evaluate_examples)
    figures, per_example = {}, {}
    chrono = chrono_lib.Chrono(len(kept) * len(source), 1)
    done = 0
    with sh.use_mesh(mesh, rules):
        for n in kept:
            values: dict[str, list] = {}
            for lo in range(0, len(source), b):
                idx = list(range(lo, min(lo + b, len(source))))
                exs = []
                for i in idx + [idx[-1]] * (b - len(idx)):  # the last batch padded with its last scene
                    scene = source[i]
                    ctx, tgt = sweep_frames(frames[i], vt, n)
                    exs.append(_apply(transforms, multiview.make_views(scene, ctx, tgt, views)))
                batch = {k: np.stack([np.asarray(e[k]) for e in exs]) for k in exs[0]
                         if np.asarray(exs[0][k]).dtype.kind in "biufc"}
                out = fn(model, batch, jax.random.key(0))
                for k, v in out.items():
                    values.setdefault(k, []).append(np.asarray(jax.device_get(v), np.float64)[:len(idx)])
                done += len(idx)
                if progress is not None:
                    _progress(done, len(kept) * len(source), done, chrono.tick(done), progress, unit="scene x count",
                              counted="scenes evaluated", rate="scenes/s")
            per = {k: np.concatenate(v) for k, v in values.items()}
            figures[n] = task.summarize_examples(per, b)
            per_example[n] = {k: v.tolist() for k, v in per.items()}
    protocol = (f"same {vt} target frames per scene (spread over the clip's interior); n context views spread "
                f"evenly over its other frames, the first frame always (the scene frame); {len(source)} scenes of "
                f"split {split!r}")
    return {"counts": list(kept), "requested": list(requested), "dropped": [n for n in requested if n not in kept],
            "max_views": int(max_views), "num_target": int(vt), "num_examples": len(source), "figures": figures,
            "per_example": per_example, "protocol": protocol, "wall_sec": time.perf_counter() - start}


SWEEP_COLUMNS = ("psnr", "ssim", "lpips", "depth_absrel", "depth_delta1", "chamfer", "point_err", "psnr_context_mean")


def format_rows(rows) -> str:
    """Rows of strings (the first one the header) as an aligned text table (first column left-aligned)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def sweep_table(sweep: dict) -> str:
    """The view-count sweep as a table: one row per context-view count, the split figures as columns."""
    figs = sweep["figures"]
    cols = [c for c in SWEEP_COLUMNS if any(c in f for f in figs.values())]
    rows = [("views",) + tuple(cols)]
    for n in sweep["counts"]:
        rows.append((str(n),) + tuple(f"{figs[n][c]:.4g}" if c in figs[n] else "-" for c in cols))
    return format_rows(rows)


def summary_tables(task, metrics: dict) -> list[str]:
    """A task's own tables of its split figures (``task.summary_rows(metrics) -> {title: rows}``, e.g. 3DDiT's
    figures per condition type), as titled text tables."""
    if not hasattr(task, "summary_rows"):
        return []
    return [f"{title}\n{format_rows(rows)}" for title, rows in task.summary_rows(metrics).items() if len(rows) > 1]


# ------------------------------------------------------------------------------------------------------------
# Output


def table(result: dict) -> str:
    """The printed table: the split figures, each with mean / std / min / max over the examples where it has
    per-example values of the same name, then the per-example values that are not split figures themselves."""
    per, figures = result["per_example"], result["metrics"]
    rows = [("metric", "split", "mean", "std", "min", "max")]
    names = sorted(figures) + sorted(k for k in per if k not in figures and k not in ("index", "scene_index")
                                     and np.isfinite(np.asarray(per[k], np.float64)).any())  # e.g. depth w/o depth
    for name in names:
        a = np.asarray(per[name], np.float64) if name in per else None
        stats = ["", "", "", ""] if a is None else [f"{x:.5g}" for x in (np.mean(a), np.std(a), np.min(a),
                                                                          np.max(a))]
        rows.append((name, f"{figures[name]:.5g}" if name in figures else "-", *stats))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def _finite(x):
    """JSON-safe: non-finite floats -> None (nested)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scene3d.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run directory (config.json + checkpoints/)")
    p.add_argument("--split", default="eval", choices=sorted(SPLITS),
                   help="data split: train, eval (held out) or test (= eval)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch_size", type=int, default=None, help="default: config.eval_batch_size")
    p.add_argument("--seed", type=int, default=0, help="model randomness (samplers, renderers)")
    p.add_argument("--data_seed", type=int, default=0,
                   help="random data transforms (view choice, crops); 0 = the trainer's evaluation")
    p.add_argument("--no_ema", action="store_true", help="use the raw parameters even if the run kept an EMA")
    p.add_argument("--out", default=None, help="json file (default: WORKDIR/eval_<split>_<step>.json; with "
                                                 "--index WORKDIR/eval_<split>_<step>_<index file stem>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--index", default=None,
                   help="SceneTok runs: an evaluation index file of the release (its scenes' context / target "
                        "frames); PSNR / SSIM / LPIPS per frame, scene and overall")
    p.add_argument("--inception_weights", default=None,
                   help="FID / KID: the FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth); "
                        "default config.metrics.inception_weights")
    p.add_argument("--i3d_weights", default=None,
                   help="FVD: the Kinetics-400 I3D weights (pytorch-i3d's rgb_imagenet.pt); default "
                        "config.metrics.i3d_weights")
    p.add_argument("--views_sweep", default=None,
                   help="3DRAE runs: comma-separated context-view counts (e.g. 2,4,8,16,32) evaluated on the same "
                        "targets of every scene, printed as a table (default config.metrics.views_sweep; '' none)")
    args = p.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def _main_index(args) -> dict:
    try:
        index = eval_index.read_index(args.index)
        family = runs.read_config(args.workdir).task
        if family != "scenetok":
            raise ValueError(f"--index: evaluation index files apply to SceneTok runs (task 'scenetok'); "
                             f"{args.workdir} is a {family!r} run")
        task, model, info = load_run(args.workdir, step=args.step, prefer_ema=not args.no_ema)
        result = evaluate_index(task, model, info["config"], index, split=SPLITS[args.split], seed=args.seed,
                                mesh=info["mesh"], rules=info["rules"], progress=None if args.quiet else sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"scene3d.evaluate: {e}") from e
    record = {"workdir": os.path.abspath(args.workdir), "task": info["config"].task, "step": info["step"],
              "variables": info["key"], "split": args.split, "data_split": SPLITS[args.split], "seed": args.seed,
              "devices": jax.device_count(), **result}
    stem = os.path.splitext(os.path.basename(args.index))[0]
    out = args.out or os.path.join(args.workdir, f"eval_{args.split}_{info['step']}_{stem}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    io.write_json(out, _finite(record), indent=1)
    miss = result["missing"]
    m = result["metrics"]
    print(f"{info['config'].task} run {record['workdir']} | step {info['step']} ({info['key']}) | split {args.split} "
          f"| index {args.index}: {result['num_examples']} of {len(index)} scenes, {int(m['num_frames'])} target "
          f"frames | {result['wall_sec']:.1f} s")
    if miss["count"]:
        print(f"{miss['count']} scenes of the index are not in the split (first: {', '.join(miss['first'])})")
    if index.skipped:
        print(f"{len(index.skipped)} null entries of the index skipped")
    print(result["lpips"])
    print(table(result))
    print(f"wrote {out}", file=sys.stderr)
    record["out"] = out
    return record


def main(argv=None) -> dict:
    args = parse_args(argv)
    compile_cache.enable_for_run(args.workdir)  # before anything compiles: a second evaluation loads the programs
    if args.index is not None:
        return _main_index(args)
    try:
        task, model, info = load_run(args.workdir, step=args.step, prefer_ema=not args.no_ema)
        features = FeatureMetrics.from_config(info["config"], inception_weights=args.inception_weights,
                                              i3d_weights=args.i3d_weights)
        result = evaluate_split(task, model, info["config"], split=SPLITS[args.split], batch_size=args.batch_size,
                                seed=args.seed, data_seed=args.data_seed, mesh=info["mesh"], rules=info["rules"],
                                progress=None if args.quiet else sys.stderr, features=features)
        counts = args.views_sweep
        if counts is None:
            counts = (info["config"].get("metrics") or {}).get("views_sweep")
        sweep = None
        if parse_counts(counts):
            sweep = views_sweep(task, model, info["config"], counts, split=SPLITS[args.split],
                                batch_size=args.batch_size, mesh=info["mesh"], rules=info["rules"],
                                progress=None if args.quiet else sys.stderr)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"scene3d.evaluate: {e}") from e
    record = {"workdir": os.path.abspath(args.workdir), "task": info["config"].task, "step": info["step"],
              "variables": info["key"], "split": args.split, "data_split": SPLITS[args.split], "seed": args.seed,
              "data_seed": args.data_seed, "devices": jax.device_count(), **result}
    if sweep is not None:
        record["views_sweep"] = sweep
    out = args.out or os.path.join(args.workdir, f"eval_{args.split}_{info['step']}.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        io.write_json(out, _finite(record), indent=1)
        print(f"{info['config'].task} run {record['workdir']} | step {info['step']} ({info['key']}) | split "
              f"{args.split}: {result['num_examples']} examples in {result['num_batches']} batches of "
              f"{result['batch_size']} ({result['padded']} padded rows masked) | {result['wall_sec']:.1f} s")
        if "convention" in result:
            print(result["convention"]["summary"])
        if result["generation"]:
            print(result["generation"])
        print(table(result))
        for text in summary_tables(task, result["metrics"]):
            print(text)
        if sweep is not None:
            dropped = (f"; counts {sweep['dropped']} dropped: at most {sweep['max_views']} context views fit"
                       if sweep["dropped"] else "")
            print(f"view-count sweep ({sweep['protocol']}{dropped}):")
            print(sweep_table(sweep))
        print(f"wrote {out}", file=sys.stderr)
    record["out"] = out
    return record


if __name__ == "__main__":
    main()
