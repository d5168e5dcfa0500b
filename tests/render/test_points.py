"""Point / disc / splat preview renderer against an independent per-pixel loop, plus the plot helpers."""
import math

import numpy as np
import pytest
from PIL import Image

from scene3d.geometry.cameras import look_at, project
from scene3d.geometry.gaussians import Gaussians
from scene3d.render import plots
from scene3d.render.points import (LOW_PASS, MAX_ALPHA, MIN_ALPHA, MIN_DISC_RADIUS, orbit_camera, render_gaussians,
                                   render_points)


def _reference(xyz, colors, c2w, intr, H, W, radius, world_radius, opacity, mode, falloff, bg, max_radius):
    """Per pixel, per point loop following the module docstring (independent projection via the inverse matrix)."""
    w2c = np.linalg.inv(c2w)
    fx, fy, cx, cy = intr[0] * W, intr[1] * H, intr[2] * W, intr[3] * H
    P = len(xyz)
    cam = [w2c[:3, :3] @ p + w2c[:3, 3] for p in xyz]
    z = np.array([c[2] for c in cam])
    order = sorted([k for k in range(P) if z[k] > 1e-6], key=lambda k: (z[k], k))
    img, depth, acc = np.zeros((H, W, 3)), np.full((H, W), np.inf), np.zeros((H, W))
    for i in range(H):
        for j in range(W):
            T, C, d0 = 1.0, np.zeros(3), np.inf
            for k in order:
                u, v = fx * cam[k][0] / z[k] + cx, fy * cam[k][1] / z[k] + cy
                r = world_radius[k] * math.sqrt(fx * fy) / z[k] if world_radius is not None else radius[k]
                d2 = (j + 0.5 - u) ** 2 + (i + 0.5 - v) ** 2
                if falloff == "disc":
                    e = min(max(r, MIN_DISC_RADIUS), max_radius)
                    covered, w = d2 <= e * e, 1.0
                else:
                    s = min(math.sqrt(r * r + LOW_PASS), max_radius / 3)
                    covered, w = d2 <= 9 * s * s, math.exp(-0.5 * d2 / (s * s))
                if not covered:
                    continue
                if mode == "nearest":
                    C, T, d0 = colors[k].copy(), 0.0, z[k]
                    break
                a = min(MAX_ALPHA, opacity[k] * w)
                if a < MIN_ALPHA:
                    continue
                if d0 == np.inf:
                    d0 = z[k]
                C += T * a * colors[k]
                T *= 1 - a
            img[i, j], depth[i, j], acc[i, j] = C + T * bg, d0, 1 - T
    return img, depth, acc


def _scene(seed, P, H, W):
    rng = np.random.default_rng(seed)
    c2w = look_at(np.array([0.3, -2.5, 0.8]), np.zeros(3), (0.0, 0.0, 1.0))
    intr = np.array([0.9, 0.9 * W / H, 0.47, 0.55])
    xyz = rng.normal(size=(P, 3)) * 0.6
    xyz[:3] = [[0.3, -3.0, 0.8], [0.3, -2.5, 0.8], [5, 5, 5]]  # behind, at the camera, far off-screen
    xyz[5] = xyz[4] + [0.0, 0.0, 0.0]  # an exact depth tie: the lower index wins
    colors = rng.uniform(size=(P, 3))
    return xyz, colors, c2w, intr, rng


@pytest.mark.parametrize("mode,falloff,use_world,max_fragments", [
    ("nearest", "disc", False, 1 << 20), ("nearest", "disc", True, 60), ("alpha", "gaussian", True, 1 << 20),
    ("alpha", "gaussian", False, 37), ("alpha", "disc", False, 1 << 20), ("nearest", "gaussian", True, 1 << 20)])
