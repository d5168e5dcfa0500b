"""Gaussian-splat rasteriser against an independent numpy reference (scipy SH and rotations, per-pixel
compositing), on the real fox.ply scene, and its gradients against finite differences."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from scene3d.geometry.cameras import Cameras, look_at
from scene3d.geometry.gaussians import Gaussians
from scene3d.render import splat

H, W = 23, 37  # not multiples of the tile size
INTR = np.array([0.9, 1.1, 0.47, 0.55])  # off-centre principal point, non-square pixels


# ----------------------------------------------------------------------------------------- numpy reference


def _sh_basis_ref(degree, d):
    """Real SH with the Condon-Shortley phase (the 3DGS basis), from scipy's complex Y_l^m, order m = -l..l."""
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
    cols = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            y = sph_harm_y(l, abs(m), theta, phi)
            cols.append(y.real if m == 0 else math.sqrt(2) * (y.real if m > 0 else y.imag))
    return np.stack(cols, -1)


def _reference_prep(g, c2w, intr, h, w, sh_degree, near=0.01):
    """Per-Gaussian screen quantities in float64, following the splat module docstring."""
    xyz = np.asarray(g.xyz, np.float64)
    w2c = np.linalg.inv(np.asarray(c2w, np.float64))
    t = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    fx, fy, cx, cy = intr[0] * w, intr[1] * h, intr[2] * w, intr[3] * h
    valid = t[:, 2] > near
    z = np.where(valid, t[:, 2], 1.0)
    u, v = fx * t[:, 0] / z + cx, fy * t[:, 1] / z + cy
    lim_x = (-cx / fx - 0.15 * w / fx, (w - cx) / fx + 0.15 * w / fx)
    lim_y = (-cy / fy - 0.15 * h / fy, (h - cy) / fy + 0.15 * h / fy)
    tx, ty = np.clip(t[:, 0] / z, *lim_x) * z, np.clip(t[:, 1] / z, *lim_y) * z
    R = Rotation.from_quat(np.asarray(g.rot, np.float64)[:, [1, 2, 3, 0]]).as_matrix()
    S = np.exp(np.asarray(g.scale, np.float64))
    cov3 = np.einsum("nij,nj,nkj->nik", R, S ** 2, R)
    zero = np.zeros_like(z)
    J = np.stack([np.stack([fx / z, zero, -fx * tx / z ** 2], -1), np.stack([zero, fy / z, -fy * ty / z ** 2], -1)], 1)
    M = J @ w2c[:3, :3]  # (N, 2, 3)
    cov2 = M @ cov3 @ np.swapaxes(M, 1, 2) + 0.3 * np.eye(2)
    means, conics = np.stack([u, v], -1), np.linalg.inv(cov2)
    radii = 3 * np.sqrt(np.linalg.eigvalsh(cov2)[:, -1])
    d = xyz - np.linalg.inv(w2c)[:3, 3]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    coeffs = np.asarray(g.f_dc, np.float64)[:, None]
    if sh_degree:
        coeffs = np.concatenate([coeffs, np.asarray(g.f_rest, np.float64)[:, :(sh_degree + 1) ** 2 - 1]], 1)
    rgb = np.maximum(0.5 + np.einsum("nk,nkc->nc", _sh_basis_ref(sh_degree, d), coeffs), 0.0)
    with np.errstate(over="ignore"):
        op = 1 / (1 + np.exp(-np.asarray(g.opacity, np.float64)))
    order = [k for k in np.argsort(t[:, 2], kind="stable") if valid[k]]
    return dict(mean=means[order], conic=conics[order], r=radii[order], rgb=rgb[order], op=op[order],
                z=t[order, 2])


def _reference_pixels(prep, pixels, bg):
    """Front-to-back compositing at pixel centres (P, 2) (x, y): rgb (P, 3), alpha (P,), depth (P,)."""
    out_rgb, out_a, out_d = [], [], []
    for p in pixels:
        d = p - prep["mean"]
        a = np.minimum(0.99, prep["op"] * np.exp(-0.5 * np.einsum("ni,nij,nj->n", d, prep["conic"], d)))
        a = np.where((np.abs(d).max(-1) <= prep["r"]) & (a >= 1 / 255), a, 0.0)
        T = np.concatenate([[1.0], np.cumprod(1 - a)])
        wgt = a * T[:-1]
        alpha = 1 - T[-1]
        out_rgb.append(wgt @ prep["rgb"] + T[-1] * bg)
        out_a.append(alpha)
        out_d.append(wgt @ prep["z"] / alpha if alpha > 0 else 0.0)
    return np.array(out_rgb), np.array(out_a), np.array(out_d)


