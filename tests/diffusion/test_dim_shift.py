"""The dimension-dependent time shift of the RAE work, s = sqrt(N * C / 4096) for N tokens of C channels, against
numpy: the shift value, the shifted training times, and the sampler's time grid (t = 1, the noise, first)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.diffusion import samplers
from scene3d.diffusion.objective import FlowMatching
from scene3d.diffusion.timesteps import TimeSampler, shift_for_dim, shift_time


def _np_shift(t, s):
    t = np.asarray(t, np.float64)
    return s * t / (1.0 + (s - 1.0) * t)


@pytest.mark.parametrize("n,c", [(1024, 768), (256, 768), (64, 32)])
def test_shift_value_and_training_times(n, c):
    s = shift_for_dim(n * c)
    assert s == pytest.approx(np.sqrt(n * c / 4096.0), rel=1e-12)
    key = jax.random.key(n)
    plain = np.asarray(TimeSampler("logit_normal")(key, 4096), np.float64)
    shifted = np.asarray(TimeSampler("logit_normal", shift=s)(key, 4096), np.float64)
    np.testing.assert_allclose(shifted, _np_shift(plain, s), rtol=1e-5, atol=1e-6)
    # s > 1 (the card sizes) puts the median of the logit-normal times at s / (1 + s) > 0.5: towards the noise
    assert np.median(shifted) == pytest.approx(s / (1 + s), abs=0.02)


@pytest.mark.parametrize("s,steps", [(13.856, 8), (6.928, 5), (0.7071, 4)])
def test_sampler_grid_and_euler_steps_follow_it(s, steps):
    grid_ref = _np_shift(np.linspace(1.0, 0.0, steps + 1), s)
    np.testing.assert_allclose(samplers.time_grid(steps, s), grid_ref, rtol=1e-6, atol=1e-7)
    assert grid_ref[0] == 1.0 and grid_ref[-1] == 0.0 and (np.diff(grid_ref) < 0).all()
    # Euler with v = 1 moves x by (t_next - t_cur): the trajectory spells out the grid the sampler used, and the
    # times the model sees are the grid's left ends (t = 1 first: the noise end).
    seen = []

    def v_one(x, t):
        jax.debug.callback(lambda tt: seen.append(float(np.asarray(tt)[0])), t)
        return jnp.ones_like(x)

    flow = FlowMatching(sample_steps=steps, sample_shift=s)
    noise = jnp.zeros((1, 3))
    _, traj = flow.sample(v_one, noise, return_trajectory=True)
    np.testing.assert_allclose(np.asarray(traj)[:, 0, 0], grid_ref - 1.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen, grid_ref[:-1], rtol=1e-5, atol=1e-6)
    # the same convention as the training-time shift
    np.testing.assert_allclose(shift_time(jnp.linspace(1.0, 0.0, steps + 1), s), grid_ref, rtol=1e-6, atol=1e-7)
