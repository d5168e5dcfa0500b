"""scene3d.data: sources (procedural, built-in rendered scenes, real-format readers), grain pipelines.

``get_source(data_config, split)`` is the one place a config's ``data.name`` is turned into a random-access source;
``get_transforms(data_config, split)`` gives the data-level grain transforms that go with it (view sampling for
multi-view scenes, crop / normalise / rotate for 3DGS scenes), to run before a task's own transforms.

``data.name`` and its fields:

  shapes             num_train, num_eval, size, seed                       (procedural 2D images)
  builtin            data_dir, preset ('runlocal' | 'clips' | 'full'), optional spec (SceneSpec fields), num_scenes,
                     num_eval, seed, source_dir, num_workers; views                   (tfds ArrayRecord, multi-view)
  clips              data_dir, source_dir (folder of clips), layout ('re10k' | 'dl3dv'), dataset_name,
                     image_size, eval_fraction; views                       (tfds ArrayRecord, multi-view)
  captures           paths (capture folders: transforms.json / LLFF / COLMAP / RE10K clip), image_size; views
                     (the same captures serve both splits: per-scene fitting)
  builtin_gaussians  as builtin; gaussians                                  (3DGS scenes of the built-in set)
  tabletop           num_train, num_eval, seed, max_objects; gaussians (scenes of gaussians.num_gaussians)
                     (procedural 3DGS scenes: ground + primitives, ``scene3d.data.tabletop``)
  ply                paths (files, folder or glob), eval_paths (default: paths); gaussians
  prepared_3dgs      path (the --out folder of ``python -m scene3d.data.prepare_3dgs``); gaussians (``prepared`` is
                     set: the scenes are already cropped and normalised; num_gaussians and radius must match)
  target_latents     path (a dataset of ``python -m scene3d.data.encode_targets``), source (the clips it encodes:
                     a data section of one of the names above, read by encode_targets --config), resolution;
                     views (``target_latents.ReleaseViewConfig``: the SceneTok release's view sampler)

``views`` holds `multiview.ViewConfig` fields, ``gaussians`` `gs_pipeline.GaussianConfig` fields. ``data_dir``
defaults to $SCENE3D_DATA_DIR or ~/.cache/scene3d/tfds.
"""
from __future__ import annotations

import os

MULTIVIEW = ("builtin", "clips", "captures")
GAUSSIAN = ("builtin_gaussians", "tabletop", "ply", "prepared_3dgs")
RELEASE = ("target_latents",)
KNOWN = ("shapes",) + MULTIVIEW + GAUSSIAN + RELEASE


def _get(cfg, key, default=None):
    v = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if v is None else v


def _data_dir(cfg):
    return os.path.expanduser(_get(cfg, "data_dir", os.environ.get("SCENE3D_DATA_DIR", "~/.cache/scene3d/tfds")))


def _builtin(cfg, split):
    from scene3d.data import builtin, tfds_builders
    preset = _get(cfg, "preset", "runlocal")
    spec = _get(cfg, "spec")
    if spec is not None:
        spec = builtin.SceneSpec.from_json(dict(spec.to_dict() if hasattr(spec, "to_dict") else spec))
    custom = any(_get(cfg, k) is not None for k in ("num_scenes", "num_eval")) or spec is not None or \
        _get(cfg, "seed", 0) != 0
    config = tfds_builders.builtin_config(preset, spec, _get(cfg, "num_scenes"), _get(cfg, "num_eval"),
                                          int(_get(cfg, "seed", 0))) if custom else preset
    return tfds_builders.builtin_source(_data_dir(cfg), split, config, _get(cfg, "source_dir"),
                                        int(_get(cfg, "num_workers", 1)))


