"""tfds builders writing ArrayRecord files, without TensorFlow, and their random-access scene sources.

tensorflow-datasets 4.9 prepares and reads `file_format='array_record'` datasets without TensorFlow as long as
every feature is a `tfds.features.Tensor` / `Scalar` / `Text` (encoded by tfds' own protobuf / numpy code).
`tfds.features.Image` is the exception: its encoder calls `tf.image`, so images are stored here as PNG (or the
source JPEG) bytes in a `Tensor(shape=(None,), dtype=object)` feature, encoded and decoded with PIL. Dense
per-pixel arrays use `Encoding.ZLIB`. Reading goes through `builder.as_data_source()` (random access, what grain
wants). Nothing downloads: builders read a local folder (`source_dir`).

- `Scene3dBuiltin`: the built-in pybullet scenes (`scene3d.data.builtin`); the .npz files are built first when
  the source folder lacks them. Configs: the `builtin.PRESETS` names or a custom `BuiltinConfig`.
  Splits: 'train' = scenes [0, n - num_eval), 'eval' = the last num_eval.
- `Scene3dClips`: a folder of clips in RealEstate10K style (frames + pose .txt per clip) or DL3DV style
  (transforms.json per clip). Splits: `train/` and `test/` subfolders when present ('test' -> 'eval'), else a
  hash split with `eval_fraction`. Frames are stored as their original file bytes, or as PNG after a
  resize + centre crop when `image_size` is set (intrinsics updated).
- `Scene3dPrepared3dgs`: scenes prepared for Can3Tok by `python -m scene3d.data.prepare_3dgs` (cropped, normalised
  Gaussians, normalised cameras, seed, caption), written from its per-scene files; read with
  `prepared_3dgs_source`.

Records follow the scene record of `scene3d.data.multiview` (plus `gaussians`, `trajectory`, `bounds`,
`near_far`, `seed` for built-in scenes and `timestamps` for clips); `TfdsSceneSource` returns them with
`scene_id` as str.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from scene3d.data import builtin, captures, multiview

# tfds finds a builder's source file through `importlib_resources` (a package we do not install) unless the
# class states it: each builder sets `code_path` to this file (no checksums.tsv here: nothing is downloaded).
_CODE_PATH = epath.Path(__file__)

_ENC = tfds.features.Encoding.ZLIB


def _camera_features():
    return {
        "scene_id": tfds.features.Text(),
        "images": tfds.features.Tensor(shape=(None,), dtype=np.object_),  # encoded PNG / JPEG bytes per frame
        "c2w": tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
        "intrinsics": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
    }


# ----------------------------------------------------------------------------------------------- built-in


@dataclasses.dataclass(eq=False)
class BuiltinConfig(tfds.core.BuilderConfig):
    """A built-in dataset: `num_scenes` scenes of `spec` from `seed`, the last `num_eval` held out."""

    spec: builtin.SceneSpec = dataclasses.field(default_factory=builtin.SceneSpec)
    num_scenes: int = 32
    num_eval: int = 2
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.num_eval < self.num_scenes:
            raise ValueError(f"BuiltinConfig {self.name}: need 0 <= num_eval < num_scenes, got num_eval="
                             f"{self.num_eval}, num_scenes={self.num_scenes}")


def builtin_config(preset: str = "runlocal", spec: Optional[builtin.SceneSpec] = None,
                   num_scenes: Optional[int] = None, num_eval: Optional[int] = None, seed: int = 0) -> BuiltinConfig:
    """A `BuiltinConfig` from a preset name, optionally overriding the spec / counts (the name then encodes a
    hash of the settings, so different settings never share files)."""
    n, pspec = builtin.preset(preset)
    spec = pspec if spec is None else spec
    num_scenes = n if num_scenes is None else int(num_scenes)
    num_eval = max(1, num_scenes // 16) if num_eval is None else int(num_eval)
    name = preset
    if (spec, num_scenes, num_eval, seed) != (pspec, n, max(1, n // 16), 0):
        key = json.dumps([spec.to_json(), num_scenes, num_eval, seed], sort_keys=True)
        name = f"{preset}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    return BuiltinConfig(name=name, version="1.0.0", spec=spec, num_scenes=num_scenes, num_eval=num_eval, seed=seed,
                         description=f"built-in scenes: {num_scenes} x {spec}")


class Scene3dBuiltin(tfds.core.GeneratorBasedBuilder):
    """The built-in pybullet multi-view scenes as ArrayRecord files."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = _CODE_PATH
    BUILDER_CONFIGS = [builtin_config(p) for p in builtin.PRESETS]

    def __init__(self, *, source_dir=None, num_workers: int = 1, **kwargs):
        """source_dir: folder of the .npz scenes (built there if missing); default `<data_dir>/scene3d_builtin_npz/
        <config name>`. Other kwargs (data_dir, config, ...) go to tfds; file_format defaults to array_record."""
        kwargs.setdefault("file_format", "array_record")
        self._source_dir = source_dir
        self._num_workers = int(num_workers)
        super().__init__(**kwargs)

    def _info(self):
        s = self.builder_config.spec
        feats = _camera_features()
        feats.update({
            "depth": tfds.features.Tensor(shape=(None, s.height, s.width), dtype=np.float32, encoding=_ENC),
            "mask": tfds.features.Tensor(shape=(None, s.height, s.width), dtype=np.bool_, encoding=_ENC),
            "trajectory": tfds.features.Tensor(shape=(None,), dtype=np.int8),
            "gaussians": tfds.features.Tensor(shape=(None, builtin.GAUSSIAN_CHANNELS), dtype=np.float32,
                                              encoding=_ENC),
            "bounds": tfds.features.Tensor(shape=(2, 3), dtype=np.float32),
            "near_far": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "seed": tfds.features.Scalar(dtype=np.int64),
        })
        return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                     features=tfds.features.FeaturesDict(feats), disable_shuffling=True)

    def source_dir(self) -> pathlib.Path:
        if self._source_dir is not None:
            return pathlib.Path(self._source_dir)
        return pathlib.Path(self.data_dir_root) / "scene3d_builtin_npz" / self.builder_config.name

    def _split_generators(self, dl_manager):
        c = self.builder_config
        src = self.source_dir()
        builtin.build_dataset(src, c.num_scenes, c.spec, seed=c.seed, num_workers=self._num_workers)
        n_train = c.num_scenes - c.num_eval
        splits = {"train": self._generate_examples(src, range(n_train))}
        if c.num_eval:
            splits["eval"] = self._generate_examples(src, range(n_train, c.num_scenes))
        return splits

    def _generate_examples(self, src, indices):
        for i in indices:
            yield i, builtin_record(builtin.load_scene(pathlib.Path(src) / builtin.scene_filename(i)), i)


