"""Ray maps and Pluecker coordinates, checked against projection (an independent code path) and by loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.geometry import cameras as C
from scene3d.geometry import rays as R
from tests.geometry._helpers import random_cameras

H, W = 12, 16


def test_pixel_rays_hit_their_pixel_centres():
    c2w, intr = random_cameras(2, seed=0, height=H, width=W)
    o, d = R.ray_map(c2w, intr, H, W)
    assert o.shape == d.shape == (2, H, W, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(o, np.broadcast_to(c2w[:, None, None, :3, 3], o.shape))
    pts = (o + 2.5 * d).reshape(2, -1, 3)
    uv, z = C.project(pts, c2w, intr, H, W)
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    centres = np.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2)
    np.testing.assert_allclose(uv, np.broadcast_to(centres, uv.shape), atol=1e-9)
    assert np.all(z > 0)


def test_unnormalised_directions_have_unit_z_depth():
    c2w, intr = random_cameras(1, seed=1, height=H, width=W)
    o, d = R.ray_map(c2w, intr, H, W, normalise=False)
    _, z = C.project((o + 3.0 * d).reshape(1, -1, 3), c2w, intr, H, W)
    np.testing.assert_allclose(z, 3.0, atol=1e-12)


@pytest.mark.parametrize("p", [2, 4])
def test_patch_center_rays(p):
    c2w, intr = random_cameras(1, seed=2, height=H, width=W)
    o, d = R.ray_map(c2w, intr, H, W, patch_size=p)
    assert d.shape == (1, H // p, W // p, 3)
    uv, _ = C.project((o + d).reshape(1, -1, 3), c2w, intr, H, W)
    jj, ii = np.meshgrid(np.arange(W // p), np.arange(H // p))
    centres = (np.stack([jj, ii], -1).reshape(-1, 2) + 0.5) * p  # geometric patch centres
    np.testing.assert_allclose(uv[0], centres, atol=1e-9)


def test_patch_mean_rays_loop_reference():
    c2w, intr = random_cameras(1, seed=3, height=H, width=W)
    p = 4
    _, dpix = R.ray_map(c2w, intr, H, W)
    _, dmean = R.ray_map(c2w, intr, H, W, patch_size=p, patch_mode="mean")
    for i in range(H // p):
        for j in range(W // p):
            ref = dpix[0, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(-1, 3).mean(0)
            np.testing.assert_allclose(dmean[0, i, j], ref / np.linalg.norm(ref), atol=1e-12)
    _, dc = R.ray_map(c2w, intr, H, W, patch_size=p)
    assert np.abs(dmean - dc).max() < 1e-2  # close to, but not exactly, the centre ray


def test_plucker_properties():
    c2w, intr = random_cameras(2, seed=4, height=H, width=W)
    pl = R.plucker_map(c2w, intr, H, W, patch_size=2)
    m, d = pl[..., :3], pl[..., 3:]
    assert pl.shape == (2, H // 2, W // 2, 6)
    np.testing.assert_allclose(np.sum(m * d, -1), 0.0, atol=1e-12)  # moment orthogonal to direction
    o, _ = R.ray_map(c2w, intr, H, W, patch_size=2)
    for s in (-3.0, 0.7, 11.0):  # moving the origin along the ray leaves the moment unchanged
        np.testing.assert_allclose(R.plucker(o + s * d, d), pl, atol=1e-12)
    # the moment of a ray is p x d for any point p on it; |m| is the distance from the world origin to the line
    p = o + 1.3 * d
    dist = np.linalg.norm(p - np.sum(p * d, -1, keepdims=True) * d, axis=-1)
    np.testing.assert_allclose(np.linalg.norm(m, axis=-1), dist, atol=1e-12)
    feats = R.ray_map_features(c2w, intr, H, W, 2, kind="origin_direction")
    np.testing.assert_allclose(feats[..., 3:], d)
    with pytest.raises(ValueError, match="kind"):
        R.ray_map_features(c2w, intr, H, W, kind="nope")


def test_ray_map_jit_matches_numpy():
    c2w, intr = random_cameras(3, seed=5, height=H, width=W)
    f = jax.jit(lambda c, k: R.plucker_map(c, k, H, W, patch_size=4))
    got = f(jnp.asarray(c2w, jnp.float32), jnp.asarray(intr, jnp.float32))
    assert isinstance(got, jax.Array) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), R.plucker_map(c2w, intr, H, W, patch_size=4), atol=2e-5)


def test_depth_to_points_reprojects():
    c2w, intr = random_cameras(2, seed=6, height=H, width=W)
    depth = np.random.default_rng(0).uniform(1, 4, (2, H, W))
    pts = R.depth_to_points(depth, c2w, intr)
    assert pts.shape == (2, H, W, 3)
    uv, z = C.project(pts.reshape(2, -1, 3), c2w, intr, H, W)
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    np.testing.assert_allclose(uv, np.broadcast_to(np.stack([jj + 0.5, ii + 0.5], -1).reshape(-1, 2), uv.shape),
                               atol=1e-9)
    np.testing.assert_allclose(z, depth.reshape(2, -1), atol=1e-12)
    cam = R.depth_to_points(depth, c2w, intr, world=False)
    np.testing.assert_allclose(cam[..., 2], depth)
    got = jax.jit(R.depth_to_points)(*(jnp.asarray(a, jnp.float32) for a in (depth, c2w, intr)))
    np.testing.assert_allclose(np.asarray(got), pts, atol=1e-4)


def test_errors():
    c2w, intr = random_cameras(1)
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        R.ray_map(c2w, intr, H, W, patch_size=5)
    with pytest.raises(ValueError, match="patch_mode"):
        R.ray_map(c2w, intr, H, W, patch_size=2, patch_mode="max")
    with pytest.raises(ValueError, match=r"ray_map c2w"):
        R.ray_map(c2w[:, :3], intr, H, W)
