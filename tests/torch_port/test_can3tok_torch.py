"""scene3d_torch Can3Tok vs the JAX model and the autoencode task: random JAX weights (perturbed) -> torch_port
export -> build(spec) -> strict load -> the same forward outputs, the same training loss (the task's own
``AutoencodeTask.loss`` with the same posterior noise) and the same gradients for every parameter (release_tiny,
the richer architecture; runlocal's mse recipe through the spec and the recon-loss check).
Tolerance: |torch - jax| <= 1e-4 * max(1, max|jax|) for outputs, 1e-4 * max|jax grad| per gradient tensor."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import scene3d_torch
from scene3d.convert import torch_port as ctp
from scene3d.core.config import load_config
from scene3d.tasks.autoencode import AutoencodeTask
from scene3d_torch import can3tok as tcan3tok
from tests.torch_port import perturb

# name -> (config, overrides): the runlocal recipe (mse, raw 14-channel rows, one-layer head) and the release
# recipe (l2_batch, release18 rows, 3-layer head) on the tiny sizes with the release head layout, voxel anchors,
# pi-scaled bands and qkv biases.
CASES = {
    "runlocal": ("configs/can3tok.py:runlocal", {"model.num_gaussians": 128, "data.gaussians.num_gaussians": 128}),
    "release_tiny": ("configs/can3tok.py:variant=release", {
        "model.variant": "tiny", "model.num_gaussians": 96, "data.gaussians.num_gaussians": 96,
        "model.head_layout": "release", "model.anchor_grid": 4, "model.include_pi": True, "model.qkv_bias": True,
        "model.attn_impl": "xla"}),
}


def _config(name):
    path, overrides = CASES[name]
    c = load_config(path)
    with c.unlocked():
        for key, value in overrides.items():
            *parents, leaf = key.split(".")
            node = c
            for p in parents:
                node = node[p]
            node[leaf] = value
    return c


def _close(got, want, what, tol=1e-4):
    want = np.asarray(want)
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, f"{what}: {got.shape} vs {want.shape}"
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, float(np.abs(want).max())), err_msg=what)


@functools.lru_cache(maxsize=None)
def _case(name):
    config = _config(name)
    task = AutoencodeTask(config)
    model = perturb(task.build_model(nnx.Rngs(0)), seed=1, scale=0.05)
    tm = scene3d_torch.build(ctp.model_spec(model))
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ctp.export_torch_port(model).items()},
                       strict=True)
    rng = np.random.default_rng(2)
    n, c = task.num_gaussians, task.offset + task.channels
    rows = rng.normal(size=(2, n, c)).astype(np.float32)
    rows[..., task.offset:task.offset + 3] *= 0.5
    return name, task, model, tm, rows


@pytest.mark.parametrize("name", sorted(CASES))
def test_spec_names_the_port(name):
    name, task, model, tm, rows = _case(name)
    spec = ctp.model_spec(model)
    assert spec["class"] == "Can3Tok" and isinstance(tm, tcan3tok.Can3Tok)
    assert set(tm.state_dict()) == set(ctp.torch_port_shapes(model))
    assert tm.config == model.config  # the resolved architecture survives the JSON spec (tuples as lists)


def test_forward_matches():
    name, task, model, tm, rows = _case("release_tiny")
    b = rows.shape[0]
    mc = model.config
    eps_t = np.random.default_rng(3).normal(size=(b, mc["num_latents"], mc["embed_dim"])).astype(np.float32)
    eps_l = np.random.default_rng(4).normal(size=(b, mc["latent_dim"])).astype(np.float32)
    fn = nnx.jit(lambda m, x, et, el: m(x, eps_tokens=et, eps_latent=el))
    out, aux = fn(model, jnp.asarray(rows), jnp.asarray(eps_t), jnp.asarray(eps_l))
    assert np.asarray(out).std() > 1e-2
    with torch.no_grad():
        tout, taux = tm(torch.from_numpy(rows), eps_tokens=torch.from_numpy(eps_t), eps_latent=torch.from_numpy(eps_l))
        tmode, _ = tm(torch.from_numpy(rows), sample_posterior=False)
    _close(tout, out, f"{name} recon (sampled)")
    for key in ("tokens", "token_mean", "token_logvar", "mean", "logvar", "z", "kl", "decoder_tokens"):
        _close(taux[key], aux[key], f"{name} aux[{key!r}]")
    mode = nnx.jit(lambda m, x: m(x, sample_posterior=False)[0])(model, jnp.asarray(rows))
    _close(tmode, mode, f"{name} recon (posterior mean)")
    assert np.abs(np.asarray(mode) - np.asarray(out)).max() > 1e-4  # the noise matters, alike on both sides


def test_loss_and_gradients_match_the_task():
    name, task, model, tm, rows = _case("release_tiny")
    batch = {"gaussians": jnp.asarray(rows)}
    key = jax.random.key(7)

    def loss_fn(m):
        return task.loss(m, batch, key, step=None)

    (loss, metrics), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    # The task's posterior noise (AutoencodeTask.loss: full noise without a step), drawn the same way.
    k1, k2 = jax.random.split(key)
    mc, b = model.config, rows.shape[0]
    eps_t = torch.from_numpy(np.array(jax.random.normal(k1, (b, mc["num_latents"], mc["embed_dim"]))))
    eps_l = torch.from_numpy(np.array(jax.random.normal(k2, (b, mc["latent_dim"]))))
    tm.zero_grad()
    tloss, parts = tcan3tok.loss(tm, torch.from_numpy(rows), eps_tokens=eps_t, eps_latent=eps_l,
                                 recon=task.recon_kind, beta=task.beta)
    tloss.backward()
    _close(tloss, loss, f"{name} loss")
    _close(parts["recon"], metrics["recon"], f"{name} recon loss")
    _close(parts["kl"], metrics["kl"], f"{name} kl")
    jgrads = ctp.export_torch_port(model, grads)
    tgrads = {k: p.grad for k, p in tm.named_parameters()}
    assert set(jgrads) == set(tgrads)
    # Per tensor, relative to its largest entry; gradients that are zero in exact arithmetic (the key bias: softmax
    # ignores a per-row constant) are float noise on both sides, compared against the largest gradient of all.
    floor = 1e-3 * max(float(np.abs(g).max()) for g in jgrads.values())
    for k in sorted(jgrads):
        assert tgrads[k] is not None, f"{name}: no torch gradient for {k}"
        np.testing.assert_allclose(tgrads[k].numpy(), jgrads[k], rtol=0,
                                   atol=1e-4 * max(float(np.abs(jgrads[k]).max()), floor), err_msg=f"{name} grad {k}")
    assert float(np.abs(jgrads["queries"]).max()) > 0 and float(np.abs(jgrads["input_proj.weight"]).max()) > 0


@pytest.mark.parametrize("kind", tcan3tok.RECON_LOSSES)
def test_reconstruction_losses_match(kind):
    from scene3d import losses
    rng = np.random.default_rng(5)
    pred, target = (rng.normal(size=(3, 7, 14)).astype(np.float32) for _ in range(2))
    want = losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), kind)
    _close(tcan3tok.reconstruction_loss(torch.from_numpy(pred), torch.from_numpy(target), kind), want, kind)


def test_einsum_attention_equals_sdpa():
    name, task, model, tm, rows = _case("release_tiny")
    spec = ctp.model_spec(model)
    te = scene3d_torch.build({"class": spec["class"], "kwargs": dict(spec["kwargs"], attention="einsum")})
    te.load_state_dict(tm.state_dict(), strict=True)
    with torch.no_grad():
        a, _ = tm(torch.from_numpy(rows), sample_posterior=False)
        e, _ = te(torch.from_numpy(rows), sample_posterior=False)
    _close(a, e.numpy(), f"{name} sdpa vs einsum")


def test_save_load_and_bad_input(tmp_path):
    name, task, model, tm, rows = _case("release_tiny")
    st, _ = ctp.save_torch_port(model, str(tmp_path / "can3tok"))
    loaded = scene3d_torch.load(st)
    with torch.no_grad():
        a, _ = loaded(torch.from_numpy(rows), sample_posterior=False)
        b, _ = tm(torch.from_numpy(rows), sample_posterior=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gaussians_rows must be"):
        tm(torch.from_numpy(rows[..., :-1]))
    with pytest.raises(ValueError, match="eps_latent must be"):
        tm(torch.from_numpy(rows), eps_latent=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="unknown config keys"):
        tcan3tok.Can3Tok(variant="tiny", widht=8)
    with pytest.raises(ValueError, match="unknown kind"):
        tcan3tok.reconstruction_loss(b, b, "l1")
