"""Rotations: unit quaternions (w, x, y, z; Hamilton product) and 3x3 matrices.

Every function works on numpy and jax arrays (the namespace follows the inputs, see `array_namespace`) and
broadcasts over leading dimensions. Quaternions returned by `matrix_to_quat` are canonical: w >= 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def array_namespace(*xs):
    """`jax.numpy` if any argument is a jax array (tracers included), else `numpy`."""
    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def _check_last(x, n, name):
    if x.shape[-1:] != (n,):
        raise ValueError(f"{name}: expected shape (..., {n}), got {tuple(x.shape)}")


def _check_mat(x, name):
    if x.shape[-2:] != (3, 3):
        raise ValueError(f"{name}: expected shape (..., 3, 3), got {tuple(x.shape)}")


def random_quat(key_or_rng, n: int):
    """(n, 4) unit quaternions uniform on S^3 (so their rotations are Haar-uniform on SO(3)), w >= 0.

    `key_or_rng`: a jax PRNG key (returns a jax array), or a `numpy.random.Generator` / int seed (numpy).
    """
    if isinstance(key_or_rng, jax.Array):
        q = jax.random.normal(key_or_rng, (n, 4))
        xp = jnp
    else:
        rng = key_or_rng if isinstance(key_or_rng, np.random.Generator) else np.random.default_rng(key_or_rng)
        q = rng.standard_normal((n, 4))
        xp = np
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    return q * xp.where(q[..., :1] < 0, -1.0, 1.0)


def random_rotation(key_or_rng, n: int):
    """(n, 3, 3) rotation matrices, uniform (Haar) on SO(3). Key/rng as in `random_quat`."""
    return quat_to_matrix(random_quat(key_or_rng, n))


def quat_to_matrix(q):
    """(..., 4) quaternions w x y z (normalised here) -> (..., 3, 3) rotation matrices."""
    xp = array_namespace(q)
    _check_last(q, 4, "quat_to_matrix q")
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = (q[..., i] for i in range(4))
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quat(R):
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions w x y z with w >= 0.

    Shepperd's method: of the four algebraically equivalent formulas, use the one with the largest pivot.
    """
    xp = array_namespace(R)
    _check_mat(R, "matrix_to_quat R")
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4*q_i*q_j products for each pivot choice; candidates[k] is proportional to q with pivot k.
    cands = xp.stack([
        xp.stack([1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01], -1),
        xp.stack([r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20], -1),
        xp.stack([r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21], -1),
        xp.stack([r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22], -1),
    ], -2)  # (..., 4, 4)
    pivots = xp.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1)
    best = xp.argmax(pivots, axis=-1)
    q = xp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / xp.linalg.norm(q, axis=-1, keepdims=True)
    return q * xp.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a, b):
    """Hamilton product a * b of (..., 4) w x y z quaternions (rotation b first, then a)."""
    xp = array_namespace(a, b)
    _check_last(a, 4, "quat_multiply a")
    _check_last(b, 4, "quat_multiply b")
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return xp.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def quat_conjugate(q):
    """Inverse of a unit quaternion (w, -x, -y, -z)."""
    xp = array_namespace(q)
    _check_last(q, 4, "quat_conjugate q")
    return q * xp.asarray([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def quat_slerp(q0, q1, t):
    """Spherical linear interpolation along the shorter arc; t broadcasts against q's leading dims (t=0 -> q0)."""
    xp = array_namespace(q0, q1, t)
    _check_last(q0, 4, "quat_slerp q0")
    _check_last(q1, 4, "quat_slerp q1")
    t = xp.asarray(t)[..., None]
    q0 = q0 / xp.linalg.norm(q0, axis=-1, keepdims=True)
    q1 = q1 / xp.linalg.norm(q1, axis=-1, keepdims=True)
    dot = xp.sum(q0 * q1, -1, keepdims=True)
    q1 = xp.where(dot < 0, -q1, q1)
    dot = xp.clip(xp.abs(dot), -1.0, 1.0)
    theta = xp.arccos(dot)
    sin = xp.sin(theta)
    small = sin < 1e-6
    safe = xp.where(small, 1.0, sin)
    w0 = xp.where(small, 1 - t, xp.sin((1 - t) * theta) / safe)
    w1 = xp.where(small, t, xp.sin(t * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / xp.linalg.norm(q, axis=-1, keepdims=True)


def axis_angle_to_matrix(v):
    """(..., 3) rotation vectors (axis * angle in radians) -> (..., 3, 3), Rodrigues' formula."""
    xp = array_namespace(v)
    _check_last(v, 3, "axis_angle_to_matrix v")
    angle = xp.linalg.norm(v, axis=-1, keepdims=True)
    half = angle / 2
    # sin(half)/angle with its limit 1/2 at angle -> 0.
    small = angle < 1e-8
    s = xp.where(small, 0.5 - angle ** 2 / 48, xp.sin(half) / xp.where(small, 1.0, angle))
    return quat_to_matrix(xp.concatenate([xp.cos(half), v * s], -1))


def matrix_to_axis_angle(R):
    """(..., 3, 3) -> (..., 3) rotation vectors with angle in [0, pi]."""
    xp = array_namespace(R)
    q = matrix_to_quat(R)
    vec = q[..., 1:]
    n = xp.linalg.norm(vec, axis=-1, keepdims=True)
    angle = 2 * xp.arctan2(n, q[..., :1])
    small = n < 1e-8
    return vec * xp.where(small, 2.0, angle / xp.where(small, 1.0, n))


def orthonormalise(R):
    """Nearest rotation matrix (in Frobenius norm) to each (..., 3, 3) matrix, via SVD."""
    xp = array_namespace(R)
    _check_mat(R, "orthonormalise R")
    u, _, vt = xp.linalg.svd(R)
    d = xp.sign(xp.linalg.det(u @ vt))
    u = xp.concatenate([u[..., :2], u[..., 2:] * d[..., None, None]], -1)
    return u @ vt
