import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.diffusion import paths


def _data(seed=0, shape=(4, 3, 5)):
    r = np.random.default_rng(seed)
    return (r.standard_normal(shape).astype(np.float32), r.standard_normal(shape).astype(np.float32),
            r.uniform(size=shape[0]).astype(np.float32))


def test_endpoints():
    x0, eps, _ = _data()
    np.testing.assert_array_equal(paths.interpolate(x0, eps, jnp.zeros(4)), x0)
    np.testing.assert_array_equal(paths.interpolate(x0, eps, jnp.ones(4)), eps)
    np.testing.assert_array_equal(paths.interpolate(x0, eps, 1.0), eps)


def test_velocity_is_time_derivative():
    x0, eps, t = _data(1)
    _, dxdt = jax.jvp(lambda tt: paths.interpolate(x0, eps, tt), (jnp.asarray(t),), (jnp.ones_like(t),))
    np.testing.assert_allclose(dxdt, paths.target_velocity(x0, eps), rtol=1e-6, atol=1e-6)
    # and by central differences on the numpy formula
    h = 1e-3
    fd = (((1 - (t + h))[:, None, None] * x0 + (t + h)[:, None, None] * eps)
          - ((1 - (t - h))[:, None, None] * x0 + (t - h)[:, None, None] * eps)) / (2 * h)
    np.testing.assert_allclose(paths.target_velocity(x0, eps), fd, rtol=1e-3, atol=1e-3)


def test_x0_and_eps_recovered_from_true_velocity():
    x0, eps, t = _data(2)
    xt = paths.interpolate(x0, eps, t)
    v = paths.target_velocity(x0, eps)
    np.testing.assert_allclose(paths.x0_from_velocity(xt, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(paths.eps_from_velocity(xt, v, t), eps, atol=1e-5)


def test_velocity_loss_vs_numpy():
    x0, eps, _ = _data(3)
    pred = np.random.default_rng(9).standard_normal(x0.shape).astype(np.float32)
    err = (pred - (eps - x0)) ** 2
    assert float(paths.velocity_loss(pred, x0, eps)) == pytest.approx(err.mean(), rel=1e-5)
    mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    w = np.array([1.0, 0.5, 2.0, 3.0], np.float32)
    per = [(err[b] * mask[b][:, None]).sum() / max(mask[b].sum() * 5, 1) for b in range(4)]
    expected = np.mean(np.array(per) * w)
    got = paths.velocity_loss(pred, x0, eps, weights=w, mask=mask.astype(bool))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(paths.velocity_loss(eps - x0, x0, eps)) == 0.0


def test_shape_errors():
    x0, eps, _ = _data()
    with pytest.raises(ValueError, match=r"time t has shape \(3,\)"):
        paths.interpolate(x0, eps, jnp.zeros(3))
    with pytest.raises(ValueError, match="must match"):
        paths.velocity_loss(x0[:2], x0, eps)
    with pytest.raises(ValueError, match="mask"):
        paths.velocity_loss(x0, x0, eps, mask=np.ones((4, 5)))