def builtin_record(scene: dict, index: int) -> dict:
    """A `builtin.build_scene` dict -> the stored record (PNG frames; points dropped: derived from depth)."""
    return {
        "scene_id": f"builtin/{index:06d}",
        "images": multiview.object_array(multiview.encode_png(im) for im in scene["images"]),
        "c2w": scene["c2w"].astype(np.float32), "intrinsics": scene["intrinsics"].astype(np.float32),
        "depth": scene["depth"].astype(np.float32), "mask": scene["mask"].astype(bool),
        "trajectory": scene["trajectory"].astype(np.int8), "gaussians": scene["gaussians"].astype(np.float32),
        "bounds": scene["bounds"].astype(np.float32), "near_far": scene["near_far"].astype(np.float32),
        "seed": int(scene["seed"]),
    }


# ----------------------------------------------------------------------------------------------- clips


@dataclasses.dataclass(eq=False)
class ClipsConfig(tfds.core.BuilderConfig):
    """A folder of clips: `layout` 're10k' | 'dl3dv'; optional build-time `image_size` (h, w)."""

    layout: str = "re10k"
    image_size: Optional[tuple] = None
    eval_fraction: float = 0.0

    def __post_init__(self):
        if self.layout not in captures.LAYOUTS:
            raise ValueError(f"ClipsConfig {self.name}: layout must be one of {captures.LAYOUTS}, got {self.layout!r}")
        if self.image_size is not None:
            self.image_size = tuple(int(x) for x in self.image_size)
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"ClipsConfig {self.name}: image_size must be (h, w), got {self.image_size}")