def _reference_image(g, c2w, intr, h, w, sh_degree, bg):
    prep = _reference_prep(g, c2w, intr, h, w, sh_degree)
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    pix = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], -1)
    rgb, a, d = _reference_pixels(prep, pix, np.broadcast_to(bg, (3,)))
    return rgb.reshape(h, w, 3), a.reshape(h, w), d.reshape(h, w)


# ------------------------------------------------------------------------------------------------ scenes


def _scene(seed, n=14, degree=3):
    """Random Gaussians in front of a random camera, plus awkward ones: behind the camera, inside the near
    plane, off-screen but large (Jacobian clamp), opacity +inf. Returns (Gaussians float32, c2w)."""
    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=seed).as_matrix()
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, rng.normal(size=3)
    zc = rng.uniform(1.0, 4.0, n)
    cam = np.stack([rng.uniform(-0.55, 0.55, n) * zc, rng.uniform(-0.5, 0.5, n) * zc, zc], -1)
    cam[0] = [0.1, 0.0, -1.0]  # behind
    cam[1] = [0.0, 0.0, 0.005]  # inside the near plane
    cam[2] = [3.2, 0.1, 2.0]  # off-screen to the right, x/z beyond the clamp
    scale = rng.uniform(-3.0, -1.2, (n, 3))
    scale[2] = [0.0, -0.5, -0.5]
    opacity = rng.normal(0.5, 1.5, n)
    opacity[3] = np.inf
    g = Gaussians(xyz=cam @ R.T + c2w[:3, 3], f_dc=rng.normal(0, 1, (n, 3)), opacity=opacity, scale=scale,
                  rot=rng.normal(size=(n, 4)), f_rest=rng.normal(0, 0.4, (n, 15, 3)) if degree else None)
    return Gaussians(*(None if a is None else np.asarray(a, np.float32) for a in g)), c2w


def _truncate(g, degree):
    return g._replace(f_rest=None if degree == 0 else g.f_rest[:, :(degree + 1) ** 2 - 1])


def _assert_matches(out, ref, atol=1e-4):
    rgb, alpha, depth = ref
    np.testing.assert_allclose(np.asarray(out["rgb"]), rgb, atol=atol, rtol=0)
    np.testing.assert_allclose(np.asarray(out["alpha"]), alpha, atol=atol, rtol=0)
    m = alpha > 1e-2
    np.testing.assert_allclose(np.asarray(out["depth"])[m], depth[m], rtol=1e-4, atol=1e-4)
    assert int(out["dropped"]) == 0


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("degree", [0, 1, 3])  # degree 2: test_lower_sh_degree_and_small_blocks
def test_matches_reference(degree):
    g, c2w = _scene(degree)
    g = _truncate(g, degree)
    bg = np.array([0.2, 0.5, 0.9])
    out = splat.render(g, c2w, INTR, H, W, background=bg)
    ref = _reference_image(g, c2w, INTR, H, W, degree, bg)
    assert 0.1 < ref[1].mean() and (ref[1] < 1e-6).any()  # non-trivial coverage, some background
    _assert_matches(out, ref)


def test_lower_sh_degree_and_small_blocks():
    """Degree-3 Gaussians rendered at degree 2 with tiny tiles / chunks / steps: tiles span several chunks and
    items span several scan steps."""
    g, c2w = _scene(7)
    blocks = splat.BlockSizes(tile_size=4, chunk_size=3, items_per_step=5)
    out = splat.render(g, c2w, INTR, H, W, background=1.0, sh_degree=2, blocks=blocks)
    _assert_matches(out, _reference_image(g, c2w, INTR, H, W, 2, np.ones(3)))


