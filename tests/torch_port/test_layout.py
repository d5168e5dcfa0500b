"""The torch_port layout: rules per owning module type (checked against torch ops), keys == the torch modules'
state_dict keys, round trips, strict errors, scan invariance, specs, and scene3d_torch staying jax-free."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

import scene3d_torch
from scene3d import nn as snn
from scene3d.convert import torch_port as ctp
from scene3d.nn.frozen import Frozen
from tests.torch_port import dit3d, latent_dit


class _Layer(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 6, rngs=rngs)
        self.tok = nnx.Param(jax.random.normal(rngs.params(), (2, 4)))


class _Toy(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 5), rngs=rngs)
        self.emb = nnx.Embed(7, 4, rngs=rngs)
        self.norm = snn.RMSNorm(4)
        self.lnorm = nnx.LayerNorm(4, rngs=rngs)
        self.frozen = Frozen(jnp.arange(6.0).reshape(2, 3))
        self.drop = nnx.Dropout(0.1, rngs=rngs)  # holds RNG state: not part of the layout
        self.stack = snn.Stack(_Layer, 3, rngs=rngs)


@pytest.fixture(scope="module")
def toy():
    m = _Toy(nnx.Rngs(0, dropout=1))
    return m, ctp.export_torch_port(m)


def test_rules_by_module_type(toy):
    m, sd = toy
    layer_keys = [f"stack.layers.{i}.{k}" for i in range(3) for k in ("lin.weight", "lin.bias", "tok")]
    assert sorted(sd) == sorted(["conv.weight", "conv.bias", "emb.weight", "norm.weight", "lnorm.weight",
                                 "lnorm.bias", "frozen"] + layer_keys)
    assert all(v.dtype == np.float32 for v in sd.values())
    rng = np.random.default_rng(0)
    # nnx.Conv (kh, kw, in, out) -> torch conv2d weight (out, in, kh, kw): same convolution
    x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    want = np.asarray(m.conv(jnp.asarray(x)))
    got = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(sd["conv.weight"]),
                   torch.from_numpy(sd["conv.bias"]), padding=(1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # nnx.Embed -> embedding weight
    idx = np.array([[0, 6, 3]])
    np.testing.assert_array_equal(F.embedding(torch.from_numpy(idx), torch.from_numpy(sd["emb.weight"])).numpy(),
                                  np.asarray(m.emb(jnp.asarray(idx))))
    # norms: scale -> weight
    np.testing.assert_array_equal(sd["lnorm.weight"], np.asarray(m.lnorm.scale[...]))
    np.testing.assert_array_equal(sd["norm.weight"], np.asarray(m.norm.scale[...]))
    np.testing.assert_array_equal(sd["frozen"], np.arange(6.0).reshape(2, 3))
    # stacked nnx.Linear: layer i of the stack, torch F.linear == x @ kernel[i] + bias[i]
    xl = rng.normal(size=(5, 4)).astype(np.float32)
    for i in range(3):
        k, b = np.asarray(m.stack.layers.lin.kernel[...][i]), np.asarray(m.stack.layers.lin.bias[...][i])
        got = F.linear(torch.from_numpy(xl), torch.from_numpy(sd[f"stack.layers.{i}.lin.weight"]),
                       torch.from_numpy(sd[f"stack.layers.{i}.lin.bias"]))
        np.testing.assert_allclose(got.numpy(), xl @ k + b, atol=1e-5)
        np.testing.assert_array_equal(sd[f"stack.layers.{i}.tok"], np.asarray(m.stack.layers.tok[...][i]))
    assert ctp.torch_port_shapes(m) == {k: v.shape for k, v in sd.items()}


def test_toy_round_trip(toy):
    m, sd = toy
    state = ctp.torch_port_to_state(m, sd)
    want = dict(nnx.to_flat_state(nnx.state(m, nnx.Not(nnx.RngState))))
    got = dict(nnx.to_flat_state(state))
    assert set(got) == set(want)
    for k in want:
        assert type(got[k]) is type(want[k]), k  # Frozen stays Frozen, Param stays Param
        np.testing.assert_array_equal(np.asarray(got[k][...]), np.asarray(want[k][...]), err_msg=str(k))


# ----------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def models():
    return {"latent": latent_dit("learned_labels"), "latent_rope": latent_dit("rope2d_cond"),
            "dit3d_cross": dit3d("cross"), "dit3d_in_context": dit3d("in_context")}


@pytest.mark.parametrize("name", ["latent", "latent_rope", "dit3d_cross", "dit3d_in_context"])
def test_keys_equal_torch_state_dict(models, name):
    m = models[name]
    sd = ctp.export_torch_port(m)
    spec = ctp.model_spec(m)
    assert json.loads(json.dumps(spec)) == spec
    tm = scene3d_torch.build(spec)
    tsd = tm.state_dict()
    assert sorted(sd) == sorted(tsd)
    assert {k: tuple(v.shape) for k, v in tsd.items()} == {k: v.shape for k, v in sd.items()}
    assert ctp.torch_port_shapes(m) == {k: v.shape for k, v in sd.items()}
    depth = spec["kwargs"]["depth"]
    assert f"blocks.layers.{depth - 1}.attn.q_norm.weight" in sd and f"blocks.layers.{depth}.attn.q.weight" not in sd


def test_round_trip_and_import(models, tmp_path):
    m = models["latent"]
    sd = ctp.export_torch_port(m)
    state = ctp.torch_port_to_state(m, sd)
    want = dict(nnx.to_flat_state(nnx.state(m, nnx.Not(nnx.RngState))))
    got = dict(nnx.to_flat_state(state))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k][...]), np.asarray(want[k][...]), err_msg=str(k))
    # export of an explicit state (e.g. restored from a checkpoint) with RNG state included and filtered out
    other = latent_dit("learned_labels", seed=3)
    _same(ctp.export_torch_port(m, nnx.split(other)[1]), ctp.export_torch_port(other))
    with pytest.raises(ValueError, match="does not match"):
        ctp.export_torch_port(m, nnx.state(models["latent_rope"]))
    # a differently initialised model takes the weights (dict of torch tensors, and a safetensors file)
    fresh = latent_dit("learned_labels", seed=7)
    assert not np.array_equal(ctp.export_torch_port(fresh)["proj_in.weight"], sd["proj_in.weight"])
    ctp.import_torch_port(fresh, {k: torch.from_numpy(v) for k, v in sd.items()})
    _same(ctp.export_torch_port(fresh), sd)
    st, js = ctp.save_torch_port(m, str(tmp_path / "latent"))
    fresh2 = latent_dit("learned_labels", seed=8)
    _same(ctp.export_torch_port(ctp.import_torch_port(fresh2, st)), sd)
    tm = scene3d_torch.load(st)
    _same({k: v.numpy() for k, v in tm.state_dict().items()}, sd)
    assert not tm.training


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_strict_errors(models):
    m = models["dit3d_cross"]
    sd = ctp.export_torch_port(m)
    missing = {k: v for k, v in sd.items() if k != "blocks.layers.1.cross.k.weight"}
    with pytest.raises(ValueError, match=r"missing 1 keys.*blocks\.layers\.1\.cross\.k\.weight"):
        ctp.torch_port_to_state(m, missing)
    with pytest.raises(ValueError, match=r"unexpected keys.*blocks\.layers\.2\.attn\.q\.weight"):
        ctp.torch_port_to_state(m, {**sd, "blocks.layers.2.attn.q.weight": sd["blocks.layers.0.attn.q.weight"]})
    bad = dict(sd, **{"final.linear.weight": sd["final.linear.weight"].T})
    with pytest.raises(ValueError, match=r"final\.linear\.weight: expected \(6, 32\), got \(32, 6\)"):
        ctp.torch_port_to_state(m, bad)
    with pytest.raises(ValueError, match="shape"):
        ctp.torch_port_to_state(m, bad, strict=False)
    # non-strict: the missing layer keeps the model's value, unexpected keys are ignored
    other = dit3d("cross", seed=5)
    src = ctp.export_torch_port(other)
    src.pop("blocks.layers.1.cross.k.weight")
    src["extra"] = np.zeros(3, np.float32)
    state = ctp.torch_port_to_state(m, src, strict=False)
    k = state["blocks"]["layers"]["cross"]["k"]["kernel"][...]
    np.testing.assert_array_equal(np.asarray(k[1]), np.asarray(m.blocks.layers.cross.k.kernel[...][1]))
    np.testing.assert_array_equal(np.asarray(k[0]), src["blocks.layers.0.cross.k.weight"].T)


def test_scan_and_loop_export_the_same(models):
    for scan_model, loop_model in [(models["latent_rope"], latent_dit("rope2d_cond", scan=False)),
                                   (models["dit3d_in_context"], dit3d("in_context", scan=False))]:
        _same(ctp.export_torch_port(loop_model), ctp.export_torch_port(scan_model))


def test_specs_of_vit_and_rae3d():
    from scene3d.models.rae3d import RAE3D
    from scene3d.models.vit import ViT
    vit = nnx.eval_shape(lambda: ViT("tiny-dinov2", rngs=nnx.Rngs(0)))
    spec = ctp.model_spec(vit)
    assert spec == {"class": "ViT", "kwargs": json.loads(json.dumps(dataclasses.asdict(vit.config)))}
    shapes = ctp.torch_port_shapes(vit)  # abstract model: shapes only
    assert shapes["blocks.layers.1.ls1"] == (64,) and shapes["patch_embed.proj.weight"] == (64, 14 * 14 * 3)
    rae = nnx.eval_shape(lambda: RAE3D("tiny", rngs=nnx.Rngs(0)))
    assert ctp.model_spec(rae) == {"class": "RAE3D", "kwargs": dataclasses.asdict(rae.config)}
    with pytest.raises(ValueError, match="no torch port"):
        ctp.model_spec(snn.RMSNorm(4))
    with pytest.raises(ValueError, match="known"):
        scene3d_torch.build({"class": "Nope", "kwargs": {}})


def test_scene3d_torch_imports_no_jax():
    """scene3d_torch (and the scene3d.specs tables it shares with the JAX models) import no jax / flax and, of
    scene3d, only scene3d.specs."""
    code = ("import pkgutil, sys, torch, scene3d_torch, scene3d.specs\n"
            "for pkg in (scene3d_torch, scene3d.specs):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        __import__(pkg.__name__ + '.' + m.name)\n"
            "m = scene3d_torch.build({'class': 'LatentDiT', 'kwargs': {'in_dim': 4, 'num_tokens': 4, "
            "'variant': 'tiny', 'width': 16, 'depth': 1, 'heads': 2}})\n"
            "m(torch.zeros(1, 4, 4), torch.zeros(1))\n"
            "assert 'scene3d_torch.rae3d' in sys.modules and 'scene3d.specs.scenetok' in sys.modules\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('jax', 'jaxlib', 'flax')\n"
            "             or (k.split('.')[0] == 'scene3d' and k != 'scene3d' and not k.startswith('scene3d.specs')))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
