import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.diffusion import guidance, samplers


def test_cfg_formula():
    r = np.random.default_rng(0)
    c, u = r.standard_normal((2, 3, 4)).astype(np.float32), r.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(guidance.cfg(c, u, 1.0), c, atol=1e-6)
    np.testing.assert_allclose(guidance.cfg(c, u, 0.0), u, atol=1e-6)
    np.testing.assert_allclose(guidance.cfg(c, u, 4.0), u + 4.0 * (c - u), rtol=1e-6, atol=1e-6)
    per = np.array([2.0, 0.5], np.float32)
    np.testing.assert_allclose(guidance.cfg(c, u, per), u + per[:, None, None] * (c - u), rtol=1e-6, atol=1e-6)


def _fns():
    cond = lambda x, t: x + 1.0
    uncond = lambda x, t: x - 1.0
    return cond, uncond


def test_guidance_only_inside_interval():
    cond, uncond = _fns()
    fn = guidance.guided(cond, uncond, 3.0, interval=(0.2, 0.6))
    x = jnp.zeros((5, 2))
    t = jnp.array([0.1, 0.2, 0.4, 0.6, 0.9])
    out = np.asarray(jax.jit(fn)(x, t))
    guided_value = -1.0 + 3.0 * 2.0
    np.testing.assert_allclose(out[:, 0], [1.0, guided_value, guided_value, guided_value, 1.0])
    # no interval: guided everywhere
    np.testing.assert_allclose(guidance.guided(cond, uncond, 3.0)(x, t)[:, 0], guided_value)


def test_uncond_not_evaluated_outside_interval():
    calls = []
    cond, _ = _fns()

    def uncond(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return x - 1.0

    fn = jax.jit(guidance.guided(cond, uncond, 2.0, interval=(0.0, 0.5)))
    x = jnp.zeros((2, 3))
    np.testing.assert_allclose(fn(x, jnp.full((2,), 0.9)), 1.0)
    jax.effects_barrier()
    assert calls == []
    fn(x, jnp.full((2,), 0.3)).block_until_ready()
    jax.effects_barrier()
    assert calls == [1]


def test_guided_sampler_runs_under_jit():
    cond, uncond = _fns()
    fn = guidance.guided(cond, uncond, 2.0, interval=(0.5, 1.0))
    out = jax.jit(lambda x: samplers.euler(fn, x, 4))(jnp.zeros((1, 1)))
    # dx/dt = x + c with c = 3 on t in [0.5, 1] (guided), 1 below: Euler steps of -0.25 from t = 1.
    x = 0.0
    for t in (1.0, 0.75, 0.5, 0.25):
        x = x - 0.25 * (x + (3.0 if t >= 0.5 else 1.0))
    np.testing.assert_allclose(out, x, rtol=1e-6)


def test_drop_condition():
    cond = {"emb": jnp.arange(2000 * 3, dtype=jnp.float32).reshape(2000, 3) + 1,
            "ids": jnp.arange(2000, dtype=jnp.int32) + 1}
    out = guidance.drop_condition(jax.random.key(0), cond, 0.3, 0)
    dropped_emb = np.all(np.asarray(out["emb"]) == 0, axis=1)
    dropped_ids = np.asarray(out["ids"]) == 0
    np.testing.assert_array_equal(dropped_emb, dropped_ids)  # one draw per example, shared by all leaves
    assert abs(dropped_emb.mean() - 0.3) < 4 * np.sqrt(0.21 / 2000)
    np.testing.assert_array_equal(np.asarray(out["emb"])[~dropped_emb], np.asarray(cond["emb"])[~dropped_emb])

    x = jnp.ones((4, 2, 3))
    null = jnp.array([7.0, 8.0, 9.0])  # a learned null embedding, broadcast over the tokens
    np.testing.assert_array_equal(guidance.drop_condition(jax.random.key(1), x, 1.0, null),
                                  np.broadcast_to(null, (4, 2, 3)))
    np.testing.assert_array_equal(guidance.drop_condition(jax.random.key(1), x, 0.0, null), x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        guidance.drop_condition(jax.random.key(1), x, 1.5, 0.0)