def get_source(data_config, split: str):
    """Random-access source (``__len__``/``__getitem__`` -> dict of numpy arrays) for ``split`` ('train'|'eval')."""
    name = data_config.name
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if name == "shapes":
        from scene3d.data.procedural_shapes import ShapesSource
        n = data_config.num_train if split == "train" else data_config.num_eval
        # Disjoint seeds keep the eval split out of training.
        return ShapesSource(n, size=data_config.size, seed=data_config.get("seed", 0) + (0 if split == "train" else 10_000))
    if name == "tabletop":
        from scene3d.data.tabletop import TabletopSource
        n = int(_get(data_config, "num_train" if split == "train" else "num_eval"))
        gcfg = _get(data_config, "gaussians", {})
        num = int(gcfg.get("num_gaussians", 512) if hasattr(gcfg, "get") else 512)
        # Disjoint seeds keep the eval split out of training (as for 'shapes').
        return TabletopSource(n, num_gaussians=num, seed=int(_get(data_config, "seed", 0)) + (0 if split == "train"
                                                                                              else 10_000),
                              max_objects=int(_get(data_config, "max_objects", 2)))
    if name in ("builtin", "builtin_gaussians"):
        src = _builtin(data_config, split)
        if name == "builtin_gaussians":
            from scene3d.data.gs_pipeline import GaussianSubset
            src = GaussianSubset(src)
        return src
    if name == "clips":
        from scene3d.data import tfds_builders
        source_dir = _get(data_config, "source_dir")
        image_size = _get(data_config, "image_size")
        return tfds_builders.clips_source(_data_dir(data_config), split, source_dir,
                                          layout=_get(data_config, "layout", "re10k"),
                                          name=_get(data_config, "dataset_name"),
                                          image_size=None if image_size is None else tuple(image_size),
                                          eval_fraction=float(_get(data_config, "eval_fraction", 0.0)))
    if name == "captures":
        from scene3d.data.captures import CaptureSource
        paths = _get(data_config, "paths")
        if not paths:
            raise ValueError("config.data.paths: 'captures' needs a list of capture folders")
        image_size = _get(data_config, "image_size")
        return CaptureSource(list(paths), None if image_size is None else tuple(image_size))
    if name == "target_latents":
        from scene3d.data.target_latents import TargetLatentsSource
        return TargetLatentsSource(_get(data_config, "path"), split)
    if name == "ply":
        from scene3d.data.gs_pipeline import PlySource
        paths = _get(data_config, "paths") if split == "train" else _get(data_config, "eval_paths",
                                                                          _get(data_config, "paths"))
        if not paths:
            raise ValueError("config.data.paths: 'ply' needs PLY / .splat files, a folder or a glob")
        return PlySource(paths if isinstance(paths, str) else list(paths))
    if name == "prepared_3dgs":
        from scene3d.data.prepare_3dgs import PreparedSource
        return PreparedSource(_get(data_config, "path"), split)
    raise ValueError(f"config.data.name: unknown dataset {name!r} (known: {', '.join(KNOWN)})")


def get_transforms(data_config, split: str) -> list:
    """Data-level grain transforms for ``data.name`` (random maps; see the module docstring)."""
    name = data_config.name
    if name in MULTIVIEW:
        from scene3d.data.multiview import MultiViewTransform, ViewConfig
        return [MultiViewTransform(ViewConfig.from_config(_get(data_config, "views")))]
    if name == "target_latents":
        from scene3d.data import target_latents as tl
        kind = tl.read_settings(_get(data_config, "path"))["kind"]
        return [tl.ReleaseViewTransform(tl.ReleaseViewConfig.from_config(_get(data_config, "views")), kind,
                                        training=split == "train")]
    if name == "prepared_3dgs":
        from scene3d.data.gs_pipeline import GaussianTransform
        from scene3d.data.prepare_3dgs import training_config
        return [GaussianTransform(training_config(_get(data_config, "path"), _get(data_config, "gaussians")),
                                  training=split == "train")]
    if name in GAUSSIAN:
        from scene3d.data.gs_pipeline import GaussianConfig, GaussianTransform
        return [GaussianTransform(GaussianConfig.from_config(_get(data_config, "gaussians")),
                                  training=split == "train")]
    if name in KNOWN:
        return []
    raise ValueError(f"config.data.name: unknown dataset {name!r} (known: {', '.join(KNOWN)})")
