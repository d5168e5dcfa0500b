"""Metric writers (JSONL + TensorBoard event files, no TensorFlow), console lines, train-metric averaging.

``MetricWriter(workdir)`` writes:
  - ``workdir/metrics.jsonl``: one JSON object per ``write_scalars`` call, ``{"step": s, name: value, ...}``;
  - ``workdir/images/<name>_<step>[_<i>].png`` for ``write_images``;
  - ``workdir/text.jsonl`` (``write_text``) and ``workdir/hparams.json`` (``write_hparams``);
  - TensorBoard event files in ``workdir`` with all of the above (scalars, images, text, hparams).
Only the primary process should write: pass ``enabled=jax.process_index() == 0``.

A resumed run trains the steps after its checkpoint again: ``truncate_after(step)`` first drops the rows of
``metrics.jsonl`` / ``text.jsonl`` written after that step (an atomic rewrite; a last line cut short by a kill goes
too) and logs a TensorBoard ``SessionLog.START`` at ``step + 1``, which makes TensorBoard discard the earlier events
from that step on. So every step appears once.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metrics as clu_metrics
from clu import parameter_overview as clu_overview
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer import event_file_writer as tb_event_file_writer
from tensorboard.summary.writer.record_writer import RecordWriter

from scene3d.core import io as io_lib
from scene3d.core import tree as tree_lib


def _scalar(name: str, value) -> float | int:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"write_scalars: {name!r} has shape {arr.shape}; expected a scalar")
    v = arr.reshape(()).item()
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    raise ValueError(f"write_scalars: {name!r} has dtype {arr.dtype}; expected a number")


def _as_images(name: str, value) -> np.ndarray:
    """uint8 HW, HWC or NHWC (C in 1, 3, 4) -> NHWC."""
    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_images: {name!r} has dtype {arr.dtype}; expected uint8 (convert with "
                         "np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8))")
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"write_images: {name!r} has shape {np.asarray(value).shape}; expected HW, HWC or NHWC "
                         "with C in (1, 3, 4)")
    return arr


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return buf.getvalue()


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "image"


def _hparam_value(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _truncate_jsonl(path: str, step: int) -> int:
    """Rewrite ``path`` (atomically, only if anything changes) without the rows whose step is after ``step`` and
    without a last line cut short (no newline: a write interrupted by a kill). Other lines are kept as they are.
    Returns the number of lines dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines(keepends=True)
    keep = []
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line.endswith("\n"):
            continue
        row_step = _row_step(line)
        if row_step is None or row_step <= step:
            keep.append(line)
    if len(keep) != len(lines):
        io_lib.write_bytes(path, "".join(keep).encode("utf-8", errors="surrogateescape"))
    return len(lines) - len(keep)


_EVENTS_PREFIX = "events.out.tfevents."


def _event_file_stamp(logdir: str) -> int:
    """The whole-second stamp for a new event file's name: now, or one past the newest event file already in
    ``logdir``. TensorBoard reads a directory's event files in name order, and its own names (stamp, host, pid,
    a per-process counter) sort wrongly for two writers within one second once the counter or pid gains a digit
    (``.9`` after ``.10``): a resumed run's events would then be read first and purged by the older ones."""
    newest = -1
    for name in os.listdir(logdir):
        if name.startswith(_EVENTS_PREFIX):
            head = name[len(_EVENTS_PREFIX):].split(".", 1)[0]
            if head.isdigit():
                newest = max(newest, int(head))
    return max(int(time.time()), newest + 1)


class _EventFileWriter(tb_event_file_writer.EventFileWriter):
    """TensorBoard's event file writer with a file name that sorts after every event file already in the folder."""

    def __init__(self, logdir: str, flush_secs: float):  # pylint: disable=super-init-not-called
        self._logdir = logdir
        os.makedirs(logdir, exist_ok=True)
        stamp = _event_file_stamp(logdir)
        self._file_name = os.path.join(logdir, f"{_EVENTS_PREFIX}{stamp:010d}.{socket.gethostname()}.{os.getpid()}")
        self._general_file_writer = open(self._file_name, "xb")
        self._async_writer = tb_event_file_writer._AsyncWriter(  # pylint: disable=protected-access
            RecordWriter(self._general_file_writer), 10, flush_secs)
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                                       source_metadata=event_pb2.SourceMetadata(writer="scene3d")))
        self.flush()


