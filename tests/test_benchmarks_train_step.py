"""benchmarks/train_step.py on a tiny config: the figures it reports are consistent with each other and with an
independent count of the model's arithmetic (6 x parameters x tokens per example for a transformer train step)."""
import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("scene3d_bench_train_step", REPO / "benchmarks" / "train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_step_figures_on_a_tiny_config(bench, tmp_path, capsys):
    size, patch, batch = 8, 2, 8
    out = tmp_path / "row.json"
    row = bench.main(["--config=configs/flow_shapes.py:runlocal", "--steps=2", f"--batch={batch}",
                      "--peak_flops=1e12", f"--set=data.size={size}", "--set=model.scan=False",
                      "--set=model.depth=1", "--set=model.width=32",
                      f"--json={out}"])
    assert row["batch"] == batch and row["timed_steps"] == 2 and row["compile_s"] > 0
    assert row["examples_per_s"] == pytest.approx(batch * row["steps_per_s"])
    assert row["steps_per_s"] == pytest.approx(1e3 / row["step_ms"])
    # a transformer train step is about 6 FLOPs per parameter per token (forward 2, backward 4), plus attention and
    # the per-example parameters (embeddings, adaLN) that are not applied per token: within a factor of 2.5 either way
    tokens = (size // patch) ** 2
    estimate = 6 * row["params_m"] * 1e6 * tokens * batch
    assert 0.4 < row["model_flops"] / estimate < 2.5, (row["model_flops"], estimate)
    assert 0 < row["compiled_flops"] < row["model_flops"]  # per device: 8 fake devices share the batch
    assert row["mfu"] == pytest.approx(row["model_flops"] * row["steps_per_s"] / 1e12)
    assert row["program_mib"]["temps"] > 0 and row["peak_rss_gib"] > 0
    assert json.loads(out.read_text())["step_ms"] == pytest.approx(row["step_ms"])
    printed = capsys.readouterr().out
    assert "examples/s" in printed and "MFU" in printed and "NOTE" not in printed


def test_override_errors_name_the_key(bench):
    from scene3d.core.config import load_config
    config = load_config("configs/flow_shapes.py:runlocal")
    bench._override(config, "model.depth=2")
    assert config.model.depth == 2
    with pytest.raises(ValueError, match="model.nope"):
        bench._override(config, "model.nope=1")
    with pytest.raises(ValueError, match="key=value"):
        bench._override(config, "model.depth")
