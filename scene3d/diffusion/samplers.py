"""ODE samplers for flow matching: integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data).

``model_fn(x, t) -> v`` receives ``t`` as a ``(B,)`` array (all entries equal) for ``x`` of shape ``(B, ...)``.
The loops are ``lax.scan`` over a static number of steps, so samplers can be jitted whole.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from scene3d.diffusion.timesteps import shift_time

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("euler", "heun")


def time_grid(num_steps: int, shift: float = 1.0, dtype=jnp.float32) -> jax.Array:
    """``num_steps + 1`` times from 1 to 0: a uniform grid mapped through ``shift_time``
    (s > 1 takes smaller steps near t = 1, the noisy end)."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = jnp.linspace(1.0, 0.0, int(num_steps) + 1, dtype=dtype)
    return t if shift == 1.0 else shift_time(t, shift)


def _euler_step(model_fn, x, t_cur, t_next):
    tb = jnp.full((x.shape[0],), t_cur, x.dtype)
    return x + (t_next - t_cur).astype(x.dtype) * model_fn(x, tb)


def _heun_step(model_fn, x, t_cur, t_next):
    b = x.shape[0]
    h = (t_next - t_cur).astype(x.dtype)
    d1 = model_fn(x, jnp.full((b,), t_cur, x.dtype))
    x_pred = x + h * d1
    d2 = model_fn(x_pred, jnp.full((b,), t_next, x.dtype))
    return x + h * 0.5 * (d1 + d2)


_STEPS = {"euler": _euler_step, "heun": _heun_step}


def sample(model_fn: ModelFn, noise: jax.Array, *, num_steps: int, method: str = "euler", shift: float = 1.0,
           timesteps: jax.Array | None = None, return_trajectory: bool = False):
    """Integrate from ``noise`` (t = 1) to t = 0 with ``method`` in METHODS.

    ``timesteps`` overrides the grid (decreasing, length ``num_steps + 1``). Returns x0, or
    ``(x0, trajectory)`` with the ``num_steps + 1`` states (noise first) when ``return_trajectory``.
    Model evaluations: ``num_steps`` (Euler) or ``2 * num_steps`` (Heun).
    """
    if method not in _STEPS:
        raise ValueError(f"sampler method {method!r}; expected one of {METHODS}")
    if noise.ndim < 1:
        raise ValueError(f"noise must be batched (B, ...), got shape {noise.shape}")
    grid = time_grid(num_steps, shift) if timesteps is None else jnp.asarray(timesteps, jnp.float32)
    if grid.shape != (int(num_steps) + 1,):
        raise ValueError(f"timesteps has shape {grid.shape}; expected ({int(num_steps) + 1},)")
    step = _STEPS[method]

    def body(x, ts):
        x = step(model_fn, x, ts[0], ts[1])
        return x, (x if return_trajectory else None)

    x0, traj = jax.lax.scan(body, noise, jnp.stack([grid[:-1], grid[1:]], axis=1))
    if return_trajectory:
        return x0, jnp.concatenate([noise[None], traj], axis=0)
    return x0


def euler(model_fn: ModelFn, noise: jax.Array, num_steps: int, *, shift: float = 1.0, **kw):
    return sample(model_fn, noise, num_steps=num_steps, method="euler", shift=shift, **kw)


def heun(model_fn: ModelFn, noise: jax.Array, num_steps: int, *, shift: float = 1.0, **kw):
    return sample(model_fn, noise, num_steps=num_steps, method="heun", shift=shift, **kw)
