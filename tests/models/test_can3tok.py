"""Can3Tok vs the official PyTorch release (fixtures a/b: outputs, round-trip export, released key manifest);
tiny variant forward/backward, KL vs torch.distributions, voxel anchors and query grid vs numpy."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from scene3d import nn
from scene3d.convert import can3tok as cv
from scene3d.convert import parity
from scene3d.convert.can3tok import config_from_official
from scene3d.core.sharding import DEFAULT_RULES
from scene3d.models.can3tok import VARIANTS, Can3Tok, voxel_anchor, voxel_grid_queries

# float32 tolerance for the fixtures: observed max |ours - official| ~4e-6 on values up to ~4.
RTOL = ATOL = 1e-5


def abstract(**kwargs):
    return nnx.eval_shape(lambda: Can3Tok(rngs=nnx.Rngs(0), **kwargs))


def randomized(abstract_module, seed=0):
    """Fill an abstract module's parameters with random values (no initialiser compiled: fast on CPU)."""
    graphdef, params = nnx.split(abstract_module)
    r = np.random.default_rng(seed)

    def fill(path, x):
        n = r.standard_normal(x.shape).astype(np.float32)
        if path[-1] == "kernel":
            return jnp.asarray(n / np.sqrt(x.shape[-2]))
        return jnp.asarray(1.0 + 0.1 * n if path[-1] == "scale" else 0.1 * n)

    pure = nnx.to_pure_dict(params)
    pure = jax.tree_util.tree_map_with_path(lambda p, x: fill(tuple(getattr(k, "key", k) for k in p), x), pure)
    nnx.replace_by_pure_dict(params, pure)
    return nnx.merge(graphdef, params)


def random_model(seed=0, **kwargs):
    return randomized(abstract(**kwargs), seed)


def fixture_dir(shared_dir, name):
    d = shared_dir / "fixtures" / "can3tok" / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


@pytest.fixture(scope="module", params=["a", "b"])
def official(request, shared_dir):
    d = fixture_dir(shared_dir, request.param)
    fx = parity.load_fixture(d)
    run = parity.run_fixture(fx, "can3tok")  # the parity command's runner: the official forward, jitted
    # The same weights in a model with the correct attention layout (to show the release quirk matters).
    correct, _ = cv.model_from_official(d / "config.json", fx.weights, head_layout="correct")
    correct_z = nnx.jit(lambda m, x: m.encode(x, sample_posterior=False)[1]["z"])(
        correct, jnp.asarray(fx.inputs["surface"]))
    ex = run.extras
    return dict(name=request.param, dir=d, weights=fx.weights, inputs=fx.inputs, outputs=fx.outputs, model=run.model,
                report=run.report, recon=ex["recon"], aux=ex["aux"], det=ex["det"], det_aux=ex["det_aux"],
                correct_z=correct_z, proj64=run.values["intermediate.encoder.input_proj.first64"], run=run)


def close(ours, ref):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(ours).reshape(ref.shape), ref, rtol=RTOL, atol=ATOL)


def test_variants_match_official_configs(shared_dir):
    root = shared_dir / "fixtures" / "can3tok"
    for name in ("a", "b"):
        assert config_from_official(fixture_dir(shared_dir, name) / "config.json") == dict(
            VARIANTS[f"fixture_{name}"], head_layout="release")
    manifest = json.loads((root / "manifest_shapevae-256.json").read_text())
    assert config_from_official(manifest) == dict(VARIANTS["release"], head_layout="release")
    with pytest.raises(ValueError, match="shape_module_cfg"):
        config_from_official({"peer": "x"})


def test_fixture_outputs_match_official(official):
    out, aux = official["outputs"], official["aux"]
    close(aux["token_mean"], out["posterior.mean"])
    close(aux["token_logvar"], out["posterior.logvar"])
    close(aux["mean"], out["mu"])
    close(aux["logvar"], out["log_var"])
    close(aux["z"], out["z"])
    close(official["recon"], out["UV_gs_recover"])
    close(official["det_aux"]["z"], out["det.z"])
    close(official["det"], out["det.UV_gs_recover"])
    # named intermediates
    close(aux["tokens"], out["intermediate.encoder.ln_post"])
    close(aux["shape_embed"], out["shape_embed"])
    close(aux["decoder_tokens"], out["intermediate.transformer"])
    close(official["proj64"], out["intermediate.encoder.input_proj.first64"])
    assert official["recon"].shape == (2,) + official["model"].output_shape
    # ... and every stored output (the other intermediates too) within the parity command's tolerance
    rows = parity.compare(official["run"], official["dir"])
    assert len(rows) == len(out) and all(r.ok for r in rows), [r for r in rows if not r.ok]


