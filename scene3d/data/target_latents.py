"""Precomputed target latents in the SceneTok release's training layout: the dataset, its writer and its view sampler.

The release trains SceneTok on latents computed once per clip (its ``src/scripts/precompute_latents``): a clip's
frames, resized and centre-cropped to the training size, go through the target video autoencoder (Video DC-AE: 4
frames per latent, trailing frames dropped; Wan: 5 latents per 17 frames) and again mirrored left-right (the
``_flipped`` copy: image flipped, world and camera x axes reflected). ``python -m scene3d.data.encode_targets``
writes such a dataset (this module holds everything but the autoencoder, which lives above the data layer).

Dataset folder ``DIR``:

  DIR/target_latents.json                       settings (autoencoder, resolution, latent shape, frames per latent,
                                                flip) and per split the number of clips, shards and whether done
  DIR/scene3d_target_latents/<split>_<k:05d>/   one tfds ArrayRecord dataset per shard of ``shard_size`` clips;
                                                a shard is written whole or not at all (tfds renames its folder
                                                when done), so an interrupted run resumes at the first missing one

Record (one per clip; V frames, t latents):

  scene_id         str
  images           object (V,) PNG bytes of every frame at the training size (the frames the latents were
                   computed from; the context views are encoded by the run's image compressor on the fly)
  c2w              float32 (V, 4, 4) OpenCV camera-to-world, as the source gives them (no rescaling)
  intrinsics       float32 (V, 4) normalised (fx/W, fy/H, cx/W, cy/H) after the resize + crop
  latents          float16 (t, h, w, C) target latents of frames 0 .. frames_used(V) - 1 (already multiplied by
                   the autoencoder's scaling: 0.493 for the Video DC-AE), float16 as the release stores them
  latents_flipped  float16 (t, h, w, C) the same for the mirrored frames ((0, h, w, C) when written without flip)

Every frame's camera is kept (not only the frames the latents cover): the release picks the context views over
the whole clip (its VA-VAE latents are per frame), and only the target latents are cut to whole latents.

The release's training view sampler (``ReleaseViewTransform``; its ``view_sampler_unbounded.py`` with the RE10K
settings): ``num_context`` context views by farthest-point sampling of the poses over the whole clip (squared
centre distance + squared rotation angle, from a random first view), ``num_target`` contiguous target latents in
one chunk or, with probability ``target_split_prob``, ``num_target_split`` chunks starting on a ``chunk_gap``
grid of latent indices (chunks in random order; evaluation: one chunk on a ``eval_chunk_gap`` grid), the mirrored
copy with probability ``flip_prob`` (training only), and every pose expressed relative to one context camera
(random in training, the release's ``preprocess_batch``; ``num_context // 2`` in evaluation, its test choice).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

import grain
import numpy as np

from scene3d.core.config import dataclass_from_config
from scene3d.data import multiview

SETTINGS_FILE = "target_latents.json"
BUILDER_NAME = "scene3d_target_latents"
KINDS = ("videodc", "wan")
FORMAT_VERSION = 1

# The random tiny Video DC-AE of the release_runlocal config and of ``encode_targets --random_tiny``: the released
# block layout (ResBlock stages, then EfficientViT stages; 4x temporal) at 8x spatial compression, so that 32 px
# clips give 4 x 4 latent grids (the 'tiny' variant compresses 32x: one latent pixel per 32 px frame).
RANDOM_TINY_AE = dict(kind="videodc", variant="tiny", seed=0, overrides=dict(
    width_list=(8, 16, 32, 32), encoder_depth=(1, 1, 2, 1), decoder_depth=(1, 1, 2, 1),
    block_type=("ResBlock", "ResBlock", "EViTS5_GLU", "EViTS5_GLU"), temporal=(False, True, True, False)))


def frames_used(kind: str, num_frames: int) -> int:
    """Leading frames a clip's target latents cover: whole latents of 4 frames (videodc) / 17-frame groups (wan)."""
    if kind == "videodc":
        return num_frames // 4 * 4
    if kind == "wan":
        return num_frames // 17 * 17
    raise ValueError(f"target latents: kind must be one of {KINDS}, got {kind!r}")


def num_latents(kind: str, num_frames: int) -> int:
    used = frames_used(kind, num_frames)
    return used // 4 if kind == "videodc" else used // 17 * 5