class Scene3dClips(tfds.core.GeneratorBasedBuilder):
    """User clips (RealEstate10K / DL3DV style folders) as ArrayRecord files."""

    code_path = _CODE_PATH
    VERSION = tfds.core.Version("1.0.0")  # no registered configs: every dataset passes its own ClipsConfig

    def __init__(self, *, source_dir=None, **kwargs):
        """source_dir: the folder of clips (needed to prepare, not to read a prepared dataset)."""
        kwargs.setdefault("file_format", "array_record")
        self._source_dir = None if source_dir is None else pathlib.Path(source_dir)
        super().__init__(**kwargs)

    def _info(self):
        feats = _camera_features()
        feats["timestamps"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
        return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                     features=tfds.features.FeaturesDict(feats), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        if self._source_dir is None:
            raise ValueError(f"Scene3dClips({c.name}): source_dir (the folder of clips) is needed to prepare")
        root = self._source_dir
        named = {s: root / d for s, d in (("train", "train"), ("eval", "test")) if (root / d).is_dir()}
        if named:
            groups = {s: captures.list_clips(d, c.layout) for s, d in named.items()}
        else:
            train, held = captures.split_clips(captures.list_clips(root, c.layout), c.eval_fraction)
            groups = {"train": train, "eval": held}
        groups = {s: g for s, g in groups.items() if g}
        if not groups:
            raise ValueError(f"{root}: no {c.layout} clips found")
        return {s: self._generate_examples(g) for s, g in groups.items()}

    def _generate_examples(self, clips):
        c = self.builder_config
        for clip in clips:
            cap = captures.read_clip(clip, c.layout)
            rec = cap.scene_record(c.image_size)
            if "timestamps" not in rec:
                rec["timestamps"] = np.arange(len(cap), dtype=np.int64)
            yield cap.scene_id, rec


# ----------------------------------------------------------------------------------------------- reading


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """`download_and_prepare` (a no-op when prepared; never downloads); returns the builder."""
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS, try_download_gcs=False))
    return builder


