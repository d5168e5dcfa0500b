import io
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from scene3d.core import metrics as metrics_lib
from scene3d.core.metrics import Accumulator, MetricWriter, console_line


def _accumulator(workdir):
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_jsonl_and_tensorboard(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write_scalars(1, {"train/loss": jnp.float32(0.5), "lr": 1e-3, "count": np.int64(7)})
        w.write_scalars(2, {"train/loss": 0.25, "lr": 2e-3, "count": 8})
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "train/loss": 0.5, "lr": 1e-3, "count": 7},
                     {"step": 2, "train/loss": 0.25, "lr": 2e-3, "count": 8}]
    acc = _accumulator(tmp_path)
    assert set(acc.Tags()["scalars"]) == {"train/loss", "lr", "count"}
    for key in ("train/loss", "lr", "count"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [l[key] for l in lines], rtol=1e-6)
    assert "tensorflow" not in sys.modules


def test_images_png_and_tensorboard(tmp_path):
    r = np.random.default_rng(0)
    single = r.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    batch = r.integers(0, 256, (2, 4, 6, 4), dtype=np.uint8)
    gray = r.integers(0, 256, (3, 5), dtype=np.uint8)
    with MetricWriter(tmp_path) as w:
        w.write_images(10, {"eval/render": single, "grid": batch, "depth": gray})
    files = sorted(os.listdir(tmp_path / "images"))
    assert files == ["depth_00000010.png", "eval_render_00000010.png", "grid_00000010_0.png", "grid_00000010_1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images" / "eval_render_00000010.png")), single)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images" / "grid_00000010_1.png")), batch[1])
    acc = _accumulator(tmp_path)
    assert set(acc.Tags()["images"]) == {"eval/render", "grid/0", "grid/1", "depth"}
    for tag, expected in [("eval/render", single), ("grid/0", batch[0]), ("grid/1", batch[1]), ("depth", gray)]:
        (ev,) = acc.Images(tag)
        assert ev.step == 10 and (ev.height, ev.width) == expected.shape[:2]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ev.encoded_image_string))), expected)


def test_bad_images_raise_clear_errors(tmp_path):
    with MetricWriter(tmp_path) as w:
        with pytest.raises(ValueError, match=r"'x'.*float32.*uint8"):
            w.write_images(0, {"x": np.zeros((4, 4, 3), np.float32)})
        with pytest.raises(ValueError, match=r"'y'.*\(4, 4, 2\)"):
            w.write_images(0, {"y": np.zeros((4, 4, 2), np.uint8)})
        with pytest.raises(ValueError, match=r"'z'.*scalar"):
            w.write_scalars(0, {"z": np.zeros(3)})


def test_text_and_hparams(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write_text(3, {"config": "variant=B"})
        w.write_hparams({"lr": 1e-3, "variant": "B", "ema": True, "mesh": (2, 4)})
    acc = _accumulator(tmp_path)
    (t,) = acc.Tensors("config")
    assert t.step == 3 and t.tensor_proto.string_val == [b"variant=B"]
    assert "config" in acc.PluginTagToContent("text")
    assert acc.PluginTagToContent("hparams")  # session start info
    assert json.loads((tmp_path / "hparams.json").read_text()) == {"lr": 1e-3, "variant": "B", "ema": True,
                                                                  "mesh": "(2, 4)"}
    assert json.loads((tmp_path / "text.jsonl").read_text()) == {"step": 3, "config": "variant=B"}


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricWriter(tmp_path / "off", enabled=False)
    w.write_scalars(1, {"a": 1.0})
    w.write_images(1, {"a": np.zeros((2, 2, 3), np.uint8)})
    w.write_text(1, {"a": "b"})
    w.write_hparams({"a": 1})
    w.flush()
    w.close()
    assert not (tmp_path / "off").exists()


def test_console_line():
    rates = {"steps_per_sec": 3.2109, "examples_per_sec": 205.4, "eta_sec": 272.0}
    line = console_line(120, 1000, {"loss": 0.12341, "perf/steps_per_sec": 3.2}, rates)
    assert line == "step 120/1000 | loss 0.1234 | 3.21 steps/s | 205 ex/s | ETA 4m32s"
    assert console_line(5, 10) == "step 5/10"
    assert metrics_lib.format_duration(7325) == "2h02m"
    assert metrics_lib.format_duration(90000) == "1d01h"
    assert metrics_lib.format_duration(float("nan")) == "?"


def test_accumulator_averages_between_log_steps():
    acc = Accumulator()
    values = [0.5, 1.5, 4.0]
    for v in values:
        acc.add({"loss": jnp.float32(v), "acc": jnp.asarray([v, 2 * v])})
    out = acc.result()
    assert out["loss"] == pytest.approx(np.mean(values))
    assert out["acc"] == pytest.approx(np.mean(values + [2 * v for v in values]))
    assert acc.result() == {}  # reset
    acc.add({"loss": 3.0})
    assert acc.result() == {"loss": 3.0}


def test_parameter_overview_of_nnx_state():
    model = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
    text = metrics_lib.parameter_overview(nnx.state(model, nnx.Param), include_stats=True)
    assert "kernel" in text and "(3, 5)" in text and "bias" in text
    assert "Total: 20" in text
