"""scene3d.models.tokenizers: each family's adapter (built from a stage-1 config through the registry, on tiny
random models) against the underlying model's own calls; token_shape against an eval_shape of the model's encoder;
SceneTok's chunked decode against the stage-1 task's host-side chunked renders; registry and binding errors."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.core.config import load_config
from scene3d.geometry import rays as rays_lib
from scene3d.models import tokenizers
from scene3d.tasks import stage1

REPO = pathlib.Path(__file__).resolve().parents[2]


def _perturbed(model, seed: int):
    """``model`` with every variable moved by N(0, 0.05^2) noise (zero-initialised output layers would otherwise
    make outputs independent of the inputs)."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: x + jnp.asarray(0.05 * rng.normal(size=x.shape), x.dtype)
                         if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    return nnx.merge(graphdef, state)


def _views(rng, b, v, size):
    im = rng.uniform(-1, 1, (b, v, size, size, 3)).astype(np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
    ang = rng.uniform(-0.4, 0.4, (b, v))
    c2w[..., 0, 0], c2w[..., 0, 2], c2w[..., 2, 0], c2w[..., 2, 2] = np.cos(ang), np.sin(ang), -np.sin(ang), np.cos(ang)
    c2w[..., :3, 3] = rng.normal(size=(b, v, 3)) * 0.3
    c2w[:, 0] = np.eye(4)  # poses in the frame of context view 0
    k = np.tile(np.array([0.9, 0.9, 0.5, 0.5], np.float32), (b, v, 1))
    return jnp.asarray(im), jnp.asarray(c2w), jnp.asarray(k)


# ============================================================================================== Can3Tok

CAN3TOK = dict(num_gaussians=64, width=32, heads=2, num_latents=8, embed_dim=4, latent_dim=32, head_width=32,
               head_depth=2)


@pytest.fixture(scope="module")
def can3tok():
    c = load_config(f"{REPO}/configs/can3tok.py:runlocal")
    c.model.update(CAN3TOK)
    c.data.gaussians.num_gaussians = CAN3TOK["num_gaussians"]
    return c, _perturbed(stage1.build_tokenizer(c, nnx.Rngs(3)), 0)


def test_can3tok_adapter_matches_the_model(can3tok):
    config, model = can3tok
    tok = stage1.tokenizer(config, model, scale=0.5, sample_posterior=True)
    assert isinstance(tok, tokenizers.Can3TokTokenizer) and isinstance(tok, tokenizers.Tokenizer)
    assert tok.family == "can3tok" and tok.scale == 0.5
    rows = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 14)), jnp.float32)
    t, e = CAN3TOK["latent_dim"] // CAN3TOK["embed_dim"], CAN3TOK["embed_dim"]
    shape = jax.eval_shape(lambda r: model.encode(r, sample_posterior=False)[0], rows).shape
    assert tok.token_shape == (t, e) and int(np.prod(tok.token_shape)) == shape[1]
    assert tok.output_shape == (64, 14)
    # posterior mean without an rng, a posterior sample with one (the model's own noise for that key)
    mean = tok.encode({"gaussians": rows})
    np.testing.assert_allclose(mean, np.asarray(model.encode(rows, sample_posterior=False)[0]).reshape(2, t, e),
                               rtol=1e-6, atol=1e-6)
    key = jax.random.key(5)
    sampled = tok.encode({"gaussians": rows}, key)
    np.testing.assert_allclose(sampled, np.asarray(model.encode(rows, rng=key)[0]).reshape(2, t, e), atol=1e-6)
    assert np.abs(np.asarray(sampled) - np.asarray(mean)).max() > 1e-3
    np.testing.assert_allclose(tok.decode(mean)["gaussians"], model.decode(mean.reshape(2, -1))[0], atol=1e-6)
    with pytest.raises(ValueError, match="decodes to Gaussians"):
        tok.decode(mean, tokenizers.Cameras(jnp.eye(4)[None, None], jnp.ones((1, 1, 4))))


def test_unbound_adapters_name_the_missing_module(can3tok):
    config, model = can3tok
    tok = tokenizers.from_config(config)
    with pytest.raises(ValueError, match=r"Can3TokTokenizer.token_shape: not bound"):
        tok.token_shape
    assert tok.bind(nnx.eval_shape(lambda: model)).token_shape == (8, 4)  # an abstract module is enough
    # stage1.tokenizer binds the abstract stage-1 module itself when the family needs one for its shapes
    assert stage1.tokenizer(config).token_shape == (8, 4)


def test_registry_errors(can3tok):
    config, _ = can3tok
    with pytest.raises(ValueError, match=r"task 'generate' has no tokenizer adapter \(known: \['autoencode', "
                                         r"'rae3d', 'scenetok'\]\)"):
        tokenizers.from_config(_with_task(config, "generate"))
    with pytest.raises(ValueError, match=r"settings for a 'autoencode' run: unknown \['sample_tokens'\]"):
        tokenizers.from_config(config, sample_tokens=True)


def _with_task(config, task):
    c = config.copy_and_resolve_references()
    c.task = task
    return c


# ============================================================================================== SceneTok

SIZE = 16


@pytest.fixture(scope="module")
def scenetok():
    c = load_config(f"{REPO}/configs/scenetok.py:runlocal")
    c.update_from_flattened_dict({
        "data.views.resolution": (SIZE, SIZE), "data.views.num_target": 2, "flow.sample_steps": 2,
        "model.compressor": dict(width=32, heads=2, depth=1, patch=2, num_tokens=8, token_dim=4, ray_patch=2),
        "model.decoder": dict(width=32, heads=2, depth=1, patch=1, ray_patch=2, freq_dim=32)})
    return c, _perturbed(stage1.build_tokenizer(c, nnx.Rngs(4)), 1)


