import math

import pytest

from scene3d.core.chrono import Chrono


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


def test_rates_eta_and_core_hours():
    clock = FakeClock()
    c = Chrono(1000, 64, num_devices=8, clock=clock)
    clock.advance(30.0)  # first interval: 10 steps incl. 25 s of compilation
    r = c.tick(10)
    assert r["steps_per_sec"] == pytest.approx(10 / 30)
    assert r["examples_per_sec"] == pytest.approx(64 * 10 / 30)
    assert r["eta_sec"] == pytest.approx(990 / (10 / 30))
    clock.advance(20.0)  # 100 steps at 5 steps/s
    r = c.tick(110)
    assert r["steps_per_sec"] == pytest.approx(5.0)
    assert r["eta_sec"] == pytest.approx(890 / 5.0)  # the average since the first tick excludes compilation
    clock.advance(50.0)  # 100 steps at 2 steps/s
    r = c.tick(210)
    assert r["steps_per_sec"] == pytest.approx(2.0)
    assert r["eta_sec"] == pytest.approx(790 / (200 / 70))
    assert r["elapsed_sec"] == pytest.approx(100.0)
    assert r["progress"] == pytest.approx(0.21)
    assert r["core_hours"] == pytest.approx(8 * 100 / 3600)


def test_paused_time_is_excluded_from_throughput_only():
    clock = FakeClock()
    c = Chrono(100, 4, first_step=50, num_devices=2, clock=clock)
    clock.advance(10.0)
    c.tick(60)
    clock.advance(4.0)  # 8 steps of training
    with c.pause():
        clock.advance(100.0)  # a checkpoint
    c.pause()
    clock.advance(50.0)  # an eval, paused/resumed explicitly
    c.resume()
    clock.advance(4.0)  # 8 more steps
    r = c.tick(76)
    assert r["steps_per_sec"] == pytest.approx(16 / 8.0)
    assert r["eta_sec"] == pytest.approx(24 / 2.0)
    assert r["elapsed_sec"] == pytest.approx(168.0)
    assert r["core_hours"] == pytest.approx(2 * 168 / 3600)
    assert r["progress"] == pytest.approx(0.76)


def test_finished_and_no_progress():
    clock = FakeClock()
    c = Chrono(10, 1, num_devices=1, clock=clock)
    clock.advance(1.0)
    r = c.tick(10)
    assert r["eta_sec"] == 0.0 and r["progress"] == 1.0
    c2 = Chrono(10, 1, num_devices=1, clock=clock)
    r = c2.tick(0)  # no time passed, no step taken
    assert math.isnan(r["steps_per_sec"]) and math.isnan(r["eta_sec"])


def test_state_dict_carries_core_hours_across_restarts():
    clock = FakeClock()
    c = Chrono(10, 1, num_devices=4, clock=clock)
    clock.advance(3600.0)
    saved = c.state_dict()
    assert saved == pytest.approx({"elapsed_sec": 3600.0, "core_hours": 4.0})
    c2 = Chrono(10, 1, first_step=5, num_devices=4, clock=clock)
    c2.load_state_dict(saved)
    clock.advance(1800.0)
    r = c2.tick(6)
    assert r["core_hours"] == pytest.approx(6.0)
    assert r["elapsed_sec"] == pytest.approx(5400.0)
