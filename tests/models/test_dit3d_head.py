"""The DDT-style wide head (scene3d.nn.ddt.DDTHead, the RAE work's DiT^DH) and DiT3D with it: shapes, the head's
output equals a forward composed by hand from its parts (with the block maths written out here in numpy, so the
reference does not reuse the module's own forward), scan and loop agree, and DiT3D's output is the head's output on
the trunk's (the trunk's own final layer is gone, the head's weights change the output)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.models import dit3d
from scene3d.nn.ddt import DDTHead

B, L, C_IN, D_TRUNK, C_OUT, W, HEADS, DEPTH = 2, 5, 6, 12, 4, 16, 2, 2


def _randomise(module, seed=0, scale=0.2):
    """Non-zero values everywhere (adaLN-Zero and the zero final layer make a fresh head output exactly 0)."""
    graphdef, state = nnx.split(module)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), state)
    return nnx.merge(graphdef, state)


def _np(x):
    return np.asarray(x, np.float64)


def _linear(lin, x):
    return x @ _np(lin.kernel[...]) + (_np(lin.bias[...]) if lin.bias is not None else 0.0)


def _layer_norm(x, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _silu(x):
    return x / (1 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attention(attn, x, heads):
    """Self-attention of scene3d.nn.Attention (its q, k, v, out projections; qk RMS norm per head; 1/sqrt(d))."""
    b, n, w = x.shape
    d = w // heads

    def split(y):
        return y.reshape(b, n, heads, d)

    q, k, v = (split(_linear(getattr(attn, name), x)) for name in ("q", "k", "v"))
    if attn.q_norm is not None:  # qk-norm: RMS norm over the head dimension with a learned scale
        q = q / np.sqrt((q ** 2).mean(-1, keepdims=True) + attn.q_norm.eps) * _np(attn.q_norm.scale[...])
        k = k / np.sqrt((k ** 2).mean(-1, keepdims=True) + attn.k_norm.eps) * _np(attn.k_norm.scale[...])
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, w)
    return _linear(attn.out, o)


def _dit_block(block, x, s, heads):
    sh1, sc1, g1, sh2, sc2, g2 = np.split(_linear(block.adaln.proj, _silu(s)), 6, axis=-1)
    x = x + g1 * _attention(block.attn, _layer_norm(x) * (1 + sc1) + sh1, heads)
    h = _layer_norm(x) * (1 + sc2) + sh2
    return x + g2 * _linear(block.mlp.fc2, _gelu_tanh(_linear(block.mlp.fc1, h)))


def _head_reference(head, x, z, c, heads):
    """The head's forward from its parts (module docstring of scene3d.nn.ddt), in float64 numpy."""
    s = _linear(head.z_in, _layer_norm(_np(z))) + _linear(head.t_in, _np(c))[:, None]
    h = _linear(head.x_in, _np(x))
    graphdef, state = nnx.split(head.blocks.layers)
    for i in range(head.depth):
        h = _dit_block(nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)), h, s, heads)
    shift, scale = np.split(_linear(head.final.adaln.proj, _silu(s)), 2, axis=-1)
    return _linear(head.final.linear, _layer_norm(h) * (1 + scale) + shift)


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(B, L, C_IN)), jnp.float32),
            jnp.asarray(rng.normal(size=(B, L, D_TRUNK)) * 3.0, jnp.float32),
            jnp.asarray(rng.normal(size=(B, D_TRUNK)), jnp.float32))


@pytest.mark.parametrize("scan", [True, False])
def test_head_equals_its_parts_composed_by_hand(scan):
    head = _randomise(DDTHead(C_IN, D_TRUNK, C_OUT, width=W, depth=DEPTH, heads=HEADS, scan=scan,
                              rngs=nnx.Rngs(0)))
    x, z, c = _inputs()
    out = head(x, z, c)
    assert out.shape == (B, L, C_OUT)
    np.testing.assert_allclose(out, _head_reference(head, x, z, c, HEADS), rtol=2e-4, atol=2e-4)
    # the per-token condition really is per token: other trunk outputs, other velocities
    assert np.abs(np.asarray(head(x, z[:, ::-1], c) - out)).max() > 1e-3


