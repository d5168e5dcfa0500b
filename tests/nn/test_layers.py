"""Norms, modulate/AdaLNZero, Mlp/SwiGLU vs numpy."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.nn import AdaLNZero, LayerNorm, Mlp, RMSNorm, SwiGLU, modulate
from tests.nn import np_ref
from tests.nn.util import build, randomize, run


def rng(seed):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("use_scale,use_bias", [(True, True), (False, False), (True, False)])
def test_layernorm(use_scale, use_bias):
    x = rng(1).standard_normal((2, 3, 8)).astype(np.float32) * 3 + 1
    m = LayerNorm(8, eps=1e-3, use_scale=use_scale, use_bias=use_bias)
    p = randomize(m, 2)
    ref = np_ref.layernorm(x, p.get("scale"), p.get("bias"), eps=1e-3)
    np.testing.assert_allclose(run(m, jnp.asarray(x)), ref, atol=1e-5, rtol=1e-5)


def test_rmsnorm_and_dtype():
    x = rng(3).standard_normal((2, 5, 6)).astype(np.float32)
    m = RMSNorm(6, eps=1e-5, use_bias=True)
    p = randomize(m, 4)
    np.testing.assert_allclose(run(m, jnp.asarray(x)), np_ref.rmsnorm(x, p["scale"], p["bias"], 1e-5), atol=1e-5)
    mb = RMSNorm(6, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    y = run(mb, jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and mb.scale[...].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float32), np_ref.rmsnorm(np.asarray(jnp.asarray(x, jnp.bfloat16),
                               np.float32)), atol=3e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="last axis 6"):
        m(jnp.zeros((2, 7)))


def test_modulate_per_sample_and_per_token():
    r = rng(5)
    x = r.standard_normal((2, 4, 3))
    s, c = r.standard_normal((2, 3)), r.standard_normal((2, 3))
    np.testing.assert_allclose(modulate(jnp.asarray(x), jnp.asarray(s), jnp.asarray(c)),
                               x * (1 + c[:, None]) + s[:, None], atol=1e-6)
    st, ct = r.standard_normal((2, 4, 3)), r.standard_normal((2, 4, 3))
    np.testing.assert_allclose(modulate(jnp.asarray(x), jnp.asarray(st), jnp.asarray(ct)), x * (1 + ct) + st,
                               atol=1e-6)
    with pytest.raises(ValueError, match="per-sample"):
        modulate(jnp.asarray(x), jnp.zeros((2, 5)), jnp.zeros((2, 5)))


def test_adaln_zero_init_then_linear():
    m = build(lambda: AdaLNZero(5, 4, 3, rngs=nnx.Rngs(0)))
    c = jnp.asarray(rng(6).standard_normal((2, 5)), jnp.float32)
    chunks = run(m, c)
    assert len(chunks) == 3 and all(t.shape == (2, 4) for t in chunks)
    assert all(np.all(np.asarray(t) == 0) for t in chunks)
    p = randomize(m, 7)
    full = np_ref.linear(p["proj"], np_ref.silu(np.asarray(c, np.float64)))
    for i, t in enumerate(run(m, c)):
        np.testing.assert_allclose(t, full[:, 4 * i:4 * (i + 1)], atol=1e-5)
    ct = jnp.asarray(rng(8).standard_normal((2, 6, 5)), jnp.float32)  # per-token condition
    assert run(m, ct)[0].shape == (2, 6, 4)


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu", "silu"])
def test_mlp(act):
    m = build(lambda: Mlp(6, 12, 5, act=act, rngs=nnx.Rngs(0)))
    p = randomize(m, 9)
    x = rng(10).standard_normal((2, 3, 6)).astype(np.float32)
    ref_act = {"gelu_tanh": np_ref.gelu_tanh, "gelu": np_ref.gelu, "silu": np_ref.silu}[act]
    np.testing.assert_allclose(run(m, jnp.asarray(x)), np_ref.mlp(p, x, ref_act), atol=1e-4, rtol=1e-4)


def test_swiglu():
    m = build(lambda: SwiGLU(6, 10, rngs=nnx.Rngs(0)))
    p = randomize(m, 11)
    x = rng(12).standard_normal((2, 3, 6)).astype(np.float32)
    ref = np_ref.linear(p["w_down"], np_ref.silu(np_ref.linear(p["w_gate"], x)) * np_ref.linear(p["w_up"], x))
    np.testing.assert_allclose(run(m, jnp.asarray(x)), ref, atol=1e-4, rtol=1e-4)
    assert "bias" not in p["w_gate"]
