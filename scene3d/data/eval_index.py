"""Evaluation index files of the SceneTok release (``assets/evaluation_index/*.json``): which frames of each test
scene are the context and which are scored.

Format: a JSON object {scene key: entry}. An entry is {"context": [frame ids], "target": [frame ids]}, a list
holding one such object (the release's ``re10k_c12_70.json``), or null (a scene the index skips: pixelSplat-style
index files mark them so; none of the release's files has one). Frame ids index the frames of the scene's clip
in order (a RealEstate10K clip: its frames sorted by timestamp, as ``scene3d.data.captures`` reads them). Context
and target may share frames (every release file scores the context frames among the targets).

``read_index`` validates strictly: anything malformed is a ValueError naming the file and the scene key / field
(never another exception type). Null entries are left out of the mapping and listed in ``EvalIndex.skipped``.

What the release's view samplers then do with an entry's targets (``sampler_targets``; ``scene3d.evaluate
--index`` scores the entry's targets as given):
  'evaluation'            images: the targets cut to a multiple of 4 frames;
  'evaluation_video'      VideoDC latents: all targets; latent of frame t is t // temporal_downsample
                          (``latent_indices``);
  'evaluation_video_wan'  Wan latents: when the number of targets is a multiple of 4, the 4 frames after the last
                          are appended; the latents are the contiguous range covering them (``latent_indices`` with
                          ``chunk_index_gap``: chunks of temporal_downsample * (gap - 1) + 1 frames, 17 for 4 / 5,
                          each chunk's first frame its own latent, then one latent per temporal_downsample frames).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from scene3d.data import multiview

FIELDS = ("context", "target")
SAMPLERS = ("evaluation", "evaluation_video", "evaluation_video_wan")


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One scene's frames: ``context`` (encoded) and ``target`` (rendered and scored) frame ids."""

    context: tuple[int, ...]
    target: tuple[int, ...]


class EvalIndex(dict):
    """{scene key: IndexEntry} in file order, plus ``path`` and ``skipped`` (keys whose entry is null)."""

    def __init__(self, entries=(), *, path: str = "", skipped: Sequence[str] = ()):
        super().__init__(entries)
        self.path, self.skipped = path, tuple(skipped)


def _frames(value, path: str, key: str, field: str) -> tuple[int, ...]:
    where = f"{path}: scene {key!r} field {field!r}"
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list of frame ids, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{where}: empty; at least one frame id is needed")
    seen = set()
    for i, v in enumerate(value):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{where}[{i}]: frame ids are non-negative integers, got {v!r}")
        if v < 0:
            raise ValueError(f"{where}[{i}]: frame ids are non-negative integers, got {v}")
        if int(v) in seen:
            raise ValueError(f"{where}: frame {v} is listed twice")
        seen.add(int(v))
    return tuple(int(v) for v in value)


def parse_entry(value, path: str, key: str) -> IndexEntry | None:
    """One JSON value of an index file -> IndexEntry, or None for a null (skipped) scene."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{path}: scene {key!r}: a list entry must hold exactly one {{'context', 'target'}} "
                             f"object, got {len(value)} items")
        value = value[0]
    if not isinstance(value, dict):
        raise ValueError(f"{path}: scene {key!r}: expected an object with 'context' and 'target' (or null), got "
                         f"{type(value).__name__}")
    missing = [f for f in FIELDS if f not in value]
    if missing:
        raise ValueError(f"{path}: scene {key!r}: missing field {missing[0]!r} (an entry has 'context' and 'target')")
    extra = sorted(set(value) - set(FIELDS))
    if extra:
        raise ValueError(f"{path}: scene {key!r}: unknown field {extra[0]!r} (an entry has only 'context' and "
                         "'target')")
    return IndexEntry(*(_frames(value[f], path, key, f) for f in FIELDS))


def _pairs_no_duplicates(path: str):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"{path}: key {k!r} appears twice in one object")
            out[k] = v
        return out
    return hook


def read_index(path) -> EvalIndex:
    """An evaluation index file -> {scene key: IndexEntry} (an ``EvalIndex``: null entries left out and listed in
    ``.skipped``). Malformed files raise ValueError naming the file and the scene / field (module docstring)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the evaluation index: {e.strerror or e}") from e
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs_no_duplicates(path))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 JSON file ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON: {e}") from e
    except RecursionError as e:
        raise ValueError(f"{path}: not a usable JSON file (nested too deeply)") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{scene key: {{'context': [...], 'target': [...]}}}}, got "
                         f"a {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the evaluation index lists no scenes")
    return entries_from(data, path)


# ----------------------------------------------------------------------------------------------- frame ids


