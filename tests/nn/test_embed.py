"""Fourier features, patchify/unpatchify, PatchEmbed (vs a numpy strided conv), timestep embedding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.nn import PatchEmbed, TimestepEmbedder, fourier_dim, fourier_features, patchify, unpatchify
from tests.nn import np_ref
from tests.nn.util import build, randomize, run


def test_fourier_features_can3tok_dims_and_values():
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    y = np.asarray(jax.jit(fourier_features, static_argnums=(1, 2))(jnp.asarray(x), 8, True))
    assert y.shape == (4, 51) and fourier_dim(3, 8) == 51
    cols = [x]
    cols.append(np.stack([np.sin(x[:, i] * 2.0 ** j) for i in range(3) for j in range(8)], -1))
    cols.append(np.stack([np.cos(x[:, i] * 2.0 ** j) for i in range(3) for j in range(8)], -1))
    np.testing.assert_allclose(y, np.concatenate(cols, -1), atol=1e-5)
    yp = np.asarray(fourier_features(jnp.asarray(x), 4, include_input=False, include_pi=True))
    assert yp.shape == (4, fourier_dim(3, 4, include_input=False)) == (4, 24)
    np.testing.assert_allclose(yp[:, 1], np.sin(x[:, 0] * 2 * np.pi), atol=1e-5)  # dim 0, band 1
    np.testing.assert_allclose(yp[:, 12 + 4], np.cos(x[:, 1] * np.pi), atol=1e-5)  # dim 1, band 0


def np_patchify(x, p):
    b, h, w, c = x.shape
    out = np.zeros((b, (h // p) * (w // p), p * p * c), x.dtype)
    for gy in range(h // p):
        for gx in range(w // p):
            out[:, gy * (w // p) + gx] = x[:, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p, :].reshape(b, -1)
    return out


def test_patchify_roundtrip_and_layout():
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 12, 5)).astype(np.float32)  # (B, V, H, W, C)
    t = jax.jit(patchify, static_argnums=1)(jnp.asarray(x), 4)
    assert t.shape == (2, 3, 6, 80)
    np.testing.assert_array_equal(t[:, 1], np_patchify(x[:, 1], 4))
    np.testing.assert_array_equal(unpatchify(t, 4, (8, 12)), x)
    t2 = patchify(jnp.asarray(x[:, 0]), (2, 4))
    np.testing.assert_array_equal(unpatchify(t2, (2, 4), (8, 12)), x[:, 0])
    with pytest.raises(ValueError, match="divisible"):
        patchify(jnp.asarray(x[:, 0]), 5)
    with pytest.raises(ValueError, match="tokens must be"):
        unpatchify(t, 4, (8, 8))


def test_patch_embed_matches_strided_conv():
    c, dim, p = 3, 6, 2
    m = build(lambda: PatchEmbed(c, dim, p, rngs=nnx.Rngs(0)))
    w = np.random.default_rng(2).standard_normal((dim, c, p, p))  # PyTorch conv layout
    bias = np.random.default_rng(3).standard_normal(dim)
    m.proj.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0).reshape(-1, dim), jnp.float32)
    m.proj.bias[...] = jnp.asarray(bias, jnp.float32)
    x = np.random.default_rng(4).standard_normal((2, 4, 6, c))
    ref = np.zeros((2, 2, 3, dim))
    for i in range(2):
        for j in range(3):
            patch = x[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # (B, p, p, C)
            ref[:, i, j] = np.einsum("byxc,dcyx->bd", patch, w) + bias
    y = run(m, jnp.asarray(x, jnp.float32))
    assert y.shape == (2, 6, dim) and m.grid_size(4, 6) == (2, 3)
    np.testing.assert_allclose(y, ref.reshape(2, 6, dim), atol=1e-4)
    with pytest.raises(ValueError, match="PatchEmbed"):
        m(jnp.zeros((1, 4, 4, 4)))


def test_timestep_embedder():
    m = build(lambda: TimestepEmbedder(8, freq_dim=6, t_scale=1000.0, rngs=nnx.Rngs(0)))
    p = randomize(m, 5, scale=0.3)
    t = np.array([0.0, 0.25, 1.0])
    half = 3
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    args = (t * 1000.0)[:, None] * freqs
    emb = np.concatenate([np.cos(args), np.sin(args)], -1)
    ref = np_ref.linear(p["fc2"], np_ref.silu(np_ref.linear(p["fc1"], emb)))
    np.testing.assert_allclose(run(m, jnp.asarray(t, jnp.float32)), ref, atol=1e-4, rtol=1e-4)
    assert run(m, jnp.float32(0.5)).shape == (1, 8)
