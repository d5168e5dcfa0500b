"""scene3d.nn.gaussian against closed forms (numpy) and a Monte-Carlo estimate of the KL."""
import numpy as np
import pytest

from scene3d.nn.gaussian import diagonal_gaussian_kl, reparameterize


def _kl_np(mean, logvar):
    var = np.exp(logvar)
    return 0.5 * (mean ** 2 + var - 1.0 - logvar)


def test_kl_axes_and_closed_form():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5)) * 0.5
    ref = _kl_np(mean, logvar)
    np.testing.assert_allclose(diagonal_gaussian_kl(mean, logvar), ref.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(diagonal_gaussian_kl(mean, logvar, axes=None), ref.sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(diagonal_gaussian_kl(mean, logvar, axes=(0, 2)), ref.sum((0, 2)), rtol=1e-5)
    assert float(np.abs(diagonal_gaussian_kl(np.zeros(4), np.zeros(4)))) < 1e-7  # N(0, I) to itself
    with pytest.raises(ValueError, match="equal shapes"):
        diagonal_gaussian_kl(mean, logvar[..., :2])


def test_reparameterized_samples_have_the_posterior_moments_and_kl():
    rng = np.random.default_rng(1)
    mean, logvar = np.array([0.7, -1.2], np.float32), np.array([-0.5, 0.8], np.float32)
    eps = rng.standard_normal((200_000, 2)).astype(np.float32)
    z = np.asarray(reparameterize(mean, logvar, eps))
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(z.var(0), np.exp(logvar), rtol=0.02)
    # Monte-Carlo KL: E_q[log q(z) - log p(z)]
    logq = -0.5 * (np.log(2 * np.pi) + logvar + (z - mean) ** 2 / np.exp(logvar))
    logp = -0.5 * (np.log(2 * np.pi) + z ** 2)
    np.testing.assert_allclose((logq - logp).mean(0).sum(), float(diagonal_gaussian_kl(mean, logvar)), rtol=0.02)
