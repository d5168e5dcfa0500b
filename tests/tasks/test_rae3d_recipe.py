"""The RAE recipe and variable view counts in the rae3d task, on a tiny model and a synthetic batch:

- token noise: per-scene sigma ~ |N(0, tau^2)| (or U(0, tau)) checked by its moments; none at evaluation;
- context-view masks: counts in [min, max], the reference view always kept, the others uniform; masked-out views
  have no effect on the tokens;
- the GAN wiring: the decoder's last-layer gradient equals grad(rec) + adv * lambda * grad(GAN) with lambda
  recomputed from separately taken gradients; the discriminator's gradient comes from its hinge loss only, and
  nothing before the delayed starts;
- LPIPS as a loss term equals the LPIPS module's distance of the same renders.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import rae3d as rae3d_config
from scene3d.losses import adversarial
from scene3d.metrics import lpips as lpips_lib
from scene3d.tasks import rae3d as task_lib

B, V, H = 2, 3, 14


def _batch(seed=0, h=H):
    rng = np.random.default_rng(seed)
    out = {}
    for part in ("context", "target"):
        c2w = np.tile(np.eye(4, dtype=np.float32), (B, V, 1, 1))
        c2w[..., :3, 3] = rng.normal(size=(B, V, 3)) * 0.3
        out[f"{part}_images"] = rng.uniform(-1, 1, (B, V, h, h, 3)).astype(np.float32)
        out[f"{part}_c2w"] = c2w
        out[f"{part}_intrinsics"] = np.tile(np.array([0.9, 1.1, 0.5, 0.5], np.float32), (B, V, 1))
        out[f"{part}_points"] = rng.normal(size=(B, V, h, h, 3)).astype(np.float32)
        out[f"{part}_mask"] = rng.uniform(size=(B, V, h, h)) > 0.5
    return {k: jnp.asarray(v) for k, v in out.items()}


def _task(h=H, **loss):
    c = rae3d_config.get_config("runlocal")
    c.data.views.update(num_context=V, num_target=V, resolution=(h, h))
    c.model.update(num_tokens=8, dim=32, dec_dim=32, dec_depth=1, view_chunk=8, points=None)  # small graphs
    c.loss.update(loss)
    return task_lib.RAE3DTask(c)


def test_token_noise_moments():
    tokens = jnp.zeros((4000, 16, 8), jnp.float32)
    tau = 0.8
    for dist, mean_sigma in (("half_normal", tau * math.sqrt(2 / math.pi)), ("uniform", tau / 2)):
        noisy = task_lib.noise_tokens(jax.random.key(0), tokens, tau, dist)
        sigma = np.asarray(jnp.sqrt(jnp.mean(jnp.square(noisy), axis=(1, 2))))  # each scene's noise level
        np.testing.assert_allclose(sigma.mean(), mean_sigma, rtol=0.03)
        if dist == "half_normal":  # E[sigma^2] = tau^2
            np.testing.assert_allclose(np.mean(np.square(noisy)), tau ** 2, rtol=0.05)
        else:
            assert sigma.max() <= tau * 1.2  # bounded by tau (up to the 128-sample estimate)
    with pytest.raises(ValueError, match="token_noise_dist"):
        task_lib.noise_tokens(jax.random.key(0), tokens, tau, "gauss")


def test_view_masks_counts_reference_and_uniformity():
    m = np.asarray(task_lib.sample_view_mask(jax.random.key(1), 6000, 6, 2, 5))
    n = m.sum(1)
    assert m[:, 0].all() and n.min() == 2 and n.max() == 5
    np.testing.assert_allclose(np.bincount(n, minlength=6)[2:] / len(n), 0.25, atol=0.03)  # n ~ U{2..5}
    # given n, the n - 1 other views are a uniform subset: each of views 1..5 kept with prob E[n - 1] / 5
    np.testing.assert_allclose(m[:, 1:].mean(0), (3.5 - 1) / 5, atol=0.03)
    with pytest.raises(ValueError):
        task_lib.sample_view_mask(jax.random.key(1), 2, 3, 2, 4)


def test_masked_out_context_views_have_no_effect_and_config_checks():
    task = _task(context_views=(1, 1))
    model = task.build_model(nnx.Rngs(0))
    batch = _batch()
    render = nnx.jit(lambda m, b, r: task.render(m, b, r)[1])
    enc = nnx.jit(lambda m, im, c, k: m.encoder((im, c, k))[0])
    only_first = enc(model, batch["context_images"][:, :1], batch["context_c2w"][:, :1],
                     batch["context_intrinsics"][:, :1])
    np.testing.assert_allclose(render(model, batch, jax.random.key(3)), only_first, atol=2e-5)
    # evaluation (no rng) reads every context view
    every = nnx.jit(lambda m, b: task.render(m, b, None)[1])(model, batch)
    assert np.abs(np.asarray(every) - np.asarray(only_first)).max() > 1e-3
    with pytest.raises(ValueError, match="context_views"):
        _task(context_views=(2, V + 1))
    with pytest.raises(ValueError, match="token_noise"):
        _task(token_noise=-1.0)


def _adv_task(**extra):
    return _task(adv=0.6, disc_features="random_conv", disc_widths=(4, 8), disc_hidden=8, perceptual=0.0,
                 token_noise=0.5, context_views=(2, 3), **extra)


def test_gan_gradients_adaptive_weight_and_delayed_starts():
    task = _adv_task(disc_start=2, adv_start=4, disc_loss=0.7)
    model = task.build_model(nnx.Rngs(0))
    assert isinstance(model.discriminator, adversarial.FeatureDiscriminator)
    batch, key = _batch(1), jax.random.key(5)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def total_and_grads(p, step):
        return jax.value_and_grad(lambda q: task.loss(nnx.merge(graphdef, q, rest), batch, key, step=step),
                                  has_aux=True)(p)

    # reference, taken separately with jax.grad: gradients of the reconstruction and of the generator's GAN loss
    # with respect to the decoder's last layer (only that layer, so the compiled backward stays small)
    hdef, kernel, others = nnx.split(model, lambda path, _: tuple(path) == ("decoder", "head", "kernel"), ...)

    @jax.jit
    def reference(k):
        def rec(kk):
            return task.reconstruction_loss(nnx.merge(hdef, kk, others), batch, key)[0]

        def gan(kk):
            m = nnx.merge(hdef, kk, others)
            rgb = task.reconstruction_loss(m, batch, key)[2][0]
            feats = task.disc_features(m)(rgb.reshape((-1,) + rgb.shape[2:]))
            return adversarial.level_hinge_g_loss(jax.lax.stop_gradient(m.discriminator)(feats))

        return rec(k), jax.grad(rec)(k), gan(k), jax.grad(gan)(k)

    rec, g_rec, gan, g_gan = reference(kernel)
    head = lambda g: np.asarray(g["decoder"]["head"]["kernel"][...])  # noqa: E731
    d_norm = lambda g: sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(g["discriminator"]))  # noqa: E731
    lam = np.linalg.norm(head(g_rec)) / (np.linalg.norm(head(g_gan)) + 1e-4)

    (t0, m0), g0 = total_and_grads(params, jnp.asarray(0))  # before both starts: the reconstruction only
    np.testing.assert_allclose(t0, rec, rtol=1e-5)
    np.testing.assert_allclose(head(g0), head(g_rec), rtol=1e-4, atol=1e-7)
    assert d_norm(g0) == 0.0 and float(m0["disc_loss"]) == 0.0 and float(m0["adv_weight"]) == 0.0

    (t2, m2), g2 = total_and_grads(params, jnp.asarray(2))  # the discriminator trains, the decoder is unchanged
    np.testing.assert_allclose(head(g2), head(g_rec), rtol=1e-4, atol=1e-7)
    assert d_norm(g2) > 0
    np.testing.assert_allclose(t2, rec + 0.7 * float(m2["disc_loss"]), rtol=1e-5)

    (t4, m4), g4 = total_and_grads(params, jnp.asarray(4))  # both
    np.testing.assert_allclose(m4["adv_weight"], lam, rtol=1e-3)
    np.testing.assert_allclose(m4["adv_g"], gan, rtol=1e-5)
    np.testing.assert_allclose(t4, rec + 0.6 * lam * gan + 0.7 * float(m4["disc_loss"]), rtol=1e-4)
    np.testing.assert_allclose(head(g4), head(g_rec) + 0.6 * lam * head(g_gan), rtol=1e-3, atol=1e-6)
    # the discriminator's gradient comes from its own loss only (the generator's term stops it)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), g2["discriminator"],
                 g4["discriminator"])


def test_lpips_loss_term_and_missing_weights():
    task = _task(28, perceptual=0.0, lpips=0.4, lpips_weights=dict(net="vgg", random=True, seed=3))  # vgg: >= 16 px
    model = task.build_model(nnx.Rngs(0))
    batch, key = _batch(2, 28), jax.random.key(0)
    total, met, (rgb, gt) = nnx.jit(lambda m: task.reconstruction_loss(m, batch, key))(model)
    want = float(jnp.mean(lpips_lib.LPIPS.random("vgg", 3)(rgb, gt)))
    np.testing.assert_allclose(met["lpips"], want, rtol=1e-5)
    np.testing.assert_allclose(total, float(met["l1"]) + 0.4 * want, rtol=1e-5)  # runlocal: l1 weight 1, no l2
    missing = _task(lpips=1.0)
    with pytest.raises(ValueError, match="lpips_weights"):
        missing.restore_pretrained(nnx.state(model))
