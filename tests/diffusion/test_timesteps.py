import jax
import numpy as np
import pytest

from scene3d.diffusion import timesteps as ts
from scene3d.diffusion.timesteps import TimeSampler

N = 20000


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.7), (-1.0, 1.5)])
def test_logit_normal_moments(mean, std):
    t = np.asarray(TimeSampler("logit_normal", mean, std)(jax.random.key(0), N), np.float64)
    assert ((t > 0) & (t < 1)).all()
    logit = np.log(t) - np.log1p(-t)
    assert abs(logit.mean() - mean) < 4 * std / np.sqrt(N)
    assert abs(logit.std() - std) < 4 * std / np.sqrt(2 * N)


def test_uniform_moments():
    t = np.asarray(TimeSampler("uniform")(jax.random.key(1), N))
    assert ((t >= 0) & (t < 1)).all()
    assert abs(t.mean() - 0.5) < 4 * np.sqrt(1 / 12 / N)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0])
def test_shift_closed_form_and_monotone(s):
    t = np.linspace(0.0, 1.0, 1001)
    shifted = np.asarray(ts.shift_time(t, s), np.float64)
    assert shifted[0] == 0.0 and shifted[-1] == pytest.approx(1.0)
    assert (np.diff(shifted) > 0).all()
    # Closed form: the shift multiplies the noise-to-signal odds t / (1 - t) by s.
    inner = slice(1, -1)
    np.testing.assert_allclose(shifted[inner] / (1 - shifted[inner]), s * t[inner] / (1 - t[inner]), rtol=1e-5)


def test_shifted_uniform_cdf():
    s = 3.0
    t = np.asarray(TimeSampler("uniform", shift=s)(jax.random.key(2), N))
    for u in (0.2, 0.5, 0.8):
        # P(t' <= u) = P(t <= u / (s - (s - 1) u)) for t ~ U(0, 1).
        assert abs((t <= u).mean() - u / (s - (s - 1) * u)) < 4 * np.sqrt(0.25 / N)


def test_shift_composes_with_logit_normal():
    key = jax.random.key(3)
    base = TimeSampler("logit_normal", 0.2, 0.9)(key, 64)
    shifted = TimeSampler("logit_normal", 0.2, 0.9, shift=2.5)(key, 64)
    np.testing.assert_allclose(shifted, ts.shift_time(base, 2.5), rtol=1e-6)


def test_from_spec():
    s = TimeSampler.from_spec("logit_normal,mean=0.5,std=0.8,shift=2")
    assert s == TimeSampler("logit_normal", 0.5, 0.8, 2.0)
    assert TimeSampler.from_spec("uniform") == TimeSampler("uniform")
    assert TimeSampler.from_spec({"kind": "uniform", "shift": 3}) == TimeSampler("uniform", shift=3.0)
    with pytest.raises(ValueError, match="kind 'gauss'"):
        TimeSampler.from_spec("gauss")
    with pytest.raises(ValueError, match="'sigma'"):
        TimeSampler.from_spec("logit_normal,sigma=2")
    with pytest.raises(ValueError, match="shift must be > 0"):
        TimeSampler.from_spec("uniform,shift=0")
    assert ts.shift_for_dim(4 * 4096) == pytest.approx(2.0)
