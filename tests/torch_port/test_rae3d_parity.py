"""scene3d_torch ViT and RAE3D vs the JAX models: same weights (torch_port export, strict load), same inputs.

JAX models are built tiny (abstractly), then every variable (Frozen tower included) gets random values of a
realistic scale, so no layer is zero / identity (zero-initialised biases, unit norms and LayerScales, zero
mask tokens would make parity trivial).
Tolerance: float32, |torch - jax| <= 1e-4 + 1e-4 |jax| (everything also passes at 1e-5 + 1e-5 |jax|).
Cases: DINOv2 (+ registers) and SigLIP2 towers at native and non-square non-native grids (position-embedding
resize), hidden states and pooling head; RAE3D encode / decode / forward with several non-square views, a
view_mask with NaN images in the ignored views (and an example with no valid view), both point-map modes,
align features, read_layers > 1 and process_depth 0, a different decode size; Pluecker rays vs the JAX
geometry. The torch models are built by scene3d_torch.build(model_spec(jax_model)).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import scene3d_torch
from scene3d.convert.torch_port import export_torch_port, model_spec
from scene3d.geometry import rays as jrays
from scene3d.models import rae3d as jrae3d
from scene3d.models import vit as jvit
from scene3d_torch import geometry as tgeometry
from scene3d_torch import rae3d as trae3d
from scene3d_torch import vit as tvit

TOL = dict(atol=1e-4, rtol=1e-4)
H, W = 28, 42  # non-square: 2 x 3 patches of 14


def _random_model(build, seed: int) -> nnx.Module:
    """``build()`` traced abstractly (nnx.eval_shape: no init compile), then every variable (the Frozen tower
    included) filled with random values of a realistic scale: kernels N(0, 1/fan_in), norm scales and LayerScales
    1 + 0.1 N, biases 0.1 N, learned tokens / positions 0.5 N. No layer is zero or the identity."""
    model = nnx.eval_shape(build)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape, leaf = var.get_value().shape, str(path[-1])
        n = rng.standard_normal(shape).astype(np.float32)
        if leaf == "kernel":
            v = n / np.sqrt(shape[-2])
        elif leaf in ("scale", "ls1", "ls2"):
            v = 1.0 + 0.1 * n
        elif leaf == "bias":
            v = 0.1 * n
        else:
            v = 0.5 * n
        var.set_value(jnp.asarray(v))
    return model


def _port(jax_model: nnx.Module) -> torch.nn.Module:
    """The torch model from the JAX model's spec, with its exported weights loaded strictly."""
    spec = model_spec(jax_model)
    assert spec["kwargs"] == dataclasses.asdict(jax_model.config)
    torch_model = scene3d_torch.build(spec)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in export_torch_port(jax_model).items()}
    torch_model.load_state_dict(sd, strict=True)
    return torch_model.eval()


def _t(x):
    return torch.from_numpy(np.array(x))


def _close(t, j, name=""):
    t = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    np.testing.assert_allclose(t, np.asarray(j), err_msg=name, **TOL)


