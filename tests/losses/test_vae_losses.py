"""Reconstruction and KL losses vs numpy / scipy references; the KL-weight annealing schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from scene3d import losses


def _pair(seed=0, shape=(3, 7, 14)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)


def test_reconstruction_losses_vs_numpy():
    p, t = _pair()
    d = p.astype(np.float64) - t
    np.testing.assert_allclose(losses.mse(p, t), (d ** 2).sum() / d.size, rtol=1e-6)
    np.testing.assert_allclose(losses.sse(p, t), np.mean([(d[b] ** 2).sum() for b in range(3)]), rtol=1e-6)
    np.testing.assert_allclose(losses.l2_batch(p, t), np.linalg.norm(d.reshape(-1)) / 3, rtol=1e-6)
    for kind, fn in (("mse", losses.mse), ("sse", losses.sse), ("l2_batch", losses.l2_batch)):
        np.testing.assert_allclose(losses.reconstruction_loss(p, t, kind), fn(p, t), rtol=1e-7)
    # bf16 inputs are compared in float32
    assert losses.mse(jnp.asarray(p, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)).dtype == jnp.float32


def test_channel_group_mse_vs_numpy():
    p, t = _pair(1)
    groups = {"xyz": slice(0, 3), "opacity": slice(6, 7), "rot": slice(10, 14), "empty": slice(14, 14)}
    out = losses.channel_group_mse(p, t, groups)
    assert set(out) == {"xyz", "opacity", "rot"}
    for k in out:
        np.testing.assert_allclose(out[k], np.mean((p[..., groups[k]] - t[..., groups[k]]) ** 2), rtol=1e-6)


def test_reconstruction_loss_errors():
    p, t = _pair()
    with pytest.raises(ValueError, match="config.loss.recon.*'huber'"):
        losses.reconstruction_loss(p, t, "huber")
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        losses.mse(p, t[:, :5])


def test_kl_closed_form_and_monte_carlo():
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(4, 5)).astype(np.float32)
    logvar = rng.uniform(-2, 1, size=(4, 5)).astype(np.float32)
    kl = np.asarray(losses.diagonal_gaussian_kl(mean, logvar))
    s = np.exp(0.5 * logvar.astype(np.float64))
    # KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2, per dimension
    ref = (-np.log(s) + (s ** 2 + mean ** 2) / 2 - 0.5).sum(-1)
    np.testing.assert_allclose(kl, ref, rtol=1e-5)
    # independent Monte-Carlo estimate E_q[log q - log p] for one row
    x = rng.normal(size=(200_000, 5)) * s[0] + mean[0]
    mc = (stats.norm.logpdf(x, mean[0], s[0]) - stats.norm.logpdf(x)).sum(-1).mean()
    np.testing.assert_allclose(kl[0], mc, rtol=0.02)
    np.testing.assert_allclose(losses.kl_loss(mean, logvar), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(losses.diagonal_gaussian_kl(np.zeros(3), np.zeros(3)), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="equal shapes"):
        losses.kl_loss(mean, logvar[:, :3])


def test_kl_weight_annealing():
    beta, n = 1e-5, 100
    for step, frac in ((0, 0.0), (25, 0.25), (100, 1.0), (1000, 1.0)):
        np.testing.assert_allclose(losses.kl_weight(step, beta, n), beta * frac, rtol=1e-6)
        np.testing.assert_allclose(jax.jit(lambda s: losses.kl_weight(s, beta, n))(jnp.int32(step)), beta * frac,
                                   rtol=1e-6)
    np.testing.assert_allclose(losses.kl_weight(0, beta, 0), beta)  # 0 disables annealing
    np.testing.assert_allclose(losses.kl_weight(None, beta, n), beta)
