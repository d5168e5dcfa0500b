"""benchmarks/gpu_check.py, the prepared accelerator check, in --smoke mode on CPU (so that it cannot rot before the
day a device is lent): every Pallas kernel case passes against the reference in interpret mode, the attention table,
a train-step row and the render row are filled in, the results file is strict JSON written atomically; every
family's synthetic batch goes through its task's loss; the child-process path records a killed family and goes on;
the deadline skips parts with a note."""
import importlib.util
import json
import math
import pathlib

import pytest

from scene3d import tasks

REPO = pathlib.Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("scene3d_bench_gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc = _gpu_check()


def test_smoke_in_process(tmp_path, capsys):
    out = tmp_path / "results.json"
    # One interpreted backend (Triton) keeps this test short; the CLI's --smoke runs Mosaic TPU's too, and
    # tests/kernels runs both on more shapes.
    res = gc.main(["--smoke", f"--out={out}", "--families=flow_shapes", "--deadline_s=600",
                   "--kernel_backends=triton"])
    printed = capsys.readouterr().out
    on_disk = json.loads(out.read_text())  # strict JSON (NaN written as null)
    assert on_disk["complete"] and on_disk["smoke"] and not on_disk["isolate"]
    assert on_disk["device"]["platform"] == "cpu" and on_disk["markdown"] in printed
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind
    parts = res["parts"]
    assert set(parts) == set(gc.PARTS)

    # (a) every case x every interpret backend passes, with errors below the tolerances and fp32 near-exact
    k = parts["kernels"]
    assert k["status"] == "done" and k["interpret"]
    ran = [c for c in k["cases"] if c["status"] != "skipped"]
    assert {(c["case"], c["backend"]) for c in ran} == {(n, "triton") for n in gc.KERNEL_CASES}
    for c in ran:
        assert c["status"] == "pass", c
        assert set(c["errors"]) == {"out", "lse", "dq", "dk", "dv"}
        for e in c["errors"].values():
            assert 0 <= e["rel"] <= e["tol"] and math.isfinite(e["max_abs"])
        if c["dtype"] == "float32":
            assert max(e["rel"] for e in c["errors"].values()) < 1e-5
    assert k["failed"] == 0 and k["passed"] == len(ran)
    assert len(k["cases"]) == len(ran)
    assert "| dit_self_bf16 | triton | bfloat16 |" in printed

    # (b) the attention table with the measured peak
    a = parts["attention"]
    assert a["status"] == "done" and a["peak_tflops"] > 0 and a["table"] in printed
    assert {r["impl"] for r in a["rows"]} == {"xla", "pallas_triton"}
    assert all("error" not in r and 0 < r["fwd_peak_fraction"] for r in a["rows"])

    # (c) one family's train step: throughput, FLOPs (the xla-attention lowering and the compiled program agree
    # on CPU, where 'auto' is the einsum and there is no remat), MFU against the same measured peak
    (f,) = parts["train"]["families"]
    assert f["status"] == "done" and f["family"] == "flow_shapes" and f["stage"] == "done", f
    assert f["timed_steps"] >= 1 and f["steps_per_s"] > 0
    assert f["examples_per_s"] == pytest.approx(f["steps_per_s"] * f["batch"])
    assert f["model_flops"] > 0 and 0.5 < f["compiled_flops"] / f["model_flops"] < 2.0
    assert f["mfu"] == pytest.approx(f["model_flops"] * f["steps_per_s"] / 1e12 / res["peak_tflops_bf16"])
    assert res["peak_tflops_bf16"] == a["peak_tflops"]
    assert math.isfinite(f["loss"]) and f["skipped_steps"] == 0
    assert f["program_mib"]["args"] > 0

    # (d) the rasteriser row
    (r,) = parts["render"]["rows"]
    assert r["status"] == "done" and r["fwd_ms"] > 0 and r["grad_ms"] > 0 and r["dropped"] == 0


@pytest.mark.parametrize("family", sorted(gc.FAMILIES))
def test_synthetic_batch_fits_each_family(family):
    """``--preflight`` on every family's --smoke config: the synthetic batch goes through the task's own transforms
    and loss (abstractly: no compile); the large configs are traced the same way by ``--preflight`` itself."""
    row = gc.preflight_family(family, smoke=True)
    assert row["status"] == "pass" and row["params_m"] > 0
    config = gc.family_config(family, True, 3, "none")
    batch = gc.synthetic_batch(config, tasks.get_task(config), 3)
    assert all(v.shape[0] == 3 for v in batch.values()) and set(batch) == set(row["batch_shapes"])


def test_isolated_child_killed_family_and_deadline(tmp_path):
    """--isolate: a family killed by its time cap is recorded with its stage, the next part still runs (in its
    own child process);
    --deadline_s skips what is left with a note."""
    out = tmp_path / "r.json"
    res = gc.main(["--smoke", "--isolate", f"--out={out}", "--parts=train,attention", "--families=can3tok",
                   "--family_cap_s=6", "--cache_dir="])
    (f,) = res["parts"]["train"]["families"]
    assert f["status"] == "timed_out" and "time cap" in f["note"], f
    att = res["parts"]["attention"]
    assert att["status"] == "done" and att["rows"][0]["fwd_ms"] > 0 and att["peak_tflops"] > 0
    assert res["device"]["platform"] == "cpu"

    res = gc.main(["--smoke", f"--out={out}", "--deadline_s=0", "--parts=kernels,render"])
    assert res["complete"]
    for part in ("kernels", "render"):
        assert res["parts"][part]["status"] == "skipped" and "--deadline_s=0" in res["parts"][part]["note"]
    with pytest.raises(ValueError, match="unknown family"):
        gc.main(["--smoke", f"--out={out}", "--families=nope"])
