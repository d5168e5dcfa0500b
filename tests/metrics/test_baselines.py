"""The trivial predictors (scene3d.metrics.baselines) against numpy's SVD and least squares."""
import numpy as np
import pytest

from scene3d.metrics.baselines import LinearBaselines


@pytest.mark.parametrize("shape", [(12, 3, 2), (5, 40, 3)])  # D < M (plain SVD) and D > M (Gram path)
def test_pca_projection_matches_numpy(shape):
    rng = np.random.default_rng(0)
    train = rng.normal(size=shape) @ np.diag(np.linspace(2.0, 0.1, shape[-1])) + 3.0
    held = rng.normal(size=(4,) + shape[1:]) + 3.0
    k = 3
    fit = LinearBaselines.fit(train, k)
    flat = train.reshape(shape[0], -1)
    mu = flat.mean(0)
    v = np.linalg.svd(flat - mu, full_matrices=False)[2][:k]
    np.testing.assert_allclose(fit.mean.reshape(-1), mu, rtol=1e-6)
    # the basis spans numpy's (signs may differ): compare projectors
    np.testing.assert_allclose(fit.components.T @ fit.components, v.T @ v, atol=1e-5)
    h = held.reshape(4, -1)
    want = (h - mu) @ v.T @ v + mu
    np.testing.assert_allclose(np.asarray(fit.predict_pca(held)).reshape(4, -1), want, rtol=1e-4, atol=1e-4)
    # PCA-k is the best rank-k linear code of the training set: its error equals least squares onto the basis
    c = flat - mu
    coef = np.linalg.lstsq(v.T, c.T, rcond=None)[0]
    np.testing.assert_allclose(np.asarray(fit.predict_pca(train)).reshape(shape[0], -1), (v.T @ coef).T + mu,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(fit.predict_mean(held)), np.broadcast_to(fit.mean, held.shape))


def test_k_is_capped_by_the_training_rank_and_errors():
    train = np.random.default_rng(1).normal(size=(4, 10))
    fit = LinearBaselines.fit(train, 50)
    assert fit.k == 3 and fit.num_examples == 4
    # with k = M - 1 every training example is reproduced exactly
    np.testing.assert_allclose(np.asarray(fit.predict_pca(train)), train, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        LinearBaselines.fit(train[:1], 2)
    with pytest.raises(ValueError, match="k must be"):
        LinearBaselines.fit(train, 0)
