"""scene3d.losses.adversarial against hand-written numpy: hinge losses, the adaptive weight (closed-form gradients
of a linear last layer), the discriminator heads' forward and their stop-gradient for the generator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.losses import adversarial as adv


def test_hinge_losses_vs_numpy():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3, 5)) * 2, rng.normal(size=(4, 2)) * 2
    want_d = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
    np.testing.assert_allclose(adv.hinge_d_loss(jnp.asarray(real), jnp.asarray(fake)), want_d, rtol=1e-6)
    np.testing.assert_allclose(adv.hinge_g_loss(jnp.asarray(fake)), -np.mean(fake), rtol=1e-6)
    # per-level versions average the levels
    np.testing.assert_allclose(adv.level_hinge_d_loss([jnp.asarray(real)] * 2, [jnp.asarray(fake), jnp.asarray(-fake)]),
                               0.5 * (want_d + 0.5 * (np.mean(np.maximum(0, 1 - real))
                                                      + np.mean(np.maximum(0, 1 - fake)))), rtol=1e-6)
    # a perfect discriminator (real >= 1, fake <= -1) has zero loss
    assert float(adv.hinge_d_loss(jnp.full((4,), 1.5), jnp.full((4,), -2.0))) == 0.0


def test_adaptive_weight_closed_form_and_outer_gradient():
    """Last layer y = x W; rec = mean (y - t)^2, gan = -mean(y @ v) * c: dL/dW in closed form with numpy."""
    rng = np.random.default_rng(1)
    x, t, v = rng.normal(size=(6, 4)), rng.normal(size=(6, 3)), rng.normal(size=(3,))
    w = rng.normal(size=(4, 3))
    c = 0.37
    g_rec = 2.0 / t.size * x.T @ (x @ w - t)
    g_gan = -c / 6 * x.T @ np.broadcast_to(v, (6, 3))
    lam = np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-4)

    def fn(w_):
        y = jnp.asarray(x, jnp.float32) @ w_
        return (jnp.mean(jnp.square(y - t)), -c * jnp.mean(y @ jnp.asarray(v, jnp.float32))), {"y": y}

    w32 = jnp.asarray(w, jnp.float32)
    rec, gan, got, aux = adv.losses_with_adaptive_weight(fn, w32)
    np.testing.assert_allclose(got, lam, rtol=1e-5)
    np.testing.assert_allclose(adv.adaptive_weight(jnp.asarray(g_rec), jnp.asarray(g_gan)), lam, rtol=1e-5)
    assert aux["y"].shape == (6, 3)
    # clipping
    assert float(adv.adaptive_weight(jnp.ones(3), jnp.zeros(3), max_weight=7.0)) == 7.0
    # an enclosing gradient treats lambda as a constant: d/dW (rec + lambda gan) = g_rec + lambda g_gan
    outer = jax.grad(lambda w_: (lambda r, g, l, _: r + l * g)(*adv.losses_with_adaptive_weight(fn, w_)))(w32)
    np.testing.assert_allclose(outer, g_rec + lam * g_gan, rtol=1e-4, atol=1e-6)


def _heads_numpy(disc, feats):
    out = []
    for f, fc1, fc2 in zip(feats, disc.fc1, disc.fc2):
        f = np.asarray(f, np.float64)
        z = (f - f.mean(-1, keepdims=True)) / np.sqrt(f.var(-1, keepdims=True) + 1e-6)
        h = z @ np.asarray(fc1.kernel[...]) + np.asarray(fc1.bias[...])
        h = np.where(h > 0, h, 0.2 * h)
        out.append((h @ np.asarray(fc2.kernel[...]) + np.asarray(fc2.bias[...]))[..., 0])
    return out


def test_feature_discriminator_forward_and_frozen_gradient():
    rng = np.random.default_rng(2)
    disc = adv.FeatureDiscriminator((5, 7), hidden=6, rngs=nnx.Rngs(0))
    feats = [jnp.asarray(rng.normal(size=(2, 3, 4, 5)) * 3 + 1, jnp.float32),
             jnp.asarray(rng.normal(size=(2, 2, 2, 7)), jnp.float32)]
    got = disc(feats)
    for g, w in zip(got, _heads_numpy(disc, feats)):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(adv.mean_logits(got), np.mean([np.mean(w) for w in _heads_numpy(disc, feats)]),
                               rtol=1e-5)

    graphdef, params = nnx.split(disc, nnx.Param)

    def loss(p, f, frozen):
        d = nnx.merge(graphdef, p)
        return adv.level_hinge_g_loss(d.frozen_logits(f) if frozen else d(f))

    gp_frozen, gf_frozen = jax.grad(loss, argnums=(0, 1))(params, feats, True)
    gp, gf = jax.grad(loss, argnums=(0, 1))(params, feats, False)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(gp_frozen))  # D gets nothing from G's term
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(gp))
    for a, b in zip(gf_frozen, gf):  # ... but the features (the generator) get the same gradient
        np.testing.assert_allclose(a, b, rtol=1e-6)
        assert float(jnp.abs(a).max()) > 0
    with pytest.raises(ValueError, match="channels"):
        disc([feats[0]])