def reflect_c2w(c2w: np.ndarray) -> np.ndarray:
    """The mirrored clip's cameras: ``F @ c2w @ F`` with F = diag(-1, 1, 1, 1) (world x and camera x reflected;
    the release's ``reflect_extrinsics``)."""
    f = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float64)
    return (f @ np.asarray(c2w, np.float64) @ f).astype(np.float32)


def reflect_intrinsics(intrinsics: np.ndarray) -> np.ndarray:
    """Normalised intrinsics of the mirrored image: cx -> 1 - cx (the release keeps K as is, the same for the
    centred principal points of RealEstate10K)."""
    k = np.array(intrinsics, np.float32, copy=True)
    k[..., 2] = 1.0 - k[..., 2]
    return k


# ================================================================================================ settings file


def settings_path(root) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(root))) / SETTINGS_FILE


def read_settings(root) -> dict:
    p = settings_path(root)
    if not p.is_file():
        raise ValueError(f"{p.parent}: not a target-latents dataset (no {SETTINGS_FILE}); write one with "
                         "`python -m scene3d.data.encode_targets`")
    return json.loads(p.read_text())


def _write_json(path: pathlib.Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ================================================================================================ tfds shards


def _builder_class():
    """The tfds builder (created on first use: importing tensorflow_datasets takes seconds)."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    import tensorflow_datasets as tfds
    from etils import epath

    @dataclasses.dataclass(eq=False)
    class ShardConfig(tfds.core.BuilderConfig):
        split: str = "train"
        latent_shape: tuple = (1, 1, 1)  # (h, w, C)

    class Scene3dTargetLatents(tfds.core.GeneratorBasedBuilder):
        """One shard of a target-latents dataset (module docstring); records come from ``examples``."""

        VERSION = tfds.core.Version("1.0.0")
        code_path = epath.Path(__file__)

        def __init__(self, *, examples=None, **kwargs):
            kwargs.setdefault("file_format", "array_record")
            self._examples = examples
            super().__init__(**kwargs)

        def _info(self):
            h, w, c = self.builder_config.latent_shape
            lat = tfds.features.Tensor(shape=(None, h, w, c), dtype=np.float16)
            feats = {"scene_id": tfds.features.Text(),
                     "images": tfds.features.Tensor(shape=(None,), dtype=np.object_),
                     "c2w": tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
                     "intrinsics": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                     "latents": lat, "latents_flipped": lat}
            return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                         features=tfds.features.FeaturesDict(feats), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            if self._examples is None:
                raise ValueError(f"{self.builder_config.name}: shard not written and no examples to write")
            return {self.builder_config.split: self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples

    _BUILDER = (ShardConfig, Scene3dTargetLatents)
    return _BUILDER


_BUILDER = None


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def shard_dir(root, split: str, index: int) -> pathlib.Path:
    return pathlib.Path(os.path.expanduser(str(root))) / BUILDER_NAME / shard_name(split, index) / "1.0.0"


def _empty_marker(root, split: str, index: int) -> pathlib.Path:
    return shard_dir(root, split, index).parent / "EMPTY"


def shard_done(root, split: str, index: int) -> bool:
    """A finished shard: tfds wrote its dataset_info.json (it renames the folder into place when done), or every
    clip of it was skipped (an EMPTY marker: tfds writes no split without examples)."""
    return (shard_dir(root, split, index) / "dataset_info.json").is_file() or \
        _empty_marker(root, split, index).is_file()


def _write_shard(root, split: str, index: int, latent_shape, examples) -> None:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()  # our own progress line (Progress) says where the run is
    config_cls, builder_cls = _builder_class()
    cfg = config_cls(name=shard_name(split, index), version="1.0.0", split=split,
                     latent_shape=tuple(int(s) for s in latent_shape),
                     description=f"target latents, {split} shard {index}")
    b = builder_cls(data_dir=str(pathlib.Path(os.path.expanduser(str(root)))), config=cfg, examples=examples)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS, try_download_gcs=False))


# ================================================================================================ writing


def _scene_id(rec) -> str:
    return multiview._scene_id(rec)  # noqa: SLF001  (the one scene-id reader of the data layer)


def clip_frames(rec: Mapping, resolution: Sequence[int], resample: str = "lanczos"):
    """A scene record -> (uint8 frames (V, h, w, 3) resized + centre-cropped, intrinsics (V, 4), c2w (V, 4, 4)),
    checked: a ValueError names the clip for mismatched counts, frames of different sizes, non-finite cameras."""
    sid = _scene_id(rec)
    v = multiview.num_frames(rec)
    c2w = np.asarray(rec["c2w"], np.float64)
    intr = np.asarray(rec["intrinsics"], np.float64)
    if not (np.isfinite(c2w).all() and np.isfinite(intr).all()):
        raise ValueError(f"clip {sid}: non-finite camera poses or intrinsics")
    try:
        images = multiview._take_images(rec["images"], np.arange(v), sid, None)  # noqa: SLF001
    except ValueError:
        raise
    except Exception as e:  # an undecodable frame (PIL raises its own errors)
        raise ValueError(f"clip {sid}: cannot decode its frames ({type(e).__name__}: {e})") from e
    try:
        out = multiview.resize_and_crop(images, intr, tuple(int(s) for s in resolution), resample=resample)
    except ValueError as e:
        raise ValueError(f"clip {sid}: {e}") from None
    return out["images"], out["intrinsics"].astype(np.float32), c2w.astype(np.float32)


def clip_record(rec: Mapping, encoder: Callable[[np.ndarray], np.ndarray], *, kind: str, resolution,
                flip: bool, latent_shape) -> dict:
    """Encode one clip (module docstring's record). ``encoder(frames (T, h, w, 3) float32 in [0, 1])`` -> latents
    (t, h', w', C) for the ``frames_used`` leading frames."""
    sid = _scene_id(rec)
    frames, intr, c2w = clip_frames(rec, resolution)
    used = frames_used(kind, len(frames))

    def enc(x):
        lat = np.asarray(encoder(x[:used].astype(np.float32) / 255.0), np.float32)
        want = (num_latents(kind, len(frames)),) + tuple(latent_shape)
        if lat.shape != want:
            raise ValueError(f"clip {sid}: the autoencoder gave latents {lat.shape}, expected {want}")
        if not np.isfinite(lat).all():
            raise ValueError(f"clip {sid}: non-finite target latents (bad frames or autoencoder weights)")
        return lat.astype(np.float16)

    latents = enc(frames)
    flipped = enc(frames[:, :, ::-1]) if flip else np.zeros((0,) + tuple(latent_shape), np.float16)
    return {"scene_id": sid, "images": multiview.object_array(multiview.encode_png(f) for f in frames),
            "c2w": c2w, "intrinsics": intr, "latents": latents, "latents_flipped": flipped}


class Progress:
    """One stderr line per clip (at most every ``every`` seconds): split, shard, clip, rate and ETA."""

    def __init__(self, total: int, every: float = 2.0, stream=None):
        self.total, self.every, self.stream = int(total), float(every), stream or sys.stderr
        self.done, self.start, self.last = 0, time.monotonic(), -1e9

    def tick(self, text: str, force: bool = False) -> None:
        self.done += 1
        now = time.monotonic()
        if not force and now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = max(self.total - self.done, 0) / max(rate, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if self.done else "?"
        print(f"encode_targets: {text} | {self.done}/{self.total} clips | {rate:.2f} clips/s | ETA {eta}",
              file=self.stream, flush=True)


def write_dataset(root, sources: Mapping[str, Sequence], encoder: Callable[[np.ndarray], np.ndarray], *,
                  settings: Mapping, shard_size: int = 256, log: Callable[[str], None] | None = None) -> dict:
    """Write (or finish) a target-latents dataset in ``root`` from random-access scene-record ``sources``
    ({split: source}).

    ``settings`` must hold ``kind`` (KINDS), ``resolution`` (h, w), ``latent_shape`` (h', w', C), ``flip`` and
    ``min_frames``, plus anything describing the autoencoder; they are stored in ``target_latents.json``, and a
    folder written with other settings is refused (ValueError). Shard k of a split holds the clips k * shard_size ..
    of its source, in source order; finished shards are skipped, so a rerun resumes. Clips with fewer than
    ``min_frames`` frames (or less than one latent) are skipped and counted (the release's precompute scripts skip
    them too). Returns the settings as written."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    root = pathlib.Path(os.path.expanduser(str(root)))
    kind = settings["kind"]
    if kind not in KINDS:
        raise ValueError(f"target latents: kind must be one of {KINDS}, got {kind!r}")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    fixed = {k: v for k, v in settings.items()}
    fixed.update(format=FORMAT_VERSION, shard_size=int(shard_size), resolution=[int(s) for s in settings["resolution"]],
                 latent_shape=[int(s) for s in settings["latent_shape"]])
    fixed = json.loads(json.dumps(fixed))  # plain JSON values (tuples -> lists) for the comparison below
    path = settings_path(root)
    splits_state = {}
    if path.is_file():
        old = json.loads(path.read_text())
        splits_state = old.pop("splits", {})
        if old != fixed:
            diff = sorted(k for k in set(old) | set(fixed) if old.get(k) != fixed.get(k))
            raise ValueError(f"{root}: holds target latents written with other settings (differing: {diff}); "
                             "write to another folder or delete this one")
    root.mkdir(parents=True, exist_ok=True)
    plan = {}
    for split, src in sources.items():
        n = len(src)
        shards = max(1, math.ceil(n / shard_size))
        todo = [k for k in range(shards) if not shard_done(root, split, k)]
        plan[split] = (n, shards, todo)
        splits_state[split] = dict(clips=n, shards=shards, complete=not todo,
                                   skipped=splits_state.get(split, {}).get("skipped", {}))
    _write_json(path, dict(fixed, splits=splits_state))
    total = sum(min(shard_size, n - k * shard_size) for n, _, todo in plan.values() for k in todo)
    finished = sum(shards - len(todo) for _, shards, todo in plan.values())
    if finished:
        log(f"encode_targets: {finished} finished shard(s) in {root} skipped")
    progress = Progress(total)
    for split, (n, shards, todo) in plan.items():
        src = sources[split]
        skipped = splits_state[split]["skipped"]
        for k in todo:
            lo, hi = k * shard_size, min(n, (k + 1) * shard_size)

            written = [0]

            def examples(split=split, k=k, lo=lo, hi=hi, written=written):
                for i in range(lo, hi):
                    rec = src[i]
                    sid = _scene_id(rec)
                    v = multiview.num_frames(rec)
                    if v < int(fixed["min_frames"]) or num_latents(kind, v) < 1:
                        skipped[sid] = f"{v} frames"
                        progress.tick(f"{split} shard {k + 1}/{shards}: skipped {sid} ({v} frames)")
                        continue
                    out = clip_record(rec, encoder, kind=kind, resolution=fixed["resolution"], flip=fixed["flip"],
                                      latent_shape=fixed["latent_shape"])
                    progress.tick(f"{split} shard {k + 1}/{shards}: {sid}")
                    written[0] += 1
                    yield f"{i:09d}", out

            try:
                _write_shard(root, split, k, fixed["latent_shape"], examples())
            except AssertionError:
                if written[0]:
                    raise
                marker = _empty_marker(root, split, k)  # every clip skipped: tfds refuses an empty split
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("every clip of this shard was skipped\n")
        splits_state[split]["complete"] = True
        _write_json(path, dict(fixed, splits=splits_state))
    return dict(fixed, splits=splits_state)


# ================================================================================================ reading


class TargetLatentsSource:
    """Random-access records (module docstring) of one split of a written dataset: its shards concatenated."""

    def __init__(self, root, split: str):
        import tensorflow_datasets as tfds
        self.root = pathlib.Path(os.path.expanduser(str(root)))
        self.settings = read_settings(self.root)
        info = self.settings.get("splits", {}).get(split)
        if info is None:
            raise ValueError(f"{self.root}: no split {split!r} (has {sorted(self.settings.get('splits', {}))})")
        if not info.get("complete"):
            raise ValueError(f"{self.root}: split {split!r} is not completely written; run encode_targets again "
                             "to finish it")
        self.split, self.sources, starts = split, [], [0]
        for k in range(int(info["shards"])):
            d = shard_dir(self.root, split, k)
            if _empty_marker(self.root, split, k).is_file():
                continue
            src = tfds.builder_from_directory(str(d)).as_data_source(split=split)
            if len(src):
                self.sources.append(src)
                starts.append(starts[-1] + len(src))
        self.starts = np.asarray(starts)
        if not len(self):
            raise ValueError(f"{self.root}: split {split!r} holds no clips")

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"TargetLatentsSource: index {i} out of range for {len(self)} clips")
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        rec = dict(self.sources[s][i - int(self.starts[s])])
        if isinstance(rec.get("scene_id"), bytes):
            rec["scene_id"] = rec["scene_id"].decode()
        return rec

    def __repr__(self):
        return f"TargetLatentsSource({self.root}:{self.split}, {len(self)} clips)"


# ================================================================================================ view sampling


def pose_distance(c2w: np.ndarray) -> np.ndarray:
    """(N, N) squared centre distance + squared rotation angle between poses (the release's ``pose_distance``,
    its axis-angle log included: the angle is clipped at 1e-6 from 0 and pi and the axis normalised by its norm +
    1e-9)."""
    c2w = np.asarray(c2w, np.float64)
    t = c2w[:, :3, 3]
    pos = np.sum(np.square(t[:, None] - t[None]), -1)
    r = c2w[:, :3, :3]
    rel = np.einsum("iba,jbc->ijac", r, r)  # R_i^T R_j
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0 + 1e-6, 1.0 - 1e-6)
    theta = np.arccos(cos)
    skew = 0.5 * (rel - np.swapaxes(rel, -1, -2))
    axis = np.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1)
    axis = axis / (np.linalg.norm(axis, axis=-1, keepdims=True) + 1e-9)
    return pos + np.sum(np.square(axis * theta[..., None]), -1)