def test_scenetok_adapter_matches_the_model_and_the_task(scenetok):
    from scene3d.tasks import scenetok as stok
    config, model = scenetok
    tok = stage1.tokenizer(config, model, flow_overrides={"sample_steps": 3, "cfg_scale": None})
    assert isinstance(tok, tokenizers.Tokenizer) and tok.family == "scenetok" and tok.scale == 1.0
    assert tok.render.flow.sample_steps == 3 and tok.render.latent_grid == (4, 4) and tok.views_per_call == 2
    assert tok.resolution == (SIZE, SIZE) and tok.latent_grid == (4, 4) and tok.latent_channels == 48
    im, c2w, k = _views(np.random.default_rng(1), 2, 2, SIZE)
    ref_tokens, _ = model.tokens(im, c2w, k)
    assert tok.token_shape == tuple(jax.eval_shape(lambda: model.tokens(im, c2w, k)[0]).shape[1:]) == (8, 4)
    np.testing.assert_allclose(tok.image_latents(im), model.latents(im), atol=1e-6)
    tokens = tok.encode({"images": im, "c2w": c2w, "intrinsics": k})
    np.testing.assert_allclose(tokens, ref_tokens, atol=1e-6)
    np.testing.assert_allclose(tok.encode({"latents": model.latents(im), "c2w": c2w, "intrinsics": k}), tokens,
                               atol=1e-6)
    # 3 views, 2 per decoder call: 2 calls with their own keys, the last repeating view 3's camera, like the
    # stage-1 task's host-side renders
    _, c2w3, k3 = _views(np.random.default_rng(2), 2, 3, SIZE)
    key = jax.random.key(7)
    out = nnx.jit(lambda m, t, c, i, r: tok.bind(m).decode(t, tokenizers.Cameras(c, i), r))(model, tokens, c2w3,
                                                                                              k3, key)
    task_config = config.copy_and_resolve_references()
    task_config.flow.sample_steps = 3
    task = stok.SceneTokTask(task_config)
    want = task.render_views(model, tokens, np.asarray(c2w3), np.asarray(k3), key)
    assert out["images"].shape == (2, 3, SIZE, SIZE, 3) and out["latents"].shape == (2, 3, 4, 4, 48)
    np.testing.assert_allclose(out["images"], want, atol=2e-5)
    assert np.abs(np.asarray(out["images"][:, 0]) - np.asarray(out["images"][:, 1])).max() > 1e-3
    with pytest.raises(ValueError, match="cameras are required"):
        tok.decode(tokens)
    with pytest.raises(ValueError, match=r"renders \(16, 16\) views, asked for \(8, 8\)"):
        tok.decode(tokens, tokenizers.Cameras(c2w3, k3, (8, 8)), key)


# ============================================================================================== 3DRAE


@pytest.fixture(scope="module")
def rae():
    c = load_config(f"{REPO}/configs/rae3d.py:runlocal")
    c.model.update(num_tokens=8, dim=32, dec_dim=32, dec_depth=1)
    return c, _perturbed(stage1.build_tokenizer(c, nnx.Rngs(5)), 2)


def test_rae3d_adapter_matches_the_model(rae):
    config, model = rae
    unbound = tokenizers.from_config(config, scale=2.0)
    tok = unbound.bind(model)
    assert isinstance(tok, tokenizers.Tokenizer) and tok.family == "rae3d" and tok.scale == 2.0
    p = model.config.patch
    im, c2w, k = _views(np.random.default_rng(3), 1, 2, 2 * p)
    ref = model.encode(im, c2w, k)
    assert unbound.token_shape == tok.token_shape == tuple(jax.eval_shape(lambda: model.encode(im, c2w, k)).shape[1:])
    assert unbound.feature_dim == tok.feature_dim == model.config.feature_dim and tok.patch == p
    tokens = tok.encode({"images": im, "c2w": c2w, "intrinsics": k})
    np.testing.assert_allclose(tokens, ref, atol=1e-6)
    mask = jnp.asarray([[True, False]])
    np.testing.assert_allclose(tok.encode({"images": im, "c2w": c2w, "intrinsics": k, "view_mask": mask}),
                               model.encode(im, c2w, k, view_mask=mask), atol=1e-6)
    cond = tok.view_condition(im, c2w, k)
    np.testing.assert_allclose(cond["view_features"], model.encoder.features(im), atol=1e-6)
    assert cond["view_features"].shape == (1, 2, 2, 2, tok.feature_dim)
    np.testing.assert_allclose(cond["view_rays"], rays_lib.plucker_map(c2w, k, 2 * p, 2 * p, p), atol=1e-6)
    size = (2 * p, 2 * p)
    out = tok.decode(tokens, tokenizers.Cameras(c2w, k, size))
    want = model.decode(tokens, c2w, k, size)
    names = {"rgb": "images", "points": "point_maps", "conf": "confidence", "depth": "depth"}
    assert set(out) == {names.get(n, n) for n in want}
    for name, value in want.items():
        np.testing.assert_allclose(out[names.get(name, name)], value, atol=1e-6)
    with pytest.raises(ValueError, match="cameras with a size"):
        tok.decode(tokens, tokenizers.Cameras(c2w, k))
