"""scene3d_torch LatentDiT / DiT3D vs the JAX models: export (torch_port) -> build(spec) -> strict load -> same
outputs on the same random inputs. Tolerance: |torch - jax| <= 1e-4 * max(1, max|jax|) (float32 on CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import scene3d_torch
from scene3d.models import convert_torch_port as ctp
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
    from scene3d_torch.dit3d import plucker_map as torch_plucker
    c2w, intr = _cameras(np.random.default_rng(5), 2, 3)
    want = plucker_map(jnp.asarray(c2w), jnp.asarray(intr), 3, 5)
    got = torch_plucker(torch.from_numpy(c2w), torch.from_numpy(intr), 3, 5)
    _close(got, want, "plucker_map")
