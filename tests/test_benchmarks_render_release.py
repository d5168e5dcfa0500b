"""benchmarks/render_release.py --quick runs in-process and prints one table per stage (no timing asserted)."""
import importlib.util
import math
import pathlib

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "render_release.py"


def test_render_release_quick(capsys):
    spec = importlib.util.spec_from_file_location("render_release", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick"])
    text = capsys.readouterr().out
    assert set(out) == {"encode", "render", "generate"}
    for stage in ("encode", "render", "generate"):
        assert f"## {stage}" in text
    assert "generation + rendering" in text and "Video DC-AE decode" in text and "SceneGen sampling" in text
    for stage, rows in out.items():
        assert rows[-1].get("total"), stage
        for r in rows:
            assert r["compile_s"] >= 0 and r["run_s"] > 0 and math.isfinite(r["est_s"]), (stage, r)
    # sampling components are extrapolated from --steps to the release's step counts (25 decoder, 150 SceneGen)
    render = {r["component"]: r for r in out["render"]}
    dec = next(r for name, r in render.items() if name.startswith("decoder sampling"))
    assert dec["extrapolated"] and dec["release_steps"] == 25
    close = abs(dec["est_s"] - dec["run_s"] / dec["steps"] * 25) <= 1e-9 * max(1.0, dec["est_s"])
    assert close
    gen = next(r for r in out["generate"] if r["component"].startswith("SceneGen sampling"))
    assert gen["release_steps"] == 150 and gen["extrapolated"]
    assert out["render"][-1]["frames_per_s"] > 0
    # FLOPs from the unrolled twin: the SceneGen count at the release's 150 steps is 150 x its per-step count
    assert gen["gflop"] > 0 and abs(gen["tflop"] - gen["gflop"] * 150 / 1e3) <= 1e-9 * gen["tflop"]
    assert out["generate"][-1]["tflop"] >= out["render"][-1]["tflop"] > 0