class TfdsSceneSource:
    """Random-access scene records of one split of a prepared builder (`scene_id` decoded to str)."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
        splits = builder.info.splits
        if split not in splits:
            raise ValueError(f"{builder.name}/{builder.builder_config.name if builder.builder_config else ''}: "
                             f"no split {split!r} (has {sorted(splits)})")
        self.name = f"{builder.name}:{split}"
        self.source = builder.as_data_source(split=split)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        rec = dict(self.source[i])
        sid = rec.get("scene_id")
        if isinstance(sid, bytes):
            rec["scene_id"] = sid.decode()
        return rec

    def __repr__(self):
        return f"TfdsSceneSource({self.name}, {len(self)} scenes)"


def builtin_source(data_dir, split: str, config=None, source_dir=None, num_workers: int = 1) -> TfdsSceneSource:
    """Prepare (if needed) and open the built-in dataset; `config` is a preset name or a `BuiltinConfig`."""
    config = config or "runlocal"
    if isinstance(config, str):
        builtin.preset(config)  # clear error for an unknown preset
    b = Scene3dBuiltin(data_dir=str(data_dir), config=config, source_dir=source_dir, num_workers=num_workers)
    return TfdsSceneSource(prepare(b), split)


def clips_source(data_dir, split: str, source_dir=None, layout: str = "re10k", name: Optional[str] = None,
                 image_size=None, eval_fraction: float = 0.0) -> TfdsSceneSource:
    """Prepare (if needed) and open a clips dataset stored as config `name` (default: the layout name)."""
    config = ClipsConfig(name=name or layout, version="1.0.0", layout=layout,
                         image_size=None if image_size is None else tuple(image_size), eval_fraction=eval_fraction)
    b = Scene3dClips(data_dir=str(data_dir), config=config, source_dir=source_dir)
    return TfdsSceneSource(prepare(b), split)


# ----------------------------------------------------------------------------------------------- prepared 3DGS


@dataclasses.dataclass(eq=False)
class Prepared3dgsConfig(tfds.core.BuilderConfig):
    """A prepared 3DGS dataset: every example holds exactly `num_gaussians` rows of `num_channels` raw channels."""

    num_gaussians: int = 1
    num_channels: int = 14


def prepared_3dgs_features(num_gaussians: int, num_channels: int) -> dict:
    """Features of a `python -m scene3d.data.prepare_3dgs` example (that module's docstring describes them)."""
    return {
        "scene_id": tfds.features.Text(),
        "gaussians": tfds.features.Tensor(shape=(num_gaussians, num_channels), dtype=np.float32, encoding=_ENC),
        "center": tfds.features.Tensor(shape=(3,), dtype=np.float64),
        "scale": tfds.features.Scalar(dtype=np.float64),
        "seed": tfds.features.Tensor(shape=(3,), dtype=np.float32),
        "seed_source": tfds.features.Text(),
        "c2w": tfds.features.Tensor(shape=(None, 4, 4), dtype=np.float32),
        "intrinsics": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        "camera_names": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        "caption": tfds.features.Text(),
        "source_file": tfds.features.Text(),
        "num_input": tfds.features.Scalar(dtype=np.int64),
    }


def prepared_3dgs_record(path) -> dict:
    """One example from the .npz file `prepare_3dgs` writes per scene (0-d str arrays -> str, names -> bytes)."""
    with np.load(path, allow_pickle=False) as z:
        rec = {k: z[k] for k in z.files}
    for k in ("scene_id", "seed_source", "caption", "source_file"):
        rec[k] = str(rec[k])
    rec["camera_names"] = multiview.object_array(str(n).encode() for n in rec["camera_names"])
    return rec


class Scene3dPrepared3dgs(tfds.core.GeneratorBasedBuilder):
    """Scenes prepared for Can3Tok training (`python -m scene3d.data.prepare_3dgs`) as ArrayRecord files."""

    code_path = _CODE_PATH
    VERSION = tfds.core.Version("1.0.0")  # no registered configs: every dataset passes its own Prepared3dgsConfig

    def __init__(self, *, examples=None, **kwargs):
        """examples: {split: [per-scene .npz files]} in storage order (needed to prepare, not to read)."""
        kwargs.setdefault("file_format", "array_record")
        self._examples = examples
        super().__init__(**kwargs)

    def _info(self):
        c = self.builder_config
        return tfds.core.DatasetInfo(builder=self, description=c.description,
                                     features=tfds.features.FeaturesDict(prepared_3dgs_features(c.num_gaussians,
                                                                                                c.num_channels)),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        if not self._examples:
            raise ValueError(f"Scene3dPrepared3dgs({self.builder_config.name}): examples (the per-scene files) "
                             "are needed to prepare")
        return {s: self._generate_examples(files) for s, files in self._examples.items() if files}

    def _generate_examples(self, files):
        for f in files:
            rec = prepared_3dgs_record(f)
            yield rec["scene_id"], rec


def prepared_3dgs_source(dataset_dir, split: str) -> TfdsSceneSource:
    """Open one split of a written `Scene3dPrepared3dgs` dataset folder (`<data_dir>/<name>/<config>/<version>`)."""
    return TfdsSceneSource(tfds.builder_from_directory(str(dataset_dir)), split)
