"""3DRAE (its blockwise perceiver read is tested in tests/nn/test_perceiver.py): view-order invariance, masked /
padded views, groups of different resolutions, decoder geometry vs numpy."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.geometry import cameras
from scene3d.models import rae3d

H, W = 28, 42  # non-square: 2 x 3 tower patches of 14


def _views(rng, b, v, h=H, w=W):
    im = rng.uniform(-1, 1, (b, v, h, w, 3)).astype(np.float32)
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
    ang = rng.uniform(-0.6, 0.6, (b, v))
    c2w[..., 0, 0], c2w[..., 0, 2], c2w[..., 2, 0], c2w[..., 2, 2] = np.cos(ang), np.sin(ang), -np.sin(ang), np.cos(ang)
    c2w[..., :3, 3] = rng.normal(size=(b, v, 3)) * 0.4
    k = np.tile(np.array([0.8, 1.1, 0.5, 0.45], np.float32), (b, v, 1))
    return jnp.asarray(im), jnp.asarray(c2w), jnp.asarray(k)


@pytest.fixture(scope="module")
def model():
    return rae3d.RAE3D("tiny", rngs=nnx.Rngs(0), num_tokens=8, dec_patch=7, view_chunk=2, align=True,
                       read_layers=2, dim=32, dec_dim=32, dec_depth=1, process_depth=1)


@pytest.fixture(scope="module")
def encode(model):
    return nnx.jit(lambda m, im, c, k, vm: m.encoder((im, c, k), view_mask=vm)[0])


def test_view_order_invariance_and_masked_views(model, encode):
    rng = np.random.default_rng(2)
    im, c2w, k = _views(rng, 2, 5)
    ones = jnp.ones((2, 5), bool)
    tok = encode(model, im, c2w, k, ones)
    assert tok.shape == (2, 8, model.config.latent_dim) and np.isfinite(np.asarray(tok)).all()
    perm = np.array([3, 0, 4, 1, 2])
    np.testing.assert_allclose(encode(model, im[:, perm], c2w[:, perm], k[:, perm], ones), tok, atol=2e-5)
    # the tokens do depend on the views: the two scenes differ
    assert np.abs(np.asarray(tok[0]) - np.asarray(tok[1])).max() > 1e-3
    # two extra masked views (with NaN cameras) at the front change nothing
    im2 = jnp.concatenate([jnp.zeros_like(im[:, :2]), im], 1)
    c2w2 = jnp.concatenate([jnp.full_like(c2w[:, :2], jnp.nan), c2w], 1)
    k2 = jnp.concatenate([k[:, :2], k], 1)
    vm = jnp.concatenate([jnp.zeros((2, 2), bool), ones], 1)
    np.testing.assert_allclose(encode(model, im2, c2w2, k2, vm), tok, atol=2e-5)


def test_groups_of_different_resolutions_are_order_invariant(model):
    rng = np.random.default_rng(3)
    a = _views(rng, 1, 2, 28, 28)
    b = _views(rng, 1, 3, 42, 28)
    ab, ba = nnx.jit(lambda m: (m.encoder([a, b])[0], m.encoder([b, a])[0]))(model)
    np.testing.assert_allclose(ab, ba, atol=2e-5)
    assert np.isfinite(np.asarray(ab)).all()


def test_decoder_points_lie_on_pixel_rays_and_chunking(model):
    rng = np.random.default_rng(4)
    tok = jnp.asarray(rng.normal(size=(1, 8, model.config.latent_dim)), jnp.float32)
    _, c2w, k = _views(rng, 1, 3)
    out, alone = nnx.jit(lambda m: (m.decode(tok, c2w, k, (H, W)),
                                    [m.decode(tok, c2w[:, v:v + 1], k[:, v:v + 1], (H, W)) for v in range(3)]))(model)
    assert out["rgb"].shape == (1, 3, H, W, 3) and out["features"].shape == (1, 3, 2, 3, 64)
    assert (np.asarray(out["conf"]) >= 1).all()
    # camera-frame z of each point equals the predicted depth; x/z, y/z equal the pixel's normalised coordinates
    for v in range(3):
        pc = np.asarray(cameras.world_to_camera(np.asarray(out["points"][0, v]).reshape(-1, 3).astype(np.float64),
                                                np.asarray(c2w[0, v], np.float64))).reshape(H, W, 3)
        np.testing.assert_allclose(pc[..., 2], np.asarray(out["depth"][0, v]), rtol=1e-4)
        jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        fx, fy, cx, cy = np.asarray(k[0, v]) * np.array([W, H, W, H])
        np.testing.assert_allclose(pc[..., 0] / pc[..., 2], (jj - cx) / fx, atol=1e-4)
        np.testing.assert_allclose(pc[..., 1] / pc[..., 2], (ii - cy) / fy, atol=1e-4)
    # 3 views decoded 2 at a time (padded) equal each view decoded alone
    for v in range(3):
        np.testing.assert_allclose(alone[v]["rgb"][0, 0], out["rgb"][0, v], atol=1e-5)


def test_bad_inputs_raise_clear_errors(model):
    rng = np.random.default_rng(5)
    im, c2w, k = _views(rng, 1, 2)
    with pytest.raises(ValueError, match="multiple of the patch 14"):
        model.encode(im[:, :, :27], c2w, k)
    with pytest.raises(ValueError, match="c2w must be"):
        model.encode(im, c2w[:, :, :3], k)
    with pytest.raises(ValueError, match="unknown ViT variant"):
        rae3d.rae3d_config("tiny", encoder="nope")
    with pytest.raises(ValueError, match="dec_patch"):
        rae3d.rae3d_config("tiny", dec_patch=5, align=True)