def test_render_points_vs_per_pixel_loop(mode, falloff, use_world, max_fragments):
    H, W, P = 11, 14, 24
    xyz, colors, c2w, intr, rng = _scene(7, P, H, W)
    radius = rng.uniform(0.2, 3.5, P)
    world = rng.uniform(0.05, 0.6, P) if use_world else None
    opacity = rng.uniform(0.0, 1.0, P)
    opacity[6] = 1.0  # saturated: clipped at MAX_ALPHA
    bg = np.array([0.2, 0.4, 0.9])
    out = render_points(xyz, colors, c2w, intr, H, W, radius=radius, world_radius=world, opacity=opacity, mode=mode,
                        falloff=falloff, background=bg, max_radius=5.0, max_fragments=max_fragments)
    img, depth, acc = _reference(xyz, colors, c2w, intr, H, W, radius, world, opacity, mode, falloff, bg, 5.0)
    assert out.image.shape == (H, W, 3) and out.depth.shape == (H, W) and out.alpha.shape == (H, W)
    np.testing.assert_allclose(out.image, img, atol=2e-6)
    np.testing.assert_allclose(out.alpha, acc, atol=2e-6)
    np.testing.assert_array_equal(np.isinf(out.depth), np.isinf(depth))
    np.testing.assert_allclose(out.depth[np.isfinite(depth)], depth[np.isfinite(depth)], rtol=1e-6)
    assert (acc > 0).mean() > 0.3  # the case is not trivially empty


def test_occlusion_and_single_splat_closed_form():
    H = W = 32
    c2w = np.eye(4)
    intr = np.array([1.0, 1.0, 0.5, 0.5])
    xyz = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]])  # near red in front of far green, both on the axis
    cols = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    near = render_points(xyz, cols, c2w, intr, H, W, radius=np.array([3.0, 8.0]))
    np.testing.assert_allclose(near.image[16, 16], [1, 0, 0])
    np.testing.assert_allclose(near.image[16, 16 + 6], [0, 1, 0])  # outside the red disc, inside the green one
    assert near.depth[16, 16] == 2.0 and near.depth[16, 22] == 4.0 and near.alpha[0, 0] == 0
    # one isotropic Gaussian: colour = 0.5 + C0 f_dc, alpha = sigmoid(logit), sigma_px^2 = (s f / z)^2 + LOW_PASS
    s, z, logit = 0.1, 2.0, 0.7
    g = Gaussians(xyz=np.array([[0.0, 0.0, z]]), f_dc=np.array([[1.0, -0.5, 0.2]]), opacity=np.array([logit]),
                  scale=np.log(np.full((1, 3), s)), rot=np.array([[1.0, 0, 0, 0]]))
    out = render_gaussians(g, c2w, intr, H, W, background=0.0)
    rgb = 0.5 + 0.28209479177387814 * np.array([1.0, -0.5, 0.2])
    a = 1 / (1 + math.exp(-logit))
    sig2 = (s * W / z) ** 2 + LOW_PASS
    for (i, j) in [(15, 15), (15, 18), (12, 16)]:
        d2 = (j + 0.5 - 16) ** 2 + (i + 0.5 - 16) ** 2
        np.testing.assert_allclose(out.image[i, j], rgb * a * math.exp(-0.5 * d2 / sig2), rtol=1e-5)
    assert out.alpha[0, 0] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"colors: expected shape \(2, 3\)"):
        render_points(np.zeros((2, 3)), np.zeros((3, 3)), np.eye(4), np.ones(4), 4, 4)
    with pytest.raises(ValueError, match="mode"):
        render_points(np.zeros((2, 3)), np.zeros((2, 3)), np.eye(4), np.ones(4), 4, 4, mode="max")
    with pytest.raises(ValueError, match="radius"):
        render_points(np.zeros((2, 3)), np.zeros((2, 3)), np.eye(4), np.ones(4), 4, 4, radius=np.ones(3))


def test_orbit_camera_frames_the_sphere():
    center, radius, up = np.array([1.0, -2.0, 0.5]), 0.7, np.array([0.0, 0.0, 1.0])
    for az in (0.0, 1.0, 2.5):
        c2w, intr = orbit_camera(center, radius, up, azimuth=az, elevation=0.3, fov_y=0.8, aspect=1.5)
        uv, z = project(center[None], c2w, intr, 100, 150)
        np.testing.assert_allclose(uv[0], [75, 50], atol=1e-9)
        sphere = center + radius * np.concatenate([np.eye(3), -np.eye(3)])
        uv, z = project(sphere, c2w, intr, 100, 150)
        assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] <= 150).all() and (uv[:, 1] <= 100).all()
        assert -c2w[:3, 1] @ up > 0  # image up points to world up