def sampler_targets(target: Sequence[int], sampler: str = "evaluation_video") -> tuple[int, ...]:
    """The target frames one of the release's evaluation view samplers uses for an entry (module docstring)."""
    t = tuple(int(v) for v in target)
    if sampler == "evaluation":
        return t[:len(t) // 4 * 4]
    if sampler == "evaluation_video":
        return t
    if sampler == "evaluation_video_wan":
        return t + tuple(t[-1] + i for i in range(1, 5)) if t and len(t) % 4 == 0 else t
    raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")


def _latent_of_frame(t: int, td: int, gap: int) -> int:
    """Wan's causal chunks: a chunk of td * (gap - 1) + 1 frames has gap latents (its first frame alone, then one
    per td frames); the latent index that frame t starts (ceil of its offset in the chunk / td)."""
    per_chunk = td * (gap - 1) + 1
    chunk, offset = divmod(t, per_chunk)
    return gap * chunk + -(-offset // td)


def latent_indices(target: Sequence[int], temporal_downsample: int, *, chunk_index_gap: int | None = None
                   ) -> tuple[int, ...]:
    """Latent indices of target frames. Without ``chunk_index_gap`` (the release's VideoDC sampler): frame t ->
    t // temporal_downsample, one per target (repeats kept, in order). With it (the Wan sampler): the contiguous
    range from the latent of the first target to the latent that frame last + 1 would start."""
    td = temporal_downsample
    if isinstance(td, bool) or not isinstance(td, (int, np.integer)) or td < 1:
        raise ValueError(f"temporal_downsample: expected an integer >= 1, got {td!r}")
    t = [int(v) for v in target]
    if any(v < 0 for v in t):
        raise ValueError(f"latent_indices: frame ids must be >= 0, got {min(t)}")
    if chunk_index_gap is None:
        return tuple(v // int(td) for v in t)
    gap = chunk_index_gap
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 2:
        raise ValueError(f"chunk_index_gap: expected an integer >= 2, got {gap!r}")
    if not t:
        return ()
    return tuple(range(_latent_of_frame(t[0], int(td), int(gap)), _latent_of_frame(t[-1] + 1, int(td), int(gap))))


def select_frames(entry: IndexEntry, num_frames: int, scene: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """(context, target) int64 frame ids of ``entry`` for a clip of ``num_frames`` frames; a ValueError names the
    scene, the field and the first frame id out of range."""
    for field in FIELDS:
        ids = getattr(entry, field)
        bad = [v for v in ids if not 0 <= int(v) < int(num_frames)]
        if bad:
            raise ValueError(f"scene {scene!r}: {field} frame {bad[0]} is out of range: the clip has {num_frames} "
                             f"frames (ids 0..{int(num_frames) - 1})")
    return np.asarray(entry.context, np.int64), np.asarray(entry.target, np.int64)


def index_example(record: dict, entry: IndexEntry, views: multiview.ViewConfig, scene: str | None = None) -> dict:
    """The multi-view example (``multiview.make_views``: resize / crop, poses relative to context frame 0, scale
    from the context cameras) of a scene record with exactly ``entry``'s context and target frames."""
    scene = multiview._scene_id(record) if scene is None else scene
    ctx, tgt = select_frames(entry, multiview.num_frames(record), scene)
    return multiview.make_views(record, ctx, tgt, views)


# ----------------------------------------------------------------------------------------------- scene lookup


def scene_ids(source) -> Iterator[str]:
    """The scene key of every record of a random-access scene source, in order: the source's own ``scene_ids()``
    when it has one, the capture names of a ``CaptureSource``, else each record's ``scene_id`` (reading the
    records one by one: a pass over the split, which ``find_scenes`` stops once it has every key it wants)."""
    if hasattr(source, "scene_ids"):
        yield from (str(s) for s in source.scene_ids())
    elif hasattr(source, "captures"):
        yield from (str(c.scene_id) for c in source.captures)
    else:
        yield from (multiview._scene_id(source[i]) for i in range(len(source)))


def find_scenes(source, keys: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """({key: position in ``source``} for the keys it holds, [the keys it lacks]), both in the order of ``keys``.
    A key held twice maps to its first record. The data pipeline has no key -> record table, so this is the
    lookup: the scene ids are read in order until every wanted key is found."""
    keys = list(keys)
    wanted, where = set(keys), {}
    for i, sid in enumerate(scene_ids(source)):
        if sid in wanted and sid not in where:
            where[sid] = i
            if len(where) == len(wanted):
                break
    return {k: where[k] for k in keys if k in where}, [k for k in keys if k not in where]


def entries_from(mapping: Mapping[str, Mapping], path: str = "<index>") -> EvalIndex:
    """An ``EvalIndex`` from an in-memory {key: {'context', 'target'} | None} (validated like a file)."""
    entries, skipped = {}, []
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{path}: scene keys are non-empty strings, got {key!r}")
        entry = parse_entry(value, path, key)
        if entry is None:
            skipped.append(key)
        else:
            entries[key] = entry
    return EvalIndex(entries, path=path, skipped=skipped)
