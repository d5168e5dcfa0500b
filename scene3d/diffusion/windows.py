"""Sliding-window sampling of a long sequence of latents (SceneTok's release renderer, ``full_sequence`` sampler).

A trajectory of H latent views is denoised by a model that sees ``window`` views at a time. Every view starts at
noise level ``steps`` (t = 1) and loses one level per global step while it is inside the window; once every view
of the window is clean (t = 0) the window moves on by ``window - clean`` views, so the first ``clean`` views of
each later window are already clean and condition the rest (the release renders 8 latents of which 4 are clean).
When the window would run past the end it is pinned to the last ``window`` views. Each global step is one Euler
step ``x += (t_next - t) v(x, t)`` of the views in the window (clean views have t_next = t = 0 and stay put).

:func:`schedule` returns the release's scheduling matrix (noise levels per global step and view, after the optional
time shift ``shift t / (1 + (shift - 1) t)``) and the window start of each step; :func:`sample` runs it as one
``lax.scan`` with a fixed window shape (one compiled model call for any trajectory length).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
    times: np.ndarray   # (S + 1, H) float32 noise levels in [0, 1]: row s is the state before global step s
    starts: np.ndarray  # (S + 1,) int32: first view of the window at each step (the last row is unused)
    window: int         # views per model call (min(window, H))

    @property
    def num_steps(self) -> int:
        return int(self.times.shape[0] - 1)


def schedule(horizon: int, steps: int, window: int, clean: int = 0, shift: float = 1.0) -> Schedule:
    """The sliding-window scheduling matrix of ``horizon`` views, ``steps`` denoising levels per view, ``window``
    views per call of which the first ``clean`` are already clean after the first window (0 <= clean < window)."""
    horizon, steps, window, clean = int(horizon), int(steps), int(window), int(clean)
    if horizon < 1 or steps < 1 or window < 1:
        raise ValueError(f"sliding window: horizon, steps and window must be >= 1, got {horizon}, {steps}, {window}")
    if not 0 <= clean < window:
        raise ValueError(f"sliding window: clean views must satisfy 0 <= clean < window={window}, got {clean}")
    if shift <= 0:
        raise ValueError(f"sliding window: shift must be positive, got {shift}")
    size = min(window, horizon)

    def start_of(position):
        return position if position < horizon - size else horizon - size

    level = np.full(horizon, steps, np.int64)
    rows, starts = [level.copy()], [0]
    position = 0
    while level.sum():
        live = (np.arange(horizon) < position + window) & (level > 0)
        level = level - live
        if not level[position:position + window].any():
            position += window - clean
        rows.append(level.copy())
        starts.append(start_of(position))
    times = np.stack(rows).astype(np.float32) / np.float32(steps)
    if shift != 1.0:
        times = (shift * times / (1 + (shift - 1) * times)).astype(np.float32)
    return Schedule(times, np.asarray(starts, np.int32), size)


VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def sample(velocity_fn: VelocityFn, noise: jax.Array, plan: Schedule) -> jax.Array:
    """Denoise ``noise`` (B, H, ...) along ``plan``. ``velocity_fn(x_window (B, W, ...), t_window (B, W), start)``
    returns the velocity of the window's views (``start``: a traced int, the window's first view, e.g. to pick
    its cameras)."""
    b, h = noise.shape[:2]
    if plan.times.shape[1] != h:
        raise ValueError(f"sliding window: the schedule is for {plan.times.shape[1]} views, the noise has {h}")
    w = plan.window
    times = jnp.asarray(plan.times)
    starts = jnp.asarray(plan.starts)

    def body(x, inputs):
        t, t_next, start = inputs
        xw = jax.lax.dynamic_slice_in_dim(x, start, w, axis=1)
        tw = jax.lax.dynamic_slice_in_dim(t, start, w)
        dt = jax.lax.dynamic_slice_in_dim(t_next, start, w) - tw
        v = velocity_fn(xw, jnp.broadcast_to(tw, (b, w)), start).astype(jnp.float32)
        xw = xw.astype(jnp.float32) + dt.reshape((1, w) + (1,) * (x.ndim - 2)) * v
        return jax.lax.dynamic_update_slice_in_dim(x, xw.astype(x.dtype), start, axis=1), None

    x, _ = jax.lax.scan(body, noise.astype(jnp.float32), (times[:-1], times[1:], starts[:-1]))
    return x
