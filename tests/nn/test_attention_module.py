"""nn.Attention (self / cross / grouped kv heads / qk-norm / rope hooks / masks) vs numpy."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.nn import Attention
from tests.nn import np_ref
from tests.nn.util import build, randomize, run


def arr(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_self_attention_with_qk_norm_and_rope_hook():
    m = build(lambda: Attention(16, 4, qk_norm="rms", rngs=nnx.Rngs(0)))
    p = randomize(m, 1, scale=0.4)
    x = arr(2, 2, 5, 16)
    hook = lambda t: t[..., ::-1] * jnp.arange(1, 5)[:, None]  # noqa: E731  (any map of (B, L, H, D))
    y = run(m, jnp.asarray(x), q_rope=hook)  # self-attention: k_rope defaults to q_rope
    np_hook = lambda t: t[..., ::-1] * np.arange(1, 5)[:, None]  # noqa: E731
    ref = np_ref.attention(p, x, heads=4, qk_norm=np_ref.rmsnorm, q_hook=np_hook, k_hook=np_hook)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_cross_attention_gqa_kv_lengths():
    m = build(lambda: Attention(16, 4, kv_dim=12, num_kv_heads=2, head_dim=6, out_dim=10, rngs=nnx.Rngs(0)))
    p = randomize(m, 3, scale=0.4)
    x, ctx = arr(4, 2, 3, 16), arr(5, 2, 7, 12)
    lengths = np.array([7, 4])
    y = np.asarray(run(m, jnp.asarray(x), jnp.asarray(ctx), kv_lengths=jnp.asarray(lengths)))
    assert y.shape == (2, 3, 10)
    keep = (np.arange(7)[None] < lengths[:, None])[:, None, None, :]
    np.testing.assert_allclose(y, np_ref.attention(p, x, ctx, heads=4, kv_heads=2, keep=keep), atol=1e-4)
    np.testing.assert_allclose(y[1], np_ref.attention(p, x[1:], ctx[1:, :4], heads=4, kv_heads=2)[0], atol=1e-4)
    mask = np.random.default_rng(6).random((2, 1, 3, 7)) < 0.7
    mask[..., 0] = True
    ym = run(m, jnp.asarray(x), jnp.asarray(ctx), mask=jnp.asarray(mask))
    np.testing.assert_allclose(ym, np_ref.attention(p, x, ctx, heads=4, kv_heads=2, keep=mask), atol=1e-4)


def test_bad_inputs_and_bf16():
    m = nnx.eval_shape(lambda: Attention(8, 2, kv_dim=4, rngs=nnx.Rngs(0)))  # shapes are enough to fail
    with pytest.raises(ValueError, match="pass context"):
        m(jnp.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="context must be"):
        m(jnp.zeros((1, 3, 8)), jnp.zeros((1, 3, 5)))
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4, rngs=nnx.Rngs(0))
    mb = build(lambda: Attention(8, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert run(mb, jnp.ones((1, 3, 8), jnp.bfloat16)).dtype == jnp.bfloat16