def test_release_head_layout_is_what_the_official_code_computes(official):
    """The same weights with the correct attention layout give a different function: the quirk matters."""
    assert np.abs(np.asarray(official["correct_z"]) - official["outputs"]["det.z"]).max() > 1e-2


def test_export_round_trip_is_exact(official):
    weights, report, m = official["weights"], official["report"], official["model"]
    assert sorted(report.ignored) == sorted(k for k in weights if k.startswith("shape_model.geo_decoder."))
    assert set(report.consumed) | set(report.ignored) == set(weights)
    exported = cv.export_official(m, extra=report.ignored_tensors)
    assert set(exported) == set(weights)
    for k, v in weights.items():
        assert exported[k].dtype == v.dtype and exported[k].shape == v.shape, k
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    # unused='zeros' writes every official key (strict-loadable), the geo_decoder ones as zeros
    zeros = cv.export_official(m, unused="zeros")
    assert {k: v.shape for k, v in zeros.items()} == {k: v.shape for k, v in weights.items()}
    assert all(not zeros[k].any() for k in report.ignored)
    # import(export(state)) == state, without the prefix too
    state, rep2 = cv.official_to_state(m, {k[len("shape_model."):]: v for k, v in exported.items()})
    assert rep2.prefix == ""
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state),
                 nnx.to_pure_dict(nnx.state(m, nnx.Param)))


def test_release_variant_maps_one_to_one_onto_the_manifest(shared_dir):
    manifest = json.loads((shared_dir / "fixtures" / "can3tok" / "manifest_shapevae-256.json").read_text())
    model = nnx.eval_shape(lambda: Can3Tok(variant="release", head_layout="release", rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))  # nothing allocated
    ref = {k: (tuple(s), d) for k, s, d in manifest["state_dict"]}
    ours = cv.export_official(model, unused="zeros")  # abstract in, ShapeDtypeStructs out
    assert {k: (v.shape, str(v.dtype)) for k, v in ours.items()} == ref
    core = {k: v[0] for k, v in ref.items() if not k.startswith("shape_model.geo_decoder.")}
    assert {"shape_model." + k: v for k, v in cv.official_shapes(model).items()} == core
    n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert n_ours == sum(int(np.prod(s)) for s in core.values())
    assert n_ours + manifest["parameters_by_submodule"]["shape_model.geo_decoder"] == manifest["total_parameters"]