def _views(rng, b, v, h=H, w=W):
    im = rng.uniform(-1, 1, (b, v, h, w, 3)).astype(np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
    ang = rng.uniform(-0.6, 0.6, (b, v))
    c2w[..., 0, 0], c2w[..., 0, 2], c2w[..., 2, 0], c2w[..., 2, 2] = (np.cos(ang), np.sin(ang), -np.sin(ang),
                                                                      np.cos(ang))
    c2w[..., :3, 3] = rng.normal(size=(b, v, 3)) * 0.4
    k = np.tile(np.array([0.8, 1.1, 0.5, 0.45], np.float32), (b, v, 1))
    k = k + rng.uniform(-0.05, 0.05, k.shape).astype(np.float32)
    return im, c2w, k


# ---------------------------------------------------------------------------------------------------------
# Geometry


def test_plucker_and_ray_map_match_jax():
    """Against scene3d.geometry.rays run on numpy inputs (its numpy path)."""
    rng = np.random.default_rng(0)
    _, c2w, k = _views(rng, 2, 3)
    for p in (1, 7, 14):
        _close(tgeometry.plucker_map(_t(c2w), _t(k), H, W, p), jrays.plucker_map(c2w, k, H, W, p), f"p={p}")
    for norm in (True, False):
        to, td = tgeometry.ray_map(_t(c2w), _t(k), H, W, 1, normalise=norm)
        jo, jd = jrays.ray_map(c2w, k, H, W, 1, normalise=norm)
        _close(to, jo)
        _close(td, jd)
    with pytest.raises(ValueError, match="divisible"):
        tgeometry.ray_map(_t(c2w), _t(k), H, W, 5)
    with pytest.raises(ValueError, match="c2w"):
        tgeometry.plucker_map(_t(c2w[..., :3, :]), _t(k), H, W)


# ---------------------------------------------------------------------------------------------------------
# ViT towers


@pytest.fixture(scope="module", params=["tiny-dinov2", "tiny-dinov2reg", "tiny-siglip2"])
def towers(request):
    """(JAX tower, torch port, {grid: (uint8 images, JAX preprocessed, (features, aux))}); the native grid and
    a non-square grid that is not the native one (position-embedding resize), one jitted JAX call."""
    jm = _random_model(lambda: jvit.ViT(request.param, rngs=nnx.Rngs(1)), seed=2)
    cfg, rng = jm.config, np.random.default_rng(3)
    grids = ((cfg.pos_grid, cfg.pos_grid), (2, 5))
    imgs = [rng.integers(0, 256, (2, gh * cfg.patch, gw * cfg.patch, 3), dtype=np.uint8) for gh, gw in grids]
    xs = [jvit.preprocess(im, cfg.family) for im in imgs]
    outs = nnx.jit(lambda m, xs: [m(x, return_hidden_states=True) for x in xs])(jm, xs)
    return jm, _port(jm), {g: (im, x, o) for g, im, x, o in zip(grids, imgs, xs, outs)}


def test_vit_matches_jax(towers):
    jm, tm, results = towers
    cfg = jm.config
    rng = np.random.default_rng(4)
    for (gh, gw), (img, jx, (jf, jaux)) in results.items():
        tx = tvit.preprocess(torch.from_numpy(img), cfg.family)
        _close(tx, jx, "preprocess uint8")
        imf = rng.uniform(-1, 1, img.shape).astype(np.float32)
        _close(tvit.preprocess(_t(imf), cfg.family), jvit.preprocess(imf, cfg.family), "preprocess float")
        with torch.no_grad():
            tf, taux = tm(tx, return_hidden_states=True)
        assert tf.shape == (2, gh, gw, cfg.dim)
        _close(tf, jf, f"features {(gh, gw)}")
        assert set(taux) == set(jaux)
        for key, jv in jaux.items():
            if jv is None:
                assert taux[key] is None, key
            else:
                _close(taux[key], jv, f"aux {key} {(gh, gw)}")
        # the layers are exercised (not an identity)
        assert float(np.abs(np.asarray(jaux["hidden_states"][-1] - jaux["hidden_states"][0])).mean()) > 1e-2
    assert taux["pooled"] is not None
    assert (tm.head is not None) == (cfg.family == "siglip2")


def test_vit_errors():
    tm = tvit.ViT("tiny-dinov2")
    with pytest.raises(ValueError, match="multiple of the patch"):
        tm(torch.zeros(1, 20, 28, 3))
    with pytest.raises(ValueError, match="unknown variant"):
        tvit.ViT("nope")
    with pytest.raises(ValueError, match="num_registers"):
        tvit.ViT(family="dinov2_reg", dim=8, depth=1, num_heads=2, patch=4, pos_grid=2)


# ---------------------------------------------------------------------------------------------------------
# RAE3D

RAE3D_CASES = {
    # dinov2 tower, depth points, align features, 2 reads, dec_patch 7 < tower patch
    "depth_align": dict(encoder="tiny-dinov2", num_tokens=8, dec_patch=7, view_chunk=2, align=True,
                        read_layers=2, dim=32, dec_dim=32, dec_depth=2, process_depth=1, points="depth"),
    # siglip2 tower (patch 16), xyz points, no process blocks, no token norm
    "xyz_siglip": dict(encoder="tiny-siglip2", num_tokens=6, view_chunk=2, read_layers=1, dim=32, dec_dim=32,
                       dec_depth=1, process_depth=0, points="xyz", token_norm=False, heads=2, dec_heads=2),
}


@pytest.fixture(scope="module", params=sorted(RAE3D_CASES))
def raes(request):
    """(JAX model, torch port, inputs, JAX results); all JAX outputs come from one jitted call."""
    jm = _random_model(lambda: jrae3d.RAE3D("tiny", rngs=nnx.Rngs(4), **RAE3D_CASES[request.param]), seed=5)
    p = jm.config.patch
    size, size2 = (2 * p, 3 * p), (3 * p, 2 * p)
    rng = np.random.default_rng(6)
    im, c2w, k = _views(rng, 2, 3, *size)  # 3 views: not a multiple of view_chunk (JAX pads a block)
    _, tc2w, tk = _views(rng, 2, 4, *size)  # more targets than context views
    mask = np.array([[False, True, True], [False, False, False]])  # a masked first view; an empty example
    im_masked = im.copy()
    im_masked[~mask] = np.nan  # ignored views may hold anything
    inputs = dict(context=dict(images=im, c2w=c2w, intrinsics=k),
                  target=dict(c2w=tc2w, intrinsics=tk, images=np.zeros((2, 4) + size + (3,), np.float32)),
                  size2=size2, im_masked=im_masked, mask=mask)

    def run(m, ctx, tgt, im_masked, mask):
        out, aux = m(ctx, tgt)  # target size from target images
        return dict(out=out, aux=aux, decode2=m.decode(aux["tokens"], tgt["c2w"], tgt["intrinsics"], size2),
                    masked=m.encode(im_masked, ctx["c2w"], ctx["intrinsics"], view_mask=mask))

    res = nnx.jit(run)(jm, inputs["context"], inputs["target"], im_masked, mask)
    return jm, _port(jm), inputs, jax.tree.map(np.asarray, res)


def _tt(d):
    return {a: _t(b) for a, b in d.items()}


def test_rae3d_encode_matches_jax(raes):
    jm, tm, inp, res = raes
    ctx = inp["context"]
    with torch.no_grad():
        tt = tm.encode(_t(ctx["images"]), _t(ctx["c2w"]), _t(ctx["intrinsics"]))
    assert tt.shape == (2, jm.config.num_tokens, jm.config.latent_dim)
    _close(tt, res["aux"]["tokens"], "encode")


def test_rae3d_decode_matches_jax(raes):
    jm, tm, inp, res = raes
    cfg, tgt = jm.config, inp["target"]
    expected = {"rgb", "points", "depth", "conf"} | ({"features"} if cfg.align else set())
    for size, jout in ((tgt["images"].shape[2:4], res["out"]), (inp["size2"], res["decode2"])):
        with torch.no_grad():
            tout = tm.decode(_t(res["aux"]["tokens"]), _t(tgt["c2w"]), _t(tgt["intrinsics"]), size)
        assert set(tout) == set(jout) == expected
        for key in jout:
            assert tuple(tout[key].shape) == tuple(jout[key].shape), key
            _close(tout[key], jout[key], f"decode {key} {size}")


def test_rae3d_forward_matches_jax(raes):
    jm, tm, inp, res = raes
    with torch.no_grad():
        tout, taux = tm(_tt(inp["context"]), _tt(inp["target"]))
    assert set(tout) == set(res["out"]) and set(taux) == set(res["aux"]) == {"tokens", "latents"}
    for key in tout:
        _close(tout[key], res["out"][key], f"forward {key}")
    for key in taux:
        _close(taux[key], res["aux"][key], f"forward aux {key}")


def test_rae3d_view_mask_matches_jax(raes):
    jm, tm, inp, res = raes
    ctx, im, mask = inp["context"], inp["im_masked"], inp["mask"]
    with torch.no_grad():
        tt = tm.encode(_t(im), _t(ctx["c2w"]), _t(ctx["intrinsics"]), view_mask=torch.from_numpy(mask))
    assert np.isfinite(tt.numpy()).all()
    _close(tt, res["masked"], "encode view_mask")
    # masking a view equals dropping it
    with torch.no_grad():
        t0 = tm.encode(_t(im[:1, 1:]), _t(ctx["c2w"][:1, 1:]), _t(ctx["intrinsics"][:1, 1:]))
    _close(tt[:1], t0.numpy(), "masked view == dropped view")
    with pytest.raises(ValueError, match="view_mask"):
        tm.encode(_t(im), _t(ctx["c2w"]), _t(ctx["intrinsics"]), view_mask=torch.ones(2, 2, dtype=torch.bool))
    # a list of view groups (the JAX encoder's multi-resolution input) reads like one concatenated group
    with torch.no_grad():
        sl = (slice(0, 1), slice(1, 3))
        groups = [(_t(im[:, s]), _t(ctx["c2w"][:, s]), _t(ctx["intrinsics"][:, s])) for s in sl]
        tg, _ = tm.encoder(groups, view_mask=[torch.from_numpy(mask[:, s]) for s in sl])
    _close(tg, tt.numpy(), "groups")


def test_rae3d_errors():
    tm = trae3d.RAE3D(num_tokens=4, dim=32, dec_dim=32, dec_depth=1)
    im = torch.zeros(1, 2, H, W, 3)
    c2w, k = torch.eye(4).expand(1, 2, 4, 4), torch.tensor([1.0, 1.0, 0.5, 0.5]).expand(1, 2, 4)
    with pytest.raises(ValueError, match="multiple of the patch"):
        tm.encode(torch.zeros(1, 2, 20, W, 3), c2w, k)
    with pytest.raises(ValueError, match="c2w must be"):
        tm.encode(im, c2w[:, :1], k)
    with pytest.raises(ValueError, match="tokens must be"):
        tm.decode(torch.zeros(1, 4, 7), c2w, k, (H, W))
    with pytest.raises(ValueError, match="dec_patch"):
        tm.decode(torch.zeros(1, 4, 32), c2w, k, (20, W))
    with pytest.raises(ValueError, match="unknown config fields"):
        trae3d.RAE3D(bogus=1)
