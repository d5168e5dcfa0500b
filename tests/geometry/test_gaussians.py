"""scene3d.geometry.gaussians against independent references (scipy rotations, explicit loops, quadrature)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import expit

from scene3d.geometry import gaussians as G


def random_gaussians(rng, n=7, degree=0, normals=False, dtype=np.float64):
    k = G.num_rest_coeffs(degree)
    f = lambda *s: rng.normal(size=s).astype(dtype)  # noqa: E731
    return G.Gaussians(xyz=f(n, 3), f_dc=f(n, 3), opacity=f(n), scale=f(n, 3) - 1, rot=f(n, 4),
                       f_rest=f(n, k, 3) if degree else None, normals=f(n, 3) if normals else None)


def random_rotation(seed):
    return Rotation.random(random_state=seed).as_matrix()


def scipy_covariance(scale, rot):
    """Independent: scipy quaternions are scalar-LAST (x y z w)."""
    r = Rotation.from_quat(np.concatenate([rot[:, 1:], rot[:, :1]], -1)).as_matrix()
    return np.einsum("nij,nj,nkj->nik", r, np.exp(2 * scale), r)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_pack_layout_and_roundtrip(degree):
    rng = np.random.default_rng(degree)
    g = random_gaussians(rng, degree=degree, normals=True)
    raw = G.pack(g)
    k = G.num_rest_coeffs(degree)
    assert raw.shape == (7, 14 + 3 * k) == (7, G.num_channels(degree))
    assert G.num_channels(degree) == {0: 14, 1: 23, 2: 38, 3: 59}[degree]
    for i in range(7):  # explicit per-channel layout (Can3Tok order, then INRIA channel-major f_rest)
        expect = [*g.xyz[i], *g.f_dc[i], g.opacity[i], *g.scale[i], *g.rot[i]]
        for c in range(3):
            for j in range(k):
                expect.append(g.f_rest[i, j, c])
        np.testing.assert_array_equal(raw[i], expect)
    back = G.unpack(raw)
    assert back.sh_degree == degree and back.normals is None
    for a, b in zip(back[:6], g[:6]):
        if b is not None:
            np.testing.assert_array_equal(a, b)
    s = G.channel_slices(degree)
    np.testing.assert_array_equal(raw[:, s["rot"]], g.rot)


def test_pack_batched_and_jax():
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    gs = [random_gaussians(rng, degree=2, dtype=np.float32) for _ in range(3)]
    batched = jax.tree.map(lambda *a: jnp.stack(a), *gs)
    raw = jax.jit(G.pack)(batched)
    assert raw.shape == (3, 7, 38)
    for b in range(3):
        np.testing.assert_array_equal(np.asarray(raw[b]), G.pack(gs[b]))
    np.testing.assert_array_equal(np.asarray(G.unpack(raw).f_rest), np.stack([g.f_rest for g in gs]))


def test_unpack_bad_channels():
    with pytest.raises(ValueError, match="channels"):
        G.unpack(np.zeros((4, 15)))
    with pytest.raises(ValueError, match="sh_degree 1 needs 23"):
        G.unpack(np.zeros((4, 14)), sh_degree=1)


def test_validate_names_field():
    g = random_gaussians(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"scene\.rot: expected shape \(7, 4\)"):
        g._replace(rot=np.zeros((7, 3))).validate("scene")
    with pytest.raises(ValueError, match="f_rest"):
        g._replace(f_rest=np.zeros((7, 5, 3))).validate()


def test_activations():
    rng = np.random.default_rng(1)
    g = random_gaussians(rng, n=50)
    np.testing.assert_allclose(G.activate_opacity(g.opacity), expit(g.opacity), rtol=1e-12)
    assert G.activate_opacity(np.array([np.inf, -np.inf])).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(G.activate_scale(g.scale), np.exp(g.scale))
    q = G.normalise_quat(g.rot)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1, rtol=1e-12)
    np.testing.assert_allclose(q * np.linalg.norm(g.rot, axis=-1, keepdims=True), g.rot, rtol=1e-12)
    np.testing.assert_allclose(G.dc_to_rgb(np.zeros(3)), 0.5)
    np.testing.assert_allclose(G.dc_to_rgb(np.ones(3)), 0.5 + 0.28209479177387814)
    np.testing.assert_allclose(G.rgb_to_dc(G.dc_to_rgb(g.f_dc)), g.f_dc, rtol=1e-12)
    np.testing.assert_allclose(G.logit(expit(g.opacity)), g.opacity, rtol=1e-9)


def test_covariance_vs_scipy():
    g = random_gaussians(np.random.default_rng(2), n=20)
    cov = G.covariances(g)
    np.testing.assert_allclose(cov, scipy_covariance(g.scale, g.rot), rtol=1e-10, atol=1e-12)
    ev = np.linalg.eigvalsh(cov)
    np.testing.assert_allclose(ev, np.sort(np.exp(2 * g.scale), -1), rtol=1e-9)


def test_sh_basis_orthonormal():
    # Gauss-Legendre in cos(theta) x uniform phi integrates products of degree <= 6 exactly.
    mu, w = np.polynomial.legendre.leggauss(8)
    phi = np.arange(16) * 2 * np.pi / 16
    ct, ph = np.meshgrid(mu, phi, indexing="ij")
    st = np.sqrt(1 - ct ** 2)
    d = np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3)
    wt = (w[:, None] * np.full(16, 2 * np.pi / 16)).reshape(-1)
    y = G.sh_basis(3, d)
    assert y.shape == (len(d), 16)
    np.testing.assert_allclose(np.einsum("n,ni,nj->ij", wt, y, y), np.eye(16), atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_rotate_gaussians(degree):
    rng = np.random.default_rng(10 + degree)
    g = random_gaussians(rng, n=30, degree=degree, normals=True)
    r, t = random_rotation(degree), rng.normal(size=3)
    h = G.rotate_gaussians(g, r, t)
    np.testing.assert_allclose(h.xyz, g.xyz @ r.T + t, atol=1e-12)
    np.testing.assert_allclose(h.normals, g.normals @ r.T, atol=1e-12)
    # Covariance: R Sigma R^T, with Sigma from scipy's quaternion convention.
    np.testing.assert_allclose(scipy_covariance(h.scale, h.rot), r @ scipy_covariance(g.scale, g.rot) @ r.T,
                               atol=1e-10)
    for field in ("f_dc", "opacity", "scale"):
        np.testing.assert_array_equal(getattr(h, field), getattr(g, field))
    # Quaternion norm is preserved (raw, unnormalised quaternions stay comparable).
    np.testing.assert_allclose(np.linalg.norm(h.rot, axis=-1), np.linalg.norm(g.rot, axis=-1))
    # Colour seen from direction R d after rotation equals colour from d before (every SH band).
    d = rng.normal(size=(30, 3))
    np.testing.assert_allclose(G.sh_color(h, d @ r.T), G.sh_color(g, d), atol=1e-10)
    if degree:
        assert not np.allclose(G.sh_color(g, d @ r.T), G.sh_color(g, d))  # the check has teeth


def test_sh_degree1_closed_form():
    r = random_rotation(3)
    p = np.array([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]])  # Y_1(d) = C1 * (-y, z, -x)
    np.testing.assert_allclose(G.sh_rotation_matrix(1, r), p @ r @ p.T, atol=1e-12)
    for l in (2, 3):  # band matrices are orthogonal
        m = G.sh_rotation_matrix(l, r)
        np.testing.assert_allclose(m @ m.T, np.eye(2 * l + 1), atol=1e-10)


def test_rotation_composition_and_jax():
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(4)
    g = random_gaussians(rng, n=9, degree=3)
    r1, r2 = random_rotation(5), random_rotation(6)
    a = G.rotate_gaussians(G.rotate_gaussians(g, r1), r2)
    b = G.rotate_gaussians(g, r2 @ r1)
    for x, y in zip(a, b):
        if y is not None:
            np.testing.assert_allclose(x, y, atol=1e-10)
    g32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
    c = jax.jit(G.rotate_gaussians)(g32, jnp.asarray(r1, jnp.float32))
    ref = G.rotate_gaussians(g, r1)
    for x, y in zip(c, ref):
        if y is not None:
            np.testing.assert_allclose(np.asarray(x), y, atol=2e-5)


def test_rotate_rejects_non_rotation():
    g = random_gaussians(np.random.default_rng(0))
    with pytest.raises(ValueError, match="proper rotation"):
        G.rotate_gaussians(g, np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        G.rotate_gaussians(g, np.eye(4))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normalise_scene(dtype):
    rng = np.random.default_rng(7)
    g = random_gaussians(rng, n=200, degree=1, dtype=dtype)
    g = g._replace(xyz=(g.xyz * 5 + np.array([10, -3, 2])).astype(dtype))
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, :3, :3] = Rotation.random(3, random_state=1).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(3, 3)) * 20
    radius = 2.0
    h, tf, c2w_n = G.normalise_scene(g, radius=radius, cameras_c2w=c2w)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h.xyz.mean(0), 0, **tol)
    np.testing.assert_allclose(np.linalg.norm(h.xyz, axis=-1).max(), radius / 1.1, **tol)
    s = tf.scale
    # Sizes scale with the scene: exp(log-scale) grows by the same factor as pairwise distances.
    ratio = np.linalg.norm(h.xyz[0] - h.xyz[1]) / np.linalg.norm(g.xyz[0] - g.xyz[1])
    np.testing.assert_allclose(ratio, s, **tol)
    np.testing.assert_allclose(np.exp(h.scale.astype(np.float64)), np.exp(g.scale.astype(np.float64)) * s, **tol)
    for f in ("f_dc", "opacity", "rot", "f_rest"):
        np.testing.assert_array_equal(getattr(h, f), getattr(g, f))
    # Cameras move with the scene: camera-frame coordinates of every point scale by s.
    cam = np.einsum("cij,nj->cni", np.linalg.inv(c2w)[:, :3], np.c_[g.xyz.astype(np.float64), np.ones(200)])
    cam_n = np.einsum("cij,nj->cni", np.linalg.inv(c2w_n)[:, :3], np.c_[h.xyz.astype(np.float64), np.ones(200)])
    np.testing.assert_allclose(cam_n, cam * s, rtol=1e-4, atol=1e-4 * s)
    # Exact inverse.
    back, c2w_b = G.denormalise_scene(h, tf, cameras_c2w=c2w_n)
    np.testing.assert_allclose(back.xyz, g.xyz, **tol)
    np.testing.assert_allclose(back.scale, g.scale, **tol)
    np.testing.assert_allclose(c2w_b, c2w, rtol=1e-12, atol=1e-12)
    assert back.xyz.dtype == dtype and back.scale.dtype == dtype


def test_normalise_degenerate_and_bad():
    g = random_gaussians(np.random.default_rng(0), n=3)
    same = g._replace(xyz=np.ones((3, 3)))
    h, tf = G.normalise_scene(same)
    assert tf.scale == 1.0
    np.testing.assert_array_equal(h.xyz, 0)
    with pytest.raises(ValueError, match="radius"):
        G.normalise_scene(g, radius=0)
    with pytest.raises(ValueError, match=r"cameras_c2w: expected shape \(\.\.\., 4, 4\)"):
        G.normalise_scene(g, cameras_c2w=np.eye(3))
