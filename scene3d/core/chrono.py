"""Training chronometer: steps/s, examples/s, ETA, elapsed time and core-hours, excluding paused time.

``tick(step)`` measures the interval since the previous tick; ETA uses the average rate since the first tick
(so compilation before the first tick does not skew it). Time spent inside ``pause()`` (eval, checkpoints)
counts towards elapsed time and core-hours but not towards throughput.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable


class Chrono:
    def __init__(self, total_steps: int, global_batch_size: int, *, first_step: int = 0,
                 num_devices: int | None = None, clock: Callable[[], float] = time.perf_counter):
        if num_devices is None:
            import jax
            num_devices = jax.device_count()
        self.total_steps = int(total_steps)
        self.global_batch_size = int(global_batch_size)
        self.num_devices = int(num_devices)
        self._clock = clock
        self._start = clock()
        self._paused_total = 0.0  # all paused time since start
        self._pause_began: float | None = None
        self._last = (int(first_step), self._start, 0.0)  # (step, time, paused_total) at the previous tick
        self._first: tuple[int, float, float] | None = None  # same, at the first tick
        self._prev_elapsed = 0.0  # wall seconds of earlier runs (load_state_dict)
        self._prev_core_hours = 0.0

    # -- pausing -------------------------------------------------------------------------------------------
    def pause(self):
        """Stop the throughput clock; usable as ``with chrono.pause(): ...`` or paired with ``resume()``."""
        if self._pause_began is None:
            self._pause_began = self._clock()
        return contextlib.closing(self._Resumer(self))

    class _Resumer:
        def __init__(self, chrono):
            self._chrono = chrono

        def close(self):
            self._chrono.resume()

    def resume(self):
        if self._pause_began is not None:
            self._paused_total += self._clock() - self._pause_began
            self._pause_began = None

    def _paused_now(self, now: float) -> float:
        return self._paused_total + (now - self._pause_began if self._pause_began is not None else 0.0)

    # -- measuring -----------------------------------------------------------------------------------------
    def tick(self, step: int) -> dict[str, float]:
        """Rates at ``step``: steps_per_sec, examples_per_sec, eta_sec, elapsed_sec, progress, core_hours."""
        now = self._clock()
        paused = self._paused_now(now)
        step = int(step)
        last_step, last_time, last_paused = self._last
        dt = (now - last_time) - (paused - last_paused)
        steps_per_sec = (step - last_step) / dt if dt > 0 else math.nan
        if self._first is None:
            # The first measured interval includes compilation; later ticks average from its end.
            avg = steps_per_sec
            self._first = (step, now, paused)
        else:
            f_step, f_time, f_paused = self._first
            run = (now - f_time) - (paused - f_paused)
            avg = (step - f_step) / run if run > 0 else math.nan
        self._last = (step, now, paused)
        elapsed = self._prev_elapsed + (now - self._start)
        remaining = max(self.total_steps - step, 0)
        eta = remaining / avg if avg and avg > 0 and math.isfinite(avg) else (0.0 if remaining == 0 else math.nan)
        return {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": steps_per_sec * self.global_batch_size,
            "eta_sec": eta,
            "elapsed_sec": elapsed,
            "progress": step / self.total_steps if self.total_steps else 1.0,
            "core_hours": self._prev_core_hours + self.num_devices * (now - self._start) / 3600.0,
        }

    # -- resumption ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, float]:
        """Accumulated wall time and core-hours, to store in checkpoint meta and ``load_state_dict`` later."""
        now = self._clock()
        return {"elapsed_sec": self._prev_elapsed + now - self._start,
                "core_hours": self._prev_core_hours + self.num_devices * (now - self._start) / 3600.0}

    def load_state_dict(self, state: dict):
        self._prev_elapsed = float(state.get("elapsed_sec", 0.0))
        self._prev_core_hours = float(state.get("core_hours", 0.0))