class MetricWriter:
    """Scalars, images, text and hparams to JSONL/PNG files and TensorBoard event files in ``workdir``."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.workdir = os.fspath(workdir)
        self.enabled = bool(enabled)
        self._events = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(self.workdir, exist_ok=True)
            self._events = _EventFileWriter(self.workdir, flush_secs=30)
            self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a")

    def truncate_after(self, step: int) -> int:
        """Drop the JSONL rows with a step after ``step`` (see the module docstring). Returns how many went."""
        if not self.enabled:
            return 0
        self._jsonl.close()
        path = os.path.join(self.workdir, "metrics.jsonl")
        try:
            dropped = _truncate_jsonl(path, step) + _truncate_jsonl(os.path.join(self.workdir, "text.jsonl"), step)
        finally:
            self._jsonl = open(path, "a")
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step) + 1,
                                               session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        return dropped

    def _event(self, step: int, values: list[summary_pb2.Summary.Value]):
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        if not self.enabled or not scalars:
            return
        host = jax.device_get(dict(scalars))
        values = {str(k): _scalar(k, v) for k, v in host.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()  # metrics.jsonl can be followed live (tail -f, notebooks)
        self._event(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])

    def write_images(self, step: int, images: Mapping[str, Any]):
        """``{name: uint8 HW/HWC/NHWC}``; a batch becomes PNGs ``<name>_<step>_<i>.png`` and tags ``name/i``."""
        if not self.enabled or not images:
            return
        image_dir = os.path.join(self.workdir, "images")
        os.makedirs(image_dir, exist_ok=True)
        values = []
        for name, value in images.items():
            batch = _as_images(name, jax.device_get(value))
            single = np.asarray(value).ndim < 4
            for i, img in enumerate(batch):
                data = _png(img)
                suffix = "" if single else f"_{i}"
                with open(os.path.join(image_dir, f"{_safe_filename(name)}_{int(step):08d}{suffix}.png"), "wb") as f:
                    f.write(data)
                tag = name if single else f"{name}/{i}"
                h, w, c = img.shape
                values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                    height=h, width=w, colorspace=c, encoded_image_string=data)))
        self._event(step, values)

    def write_text(self, step: int, texts: Mapping[str, str]):
        if not self.enabled or not texts:
            return
        with open(os.path.join(self.workdir, "text.jsonl"), "a") as f:
            f.write(json.dumps({"step": int(step), **{k: str(v) for k, v in texts.items()}}) + "\n")
        values = []
        for name, text in texts.items():
            tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[str(text).encode()],
                                            tensor_shape=tensor_shape_pb2.TensorShapeProto())
            values.append(summary_pb2.Summary.Value(
                tag=name, tensor=tensor, metadata=text_metadata.create_summary_metadata(name, "")))
        self._event(step, values)

    def write_hparams(self, hparams: Mapping[str, Any]):
        """Flat ``{name: bool | int | float | str}``; other values are written as their str."""
        if not self.enabled:
            return
        clean = {str(k): _hparam_value(v) for k, v in hparams.items()}
        io_lib.write_json(os.path.join(self.workdir, "hparams.json"), clean, indent=2, sort_keys=True)
        summary = hparams_summary.hparams_pb(clean)
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

    def flush(self):
        if self.enabled:
            self._jsonl.flush()
            self._events.flush()

    def close(self):
        if self.enabled and self._events is not None:
            self._jsonl.close()
            self._events.close()
            self._events = None
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------------------
# Console


def format_duration(seconds: float) -> str:
    """``45s``, ``4m32s``, ``2h05m``, ``3d04h``; ``?`` for unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _fmt(v) -> str:
    v = np.asarray(v).item() if hasattr(v, "shape") else v
    if isinstance(v, float):
        return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def console_line(step: int, total: int, metrics: Mapping[str, Any] | None = None,
                 rates: Mapping[str, float] | None = None) -> str:
    """``step 120/1000 | loss 0.1234 | 3.21 steps/s | 205 ex/s | ETA 4m32s``.

    ``rates`` is a ``Chrono.tick`` dict; metrics whose name starts with ``perf/`` are left out (they are rates).
    """
    parts = [f"step {int(step)}/{int(total)}"]
    for k, v in (metrics or {}).items():
        if not k.startswith("perf/"):
            parts.append(f"{k} {_fmt(v)}")
    if rates:
        if "steps_per_sec" in rates:
            parts.append(f"{rates['steps_per_sec']:.2f} steps/s")
        if "examples_per_sec" in rates:
            parts.append(f"{rates['examples_per_sec']:.0f} ex/s")
        if "eta_sec" in rates:
            parts.append(f"ETA {format_duration(rates['eta_sec'])}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------------------
# Aggregation and parameter tables


class Accumulator:
    """Averages named metrics between log steps with ``clu.metrics.Average`` (stays on device until ``result``).

    ``add({"loss": x, ...})`` each step; ``result()`` returns ``{name: float}`` means and resets. A non-scalar
    value contributes all its elements.
    """

    def __init__(self):
        self._metrics: dict[str, clu_metrics.Average] = {}

    def add(self, metrics: Mapping[str, Any]):
        for k, v in metrics.items():
            m = clu_metrics.Average.from_model_output(jax.numpy.asarray(v, dtype=jax.numpy.float32))
            self._metrics[k] = self._metrics[k].merge(m) if k in self._metrics else m

    def result(self, reset: bool = True) -> dict[str, float]:
        out = {k: float(v) for k, v in jax.device_get({k: m.compute() for k, m in self._metrics.items()}).items()}
        if reset:
            self._metrics = {}
        return out

    def __len__(self):
        return len(self._metrics)


def parameter_overview(params, *, include_stats: bool = False, max_lines: int | None = None) -> str:
    """clu's parameter table (name, shape, size[, mean, std]) for an nnx.State or any pytree of arrays."""
    pure = tree_lib.to_pure_dict(params)
    if include_stats:
        pure = jax.tree.map(np.asarray, jax.device_get(pure))
    return clu_overview.get_parameter_overview(pure, include_stats=include_stats, max_lines=max_lines)
