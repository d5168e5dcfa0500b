"""Cameras: intrinsics, rigid inverses, projection against an independent homogeneous-matrix reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.geometry import cameras as C
from tests.geometry._helpers import random_cameras

H, W = 24, 32


def _reference_project(points, c2w, intr):
    """Textbook pinhole: x ~ K [R|t]_w2c X with w2c = inv(c2w) via np.linalg.inv; pixel-space K."""
    K = np.array([[intr[0] * W, 0, intr[2] * W], [0, intr[1] * H, intr[3] * H], [0, 0, 1]])
    w2c = np.linalg.inv(c2w)
    Xh = np.concatenate([points, np.ones((len(points), 1))], -1)
    cam = (w2c @ Xh.T)[:3]
    x = K @ cam
    return (x[:2] / x[2]).T, cam[2]


def test_intrinsics_matrix_round_trip():
    _, intr = random_cameras(5)
    K = C.intrinsics_matrix(intr, H, W)
    assert K.shape == (5, 3, 3)
    np.testing.assert_allclose(K[:, 0, 0], intr[:, 0] * W)
    np.testing.assert_allclose(K[:, 1, 2], intr[:, 3] * H)
    np.testing.assert_allclose(C.normalise_intrinsics(K, H, W), intr)
    # fov: a horizontal fov of 90 degrees means fx = W / 2
    np.testing.assert_allclose(C.intrinsics_from_fov(np.pi / 2, H, W), [0.5, 0.5 * W / H, 0.5, 0.5])
    fx, fy = C.fov_from_intrinsics(C.intrinsics_from_fov(0.7, H, W, fov_y=0.5))
    np.testing.assert_allclose([fx, fy], [0.7, 0.5])


def test_invert_rigid_matches_linalg():
    c2w, _ = random_cameras(6)
    np.testing.assert_allclose(C.invert_rigid(c2w), np.linalg.inv(c2w), atol=1e-12)
    np.testing.assert_allclose(np.asarray(C.invert_rigid(jnp.asarray(c2w, jnp.float32))), np.linalg.inv(c2w),
                               atol=1e-5)


def test_project_matches_reference():
    c2w, intr = random_cameras(4, seed=1)
    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    uv, z = C.project(pts[None], c2w, intr, H, W)
    for i in range(4):
        ref_uv, ref_z = _reference_project(pts, c2w[i], intr[i])
        np.testing.assert_allclose(uv[i], ref_uv, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(z[i], ref_z, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "jax_jit"])
def test_unproject_project_identity(backend):
    c2w, intr = random_cameras(3, seed=2)
    rng = np.random.default_rng(1)
    pix = rng.uniform(0, [W, H], (3, 40, 2))
    depth = rng.uniform(0.5, 5, (3, 40))
    if backend == "numpy":
        pts = C.unproject(pix, depth, c2w, intr, H, W)
        uv, z = C.project(pts, c2w, intr, H, W)
        tol = 1e-9
    else:
        f = jax.jit(lambda p, d, c, k: C.project(C.unproject(p, d, c, k, H, W), c, k, H, W))
        uv, z = f(*(jnp.asarray(a, jnp.float32) for a in (pix, depth, c2w, intr)))
        assert isinstance(uv, jax.Array)
        tol = 1e-3
    np.testing.assert_allclose(np.asarray(uv), pix, atol=tol)
    np.testing.assert_allclose(np.asarray(z), depth, atol=tol)


def test_in_image_and_behind():
    c2w = np.eye(4)[None]
    intr = np.array([[1.0, 1.0, 0.5, 0.5]])
    pts = np.array([[[0, 0, 1.0], [0, 0, -1.0], [10, 0, 1.0], [-0.49, -0.49, 1.0]]])
    uv, z = C.project(pts, c2w, intr, H, W)
    np.testing.assert_allclose(uv[0, 0], [W / 2, H / 2])
    np.testing.assert_array_equal(C.in_image(uv, z, H, W)[0], [True, False, False, True])


def test_relative_poses():
    c2w, intr = random_cameras(5, seed=3)
    rel = C.relative_poses(c2w, ref_index=2)
    np.testing.assert_allclose(rel[2], np.eye(4), atol=1e-12)
    # transforming the world by inv(c2w[2]) leaves every projection unchanged
    pts = np.random.default_rng(2).uniform(-1, 1, (30, 3))
    w2r = np.linalg.inv(c2w[2])
    pts_rel = pts @ w2r[:3, :3].T + w2r[:3, 3]
    uv0, z0 = C.project(pts[None], c2w, intr, H, W)
    uv1, z1 = C.project(pts_rel[None], rel, intr, H, W)
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(z1, z0, atol=1e-12)
    # batched (B, N, 4, 4)
    relb = C.relative_poses(np.stack([c2w, c2w[::-1]]), 0)
    np.testing.assert_allclose(relb[1, 0], np.eye(4), atol=1e-12)


def _positive_depths(c2w, pts):
    z = np.concatenate([(np.linalg.inv(T) @ np.concatenate([pts, np.ones((len(pts), 1))], -1).T)[2] for T in c2w])
    return z[z > 0]


@pytest.mark.parametrize("mode", ["max_camera_distance", "mean_camera_distance", "median_depth", "points_radius"])
def test_normalise_scene_scale(mode):
    c2w, intr = random_cameras(4, seed=4)
    pts = np.random.default_rng(3).uniform(-1, 1, (100, 3))
    c2, p2, s = C.normalise_scene_scale(c2w, pts, mode=mode, target=2.0)
    stat = {
        "max_camera_distance": lambda c, p: np.linalg.norm(c[:, :3, 3], axis=-1).max(),
        "mean_camera_distance": lambda c, p: np.linalg.norm(c[:, :3, 3], axis=-1).mean(),
        "points_radius": lambda c, p: np.linalg.norm(p, axis=-1).max(),
        "median_depth": lambda c, p: np.median(_positive_depths(c, p)),
    }[mode]
    assert stat(c2, p2) == pytest.approx(2.0, rel=1e-9)
    # similarity invariance: projections unchanged; undo with 1 / scale
    uv0, _ = C.project(pts[None], c2w, intr, H, W)
    uv1, _ = C.project(p2[None], c2, intr, H, W)
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(C.scale_poses(c2, 1 / s), c2w, atol=1e-12)
    np.testing.assert_allclose(c2[:, :3, :3], c2w[:, :3, :3])


def test_normalise_scene_scale_errors():
    with pytest.raises(ValueError, match="needs points"):
        C.normalise_scene_scale(np.eye(4)[None], mode="median_depth")
    with pytest.raises(ValueError, match="unknown mode"):
        C.normalise_scene_scale(np.eye(4)[None], mode="bogus")


def test_look_at():
    eye, target = np.array([1.0, 2.0, 0.5]), np.array([-0.3, 0.1, 0.2])
    c2w = C.look_at(eye, target, up=(0, 0, 1))
    np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    intr = np.array([[0.8, 0.8, 0.5, 0.5]])
    uv, z = C.project(np.stack([target, target + [0, 0, 0.1]])[None], c2w[None], intr, H, W)
    np.testing.assert_allclose(uv[0, 0], [W / 2, H / 2], atol=1e-9)  # target at the image centre
    assert z[0, 0] == pytest.approx(np.linalg.norm(target - eye))
    assert uv[0, 1, 1] < H / 2  # world up appears up in the image (y down)
    cj = C.look_at(jnp.asarray(eye), jnp.asarray(target), jnp.asarray([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(cj), c2w, atol=1e-5)


def test_cameras_dataclass():
    c2w, intr = random_cameras(3)
    cams = C.Cameras(c2w, intr, H, W)
    assert len(cams) == 3 and len(cams[1]) == 1 and len(cams[:2]) == 2
    np.testing.assert_allclose(cams.w2c, np.linalg.inv(c2w), atol=1e-12)
    np.testing.assert_allclose(cams.K()[:, 0, 0], intr[:, 0] * W)
    np.testing.assert_allclose(cams.resized(2 * H, 2 * W).K()[:, 0, 0], 2 * intr[:, 0] * W)
    assert C.Cameras(c2w, intr[0]).intrinsics.shape == (3, 4)
    with pytest.raises(ValueError, match=r"c2w: expected shape \(N, 4, 4\)"):
        C.Cameras(c2w[:, :3], intr)
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \(3, 4\)"):
        C.Cameras(c2w, intr[:2])
    with pytest.raises(ValueError, match="image size unknown"):
        C.Cameras(c2w, intr).K()


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"project intrinsics"):
        C.project(np.zeros((1, 5, 3)), np.eye(4)[None], np.zeros((1, 3)), H, W)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        C.project(np.zeros((1, 5, 2)), np.eye(4)[None], np.zeros((1, 4)), H, W)


def test_relative_and_scale_under_jit():
    c2w, _ = random_cameras(4, seed=7)
    pts = np.random.default_rng(4).uniform(-1, 1, (20, 3))
    for mode in ("max_camera_distance", "median_depth"):
        f = jax.jit(lambda c, p: C.normalise_scene_scale(C.relative_poses(c, 1), p, mode=mode))
        cj, pj, sj = f(jnp.asarray(c2w, jnp.float32), jnp.asarray(pts, jnp.float32))
        cn, pn, sn = C.normalise_scene_scale(C.relative_poses(c2w, 1), pts, mode=mode)
        np.testing.assert_allclose(float(sj), sn, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(cj), cn, atol=1e-5)


def test_as_intrinsics4_from_vector_or_normalised_matrix():
    from scene3d.geometry.cameras import as_intrinsics4
    intr = np.array([[0.9, 1.2, 0.45, 0.55], [1.1, 1.0, 0.5, 0.5]])
    K = np.zeros((2, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], 1
    np.testing.assert_array_equal(as_intrinsics4(K), intr)
    np.testing.assert_array_equal(as_intrinsics4(intr, (2,)), intr)
    np.testing.assert_array_equal(as_intrinsics4(K, (2,)), intr)
    with pytest.raises(ValueError, match=r"cams: intrinsics must be \(3, 4\)"):
        as_intrinsics4(intr, (3,), "cams")
    with pytest.raises(ValueError, match="intrinsics must be"):
        as_intrinsics4(np.zeros((2, 5)))
