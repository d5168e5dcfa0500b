"""python -m scene3d.convert.parity, run in-process (main(argv) -> exit status): exit 0 on the smallest fixture of
each family (every stored output compared, --json table), 1 on a copy with one output perturbed (that output
flagged), 2 for a folder that is not a fixture (the missing file named) or that no family recognises. The families'
numbers are checked in detail by tests/models/test_{can3tok,scenetok,scenegen,video_dcae}.py, which run the same
runners (parity.run_fixture), so the compiled programs are shared through the session's compilation cache."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from scene3d.convert import parity

FIXTURES = {"can3tok/a": "can3tok", "scenetok/a": "scenetok", "scenetok/scenegen_a": "scenegen",
            "videodc/a": "videodc"}


def fixture_dir(shared_dir, name):
    d = shared_dir / "fixtures" / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


def linked_copy(src, dst, skip=()):
    """A fixture folder whose files are symlinks to ``src``'s (except ``skip``)."""
    dst.mkdir()
    for name in parity.FILES:
        if name not in skip:
            os.symlink(src / name, dst / name)
    return dst


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_passes(shared_dir, name, tmp_path, capsys):
    d = fixture_dir(shared_dir, name)
    table = tmp_path / "parity.json"
    assert parity.main([str(d), f"--json={table}"]) == 0
    n = len(load_file(d / "outputs.safetensors"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"fixture {d}  family {FIXTURES[name]}")
    assert lines[-1] == f"PASS {n} outputs" and len(lines) == n + 4  # header, rule, one row per output, summary
    result = json.loads(table.read_text())
    assert result["passed"] and result["failed"] == [] and result["family"] == FIXTURES[name]
    assert len(result["outputs"]) == n and all(r["ok"] and r["max_abs_err"] <= r["tol"] * r["max_abs_ref"]
                                               for r in result["outputs"])


def test_perturbed_output_is_flagged(shared_dir, tmp_path, capsys):
    src = fixture_dir(shared_dir, "scenetok/scenegen_a")
    d = linked_copy(src, tmp_path / "fx", skip=("outputs.safetensors",))
    outputs = load_file(src / "outputs.safetensors")
    key = "scene_generator.pred_flow"
    bad = outputs[key].copy()
    bad[1, 3, 2] += 0.5 * np.abs(bad).max()
    save_file(dict(outputs, **{key: bad}), d / "outputs.safetensors")
    assert parity.main([str(d)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"FAIL 1 of {len(outputs)}"
    flagged = [line for line in lines if line.endswith("FAIL")]
    assert len(flagged) == 1 and flagged[0].split()[0] == key
    # tolerance flags reach the check: nothing passes a zero tolerance unless it is exact
    assert parity.main([str(src), "--tol=0", "--bf16-tol=0", "--cases=main"]) == 1
    assert "FAIL" in capsys.readouterr().out.splitlines()[-1]


def test_not_a_fixture_exits_2(shared_dir, tmp_path, capsys):
    src = fixture_dir(shared_dir, "can3tok/a")
    d = linked_copy(src, tmp_path / "no_outputs", skip=("outputs.safetensors",))
    assert parity.main([str(d)]) == 2
    err = capsys.readouterr().err
    assert str(d / "outputs.safetensors") in err and "missing" in err
    assert parity.main([str(tmp_path / "absent")]) == 2
    assert "not a folder" in capsys.readouterr().err
    # weights no family knows
    u = tmp_path / "unknown"
    u.mkdir()
    (u / "config.json").write_text("{}")
    for name in ("weights", "inputs", "outputs"):
        save_file({"something.weight": np.zeros(2, np.float32)}, u / f"{name}.safetensors")
    assert parity.main([str(u)]) == 2
    assert "no family recognises" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown cases"):
        parity.run_fixture(src, cases=["tiled_t"])
