"""FlowMatching against closed forms and numpy: times per example / chunk, x_t, x-prediction, loss weighting,
condition dropout, the exact flow of Gaussian data under Euler and Heun, CFG with a guidance interval, config
validation."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scene3d.diffusion.objective import FlowMatching
from scene3d.diffusion.timesteps import TimeSampler


def _data(shape=(3, 4, 2, 5), seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal(shape).astype(np.float32), r.standard_normal(shape).astype(np.float32)


def test_from_config_defaults_rename_and_errors():
    fm = FlowMatching.from_config(ml_collections.ConfigDict(dict(time_sampler="uniform,shift=2", null_prob=0.25,
                                                                 cfg_interval=[0.1, 0.9])),
                                  rename={"null_prob": "cond_drop"}, sample_steps=7, cfg_scale=3)
    assert fm.time_sampler == TimeSampler("uniform", shift=2.0) and fm.cond_drop == 0.25
    assert fm.cfg_interval == (0.1, 0.9) and fm.sample_steps == 7 and fm.cfg_scale == 3.0
    assert FlowMatching.from_config(None, sample_steps=5) == FlowMatching(sample_steps=5)
    hash(fm)  # a static jit argument
    cases = [({"cond_drop": 1.5}, r"config.flow.cond_drop must be in \[0, 1\]"),
             ({"sampler": "ddim"}, r"config.flow.sampler must be one of \('euler', 'heun'\)"),
             ({"prediction": "eps"}, "config.flow.prediction must be one of"),
             ({"loss_weighting": "snr"}, "config.flow.loss_weighting must be one of"),
             ({"cfg_interval": (0.8, 0.2)}, "config.flow.cfg_interval must satisfy"),
             ({"sample_steps": 0}, "config.flow.sample_steps must be >= 1"),
             ({"sample_shift": "x"}, "config.flow.sample_shift must be a number"),
             ({"time_sampler": "gauss"}, "config.flow.time_sampler: time sampler kind 'gauss'"),
             ({"cfg_sclae": 2.0}, r"config.flow: unknown keys \['cfg_sclae'\]")]
    for fields, match in cases:
        with pytest.raises(ValueError, match=match):
            FlowMatching.from_config(fields)
    with pytest.raises(ValueError, match="set null_prob or cond_drop, not both"):
        FlowMatching.from_config({"null_prob": 0.1, "cond_drop": 0.1}, rename={"null_prob": "cond_drop"})


def test_times_per_example_and_per_chunk():
    key = jax.random.key(3)
    fm = FlowMatching(time_sampler="uniform", num_chunks=2)
    np.testing.assert_array_equal(fm.sample_times(key, 5), jax.random.uniform(key, (5,)))
    t = np.asarray(fm.sample_times(key, 5, 6))
    ref = np.repeat(np.asarray(jax.random.uniform(key, (5, 2))), 3, axis=1)  # chunk c = views 3c .. 3c + 2
    np.testing.assert_array_equal(t, ref)
    per_view = np.asarray(fm.sample_times(key, 5, 6, chunks=6))
    assert len(np.unique(per_view)) == 30
    with pytest.raises(ValueError, match="num_chunks=4 must divide the 6 views"):
        fm.sample_times(key, 5, 6, chunks=4)
    # draw: (B, V) times broadcast over the trailing axes of x_t
    x0, _ = _data()
    t, eps, x_t = FlowMatching(num_chunks=2).draw(jnp.asarray(x0), key, jax.random.key(4), per_view=True)
    t, eps = np.asarray(t), np.asarray(eps)
    assert t.shape == (3, 4) and np.all(t[:, 0] == t[:, 1]) and np.all(t[:, 2] == t[:, 3])
    np.testing.assert_allclose(x_t, (1 - t[..., None, None]) * x0 + t[..., None, None] * eps, rtol=1e-6, atol=1e-6)


def test_loss_weighting_masks_weights_and_x_prediction():
    x0, eps = _data()
    pred, _ = _data(seed=1)
    t = np.random.default_rng(2).uniform(0.1, 1.0, (3, 4)).astype(np.float32)
    err = (pred.astype(np.float64) - (eps - x0)) ** 2
    loss, per = FlowMatching().loss(pred, x0, eps, t)
    np.testing.assert_allclose(per, err.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(loss, err.mean(), rtol=1e-5)
    # 'x0': each element's velocity error times t^2 of its view
    loss, per = FlowMatching(loss_weighting="x0").loss(pred, x0, eps, t)
    np.testing.assert_allclose(per, (err * t[..., None, None] ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    # a (B, V) mask and (B,) weights
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    w = np.array([1.0, 2.0, 5.0], np.float32)
    loss, per = FlowMatching().loss(pred, x0, eps, t, mask=mask, weights=w)
    ref = np.array([err[0, :2].mean(), err[1, :1].mean(), 0.0]) * w
    np.testing.assert_allclose(per, ref, rtol=1e-5)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
    # x-prediction: the exact clean data is a zero velocity error; its velocity is (x_t - x) / max(t, t_min)
    fm = FlowMatching(prediction="x", x_pred_t_min=0.2)
    x_t = (1 - t[..., None, None]) * x0 + t[..., None, None] * eps
    v = np.asarray(fm.velocity(jnp.asarray(pred), jnp.asarray(x_t), t))
    np.testing.assert_allclose(v, (x_t - pred) / np.maximum(t, 0.2)[..., None, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fm.x0(pred, x_t, t), pred)
    big = np.maximum(t, 0.25)  # above t_min: the conversion is exact
    assert float(fm.loss(x0, x0, eps, big)[0]) < 1e-10
    # with 'x0' weighting the x-prediction loss is the clean-data MSE
    got = FlowMatching(prediction="x", x_pred_t_min=0.0, loss_weighting="x0").loss(pred, x0, eps, t)[0]
    np.testing.assert_allclose(got, ((pred.astype(np.float64) - x0) ** 2).mean(), rtol=1e-4)


def test_condition_dropout():
    fm = FlowMatching(cond_drop=0.3)
    drop = np.asarray(fm.drop(jax.random.key(0), 20000))
    assert drop.dtype == bool and abs(drop.mean() - 0.3) < 0.02
    labels = jnp.arange(2000, dtype=jnp.int32)
    out = np.asarray(fm.drop_condition(jax.random.key(1), labels, 7777))
    dropped = out == 7777
    assert abs(dropped.mean() - 0.3) < 0.05 and np.all(out[~dropped] == np.arange(2000)[~dropped])
    assert not np.asarray(FlowMatching().drop(jax.random.key(0), 100)).any()


def test_fixed_time_losses_match_numpy():
    x0, eps = _data()
    a = np.float32(0.7)

    def velocity_fn(x, t):  # a linear "network"
        return a * x

    out = FlowMatching().fixed_time_losses(velocity_fn, jnp.asarray(x0), jnp.asarray(eps), (0.2, 0.6), name="vl",
                                           per_view=True)
    ref = {}
    for tv in (0.2, 0.6):
        x_t = (1 - tv) * x0.astype(np.float64) + tv * eps
        ref[f"vl_t{tv}"] = np.mean((a * x_t - (eps - x0)) ** 2)
    ref["vl"] = (ref["vl_t0.2"] + ref["vl_t0.6"]) / 2
    assert set(out) == set(ref)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5)


MU, S = 1.5, 0.5  # data N(MU, S^2) per element: the exact flow is linear, x(t) = (1 - t) MU + sqrt(a(t)) z


def _gaussian_velocity(x, t):
    """E[eps - x0 | x_t = x] for x0 ~ N(MU, S^2), eps ~ N(0, 1): -MU + (t - (1 - t) S^2) / a(t) (x - (1 - t) MU),
    a(t) = (1 - t)^2 S^2 + t^2."""
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    a = (1 - t) ** 2 * S ** 2 + t ** 2
    return -MU + (t - (1 - t) * S ** 2) / a * (x - (1 - t) * MU)


def test_euler_and_heun_on_the_exact_gaussian_flow():
    z = jax.random.normal(jax.random.key(0), (4, 8))
    exact = MU + S * np.asarray(z, np.float64)  # where the flow takes noise z at t = 0
    err = {}
    for method in ("euler", "heun"):
        fm = FlowMatching(sampler=method)
        for n in (16, 32):
            x = jax.jit(lambda z: fm.sample(_gaussian_velocity, z, num_steps=n))(z)
            err[method, n] = float(np.abs(np.asarray(x, np.float64) - exact).max())
    # first order: halving the step halves the error; second order (Heun): a quarter; and far more accurate
    assert 1.7 < err["euler", 16] / err["euler", 32] < 2.3, err
    assert 3.2 < err["heun", 16] / err["heun", 32] < 4.8, err
    assert err["heun", 16] < err["euler", 32] / 10, err
    # overrides: one Heun step of the exact field from a 16-step Euler default
    fm = FlowMatching(sampler="euler", sample_steps=16)
    one = fm.sample(_gaussian_velocity, z, num_steps=1, method="heun")
    v1 = _gaussian_velocity(z, jnp.ones(4))
    x1 = z - v1
    np.testing.assert_allclose(one, z - 0.5 * (v1 + _gaussian_velocity(x1, jnp.zeros(4))), rtol=1e-5, atol=1e-5)


def test_cfg_scale_interval_and_conditional_only():
    noise = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)), jnp.float32)
    vc, vu = np.float32(0.5), np.float32(-1.0)

    def cond_fn(x, t):
        return jnp.full_like(x, vc)

    def uncond_fn(x, t):
        return jnp.full_like(x, vu)

    def nan_fn(x, t):
        return jnp.full_like(x, jnp.nan)

    g = vu + 3.0 * (vc - vu)
    fm = FlowMatching(cfg_scale=3.0, sample_steps=2)
    # grid 1 -> 0.5 -> 0; each step moves by -0.5 v
    cases = [(dict(), g, g),  # guided everywhere
             (dict(cfg_interval=(0.0, 0.5)), vc, g),  # t = 1 outside, t = 0.5 inside
             (dict(cfg_interval=(0.6, 1.0)), g, vc),
             (dict(cfg_scale=1.0), vc, vc)]
    for kw, v1, v2 in cases:
        got = fm.sample(cond_fn, noise, uncond_fn=uncond_fn, **kw)
        np.testing.assert_allclose(got, noise - 0.5 * v1 - 0.5 * v2, rtol=1e-6, atol=1e-6, err_msg=str(kw))
    # scale 1 or no unconditional function: the conditional model alone (the unconditional one never runs)
    assert np.all(np.isfinite(np.asarray(FlowMatching(cfg_scale=1.0).sample(cond_fn, noise, uncond_fn=nan_fn))))
    np.testing.assert_allclose(fm.sample(cond_fn, noise), noise - vc, rtol=1e-6)
    # a traced scale guides (here 1: the guided velocity equals the conditional one)
    got = jax.jit(lambda s: fm.sample(cond_fn, noise, uncond_fn=uncond_fn, cfg_scale=s))(jnp.float32(1.0))
    np.testing.assert_allclose(got, noise - vc, rtol=1e-6)


def test_x_prediction_sampling_converts_to_velocity():
    x0, _ = _data((2, 6))
    noise = jnp.asarray(np.random.default_rng(5).standard_normal((2, 6)), jnp.float32)
    fm = FlowMatching(prediction="x", x_pred_t_min=1e-3, sample_steps=4)
    # a network that predicts the clean data exactly: every Euler step stays on the straight path to it
    out = fm.sample(lambda x, t: jnp.asarray(x0), noise)
    np.testing.assert_allclose(out, x0, rtol=1e-5, atol=1e-5)
