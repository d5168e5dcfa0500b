import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.diffusion import paths, samplers


def _x0_eps(shape=(3, 4, 2)):
    r = np.random.default_rng(0)
    return r.standard_normal(shape).astype(np.float32), r.standard_normal(shape).astype(np.float32)


def _straight_flow(x0):
    """The exact velocity of the path to a fixed x0: v(x, t) = (x - x0) / t = eps - x0 along the line."""
    return lambda x, t: (x - x0) / paths.expand_t(t, x)


@pytest.mark.parametrize("method", samplers.METHODS)
def test_one_step_on_straight_flow_recovers_x0(method):
    x0, eps = _x0_eps()
    v = jnp.asarray(eps - x0)
    # A model predicting the constant velocity of the straight path to x0: one step from the noise is exact.
    out = samplers.sample(lambda x, t: v, jnp.asarray(eps), num_steps=1, method=method)
    np.testing.assert_allclose(out, x0, atol=1e-6)
    if method == "euler":  # the state-dependent field of the same path, (x - x0) / t, is exact too
        out = samplers.sample(_straight_flow(x0), jnp.asarray(eps), num_steps=1, method=method)
        np.testing.assert_allclose(out, x0, atol=1e-6)


def test_euler_many_steps_stays_on_the_path():
    x0, eps = _x0_eps()
    grid = samplers.time_grid(7, shift=3.0)
    out, traj = jax.jit(lambda e: samplers.euler(_straight_flow(x0), e, 7, shift=3.0, return_trajectory=True))(eps)
    np.testing.assert_allclose(out, x0, atol=1e-5)
    assert traj.shape == (8,) + x0.shape
    for i, t in enumerate(np.asarray(grid)):
        np.testing.assert_allclose(traj[i], paths.interpolate(x0, eps, float(t)), atol=1e-5)


def _curved(x, t):
    # dx/dt = -cos(t) x  =>  x(t) = x(1) exp(sin(1) - sin(t)),  x(0) = x(1) exp(sin(1)).
    return -jnp.cos(paths.expand_t(t, x)) * x


def _errors(method, steps_list):
    x1 = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32))
    exact = np.asarray(x1, np.float64) * np.exp(np.sin(1.0))
    return [np.abs(np.asarray(samplers.sample(_curved, x1, num_steps=n, method=method)) - exact).max()
            for n in steps_list]


def test_heun_is_second_order():
    errs = _errors("heun", [4, 8, 16])
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(3.3 < r < 4.7 for r in ratios), (errs, ratios)


def test_euler_is_first_order():
    errs = _errors("euler", [8, 16, 32])
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.7 < r < 2.3 for r in ratios), (errs, ratios)


def test_time_grid_and_errors():
    g = np.asarray(samplers.time_grid(4))
    np.testing.assert_allclose(g, [1.0, 0.75, 0.5, 0.25, 0.0])
    gs = np.asarray(samplers.time_grid(4, shift=3.0))
    assert gs[0] == pytest.approx(1.0) and gs[-1] == 0.0 and (np.diff(gs) < 0).all()
    assert (np.diff(gs)[0] > np.diff(g)[0])  # smaller first step near the noise end
    with pytest.raises(ValueError, match="num_steps"):
        samplers.time_grid(0)
    with pytest.raises(ValueError, match="method 'ddim'"):
        samplers.sample(_curved, jnp.ones((1, 2)), num_steps=2, method="ddim")
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        samplers.sample(_curved, jnp.ones((1, 2)), num_steps=2, timesteps=jnp.ones(5))
