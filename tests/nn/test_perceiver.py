"""PerceiverRead vs numpy (incl. key masks / kv_lengths, learned latents), its blockwise read; PerceiverProcess."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d import nn
from scene3d.nn import PerceiverProcess, PerceiverRead
from tests.nn import np_ref
from tests.nn.util import build, randomize, run

DIM, HEADS, IN = 16, 2, 6


def arr(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_read(p, inputs, latents, keep=None):
    ln = lambda h, q: np_ref.layernorm(h, q["scale"], q["bias"])  # noqa: E731
    x = latents + np_ref.attention(p["cross"], ln(latents, p["norm_latents"]), ln(inputs, p["norm_inputs"]),
                                   heads=HEADS, keep=keep)
    return x + np_ref.mlp(p["mlp"], ln(x, p["norm_mlp"]))


def test_perceiver_read_matches_numpy_with_masks():
    m = build(lambda: PerceiverRead(DIM, HEADS, input_dim=IN, num_latents=4, mlp_ratio=2.0, rngs=nnx.Rngs(0)))
    p = randomize(m, 1, scale=0.3)
    inputs = arr(2, 2, 7, IN)
    latents = np.broadcast_to(p["latents"], (2, 4, DIM))
    y = run(m, jnp.asarray(inputs))  # learned latents
    assert y.shape == (2, 4, DIM)
    np.testing.assert_allclose(y, np_read(p, inputs, latents), atol=1e-4, rtol=1e-4)
    key_mask = np.ones((2, 7), bool)
    key_mask[1, 5:] = False
    ym = np.asarray(run(m, jnp.asarray(inputs), mask=jnp.asarray(key_mask)))
    np.testing.assert_allclose(ym, np_read(p, inputs, latents, keep=key_mask[:, None, None, :]), atol=1e-4)
    # padding keys are ignored: same as reading the truncated input; kv_lengths does the same
    np.testing.assert_allclose(ym[1], np_read(p, inputs[1:, :5], latents[1:])[0], atol=1e-4)
    yl = run(m, jnp.asarray(inputs), kv_lengths=jnp.asarray([7, 5], jnp.int32))
    np.testing.assert_allclose(yl, ym, atol=1e-5)
    given = arr(3, 2, 3, DIM)  # explicit latents
    np.testing.assert_allclose(run(m, jnp.asarray(inputs), jnp.asarray(given)), np_read(p, inputs, given),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="key mask"):
        m(jnp.asarray(inputs), mask=jnp.ones((2, 6), bool))


def test_blockwise_read_equals_one_shot_read():
    m = build(lambda: PerceiverRead(DIM, HEADS, input_dim=IN, num_latents=4, mlp_ratio=2.0, rngs=nnx.Rngs(0)))
    p = randomize(m, 6, scale=0.3)
    blocks = arr(7, 2, 2, 3, IN)  # 2 blocks of 3 inputs
    masks = np.array([[[1, 1, 0], [1, 1, 1]], [[0, 0, 0], [1, 0, 1]]], bool)  # example 0: block 1 fully masked
    graphdef, state = nnx.split(m)
    y = jax.jit(lambda s, b, k: nnx.merge(graphdef, s).blockwise([(b, k)]))(state, blocks, masks)  # learned latents
    inputs, keep = np.moveaxis(blocks, 0, 1).reshape(2, 6, IN), np.moveaxis(masks, 0, 1).reshape(2, 6)
    ref = np_read(p, inputs, np.broadcast_to(p["latents"], (2, 4, DIM)), keep=keep[:, None, None, :])
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_perceiver_process_scan_equals_loop():
    m = build(lambda: PerceiverProcess(DIM, HEADS, 2, mlp_ratio=2.0, rngs=nnx.Rngs(0)))
    randomize(m, 4, scale=0.3)
    x = jnp.asarray(arr(5, 2, 4, DIM))
    y = run(m, x)
    m.blocks.scan = False
    np.testing.assert_allclose(run(m, x), y, atol=1e-5)
    assert y.shape == (2, 4, DIM) and not np.allclose(y, x)


def test_merge_partial_of_kernel_blocks_vs_numpy():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 3, 2, 4)), rng.normal(size=(1, 7, 2, 4)), rng.normal(size=(1, 7, 2, 4))
    from scene3d.kernels import attention
    o1, l1 = attention(jnp.asarray(q), jnp.asarray(k[:, :3]), jnp.asarray(v[:, :3]), return_lse=True)
    o2, l2 = attention(jnp.asarray(q), jnp.asarray(k[:, 3:]), jnp.asarray(v[:, 3:]), return_lse=True)
    o, lse = nn.merge_partial(o1, l1, o2, l2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(o, np.einsum("bhqk,bkhd->bqhd", p, v), atol=1e-5)
    ref_lse = np.log(np.exp(logits).sum(-1)).transpose(0, 2, 1)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-5)
    # an empty block (lse = -inf) changes nothing
    o3, l3 = nn.merge_partial(o, lse, jnp.zeros_like(o), jnp.full_like(lse, -jnp.inf))
    np.testing.assert_allclose(o3, o, atol=1e-6)
    np.testing.assert_allclose(l3, lse, atol=1e-6)


def test_blockwise_read_equals_one_shot_read_and_gradients_with_an_empty_block():
    read = nn.PerceiverRead(32, 4, num_latents=5, qk_norm=True, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 2, 6, 32)), jnp.float32)  # 3 blocks of 6 tokens
    m = rng.uniform(size=(3, 2, 6)) > 0.3
    m[1, 0] = False  # one block fully masked for scene 0
    m = jnp.asarray(m)
    lat = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
    fmask = jnp.moveaxis(m, 0, 1).reshape(2, 18)

    def block(lat, x):
        return read.blockwise([(x[:2], m[:2]), (x[2:], m[2:])], lat)

    def one_shot(lat, x):
        return read(jnp.moveaxis(x, 0, 1).reshape(2, 18, 32), lat, mask=fmask)

    loss = lambda f: (lambda a, b: jnp.sum(jnp.sin(f(a, b))))

    @jax.jit
    def both(lat, x):
        return (block(lat, x), one_shot(lat, x), jax.grad(loss(block), argnums=(0, 1))(lat, x),
                jax.grad(loss(one_shot), argnums=(0, 1))(lat, x))

    y1, y2, g1, g2 = both(lat, x)
    np.testing.assert_allclose(y1, y2, atol=2e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=5e-5)