def farthest_point_views(c2w: np.ndarray, n: int, start: int) -> np.ndarray:
    """Farthest-point sampling of ``n`` poses from ``start`` (:func:`pose_distance`; ties -> the lowest index),
    returned sorted (the release's ``fps_from_pose``; with fewer than ``n`` poses indices repeat, as there)."""
    d = pose_distance(c2w)
    chosen = np.zeros(n, np.int64)
    dist = np.full(len(d), np.inf)
    far = int(start)
    for i in range(n):
        chosen[i] = far
        dist = np.minimum(dist, d[far])
        far = int(np.argmax(dist))
    return np.sort(chosen)


@dataclasses.dataclass(frozen=True)
class ReleaseViewConfig:
    """The release's view sampler (``data.views`` of a release-layout run; module docstring)."""

    num_context: int = 12
    num_target: int = 8            # target latents per example
    num_target_split: int = 2      # chunks the targets may come in
    target_split_prob: float = 0.7  # probability of using num_target_split chunks (else one)
    chunk_gap: int = 4             # training: chunks start on multiples of this latent index
    eval_chunk_gap: int = 8
    flip_prob: float = 0.5         # training: the mirrored copy (when written)
    random_reference: bool = True  # training: poses relative to a random context camera (else num_context // 2)
    target_images: Optional[bool] = None  # emit the target frames (None: for evaluation only)

    def __post_init__(self):
        if self.num_context < 1 or self.num_target < 1 or self.num_target_split < 1:
            raise ValueError(f"config.data.views: num_context, num_target and num_target_split must be >= 1, got "
                             f"{self.num_context}, {self.num_target}, {self.num_target_split}")
        if self.num_target % self.num_target_split:
            raise ValueError(f"config.data.views: num_target_split={self.num_target_split} must divide num_target="
                             f"{self.num_target} (equal chunks of target latents)")
        if self.chunk_gap < 1 or self.eval_chunk_gap < 1:
            raise ValueError("config.data.views: chunk_gap and eval_chunk_gap must be >= 1")
        for k in ("target_split_prob", "flip_prob"):
            if not 0.0 <= float(getattr(self, k)) <= 1.0:
                raise ValueError(f"config.data.views.{k} must be in [0, 1], got {getattr(self, k)}")

    @classmethod
    def from_config(cls, cfg) -> "ReleaseViewConfig":
        return cls(**dataclass_from_config(cls, cfg, "config.data.views"))