def test_import_errors_name_keys_and_shapes(shared_dir):
    d = fixture_dir(shared_dir, "a")
    config = config_from_official(d / "config.json")
    m, weights = abstract(**config), cv.load_official(d / "weights.safetensors")
    key = "shape_model.encoder.input_proj.weight"
    shape = weights[key].shape
    with pytest.raises(ValueError, match="missing 1 .*" + re.escape(f"{key} (expected shape {shape})")):
        cv.official_to_state(m, {k: v for k, v in weights.items() if k != key})
    with pytest.raises(ValueError, match=re.escape(f"{key}: expected {shape}, got (3, 3)")):
        cv.official_to_state(m, dict(weights, **{key: np.zeros((3, 3), np.float32)}))
    extra = dict(weights, **{"shape_model.something_new": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="something_new"):
        cv.official_to_state(m, extra)
    _, rep = cv.official_to_state(m, extra, strict=False)
    assert "shape_model.something_new" in rep.ignored and "something_new" in rep.ignored_tensors
    with pytest.raises(ValueError, match="config_from_official"):
        cv.official_to_state(abstract(**dict(config, num_latents=8)), weights)
    with pytest.raises(ValueError, match="input_offset=4"):
        cv.official_to_state(abstract(**dict(config, anchor_grid=20)), weights)


# ------------------------------------------------------------------------------------------------ tiny variant


def test_tiny_forward_backward_sampling_and_kl():
    m = random_model(variant="tiny")
    graphdef, params = nnx.split(m)
    r = np.random.default_rng(1)
    rows = jnp.asarray(r.standard_normal((2, 48, 18)).astype(np.float32) * 2)
    eps = [jnp.asarray(r.standard_normal(s).astype(np.float32)) for s in ((2, 16, 4), (2, 64))]

    def loss(p, key):  # the release's training loss
        m = nnx.merge(graphdef, p)
        out, a = m(rows, rng=key)
        target = jnp.broadcast_to(m.target(rows)[:, :1], out.shape)
        return jnp.sqrt(jnp.sum(jnp.square(out - target))) / 2 + 1e-5 * a["kl"].mean()

    @jax.jit
    def run(p):
        m = nnx.merge(graphdef, p)
        recon, aux = m(rows, eps_tokens=eps[0], eps_latent=eps[1])
        dec, _ = m.decode(aux["z"].reshape(2, *m.latent_shape))
        z_mode, mode_aux = m.encode(rows, sample_posterior=False)
        z_keyed = m.encode(rows, rng=jax.random.key(1))[0]
        return recon, aux, dec, z_mode, mode_aux, z_keyed, jax.grad(loss)(p, jax.random.key(3))

    recon, aux, dec, z_mode, mode_aux, z_keyed, grads = run(params)
    assert recon.shape == (2, 256, 14) and aux["z"].shape == (2, 64) and aux["token_z"].shape == (2, 16, 4)
    assert np.isfinite(np.asarray(recon)).all()
    # KL vs torch.distributions
    mu, lv = np.asarray(aux["mean"], np.float64), np.asarray(aux["logvar"], np.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(torch.tensor(mu), torch.tensor(np.exp(lv / 2))),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1).numpy()
    np.testing.assert_allclose(aux["kl"], ref, rtol=1e-5)
    # the reparameterisations with the given noise
    tm, tlv = np.asarray(aux["token_mean"]), np.asarray(aux["token_logvar"])
    np.testing.assert_allclose(aux["token_z"], tm + np.exp(tlv / 2) * np.asarray(eps[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["z"], mu + np.exp(lv / 2) * np.asarray(eps[1]), rtol=1e-5, atol=1e-5)
    # decode(z as (B, T, E) tokens) == __call__; the mode: token z = token mean, z = mean
    np.testing.assert_allclose(dec, recon, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mode_aux["token_z"], mode_aux["token_mean"])
    np.testing.assert_array_equal(z_mode, mode_aux["mean"])
    np.testing.assert_allclose(mode_aux["token_mean"], aux["token_mean"], rtol=1e-6)
    # rng sampling: a different draw than the given noise, around the same mean
    assert not np.allclose(z_keyed, aux["z"]) and z_keyed.shape == aux["z"].shape
    # gradients of the release loss reach every parameter
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert len(norms) == len(jax.tree.leaves(params)) and all(np.isfinite(norms)) and min(norms) > 0


def test_tiny_input_validation_and_options():
    m = random_model(variant="tiny")
    rows = jax.ShapeDtypeStruct((2, 16, 18), jnp.float32)
    with pytest.raises(ValueError, match="rng"):
        jax.eval_shape(lambda x: m(x), rows)
    with pytest.raises(ValueError, match=re.escape("(B, N, 18)")):
        jax.eval_shape(lambda x: m(x[..., :14], rng=jax.random.key(0)), rows)
    with pytest.raises(ValueError, match="eps_latent"):
        jax.eval_shape(lambda x: m(x, eps_tokens=jnp.zeros((2, 16, 4)), eps_latent=jnp.zeros((2, 3))), rows)
    with pytest.raises(ValueError, match="decode"):
        m.decode(jnp.zeros((2, 63)))
    with pytest.raises(ValueError, match="unknown config keys"):
        abstract(variant="tiny", widht=3)
    with pytest.raises(ValueError, match="multiple of embed_dim"):
        abstract(variant="tiny", latent_dim=30)
    # scan / remat / attn_impl reach the stacks and the attention modules
    a = abstract(variant="tiny", scan=False, remat="full", attn_impl="cudnn", head_layout="release")
    assert not a.encoder_blocks.scan and a.decoder_blocks.remat == "full"
    attns = [x for _, x in nnx.iter_graph(a) if isinstance(x, nn.Attention)]
    assert len(attns) == 3 and all(x.impl == "cudnn" and x.head_layout == "release" for x in attns)
    hash(nnx.graphdef(m))  # static config: jit-able with the graph definition as a static argument
    # the voxel-anchor encoding widens the input projection and runs
    m2 = random_model(variant="tiny", anchor_grid=4, anchor_extent=8.0, input_offset=0)
    assert m2.input_proj.kernel.shape[0] == 2 * 51 + 11 and m2.in_channels == 14
    out = jax.eval_shape(lambda x: m2(x, sample_posterior=False)[0], jax.ShapeDtypeStruct((2, 16, 14), jnp.float32))
    assert out.shape == (2, 256, 14)


def test_every_param_has_logical_names():
    model = nnx.eval_shape(lambda: Can3Tok(variant="paper", rngs=nnx.Rngs(0)))
    vocab = dict(DEFAULT_RULES)
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim, path
        assert all(n is None or n in vocab for n in names), (path, names)


def test_voxel_anchor_is_the_nearest_voxel_centre():
    grid, extent = 5, 2.0
    pts = np.random.default_rng(0).uniform(-extent, extent, (300, 3)).astype(np.float32)
    ax = -extent + (np.arange(grid) + 0.5) * (2 * extent / grid)
    centres = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    nearest = centres[np.argmin(((pts[:, None] - centres[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_allclose(voxel_anchor(jnp.asarray(pts), grid, extent), nearest, atol=1e-6)
    # outside the extent: clamped to the border cells
    np.testing.assert_allclose(voxel_anchor(jnp.asarray([[9.0, -9.0, 0.1]]), grid, extent),
                               [[ax[-1], ax[0], 0.0]], atol=1e-6)


def test_query_grid_init():
    q = np.asarray(voxel_grid_queries(5, 200, 4, 8.0, 0.01, jax.random.key(0)))
    ax = np.linspace(-8, 8, 4)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1)  # x-major, xyz per point
    np.testing.assert_allclose(q[:, :192], np.broadcast_to(grid * 0.01, (5, 192)), rtol=1e-6)
    assert 0.01 < q[:, 192:].std() < 0.04
    with pytest.raises(ValueError, match="width"):
        voxel_grid_queries(5, 100, 4, 8.0, 0.01, jax.random.key(0))


def test_release_head_layout_attention_vs_numpy():
    """nn.Attention(head_layout='release'): the (B, H, L, D) result read as (B, L, H * D), as the release does."""
    b, lq, lk, dim, h = 2, 5, 7, 12, 3
    d = dim // h
    att = randomized(nnx.eval_shape(lambda: nn.Attention(dim, h, head_layout="release", rngs=nnx.Rngs(0))))
    r = np.random.default_rng(3)
    x, ctx = r.standard_normal((b, lq, dim)).astype(np.float32), r.standard_normal((b, lk, dim)).astype(np.float32)
    p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(att)))
    lin = lambda t, q: t @ q["kernel"] + q["bias"]  # noqa: E731
    q = lin(x, p["q"]).reshape(b, lq, h, d).transpose(0, 2, 1, 3)
    k = lin(ctx, p["k"]).reshape(b, lk, h, d).transpose(0, 2, 1, 3)
    v = lin(ctx, p["v"]).reshape(b, lk, h, d).transpose(0, 2, 1, 3)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    o = (w / w.sum(-1, keepdims=True)) @ v  # (B, H, Lq, D)
    ref = lin(o.reshape(b, lq, h * d), p["out"])  # straight reshape, no transpose back
    got = jax.jit(lambda a, c: att(a, c))(jnp.asarray(x), jnp.asarray(ctx))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    correct = lin(o.transpose(0, 2, 1, 3).reshape(b, lq, h * d), p["out"])
    assert np.abs(ref - correct).max() > 1e-2
    with pytest.raises(ValueError, match="head_layout"):
        nn.Attention(dim, h, head_layout="transposed", rngs=nnx.Rngs(0))
