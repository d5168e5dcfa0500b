"""nn.Attention (self / cross / grouped kv heads / qk-norm / rope hooks / masks, log-sum-exp output) vs numpy;
blockwise attention over key blocks == attention over the concatenated keys."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.nn import Attention, LayerNorm, blockwise_attention
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


def _np_qkv(p, x, ctx, heads, kv_heads):
    """Projected, rms-qk-normed q (B, Lq, H, d) and k, v (B, Lk, H, d) (kv heads repeated)."""
    split = lambda t, h: t.reshape(t.shape[:2] + (h, -1))  # noqa: E731
    q = np_ref.rmsnorm(split(np_ref.linear(p["q"], x), heads), p["q_norm"]["scale"])
    k = np_ref.rmsnorm(split(np_ref.linear(p["k"], ctx), kv_heads), p["k_norm"]["scale"])
    v = split(np_ref.linear(p["v"], ctx), kv_heads)
    return q, np.repeat(k, heads // kv_heads, 2), np.repeat(v, heads // kv_heads, 2)


def test_lse_output_vs_numpy_logsumexp():
    m = build(lambda: Attention(16, 4, kv_dim=12, num_kv_heads=2, qk_norm="rms", rngs=nnx.Rngs(0)))
    p = randomize(m, 30, scale=0.4)
    x, ctx = arr(31, 2, 3, 16), arr(32, 2, 7, 12)
    keep = np.random.default_rng(33).random((2, 1, 3, 7)) < 0.6
    keep[0, :, 1] = False  # query 1 of example 0 attends to nothing
    keep[1, :, 2] = True
    o, lse = run(m, jnp.asarray(x), jnp.asarray(ctx), mask=jnp.asarray(keep), return_lse=True)
    assert o.shape == (2, 3, 4, 4) and lse.shape == (2, 3, 4) and lse.dtype == jnp.float32
    o_ref, lse_ref = np_ref.attention_heads(*_np_qkv(p, x, ctx, 4, 2), keep)
    np.testing.assert_allclose(o, o_ref, atol=1e-5)
    assert np.isneginf(np.asarray(lse)[0, 1]).all() and np.isfinite(np.delete(np.asarray(lse)[0], 1, 0)).all()
    np.testing.assert_allclose(lse, lse_ref, atol=1e-5)
    # the projection of the per-head result is the module's output
    y = run(m, jnp.asarray(x), jnp.asarray(ctx), mask=jnp.asarray(keep))
    np.testing.assert_allclose(np_ref.linear(p["out"], np.asarray(o, np.float64).reshape(2, 3, 16)), y, atol=1e-5)


def test_blockwise_attention_equals_attention_over_concatenated_keys():
    attn = build(lambda: Attention(16, 4, kv_dim=6, qk_norm="rms", rngs=nnx.Rngs(0)))
    norm = build(lambda: LayerNorm(6))
    p, pn = randomize(attn, 34, scale=0.4), randomize(norm, 35, scale=0.5)
    x, g1, g2 = arr(36, 2, 3, 16), arr(37, 3, 2, 4, 6), arr(38, 1, 2, 5, 6)  # 3 blocks of 4 keys, 1 block of 5
    m1 = np.random.default_rng(39).random((3, 2, 4)) < 0.7
    m1[1, 0] = False  # one block fully masked for example 0
    ctx = np.concatenate([np.moveaxis(g1, 0, 1).reshape(2, 12, 6), g2[0]], 1)
    keep = np.concatenate([np.moveaxis(m1, 0, 1).reshape(2, 12), np.ones((2, 5), bool)], 1)
    graphdef, state = nnx.split((attn, norm))

    def blockwise(state, x, g1, g2):
        a, n = nnx.merge(graphdef, state)
        return blockwise_attention(a, x, [(g1, jnp.asarray(m1)), (g2, None)], prepare=n)

    def one_shot(state, x, g1, g2):
        a, n = nnx.merge(graphdef, state)
        c = jnp.concatenate([jnp.moveaxis(g1, 0, 1).reshape(2, 12, 6), g2[0]], 1)
        return a(x, n(c), mask=jnp.asarray(keep)[:, None, None, :])

    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    both = jax.jit(lambda *a: (blockwise(*a), one_shot(*a), jax.grad(loss(blockwise), (1, 2, 3))(*a),
                               jax.grad(loss(one_shot), (1, 2, 3))(*a)))
    y, y1, g, g_one = both(state, *map(jnp.asarray, (x, g1, g2)))
    ref = np_ref.attention(p, x, np_ref.layernorm(ctx, pn["scale"], pn["bias"]), heads=4, qk_norm=np_ref.rmsnorm,
                           keep=keep[:, None, None, :])
    np.testing.assert_allclose(y, ref, atol=1e-4)
    np.testing.assert_allclose(y, y1, atol=2e-5)
    for a, b in zip(g, g_one):
        np.testing.assert_allclose(a, b, atol=5e-5)
    with pytest.raises(ValueError, match="masks must be"):
        blockwise_attention(attn, jnp.asarray(x), [(jnp.asarray(g1), jnp.ones((3, 2, 5), bool))])
