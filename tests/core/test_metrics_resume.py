"""MetricWriter.truncate_after: a resumed run's replayed steps appear once, in metrics.jsonl / text.jsonl and in
what TensorBoard's own reader shows."""
import json

import pytest
from tensorboard.backend.event_processing import event_accumulator

from scene3d.core import metrics as metrics_lib
from scene3d.core.metrics import MetricWriter


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_resume_replaces_replayed_rows(tmp_path):
    with MetricWriter(tmp_path) as w:  # the first run: steps 1..6, then killed mid-row
        for step in range(1, 7):
            w.write_scalars(step, {"train/loss": float(step)})
        w.write_text(4, {"note": "four"})
        w.write_text(6, {"note": "six"})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/lo')

    with MetricWriter(tmp_path) as w:  # resumed from the step-4 checkpoint: 5 and 6 are trained again
        assert w.truncate_after(4) == 4  # rows 5, 6, the cut-short row, text row 6
        for step in (5, 6, 7):
            w.write_scalars(step, {"train/loss": 10.0 * step})
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["train/loss"] for r in rows] == [1.0, 2.0, 3.0, 4.0, 50.0, 60.0, 70.0]
    assert [r["step"] for r in _rows(tmp_path / "text.jsonl")] == [4]

    # TensorBoard (its own reader, purging orphaned data as it does by default) shows every step once, with the
    # resumed run's values.
    acc = event_accumulator.EventAccumulator(str(tmp_path), purge_orphaned_data=True)
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert [e.value for e in events] == pytest.approx([1, 2, 3, 4, 50, 60, 70])


def test_truncate_keeps_a_file_without_later_rows_untouched(tmp_path):
    with MetricWriter(tmp_path) as w:
        w.write_scalars(1, {"a": 1.0})
        w.write_scalars(2, {"a": 2.0})
    before = (tmp_path / "metrics.jsonl").stat().st_ino
    with MetricWriter(tmp_path) as w:
        assert w.truncate_after(2) == 0
        assert w.truncate_after(0) == 2  # a run that starts over from step 0 replays everything
        w.write_scalars(1, {"a": 3.0})
    assert (tmp_path / "metrics.jsonl").stat().st_ino != before  # rewritten through a temporary file + rename
    assert _rows(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 3.0}]
    assert MetricWriter(tmp_path, enabled=False).truncate_after(0) == 0  # non-primary processes write nothing


def test_event_files_sort_in_creation_order_within_one_second(tmp_path, monkeypatch):
    # TensorBoard reads event files in name order. Three writers within the same second (frozen clock) and a
    # leftover file whose stamp lies ahead of the clock: each new file still sorts after all earlier ones, so the
    # resumed run's events are read last and win.
    monkeypatch.setattr(metrics_lib.time, "time", lambda: 1_700_000_000.25)
    (tmp_path / "events.out.tfevents.1700000003.otherhost.99999").write_bytes(b"")
    names = []
    for run in range(3):
        with MetricWriter(tmp_path) as w:
            w.write_scalars(run + 1, {"a": float(run)})
        names.append(max(set(p.name for p in tmp_path.glob("events.out.tfevents.*")) - set(names)
                         - {"events.out.tfevents.1700000003.otherhost.99999"}))
    assert names == sorted(names)
    assert names[0] > "events.out.tfevents.1700000003.otherhost.99999"
    assert [n.split(".")[3] for n in names] == ["1700000004", "1700000005", "1700000006"]
