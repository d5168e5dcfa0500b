"""scene3d_torch LatentDiT / DiT3D vs the JAX models: export (torch_port) -> build(spec) -> strict load -> same
outputs on the same random inputs. Tolerance: |torch - jax| <= 1e-4 * max(1, max|jax|) (float32 on CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import scene3d_torch
from scene3d.convert import torch_port as ctp
from tests.torch_port import DIT3D, LATENT, dit3d, latent_dit


def _close(got, want, what):
    want = np.asarray(want)
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, f"{what}: {got.shape} vs {want.shape}"
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=what)


def _port(model):
    tm = scene3d_torch.build(ctp.model_spec(model))
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ctp.export_torch_port(model).items()}, strict=True)
    return tm.eval()


def _t(tree):
    return jax.tree.map(lambda a: torch.from_numpy(np.asarray(a)), tree)


# ----------------------------------------------------------------------------------------------- LatentDiT


@pytest.fixture(scope="module", params=sorted(LATENT))
def latent(request):
    m = latent_dit(request.param)
    fn = nnx.jit(lambda m, x, t, labels, cond, cond_mask: m(x, t, labels=labels, cond=cond, cond_mask=cond_mask))
    return request.param, m, fn, _port(m)


def test_latent_dit_parity(latent):
    name, m, fn, tm = latent
    rng = np.random.default_rng(0)
    b = 3
    x = rng.normal(size=(b, m.num_tokens, m.in_dim)).astype(np.float32)
    t = rng.uniform(size=b).astype(np.float32)
    labels = cond = cond_mask = None
    if m.num_classes:
        labels = np.array([0, m.num_classes, 3])  # one null label
    if m.cond_dim:
        cond = rng.normal(size=(b, 5, m.cond_dim)).astype(np.float32)
        cond_mask = np.ones((b, 1, 1, 5), bool)
        cond_mask[1, ..., 2:] = False
    inputs = (x, t, labels, cond, cond_mask)
    out, aux = fn(m, *jax.tree.map(jnp.asarray, inputs))
    assert np.asarray(out).std() > 0.05  # non-trivial output (perturbed adaLN / final layer)
    with torch.no_grad():
        tout, taux = tm(*_t(inputs[:2]), labels=_t(labels), cond=_t(cond), cond_mask=_t(cond_mask))
    _close(tout, out, f"{name} velocity")
    _close(taux["features"], aux["features"], f"{name} features")
    # the conditioning inputs matter, on both sides alike
    if m.num_classes:
        with torch.no_grad():
            tnull, _ = tm(*_t(inputs[:2]))  # labels=None -> null label
        out_null, _ = fn(m, jnp.asarray(x), jnp.asarray(t), None, None, None)
        _close(tnull, out_null, f"{name} null label")
        assert np.abs(np.asarray(out_null) - np.asarray(out)).max() > 1e-3
    if m.cond_dim:
        with torch.no_grad():
            tc, _ = tm(*_t(inputs[:2]), cond=_t(cond))
        assert (tc - tout).abs().max() > 1e-3  # the mask changed example 1


# ----------------------------------------------------------------------------------------------- DiT3D


def _cameras(rng, b, t):
    q, _ = np.linalg.qr(rng.normal(size=(b, t, 3, 3)))
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, t, 1, 1))
    c2w[..., :3, :3], c2w[..., :3, 3] = q, rng.normal(size=(b, t, 3))
    intr = np.concatenate([rng.uniform(0.6, 1.4, (b, t, 2)), rng.uniform(0.3, 0.7, (b, t, 2))], -1)
    return c2w.astype(np.float32), intr.astype(np.float32)


def _dit3d_cond(m, rng):
    """4 examples: views + trajectory, views only, trajectory only, nothing (every other entry masked)."""
    b, v, h, w, tt = 4, 3, 2, 2, 2
    c2w, intr = _cameras(rng, b, tt)
    return {"view_features": rng.normal(size=(b, v, h, w, m.view_dim)).astype(np.float32),
            "view_rays": rng.normal(size=(b, v, h, w, 6)).astype(np.float32),
            "view_mask": np.array([[True, True, False], [True, False, False], [False] * 3, [False] * 3]),
            "traj_c2w": c2w, "traj_intrinsics": intr,
            "traj_mask": np.array([[True, False], [False, False], [True, True], [False, False]])}


@pytest.fixture(scope="module", params=sorted(DIT3D))
def d3(request):
    m = dit3d(request.param)
    return request.param, m, nnx.jit(lambda m, x, t, c: m(x, t, c)), _port(m)


@pytest.mark.parametrize("with_cond", [True, False], ids=["cond", "no_cond"])
def test_dit3d_parity(d3, with_cond):
    mode, m, fn, tm = d3
    rng = np.random.default_rng(3)
    b = 4
    x = rng.normal(size=(b, m.num_tokens, m.latent_dim)).astype(np.float32)
    t = rng.uniform(size=b).astype(np.float32)
    cond = _dit3d_cond(m, rng) if with_cond else None
    out, aux = fn(m, jnp.asarray(x), jnp.asarray(t), jax.tree.map(jnp.asarray, cond))
    assert np.asarray(out).std() > 0.05
    with torch.no_grad():
        tout, taux = tm(torch.from_numpy(x), torch.from_numpy(t), _t(cond))
    _close(tout, out, f"{mode} velocity")
    _close(taux["cond_tokens"], aux["cond_tokens"], f"{mode} cond_tokens")
    np.testing.assert_array_equal(taux["cond_mask"].numpy(), np.asarray(aux["cond_mask"]))
    if with_cond:  # the conditions reach the output (example 3 has none, examples 0-2 differ from it)
        with torch.no_grad():
            tnone, _ = tm(torch.from_numpy(x), torch.from_numpy(t), None)
        diff = (tout - tnone).abs().amax(dim=(1, 2))
        assert (diff[:3] > 1e-3).all() and diff[3] < 1e-5, diff


def test_plucker_map_matches_geometry():
    from scene3d.geometry.rays import plucker_map
    from scene3d_torch.geometry import plucker_map as torch_plucker
    c2w, intr = _cameras(np.random.default_rng(5), 2, 3)
    want = plucker_map(jnp.asarray(c2w), jnp.asarray(intr), 3, 5)
    got = torch_plucker(torch.from_numpy(c2w), torch.from_numpy(intr), 3, 5)
    _close(got, want, "plucker_map")


# ----------------------------------------------------------------------------------------------- nn blocks


def _block_pair(name, *args, **kw):
    from scene3d import nn as snn
    from scene3d_torch import nn as tnn
    from tests.torch_port import perturb
    jm = perturb(getattr(snn, name)(*args, rngs=nnx.Rngs(0), **kw), seed=4, scale=0.2)
    tm = getattr(tnn, name)(*args, **kw)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in ctp.export_torch_port(jm).items()}, strict=True)
    return jm, tm


def test_nn_blocks_parity():
    """The scene3d_torch.nn mirrors (also used by the ViT / RAE3D ports) on their less common options."""
    from scene3d import nn as snn
    from scene3d_torch import nn as tnn
    rng = np.random.default_rng(6)
    b, lq, lk = 2, 8, 6
    x = rng.normal(size=(b, lq, 32)).astype(np.float32)
    ctx = rng.normal(size=(b, lk, 24)).astype(np.float32)
    mask = rng.uniform(size=(b, 1, lq, lk)) > 0.4
    mask[0, 0, 3] = False  # a query with no key: zeros
    lengths = np.array([6, 4])
    qpos, kpos = rng.uniform(0, 9, (b, lq)).astype(np.float32), rng.uniform(0, 9, (b, lk)).astype(np.float32)
    grid = np.asarray(snn.grid_positions_3d(2, 2, 2))
    jx, jc, tx, tc = jnp.asarray(x), jnp.asarray(ctx), torch.from_numpy(x), torch.from_numpy(ctx)
    tm_ = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
    cases = []
    # cross-attention: GQA, LayerNorm qk-norm, interleaved 1D RoPE on q and k, mask + kv_lengths
    jm, tmod = _block_pair("Attention", 32, 4, kv_dim=24, num_kv_heads=2, qk_norm="layer")
    cases.append(("attention", jm(jx, jc, q_rope=snn.make_rope(qpos, axial=False, interleaved=True),
                                  k_rope=snn.make_rope(kpos, axial=False, interleaved=True), mask=mask,
                                  kv_lengths=lengths),
                  tmod(tx, tc, q_rope=tnn.make_rope(tm_(qpos), axial=False, interleaved=True),
                       k_rope=tnn.make_rope(tm_(kpos), axial=False, interleaved=True), mask=tm_(mask),
                       kv_lengths=tm_(lengths))))
    # self-attention, axial 3D RoPE with an uneven split, release head layout
    jm, tmod = _block_pair("Attention", 32, 4, head_layout="release")
    cases.append(("attention_nd", jm(jx, q_rope=snn.make_rope(grid, split=(4, 2, 2), axial=True)),
                  tmod(tx, q_rope=tnn.make_rope(tm_(grid), split=(4, 2, 2), axial=True))))
    # Block: RMSNorm, SwiGLU, LayerScale, cross-attention with context lengths
    jm, tmod = _block_pair("Block", 32, 4, mlp="swiglu", norm="rms", layer_scale=0.5, cross_attn=True,
                           context_dim=24, mlp_dim=48, qk_norm=True)
    cases.append(("block", jm(jx, jc, context_lengths=lengths), tmod(tx, tc, context_lengths=tm_(lengths))))
    jm, tmod = _block_pair("Block", 32, 4, mlp="gelu")
    cases.append(("block_gelu", jm(jx, mask=mask[:, :, :, :1].repeat(lq, -1)),
                  tmod(tx, mask=tm_(mask[:, :, :, :1].repeat(lq, -1)))))
    # DiTBlock with per-token conditioning
    c = rng.normal(size=(b, lq, 16)).astype(np.float32)
    jm, tmod = _block_pair("DiTBlock", 32, 4, 16, qk_norm="rms")
    cases.append(("ditblock_tokens", jm(jx, jnp.asarray(c)), tmod(tx, tm_(c))))
    # DiTBlock with the LightningDiT options (affine RMSNorms, SwiGLU with biases, un-normed cross-attention) and
    # RoPE on the cross-attention's queries and keys; FinalLayer with an affine RMSNorm
    jm, tmod = _block_pair("DiTBlock", 32, 4, 16, **dict(snn.LIGHTNING_DIT, context_dim=24, mlp_dim=48,
                                                          cross_rope="qk"))
    jr, kr = snn.make_rope(qpos, axial=False), snn.make_rope(kpos, axial=False)
    cases.append(("ditblock_lightning", jm(jx, jnp.asarray(c[:, 0]), jc, rope=jr, context_rope=kr),
                  tmod(tx, tm_(c[:, 0]), tc, rope=tnn.make_rope(tm_(qpos), axial=False),
                       context_rope=tnn.make_rope(tm_(kpos), axial=False))))
    jm, tmod = _block_pair("FinalLayer", 32, 6, 16, norm="rms", norm_affine=True)
    cases.append(("final_rms", jm(jx, jnp.asarray(c)), tmod(tx, tm_(c))))
    # PerceiverRead with learned latents and a (B, Lin) key mask; PerceiverProcess (a Stack) with 1D RoPE
    kmask = mask[:, 0, 0]
    kmask[:, 0] = True
    jm, tmod = _block_pair("PerceiverRead", 32, 4, input_dim=24, num_latents=5, qk_norm="rms")
    cases.append(("perceiver_read", jm(jc, mask=kmask), tmod(tc, mask=tm_(kmask))))
    jm, tmod = _block_pair("PerceiverProcess", 32, 4, 2, mlp="gelu")
    pos = np.arange(lq)
    cases.append(("perceiver_process", jm(jx, rope=snn.make_rope(pos)), tmod(tx, rope=tnn.make_rope(tm_(pos)))))
    for name, want, got in cases:
        assert np.asarray(want).std() > 0.05, name
        _close(got.detach(), want, name)
