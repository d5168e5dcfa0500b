"""Block, DiTBlock (with each option), FinalLayer vs numpy; Stack scan == loop, remat grads; logical names;
sharded Block."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from scene3d.core import sharding
from scene3d.nn import (LIGHTNING_DIT, Block, DiTBlock, FinalLayer, PatchEmbed, PerceiverRead, Stack,
                        TimestepEmbedder, apply_rope_1d, make_rope)
from tests.nn import np_ref
from tests.nn.util import build, randomize, run

DIM, HEADS = 16, 2


def arr(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def np_dit(p, x, c, context=None):
    mods = np.split(np_ref.linear(p["adaln"]["proj"], np_ref.silu(c)), 6, -1)
    if c.ndim == 2:
        mods = [m[:, None] for m in mods]
    s1, sc1, g1, s2, sc2, g2 = mods
    x = x + g1 * np_ref.attention(p["attn"], np_ref.modulate(np_ref.layernorm(x), s1, sc1), heads=HEADS)
    if context is not None:
        h = np_ref.layernorm(x, p["norm_cross"]["scale"], p["norm_cross"]["bias"])
        x = x + np_ref.attention(p["cross"], h, context, heads=HEADS)
    return x + g2 * np_ref.mlp(p["mlp"], np_ref.modulate(np_ref.layernorm(x), s2, sc2))


def test_block_matches_numpy():
    m = build(lambda: Block(DIM, HEADS, mlp_ratio=2.0, cross_attn=True, context_dim=6, rngs=nnx.Rngs(0)))
    p = randomize(m, 1, scale=0.3)
    x, ctx = arr(2, 2, 5, DIM), arr(3, 2, 4, 6)
    ln = lambda h, q: np_ref.layernorm(h, q["scale"], q["bias"])  # noqa: E731
    ref = x + np_ref.attention(p["attn"], ln(x, p["norm1"]), heads=HEADS)
    ref = ref + np_ref.attention(p["cross"], ln(ref, p["norm_cross"]), ctx, heads=HEADS)
    ref = ref + np_ref.mlp(p["mlp"], ln(ref, p["norm2"]))
    np.testing.assert_allclose(run(m, jnp.asarray(x), jnp.asarray(ctx)), ref, atol=1e-4, rtol=1e-4)


def test_dit_block_identity_at_init_then_matches_numpy():
    m = build(lambda: DiTBlock(DIM, HEADS, 8, mlp_ratio=2.0, cross_attn=True, context_dim=6, rngs=nnx.Rngs(0)))
    x, ctx = arr(4, 2, 5, DIM), arr(5, 2, 3, 6)
    c, c_tok = arr(6, 2, 8), arr(7, 2, 5, 8)  # per-sample and per-token conditions
    fwd = lambda m, c: run(m, jnp.asarray(x), jnp.asarray(c), jnp.asarray(ctx))  # noqa: E731
    np.testing.assert_array_equal(fwd(m, c), x)
    p = randomize(m, 7, scale=0.3)
    np.testing.assert_allclose(fwd(m, c), np_dit(p, x, c, ctx), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fwd(m, c_tok), np_dit(p, x, c_tok, ctx), atol=1e-4, rtol=1e-4)


def test_final_layer():
    m = build(lambda: FinalLayer(DIM, 3, 8, rngs=nnx.Rngs(0)))
    x, c = arr(8, 2, 5, DIM), arr(9, 2, 8)
    np.testing.assert_array_equal(run(m, jnp.asarray(x), jnp.asarray(c)), 0.0)
    p = randomize(m, 10, scale=0.3)
    shift, scale = np.split(np_ref.linear(p["adaln"]["proj"], np_ref.silu(c)), 2, -1)
    ref = np_ref.linear(p["linear"], np_ref.modulate(np_ref.layernorm(x), shift, scale))
    np.testing.assert_allclose(run(m, jnp.asarray(x), jnp.asarray(c)), ref, atol=1e-4, rtol=1e-4)


def _np_norm(kind, h, q=None):
    q = q or {}
    return (np_ref.rmsnorm if kind == "rms" else np_ref.layernorm)(h, q.get("scale"), q.get("bias"))


def np_dit_options(p, x, c, context, *, norm, mlp, cross_norm, cross_rope, rope, context_rope):
    """DiTBlock in numpy with the options of the test below; rope / context_rope: numpy rotations."""
    s1, sc1, g1, s2, sc2, g2 = np.split(np_ref.linear(p["adaln"]["proj"], np_ref.silu(c)), 6, -1)
    qk = np_ref.rmsnorm  # qk_norm='rms'
    h = np_ref.modulate(_np_norm(norm, x, p.get("norm1")), s1, sc1)
    x = x + g1 * np_ref.attention(p["attn"], h, heads=HEADS, qk_norm=qk, q_hook=rope, k_hook=rope)
    h = _np_norm(norm, x, p["norm_cross"]) if cross_norm else x
    x = x + np_ref.attention(p["cross"], h, context, heads=HEADS, qk_norm=qk,
                             q_hook=rope if "q" in cross_rope else None,
                             k_hook=context_rope if "k" in cross_rope else None)
    h = np_ref.modulate(_np_norm(norm, x, p.get("norm2")), s2, sc2)
    return x + g2 * (np_ref.swiglu(p["mlp"], h) if mlp == "swiglu" else np_ref.mlp(p["mlp"], h, np_ref.gelu))


@pytest.mark.parametrize("opts", [
    dict(LIGHTNING_DIT, mlp_dim=24, cross_rope="q"),  # SceneTok's denoiser block
    dict(norm="layer", norm_affine=True, mlp="gelu", qk_norm="rms", cross_attn=True, cross_rope="qk"),
    dict(norm="rms", qk_norm="rms", mlp="swiglu", cross_attn=True, cross_norm=True, cross_rope="k"),
], ids=["lightning", "layer_affine_gelu", "rms_plain_swiglu"])
def test_dit_block_options_match_numpy(opts):
    m = build(lambda: DiTBlock(DIM, HEADS, 8, context_dim=6, rngs=nnx.Rngs(0), **opts))
    p = randomize(m, 20, scale=0.3)
    # the parameter tree each option implies
    affine, rms = opts.get("norm_affine", False), opts["norm"] == "rms"
    assert set(p.get("norm1", {})) == ({"scale"} if rms else {"scale", "bias"}) if affine else "norm1" not in p
    assert ("norm_cross" in p) == opts.get("cross_norm", True)
    swiglu = opts["mlp"] == "swiglu"
    assert ("bias" in p["mlp"]["w_gate"]) == opts.get("mlp_bias", False) if swiglu else "fc1" in p["mlp"]
    if "mlp_dim" in opts:
        assert p["mlp"]["w_up"]["kernel"].shape == (DIM, opts["mlp_dim"])
    x, ctx, c = arr(21, 2, 5, DIM), arr(22, 2, 4, 6), arr(23, 2, 5, 8)  # per-token condition
    pos, cpos = np.arange(5) * 1.5, np.arange(4) + 7.0
    y = run(m, jnp.asarray(x), jnp.asarray(c), jnp.asarray(ctx), rope=make_rope(pos, axial=False),
            context_rope=make_rope(cpos, axial=False))
    ref = np_dit_options(p, x, c, ctx, norm=opts["norm"], mlp=opts["mlp"], cross_norm=opts.get("cross_norm", True),
                         cross_rope=opts["cross_rope"], rope=lambda t: np_ref.rope_1d(t, pos),
                         context_rope=lambda t: np_ref.rope_1d(t, cpos))
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-4)


def test_dit_block_cross_init_and_option_errors():
    x, ctx, c = jnp.asarray(arr(24, 2, 5, DIM)), jnp.asarray(arr(25, 2, 3, DIM)), jnp.asarray(arr(26, 2, DIM))
    plain = build(lambda: DiTBlock(DIM, HEADS, mlp="swiglu", cross_attn=True, cross_norm=False,
                                   cross_zero_init=False, rngs=nnx.Rngs(0)))
    p = np_ref.pure(nnx.state(plain, nnx.Param))
    # adaLN gates start at zero: a fresh block adds only the (plainly initialised) cross-attention
    np.testing.assert_allclose(run(plain, x, c, ctx), np.asarray(x) + np_ref.attention(p["cross"], x, ctx,
                                                                                           heads=HEADS), atol=1e-5)
    assert np.abs(p["cross"]["out"]["kernel"]).max() > 0
    with pytest.raises(ValueError, match="cross_rope"):
        DiTBlock(DIM, HEADS, cross_attn=True, cross_rope="v", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs cross_attn"):
        DiTBlock(DIM, HEADS, cross_rope="q", rngs=nnx.Rngs(0))
    with_k = DiTBlock(DIM, HEADS, cross_attn=True, cross_rope="k", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="context_rope"):
        with_k(x, c, ctx)
    with pytest.raises(ValueError, match="unknown norm"):
        DiTBlock(DIM, HEADS, norm="batch", rngs=nnx.Rngs(0))


def test_final_layer_rms_affine():
    m = build(lambda: FinalLayer(DIM, 3, 8, norm="rms", norm_affine=True, rngs=nnx.Rngs(0)))
    p = randomize(m, 27, scale=0.3)
    assert set(p["norm"]) == {"scale"}
    x, c = arr(28, 2, 5, DIM), arr(29, 2, 5, 8)  # per-token condition
    shift, scale = np.split(np_ref.linear(p["adaln"]["proj"], np_ref.silu(c)), 2, -1)
    ref = np_ref.linear(p["linear"], np_ref.modulate(np_ref.rmsnorm(x, p["norm"]["scale"]), shift, scale))
    np.testing.assert_allclose(run(m, jnp.asarray(x), jnp.asarray(c)), ref, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def dit_stack():
    """A 3-layer DiTBlock stack with random (non-identity) params, and its inputs."""
    s = build(lambda: Stack(lambda r: DiTBlock(DIM, HEADS, 8, mlp_ratio=2.0, rngs=r), 3, rngs=nnx.Rngs(0)))
    randomize(s, 11, scale=0.3)
    x, c = jnp.asarray(arr(12, 2, 5, DIM)), jnp.asarray(arr(13, 2, 8))
    return s, x, c


def _variant(stack, scan, remat):
    graphdef, state = nnx.split(stack)
    new = nnx.merge(graphdef, state)
    new.scan, new.remat = scan, remat
    return new


def test_stack_scan_equals_loop_and_layers_differ(dit_stack):
    s, x, c = dit_stack
    k = s.layers.attn.q.kernel[...]
    assert k.shape == (3, DIM, DIM) and not np.allclose(k[0], k[1])
    rope = lambda t: apply_rope_1d(t, jnp.arange(5))  # noqa: E731
    y_scan = run(_variant(s, True, "none"), x, c, rope=rope)
    y_loop = run(_variant(s, False, "none"), x, c, rope=rope)
    np.testing.assert_allclose(y_scan, y_loop, atol=1e-5)
    # loop == applying each layer by hand with its slice of the stacked params
    graphdef, state = nnx.split(s.layers)
    h = x
    for i in range(3):
        h = run(nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)), h, c, rope=rope)
    np.testing.assert_allclose(y_scan, h, atol=1e-5)


def _grads(stack, x, c):
    graphdef, params = nnx.split(stack)

    def loss(params, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x, c)))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def test_remat_gives_same_grads(dit_stack):
    s, x, c = dit_stack
    g_ref = _grads(_variant(s, True, "none"), x, c)
    for scan, remat in [(True, "full"), (False, "dots_saveable")]:
        g = _grads(_variant(s, scan, remat), x, c)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="remat policy"):
        Stack(lambda r: Block(DIM, HEADS, rngs=r), 2, rngs=nnx.Rngs(0), remat="bogus")


def test_every_param_has_logical_names():
    rules = dict(sharding.DEFAULT_RULES)
    ctors = {
        "block": lambda: Block(DIM, HEADS, cross_attn=True, qk_norm="layer", mlp="swiglu", norm="rms",
                               rngs=nnx.Rngs(0)),
        "dit": lambda: DiTBlock(DIM, HEADS, 8, cross_attn=True, qk_norm=True, rngs=nnx.Rngs(0)),
        "final": lambda: FinalLayer(DIM, 3, 8, rngs=nnx.Rngs(0)),
        "read": lambda: PerceiverRead(DIM, HEADS, input_dim=6, num_latents=4, rngs=nnx.Rngs(0)),
        "patch": lambda: PatchEmbed(3, DIM, 2, rngs=nnx.Rngs(0)),
        "time": lambda: TimestepEmbedder(DIM, rngs=nnx.Rngs(0)),
        "stack": lambda: Stack(lambda r: Block(DIM, HEADS, rngs=r), 2, rngs=nnx.Rngs(0)),
    }
    for name, ctor in ctors.items():
        state = nnx.state(nnx.eval_shape(ctor), nnx.Param)
        leaves = jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))
        assert leaves
        for v in leaves:
            names = v.get_metadata().get("out_sharding")
            assert names is not None and len(names) == len(v.shape), (name, v.shape, names)
            assert all(n is None or n in rules for n in names), (name, names)
            if name == "stack":
                assert names[0] == "layers"


def test_block_sharded_matches_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    ctor = lambda: Block(32, 4, mlp_ratio=2.0, rngs=nnx.Rngs(0))  # noqa: E731
    graphdef, state = sharding.create_sharded_model(ctor, mesh)
    assert state["attn"]["q"]["kernel"][...].sharding.spec == P("fsdp", None)
    assert state["mlp"]["fc2"]["kernel"][...].sharding.spec == P(None, "fsdp")
    x = jnp.asarray(arr(14, 8, 4, 32))
    with sharding.use_mesh(mesh):
        xs = jax.device_put(x, sharding.batch_sharding(3, shape=x.shape))
        y = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, xs)
    assert y.sharding.spec[0] == ("data", "fsdp")
    local = jax.device_put(state, jax.devices()[0])
    np.testing.assert_allclose(y, run(nnx.merge(graphdef, local), x), atol=1e-5, rtol=1e-5)
    eager = nnx.state(ctor(), nnx.Param)  # same rng -> same parameters as the sharded init
    np.testing.assert_allclose(local["attn"]["q"]["kernel"][...], eager["attn"]["q"]["kernel"][...], atol=1e-6)