def target_chunks(num_latents_: int, cfg: ReleaseViewConfig, rng: np.random.Generator, training: bool,
                  scene_id: str = "?") -> np.ndarray:
    """Target latent indices (num_target,): one or ``num_target_split`` contiguous chunks (random order) starting
    on the chunk grid (``chunk_gap`` in training, ``eval_chunk_gap`` else)."""
    m = cfg.num_target
    if num_latents_ < m:
        raise ValueError(f"clip {scene_id}: {num_latents_} target latents, fewer than num_target={m}")
    starts = np.arange(0, num_latents_ - m + 1, cfg.chunk_gap if training else cfg.eval_chunk_gap)
    split = min(len(starts), cfg.num_target_split) if training else 1
    if rng.random() >= cfg.target_split_prob:  # the release: one chunk with probability 1 - target_split_prob
        split = 1
    pick = rng.choice(len(starts), split, replace=False)
    return np.concatenate([np.arange(starts[p], starts[p] + m // split) for p in pick]).astype(np.int64)


def decode_frames(images, idx, sid: str, flip: bool = False) -> np.ndarray:
    """Frames ``idx`` of a record's PNG list -> float32 (n, h, w, 3) in [0, 1] (mirrored with ``flip``)."""
    out = multiview._take_images(images, np.asarray(idx), sid, None).astype(np.float32) / 255.0  # noqa: SLF001
    return out[:, :, ::-1] if flip else out


class ReleaseViewTransform(grain.transforms.RandomMap):
    """grain random map: record -> flat release-layout example:

      context_images (Vc, h, w, 3) float32 in [0, 1]; context_c2w (Vc, 4, 4); context_intrinsics (Vc, 4)
      target_latents (M, h', w', C) float32; target_c2w (M * f, 4, 4); target_intrinsics (M * f, 4)
      [target_images (M * f, h, w, 3) in [0, 1]]
      context_index (Vc,), target_index (M * f,), target_latent_index (M,), ref_index (), flipped () int32

    (f = 4 cameras per latent). Poses relative to context view ``ref_index``."""

    def __init__(self, cfg: ReleaseViewConfig, kind: str = "videodc", training: bool = True):
        if kind != "videodc":
            raise ValueError(f"ReleaseViewTransform: target latents of kind {kind!r} are not supported yet (the "
                             "release's Wan sampler differs); videodc only")
        self.cfg, self.kind, self.training = cfg, kind, bool(training)
        self.frames_per_latent = 4
        ti = cfg.target_images
        self.target_images = (not self.training) if ti is None else bool(ti)

    def random_map(self, rec: dict, rng: np.random.Generator) -> dict:
        cfg, f = self.cfg, self.frames_per_latent
        sid = _scene_id(rec)
        v = multiview.num_frames(rec)
        lat_key = "latents"
        flip = False
        if self.training and cfg.flip_prob > 0 and len(rec.get("latents_flipped", ())) and \
                rng.random() < cfg.flip_prob:
            flip, lat_key = True, "latents_flipped"
        latents = np.asarray(rec[lat_key])
        c2w = np.asarray(rec["c2w"], np.float32)
        intr = np.asarray(rec["intrinsics"], np.float32)
        if flip:
            c2w, intr = reflect_c2w(c2w), reflect_intrinsics(intr)
        if len(latents) * f > v:
            raise ValueError(f"clip {sid}: {len(latents)} latents need {len(latents) * f} frames, the clip has {v}")
        ctx = farthest_point_views(c2w, cfg.num_context, int(rng.integers(v)))
        lat_idx = target_chunks(len(latents), cfg, rng, self.training, sid)
        tgt = (lat_idx[:, None] * f + np.arange(f)[None]).reshape(-1)
        ref = int(rng.integers(cfg.num_context)) if (self.training and cfg.random_reference) else cfg.num_context // 2
        inv = np.linalg.inv(c2w[ctx[ref]].astype(np.float64))
        rel = lambda x: (inv @ x.astype(np.float64)).astype(np.float32)  # noqa: E731
        out = {"context_images": decode_frames(rec["images"], ctx, sid, flip), "context_c2w": rel(c2w[ctx]),
               "context_intrinsics": intr[ctx], "target_latents": latents[lat_idx].astype(np.float32),
               "target_c2w": rel(c2w[tgt]), "target_intrinsics": intr[tgt],
               "context_index": ctx.astype(np.int32), "target_index": tgt.astype(np.int32),
               "target_latent_index": lat_idx.astype(np.int32), "ref_index": np.int32(ref),
               "flipped": np.int32(flip)}
        if self.target_images:
            out["target_images"] = decode_frames(rec["images"], tgt, sid, flip)
        return out
