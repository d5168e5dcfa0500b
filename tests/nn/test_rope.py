"""RoPE: closed-form rotation vs numpy complex numbers, and the relative-position property (1D, 2D, 3D)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d import nn
from scene3d.nn import grid_positions_2d, grid_positions_3d, make_rope
from tests.nn.np_ref import rope_1d as np_rope

D = 8
apply_rope_1d = jax.jit(nn.apply_rope_1d, static_argnames=("theta", "interleaved"))
apply_rope_nd = jax.jit(nn.apply_rope_nd, static_argnums=(2, 3))


def vec(seed, n=1):
    return np.random.default_rng(seed).standard_normal((1, n, 1, D)).astype(np.float32)


@pytest.mark.parametrize("interleaved", [False, True])
def test_1d_matches_complex_rotation(interleaved):
    x = np.random.default_rng(0).standard_normal((2, 5, 3, D)).astype(np.float32)
    pos = np.array([0, 1, 4, 9, 100])
    y = apply_rope_1d(jnp.asarray(x), jnp.asarray(pos), theta=100.0, interleaved=interleaved)
    np.testing.assert_allclose(y, np_rope(x, pos, 100.0, interleaved), atol=1e-4, rtol=1e-5)
    yb = apply_rope_1d(jnp.asarray(x), jnp.asarray(np.stack([pos, pos])), theta=100.0, interleaved=interleaved)
    np.testing.assert_allclose(yb, y, atol=1e-6)  # (B, L) positions


def dot_at(q, k, pq, pk, fn):
    qr = fn(jnp.asarray(q), pq)
    kr = fn(jnp.asarray(k), pk)
    return float(jnp.sum(qr * kr))


def test_1d_relative_position():
    q, k = vec(1), vec(2)
    f = lambda x, p: apply_rope_1d(x, jnp.asarray([p]))  # noqa: E731
    d0 = dot_at(q, k, 3, 1, f)
    assert d0 == pytest.approx(dot_at(q, k, 10, 8, f), abs=1e-4)
    assert d0 == pytest.approx(dot_at(q, k, 52, 50, f), abs=1e-4)
    assert abs(d0 - dot_at(q, k, 3, 2, f)) > 1e-3
    assert dot_at(q, k, 0, 0, f) == pytest.approx(float(np.sum(q * k)), abs=1e-5)


@pytest.mark.parametrize("n_axes,split", [(2, None), (2, (2, 6)), (3, None), (3, (4, 2, 2))])
def test_axial_relative_position(n_axes, split):
    d = 12 if (n_axes == 3 and split is None) else D
    r = np.random.default_rng(3)
    q = r.standard_normal((1, 1, 1, d)).astype(np.float32)
    k = r.standard_normal((1, 1, 1, d)).astype(np.float32)
    f = lambda x, p: apply_rope_nd(x, jnp.asarray([p], jnp.float32), 10000.0, split)  # noqa: E731
    pa, pb = np.array([3, 1, 7][:n_axes]), np.array([1, 4, 2][:n_axes])
    shift = np.array([5, -2, 11][:n_axes])
    base = dot_at(q, k, pa, pb, f)
    assert base == pytest.approx(dot_at(q, k, pa + shift, pb + shift, f), abs=1e-4)
    for axis in range(n_axes):  # each axis matters on its own
        e = np.eye(n_axes, dtype=int)[axis]
        assert abs(base - dot_at(q, k, pa + e, pb, f)) > 1e-4
    sp = split or (d // n_axes,) * n_axes  # each chunk is 1D RoPE of its own position axis
    x = r.standard_normal((1, 4, 2, d)).astype(np.float32)
    pos = r.integers(0, 20, (4, n_axes))
    y = np.asarray(apply_rope_nd(jnp.asarray(x), jnp.asarray(pos), 10000.0, split))
    start = 0
    for axis, s in enumerate(sp):
        np.testing.assert_allclose(y[..., start:start + s], np_rope(x[..., start:start + s], pos[:, axis]),
                                   atol=1e-4)
        start += s


def test_grid_positions_and_make_rope():
    np.testing.assert_array_equal(grid_positions_2d(2, 3), np.stack(np.indices((2, 3)).reshape(2, -1), -1))
    np.testing.assert_array_equal(grid_positions_3d(2, 2, 3), np.stack(np.indices((2, 2, 3)).reshape(3, -1), -1))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 6, 2, D)), jnp.float32)
    pos = grid_positions_2d(2, 3)
    np.testing.assert_allclose(jax.jit(make_rope(pos, axial=True))(x), apply_rope_nd(x, pos), atol=1e-6)
    np.testing.assert_allclose(jax.jit(make_rope(jnp.arange(6)))(x), apply_rope_1d(x, jnp.arange(6)), atol=1e-6)
    with pytest.raises(ValueError, match="axial"):
        make_rope(pos)


def test_bad_inputs():
    x = jnp.zeros((1, 4, 2, D))
    with pytest.raises(ValueError, match="split"):
        nn.apply_rope_nd(x, jnp.zeros((4, 3)))  # 8 not divisible into 3 even parts
    with pytest.raises(ValueError, match="split"):
        nn.apply_rope_nd(x, jnp.zeros((4, 2)), split=(4, 2))
    with pytest.raises(ValueError, match="positions"):
        nn.apply_rope_1d(x, jnp.zeros((5,)))