def test_fresh_head_outputs_zero_and_bad_shapes_raise():
    head = DDTHead(C_IN, D_TRUNK, C_OUT, width=W, depth=1, heads=HEADS, rngs=nnx.Rngs(0))
    x, z, c = _inputs()
    np.testing.assert_array_equal(head(x, z, c), 0.0)  # DiT's zero-initialised final layer
    with pytest.raises(ValueError, match="trunk output"):
        head(x, z[..., :-1], c)
    with pytest.raises(ValueError, match="x must be"):
        head(x[:, :-1], z, c)
    with pytest.raises(ValueError, match="divisible"):
        DDTHead(C_IN, D_TRUNK, C_OUT, width=15, depth=1, heads=2, rngs=nnx.Rngs(0))


K, C, F = 6, 8, 16


def _cond(rng, b=2, v=2, t=2):
    return {"view_features": jnp.asarray(rng.normal(size=(b, v, 2, 2, F)), jnp.float32),
            "view_rays": jnp.asarray(rng.normal(size=(b, v, 2, 2, 6)), jnp.float32),
            "traj_c2w": jnp.asarray(np.tile(np.eye(4, dtype=np.float32), (b, t, 1, 1))),
            "traj_intrinsics": jnp.asarray(np.tile([1.0, 1.0, 0.5, 0.5], (b, t, 1)), jnp.float32)}


def test_dit3d_reads_out_through_the_head():
    m = _randomise(dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, dim=32, depth=1, head_depth=2,
                               head_width=48, rngs=nnx.Rngs(0)))
    assert m.final is None and m.head.width == 48 and m.head.depth == 2
    assert dict(m.spec_kwargs)["head_depth"] == 2 and dict(m.spec_kwargs)["head_heads"] == 1  # 48 // 128 -> 1
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, K, C)), jnp.float32)
    t = jnp.asarray([0.2, 0.9])
    cond = _cond(rng)

    @nnx.jit
    def run(m, x, t, cond):
        v, aux = m(x, t, cond)
        h, c, _, _ = m.trunk(x, t, cond)
        return v, aux["cond_tokens"].shape[1], m.head(x, h, c), m(x, t, None)[0]

    v, n_cond, composed, v_uncond = run(m, x, t, cond)
    assert v.shape == (2, K, C) and n_cond == 1 + 2 * 4 + 2
    np.testing.assert_allclose(v, composed, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(v_uncond - v)).max() > 1e-4  # the trunk still matters: the conditions reach v
    # the head is used: other head weights, other velocities
    m2 = nnx.merge(*nnx.split(m))
    m2.head.final.linear.kernel[...] = m2.head.final.linear.kernel[...] * 2.0
    assert np.abs(np.asarray(run(m2, x, t, cond)[0] - v)).max() > 1e-3
    # without a head: DiT's final layer, no head parameters, and the head keys stay out of the port's spec
    plain = dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, dim=32, depth=1, rngs=nnx.Rngs(0))
    assert plain.head is None and plain.final is not None and "head_depth" not in dict(plain.spec_kwargs)
    with pytest.raises(ValueError, match="head_depth"):
        dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, head_depth=-1, rngs=nnx.Rngs(0))


def test_pytorch_port_of_the_head_matches():
    """export (torch_port layout) -> scene3d_torch.build(spec) -> strict load -> the same velocities."""
    torch = pytest.importorskip("torch")
    import scene3d_torch
    from scene3d.convert import torch_port as ctp
    from tests.torch_port import dit3d as tiny_dit3d
    m = tiny_dit3d("cross", head_depth=2, head_width=32, head_heads=2)
    tm = scene3d_torch.build(ctp.model_spec(m))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ctp.export_torch_port(m).items()}, strict=True)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, m.num_tokens, m.latent_dim)).astype(np.float32)
    t = np.asarray([0.3, 0.7], np.float32)
    want = np.asarray(nnx.jit(lambda m, x, t: m(x, t, None)[0])(m, jnp.asarray(x), jnp.asarray(t)))
    assert want.std() > 0.05
    with torch.no_grad():
        got = tm.eval()(torch.from_numpy(x), torch.from_numpy(t), None)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1.0, float(np.abs(want).max())))