def test_pair_capacity_overflow_is_counted():
    g, c2w = _scene(11, degree=0)
    s = 4
    blocks = splat.BlockSizes(tile_size=s, max_pairs_per_gaussian=0.5)
    prep = _reference_prep(g, c2w, INTR, H, W, 0)
    xs = [np.arange(tx * s, min((tx + 1) * s, W)) + 0.5 for tx in range(-(-W // s))]
    ys = [np.arange(ty * s, min((ty + 1) * s, H)) + 0.5 for ty in range(-(-H // s))]
    pairs = sum(bool((np.abs(x - u) <= r).any() and (np.abs(y - v) <= r).any())
                for (u, v), r in zip(prep["mean"], prep["r"]) for x in xs for y in ys)
    cap = math.ceil(0.5 * g.num_gaussians)
    assert pairs > cap
    out = splat.render(g, c2w, INTR, H, W, blocks=blocks)
    assert int(out["dropped"]) == pairs - cap
    assert np.isfinite(np.asarray(out["rgb"])).all()
    full = splat.render_checked(g, c2w, INTR, H, W, blocks=blocks)
    assert int(full["dropped"]) == 0


def test_jit_vmap_and_empty_scene():
    g, c2w = _scene(3, degree=0)
    c2ws = jnp.stack([jnp.asarray(c2w, jnp.float32)] * 2)
    c2ws = c2ws.at[1, :3, 3].add(0.1)
    f = jax.jit(jax.vmap(lambda c: splat.render(g, c, INTR, H, W)["rgb"]))
    batched = np.asarray(f(c2ws))
    for i in range(2):
        np.testing.assert_allclose(batched[i], np.asarray(splat.render(g, c2ws[i], INTR, H, W)["rgb"]), atol=1e-5)
    empty = splat.render(g.take(np.arange(0)), c2w, INTR, H, W, background=(0.1, 0.2, 0.3))
    np.testing.assert_allclose(np.asarray(empty["rgb"]), np.broadcast_to([0.1, 0.2, 0.3], (H, W, 3)), atol=1e-7)
    assert float(jnp.abs(empty["alpha"]).max()) == 0.0


def test_bad_inputs():
    g, c2w = _scene(1)
    g = _truncate(g, 1)
    with pytest.raises(ValueError, match="c2w"):
        splat.render(g, c2w[:3], INTR, H, W)
    with pytest.raises(ValueError, match="intrinsics"):
        splat.render(g, c2w, INTR[:3], H, W)
    with pytest.raises(ValueError, match="sh_degree=2"):
        splat.render(g, c2w, INTR, H, W, sh_degree=2)
    with pytest.raises(ValueError, match="unbatched"):
        splat.render(Gaussians(*(None if a is None else a[None] for a in g)), c2w, INTR, H, W)
    with pytest.raises(ValueError, match="opacity"):
        splat.render(g._replace(opacity=g.opacity[:-1]), c2w, INTR, H, W)
    with pytest.raises(ValueError, match="background"):
        splat.render(g, c2w, INTR, H, W, background=np.zeros(4))


def _loss(weights):
    wr, wa, wd = weights

    def f(params, c2w):
        out = splat.render(Gaussians(**params), c2w, INTR, H, W, background=0.3)
        return jnp.sum(out["rgb"] * wr) + jnp.sum(out["alpha"] * wa) + jnp.sum(out["depth"] * wd)
    return f


def test_gradients_match_finite_differences():
    """float64 directional derivatives per parameter group (random directions) vs central differences; the scene
    holds culled, saturated (+inf logit) and camera-centred Gaussians, which must not poison gradients with NaN."""
    g, c2w = _scene(5)
    g = _truncate(g, 2)
    xyz = g.xyz.astype(np.float64)
    xyz[4] = c2w[:3, 3]  # exactly at the camera centre
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = {k: jnp.asarray(getattr(g, k), jnp.float64) for k in ("f_dc", "opacity", "scale", "rot", "f_rest")}
        params["xyz"] = jnp.asarray(xyz)
        weights = [jnp.asarray(rng.normal(size=s)) for s in ((H, W, 3), (H, W), (H, W))]
        value_and_grad = jax.jit(jax.value_and_grad(_loss(weights)))  # one compile for values and gradients
        c2w = jnp.asarray(c2w)
        _, grads = value_and_grad(params, c2w)
        for k, v in grads.items():
            assert np.isfinite(np.asarray(v)).all(), k
        eps = 1e-6
        for k, p in params.items():
            direction = rng.normal(size=p.shape)
            if k == "opacity":
                direction[3] = 0.0  # +inf logit: no finite difference
            direction = jnp.asarray(direction)
            ad = float(jnp.sum(grads[k] * direction))
            fd = float(value_and_grad({**params, k: p + eps * direction}, c2w)[0]
                       - value_and_grad({**params, k: p - eps * direction}, c2w)[0]) / (2 * eps)
            assert abs(ad) > 1e-3, k
            assert abs(ad - fd) <= 1e-5 * abs(ad) + 1e-6, (k, ad, fd)


def test_render_side_by_side():
    g, c2w = _scene(3, degree=0)
    g2 = g._replace(f_dc=-g.f_dc)
    cams = Cameras(np.stack([c2w, c2w]), np.stack([INTR, INTR]), H, W)
    img = splat.render_side_by_side(g, g2, cams, gap=3)
    assert img.dtype == np.uint8 and img.shape == (2 * H + 3, 2 * W + 3, 3)
    left = splat.to_uint8(splat.render(g, c2w, INTR, H, W, background=1.0)["rgb"])
    right = splat.to_uint8(splat.render(g2, c2w, INTR, H, W, background=1.0)["rgb"])
    np.testing.assert_array_equal(img[:H, :W], left)
    np.testing.assert_array_equal(img[:H, W + 3:], right)
    np.testing.assert_array_equal(img[H + 3:, :W], left)
    assert (img[H:H + 3] == 255).all() and not np.array_equal(left, right)


# ------------------------------------------------------------------------------------------ real scene


@pytest.fixture(scope="module")
def fox(shared_dir):
    path = shared_dir / "data" / "fox_3dgs" / "fox.ply"
    if not path.exists():
        pytest.skip(f"{path} not found")
    from scene3d.data.splat_io import read_ply  # test-only: render itself must not import data
    return read_ply(path)


def test_fox_real_scene(fox, tmp_path):
    """fox.ply (50k Gaussians, 37 opacity logits +inf) from a camera looking at the statue: a centred, opaque
    object on an empty background, and exact against the reference at sampled pixels."""
    hw = 256
    center = np.median(fox.xyz.astype(np.float64), 0)
    c2w = look_at(center + 3.6 * np.array([0.9, 0.0, 0.44]), center, (0.0, 0.0, 1.0))
    intr = np.array([1.07, 1.07, 0.5, 0.5])
    out = splat.render(fox, c2w, intr, hw, hw, background=1.0)
    rgb, alpha, depth = (np.asarray(out[k]) for k in ("rgb", "alpha", "depth"))
    assert int(out["dropped"]) == 0
    assert np.isfinite(rgb).all() and 0.1 < alpha.mean() < 0.5
    c = hw // 2
    assert alpha[c - 4:c + 4, c - 4:c + 4].min() > 0.95  # the pedestal / statue at the centre
    for corner in (alpha[:16, :16], alpha[:16, -16:]):  # sky corners are empty
        assert corner.max() < 0.02
    assert 2.0 < depth[c, c] < 4.0
    assert rgb[c - 4:c + 4, c - 4:c + 4].mean() < 0.9  # not the white background
    from PIL import Image
    Image.fromarray(splat.to_uint8(rgb)).save(tmp_path / "fox.png")
    # exact at sampled pixels against the float64 reference over all 50k Gaussians
    rng = np.random.default_rng(0)
    ij = np.concatenate([rng.integers(0, hw, (24, 2)), [[c, c], [c + 40, c - 10], [200, c]]])
    prep = _reference_prep(fox, c2w, intr, hw, hw, 0)
    ref_rgb, ref_a, ref_d = _reference_pixels(prep, ij[:, ::-1] + 0.5, np.ones(3))
    np.testing.assert_allclose(rgb[ij[:, 0], ij[:, 1]], ref_rgb, atol=1e-4, rtol=0)
    np.testing.assert_allclose(alpha[ij[:, 0], ij[:, 1]], ref_a, atol=1e-4, rtol=0)
