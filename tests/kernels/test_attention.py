"""scene3d.kernels.attention vs an independent numpy softmax attention."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d import kernels
from scene3d.kernels import reference_attention, register_impl


def np_attention(q, k, v, mask=None, kv_lengths=None, scale=None):
    """float64 numpy attention; returns (out (B,Lq,H,D), lse (B,Lq,H)). Fully-masked rows -> 0 / -inf."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hk, axis=2)
    v = np.repeat(v, h // hk, axis=2)
    scale = 1 / np.sqrt(d) if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    full = np.ones((b, h, lq, lk), bool)
    if mask is not None:
        full &= np.broadcast_to(np.asarray(mask), full.shape)
    if kv_lengths is not None:
        full &= (np.arange(lk)[None, :] < np.asarray(kv_lengths)[:, None])[:, None, None, :]
    logits = np.where(full, logits, -np.inf)
    mx = logits.max(-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(logits - mx)
    s = e.sum(-1, keepdims=True)
    p = e / np.where(s == 0, 1, s)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    with np.errstate(divide="ignore"):
        lse = (np.log(s) + mx)[..., 0].transpose(0, 2, 1)
    return out, lse


def rand(seed, *shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def bern(seed, p, shape):
    return np.random.default_rng(seed).random(shape) < p


# jit so each test compiles once instead of dispatching (and compiling) every op eagerly
attention = jax.jit(kernels.attention, static_argnames=("impl", "scale", "return_lse"))


@pytest.mark.parametrize("b,lq,lk,h,hk,d", [(2, 7, 7, 4, 4, 8), (1, 5, 9, 4, 2, 16), (3, 1, 13, 2, 1, 4)])
def test_xla_matches_numpy(b, lq, lk, h, hk, d):
    q, k, v = rand(0, b, lq, h, d), rand(1, b, lk, hk, d), rand(2, b, lk, hk, d)
    out, lse = attention(q, k, v, impl="xla", return_lse=True)
    ref, ref_lse = np_attention(q, k, v)
    assert out.shape == (b, lq, h, d) and out.dtype == jnp.float32 and lse.shape == (b, lq, h)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=2e-5)
    out_s = attention(q, k, v, impl="xla", scale=0.3)
    np.testing.assert_allclose(out_s, np_attention(q, k, v, scale=0.3)[0], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("mask_shape", [(2, 4, 5, 6), (2, 1, 5, 6), (5, 6), (6,)])
def test_masks_and_fully_masked_rows(mask_shape):
    b, lq, lk, h, d = 2, 5, 6, 4, 8
    q, k, v = rand(3, b, lq, h, d), rand(4, b, lk, 2, d), rand(5, b, lk, 2, d)
    mask = bern(6, 0.6, mask_shape)
    if len(mask_shape) >= 2:
        mask[..., 1, :] = False  # a fully-masked query row
    out, lse = attention(q, k, v, mask=mask, return_lse=True)
    ref, ref_lse = np_attention(q, k, v, mask=mask)
    assert not np.any(np.isnan(out))
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(lse, ref_lse, atol=2e-5, rtol=2e-5)
    if len(mask_shape) >= 2:
        np.testing.assert_array_equal(np.asarray(out)[:, 1], 0.0)
        assert np.all(np.isneginf(np.asarray(lse)[:, 1]))


def test_kv_lengths_with_mask_and_zero_length():
    b, lq, lk, h, d = 3, 4, 7, 2, 8
    q, k, v = rand(7, b, lq, h, d), rand(8, b, lk, h, d), rand(9, b, lk, h, d)
    lengths = jnp.array([7, 3, 0], jnp.int32)
    mask = bern(10, 0.8, (b, 1, lq, lk))
    out = attention(q, k, v, kv_lengths=lengths, mask=mask)
    ref, _ = np_attention(q, k, v, mask=mask, kv_lengths=lengths)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_array_equal(np.asarray(out)[2], 0.0)
    # length-3 row equals attention over the first 3 keys only
    trunc = attention(q[1:2], k[1:2, :3], v[1:2, :3])
    np.testing.assert_allclose(attention(q, k, v, kv_lengths=lengths)[1:2], trunc, atol=1e-5)


def test_bf16_inputs_fp32_softmax():
    b, lq, lk, h, d = 2, 16, 24, 2, 32
    q, k, v = (rand(i, b, n, h, d, dtype=jnp.bfloat16) for i, n in ((11, lq), (12, lk), (13, lk)))
    out = attention(q, k, v, impl="xla")
    assert out.dtype == jnp.bfloat16
    ref, _ = np_attention(np.asarray(q, np.float32), np.asarray(k, np.float32), np.asarray(v, np.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, rtol=3e-2)


def test_grads_finite_and_match_plain_jnp():
    b, lq, lk, h, d = 2, 3, 5, 2, 4
    q, k, v = rand(14, b, lq, h, d), rand(15, b, lk, h, d), rand(16, b, lk, h, d)
    mask = np.ones((b, 1, lq, lk), bool)
    mask[0, 0, 1] = False  # fully-masked row
    mask[1, 0, :, 3:] = False

    def plain(q, k, v):  # written independently; masked rows excluded from the loss
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
        logits = jnp.where(mask, logits, -1e30)
        p = jax.nn.softmax(logits, -1) * mask.any(-1, keepdims=True)
        return jnp.einsum("bhqk,bkhd->bqhd", p, v)

    w = rand(17, b, lq, h, d)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(plain(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(kernels.attention(*a, mask=mask) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, r in zip(g, g_ref):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, r, atol=1e-5, rtol=1e-5)


def test_impl_selection_and_errors(caplog):
    q = rand(18, 1, 3, 2, 8)
    kv = rand(19, 1, 4, 2, 8)
    with caplog.at_level(logging.INFO, logger="scene3d.kernels.attention"):
        out = kernels.attention(q, kv, kv, impl="auto")
    assert any("impl='xla'" in r.getMessage() and "'auto'" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(out, np_attention(q, kv, kv)[0], atol=2e-5)
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="cuDNN"):
            attention(q, kv, kv, impl="cudnn")
    if "pallas" not in kernels.available_impls():
        with pytest.raises(NotImplementedError, match="Pallas"):
            attention(q, kv, kv, impl="pallas")
    with pytest.raises(ValueError, match="unknown impl"):
        attention(q, kv, kv, impl="nope")


def test_register_impl_plugs_in():
    calls = []

    def fake(q, k, v, *, mask, kv_lengths, scale, return_lse):
        calls.append(q.shape)
        return reference_attention(q, k, v, mask=mask, kv_lengths=kv_lengths, scale=scale, return_lse=return_lse)

    register_impl("test_fake", fake, override=True)
    q = rand(20, 1, 3, 2, 8)
    out = kernels.attention(q, q, q, impl="test_fake")
    assert calls == [(1, 3, 2, 8)]
    np.testing.assert_allclose(out, np_attention(q, q, q)[0], atol=2e-5)
    with pytest.raises(ValueError, match="already registered"):
        register_impl("test_fake", fake)


@pytest.mark.parametrize("kwargs,match", [
    (dict(q=(2, 3, 4), k=(2, 3, 4, 8), v=(2, 3, 4, 8)), "q must be"),
    (dict(q=(2, 3, 4, 8), k=(2, 3, 4, 8), v=(2, 5, 4, 8)), "same shape"),
    (dict(q=(2, 3, 4, 8), k=(1, 3, 4, 8), v=(1, 3, 4, 8)), "to match q"),
    (dict(q=(2, 3, 4, 8), k=(2, 3, 3, 8), v=(2, 3, 3, 8)), "multiple of kv heads"),
    (dict(q=(2, 3, 4, 8), k=(2, 5, 4, 8), v=(2, 5, 4, 8), mask=(2, 4, 3, 4)), "not broadcastable"),
    (dict(q=(2, 3, 4, 8), k=(2, 5, 4, 8), v=(2, 5, 4, 8), kv_lengths=(3,)), "kv_lengths"),
])
def test_bad_shapes(kwargs, match):
    arrs = {n: jnp.zeros(kwargs[n]) for n in ("q", "k", "v")}
    extra = {}
    if "mask" in kwargs:
        extra["mask"] = jnp.ones(kwargs["mask"], bool)
    if "kv_lengths" in kwargs:
        extra["kv_lengths"] = jnp.ones(kwargs["kv_lengths"], jnp.int32)
    with pytest.raises(ValueError, match=match):
        kernels.attention(arrs["q"], arrs["k"], arrs["v"], **extra)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_matches_numpy_on_gpu():
    b, lq, lk, h, d = 2, 64, 96, 4, 64
    q, k, v = (rand(i, b, n, h, d, dtype=jnp.bfloat16) for i, n in ((21, lq), (22, lk), (23, lk)))
    lengths = jnp.array([96, 40], jnp.int32)
    f32 = lambda t: np.asarray(t, np.float32)  # noqa: E731
    out, lse = attention(q, k, v, impl="cudnn", kv_lengths=lengths, return_lse=True)
    ref, ref_lse = np_attention(f32(q), f32(k), f32(v), kv_lengths=lengths)
    np.testing.assert_allclose(f32(out), ref, atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(np.asarray(lse), ref_lse, atol=5e-2, rtol=1e-2)
    auto = attention(q, k, v, impl="auto", kv_lengths=lengths)
    np.testing.assert_allclose(f32(auto), ref, atol=3e-2, rtol=3e-2)
