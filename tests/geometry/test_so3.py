"""SO(3) utilities against scipy.spatial.transform (an independent implementation) and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation, Slerp

from scene3d.geometry import so3


def _scipy_quat(q_wxyz):
    return Rotation.from_quat(np.asarray(q_wxyz)[..., [1, 2, 3, 0]])


@pytest.mark.parametrize("src", ["numpy", "jax"])
def test_random_rotation_orthonormal_det1(src):
    R = so3.random_rotation(np.random.default_rng(0) if src == "numpy" else jax.random.key(0), 64)
    R = np.asarray(R, np.float64)
    assert R.shape == (64, 3, 3)
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)


def test_random_rotation_is_haar():
    """Rotation angle of a Haar-random rotation has CDF (theta - sin theta) / pi; E[R] = 0, E[R_ij^2] = 1/3."""
    R = so3.random_rotation(np.random.default_rng(1), 4000)
    theta = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(theta, lambda t: (t - np.sin(t)) / np.pi).pvalue > 1e-3
    np.testing.assert_allclose(R.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose((R ** 2).mean(0), 1 / 3, atol=0.03)


def test_quat_to_matrix_matches_scipy():
    q = np.random.default_rng(2).standard_normal((50, 4))
    np.testing.assert_allclose(so3.quat_to_matrix(q), _scipy_quat(q).as_matrix(), atol=1e-12)


@pytest.mark.parametrize("src", ["numpy", "jax"])
def test_matrix_quat_round_trip_canonical(src):
    R = Rotation.random(200, random_state=3).as_matrix()
    # include near-180-degree rotations and identity: every Shepperd pivot branch
    R = np.concatenate([R, Rotation.from_rotvec(np.pi * np.eye(3) * 0.999999).as_matrix(), np.eye(3)[None]])
    Rin = jnp.asarray(R, jnp.float32) if src == "jax" else R
    q = so3.matrix_to_quat(Rin)
    assert np.all(np.asarray(q)[:, 0] >= 0)
    tol = 1e-5 if src == "jax" else 1e-12
    np.testing.assert_allclose(np.asarray(so3.quat_to_matrix(q)), R, atol=tol * 10)
    ref = Rotation.from_matrix(R).as_quat()[:, [3, 0, 1, 2]]
    ref = ref * np.where(ref[:, :1] < 0, -1, 1)
    np.testing.assert_allclose(np.asarray(q), ref, atol=tol * 10)


def test_quat_multiply_is_matrix_product():
    rng = np.random.default_rng(4)
    a, b = so3.random_quat(rng, 20), so3.random_quat(rng, 20)
    np.testing.assert_allclose(so3.quat_to_matrix(so3.quat_multiply(a, b)),
                               so3.quat_to_matrix(a) @ so3.quat_to_matrix(b), atol=1e-12)
    np.testing.assert_allclose(so3.quat_multiply(a, so3.quat_conjugate(a)), np.tile([1.0, 0, 0, 0], (20, 1)),
                               atol=1e-12)


def test_slerp_matches_scipy():
    rots = Rotation.random(2, random_state=5)
    q = rots.as_quat()[:, [3, 0, 1, 2]]
    t = np.linspace(0, 1, 7)
    got = so3.quat_to_matrix(so3.quat_slerp(q[0], q[1], t))
    np.testing.assert_allclose(got, Slerp([0, 1], rots)(t).as_matrix(), atol=1e-10)
    # identical endpoints (sin theta = 0 branch)
    np.testing.assert_allclose(so3.quat_slerp(q[0], q[0], 0.3), q[0], atol=1e-12)


def test_axis_angle_matches_scipy():
    v = np.random.default_rng(6).standard_normal((30, 3))
    v = np.concatenate([v, np.zeros((1, 3))])
    np.testing.assert_allclose(so3.axis_angle_to_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-12)
    R = Rotation.random(30, random_state=7)
    np.testing.assert_allclose(so3.matrix_to_axis_angle(R.as_matrix()), R.as_rotvec(), atol=1e-9)


def test_jit_and_orthonormalise():
    R = so3.random_rotation(jax.random.key(1), 4)
    q = jax.jit(so3.matrix_to_quat)(R)
    np.testing.assert_allclose(so3.quat_to_matrix(q), R, atol=1e-5)
    noisy = np.asarray(R, np.float64) + 1e-3 * np.random.default_rng(0).standard_normal((4, 3, 3))
    Ro = so3.orthonormalise(noisy)
    np.testing.assert_allclose(Ro @ Ro.transpose(0, 2, 1), np.broadcast_to(np.eye(3), Ro.shape), atol=1e-12)
    assert np.abs(Ro - np.asarray(R)).max() < 5e-3


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        so3.quat_to_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"3, 3"):
        so3.matrix_to_quat(np.zeros((2, 4, 4)))