def test_plane_basis_and_frustum_corners():
    for up in ([0, 0, 1], [0, 1, 0], [0, -1, 0], [0.3, -0.9, 0.2]):
        e1, e2, n = plots.plane_basis(up)
        B = np.stack([e1, e2, n])
        np.testing.assert_allclose(B @ B.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(B) > 0  # right-handed: looking down -n, e1 right and e2 up
    e1, e2, _ = plots.plane_basis([0, 0, 1])
    np.testing.assert_allclose([e1, e2], [[1, 0, 0], [0, 1, 0]])
    e1, e2, _ = plots.plane_basis([0, 1, 0])
    np.testing.assert_allclose([e1, e2], [[1, 0, 0], [0, 0, -1]])
    c2w = look_at(np.array([[0.0, -3.0, 1.0], [2.0, 0.0, 0.5]]), np.zeros((2, 3)))
    intr = np.array([[0.8, 1.1, 0.45, 0.5], [1.0, 1.0, 0.5, 0.6]])
    corners = plots.frustum_corners(c2w, intr, 0.7)
    uv, z = project(corners, c2w, intr, 60, 80)
    np.testing.assert_allclose(z, 0.7)
    np.testing.assert_allclose(uv, np.broadcast_to([[0, 0], [80, 0], [80, 60], [0, 60]], (2, 4, 2)), atol=1e-9)


def test_topdown_plot_places_cameras_and_points():
    # cameras on a circle looking at the origin, a red point cloud around the origin: up = +z -> x right, y up.
    th = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    eyes = np.stack([3 * np.cos(th), 3 * np.sin(th), np.full(8, 1.0)], -1)
    c2w = look_at(eyes, np.zeros((8, 3)))
    pts = np.random.default_rng(0).normal(size=(500, 3)) * 0.3
    img = plots.topdown_plot(c2w, np.broadcast_to([0.8, 0.8, 0.5, 0.5], (8, 4)), pts,
                             np.tile([[1.0, 0.0, 0.0]], (500, 1)), up=plots.up_from_cameras(c2w)[0], size=400,
                             title="t")
    a = np.asarray(img).astype(int)
    assert img.size == (400, 400)
    red = (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)
    ys, xs = np.nonzero(red)
    assert red.sum() > 100
    # the cloud sits in the middle, the camera at +x (index 0) is to its right
    cx, cy = xs.mean(), ys.mean()
    assert abs(cx - 200) < 25
    first = np.all(np.abs(a - np.array(plots.ramp(8)[0], int)) < 3, -1)
    fy, fx = np.nonzero(first)
    assert len(fx) and fx.mean() > cx + 80 and abs(fy.mean() - cy) < 30


def test_contact_sheet_and_compose():
    ims = [np.full((20, 30, 3), k * 30, np.uint8) for k in range(5)]
    sheet = plots.contact_sheet(ims, [f"v{k}" for k in range(5)], cols=3, cell=60, title="views")
    assert isinstance(sheet, Image.Image) and sheet.size[0] == 3 * 66 + 6
    fig = plots.compose([sheet, Image.new("RGB", (50, 80), (0, 0, 0))], title="x", footer=["a: 1", "bb: 2"])
    assert fig.size[0] >= sheet.size[0] + 50 and fig.size[1] > max(sheet.size[1], 80)
    with pytest.raises(ValueError):
        plots.contact_sheet([])


def test_sample_points_renderer_gives_one_frame_per_camera():
    """scene3d.sample.render_views(renderer='points'): (views, H, W, 3) uint8, each frame = render_gaussians."""
    from scene3d import sample
    from scene3d.geometry.trajectories import orbit_cameras
    g = Gaussians(xyz=np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.1]]), f_dc=np.array([[1.0, -0.5, 0.2], [0, 1.0, 0]]),
                  opacity=np.array([2.0, 2.0]), scale=np.log(np.full((2, 3), 0.2)), rot=np.tile([1.0, 0, 0, 0], (2, 1)))
    cams = orbit_cameras(3, 16)
    frames = sample.render_views(g, cams, renderer="points", background=1.0)
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == np.uint8
    for i in range(3):
        ref = render_gaussians(g, cams.c2w[i], cams.intrinsics[i], 16, 16, background=1.0).image
        np.testing.assert_array_equal(frames[i], plots.to_uint8(ref))
    assert len({frames[i].tobytes() for i in range(3)}) == 3  # the orbit really moves
