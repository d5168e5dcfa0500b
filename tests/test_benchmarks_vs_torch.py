"""benchmarks/vs_torch.py on the tiny Can3Tok size, one repeat of one timed step: the loss check runs (and would
stop the script on a mismatch), every part gets a JAX and a torch child in alternation, and the table has its rows.
No timing is asserted."""
import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script():
    name = "scene3d_bench_vs_torch"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "vs_torch.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # before running it: its dataclass looks its module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_vs_torch_tiny(tmp_path, capsys):
    vs = _script()
    out = tmp_path / "vs.json"
    # --step plain: the trainer's skip guards multiply this step's compile time by about 4 on CPU (not the subject)
    result = vs.main(["--family", "can3tok", "--size", "tiny", "--repeats", "1", "--steps", "1", "--step", "plain",
                      "--json", str(out)])
    printed = capsys.readouterr().out
    check = result["loss_check"]
    assert check["ok"] and check["rel_diff"] <= 1e-4 and check["jax"] > 0
    assert "loss check on one batch" in printed and "equal within" in printed
    # alternating fresh children, each with its own figures
    assert [(r["part"], r["framework"]) for r in result["rows"]] == [
        ("train", "jax"), ("train", "torch"), ("forward", "jax"), ("forward", "torch")]
    for r in result["rows"]:
        assert r["median_ms"] > 0 and r["peak_rss_gib"] > 0 and len(r["times_s"]) == 1
        assert len(r["cpus"]) <= 2
        assert abs(r["params_m"] - result["params_m"]) < 1e-6  # the same model on both sides
    jax_rows = [r for r in result["rows"] if r["framework"] == "jax"]
    assert all(r["compile_s"] > 0 and r["program_mib"]["args"] > 0 for r in jax_rows)
    lines = [ln for ln in printed.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| part | JAX ms") and len(lines) == 3
    assert lines[1].startswith("| train | ") and lines[2].startswith("| forward | ")
    for part in ("train", "forward"):
        s = result["summary"][part]
        assert s["ratio_time"] == pytest.approx(s["jax"]["median_ms"] / s["torch"]["median_ms"])
    saved = json.loads(out.read_text())
    assert saved["loss_check"]["ok"] and len(saved["rows"]) == 4 and saved["step"] == "plain"


def test_vs_torch_rejects_unknown_family_and_size():
    vs = _script()
    with pytest.raises(SystemExit):
        vs.main(["--family", "nope"])
    with pytest.raises(SystemExit):
        vs.main(["--family", "can3tok", "--size", "huge"])
    with pytest.raises(ValueError, match="step must be one of"):
        vs.measure("can3tok", "tiny", step="fast")
    with pytest.raises(ValueError, match="unknown parts"):
        vs.measure("can3tok", "tiny", parts=("backward",))
