"""Point-cloud and splat-as-disc preview renderer in numpy (CPU, no jax): for inspection and plots, not training.

Every point is drawn as a screen-space footprint around its projection (u, v) (OpenCV pinhole, normalised
intrinsics, pixel (row i, col j) sampled at its centre (j + 0.5, i + 0.5)). With d the distance from a pixel
centre to (u, v) and r the footprint radius in pixels (`radius`, or `world_radius * sqrt(fx fy) / z`):

- falloff='disc': the point covers the pixel iff d <= max(r, MIN_DISC_RADIUS) (the floor makes every point
  reach the pixel centre nearest to it), with weight 1.
- falloff='gaussian': sigma^2 = r^2 + LOW_PASS (the 3DGS rasteriser's low-pass filter); the point covers the
  pixel iff d <= 3 sigma, with weight exp(-d^2 / (2 sigma^2)).

Both extents are capped at `max_radius` pixels. Points are ordered front to back by (z-depth, index) and
- mode='nearest': each pixel takes the colour and depth of the first point covering it (a z-buffer);
- mode='alpha': per pixel, a_k = min(MAX_ALPHA, opacity_k * weight_k), fragments with a_k < MIN_ALPHA are
  dropped, and C = sum_k c_k a_k prod_{j<k} (1 - a_j) + T background with T = prod_k (1 - a_k).

Points with z <= near or non-finite coordinates are skipped. Work is done in depth-ordered chunks of at most
`max_fragments` candidate (point, pixel) pairs, composited exactly across chunks.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

MIN_DISC_RADIUS = math.sqrt(0.5)
LOW_PASS = 0.3
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0
MODES = ("nearest", "alpha")
FALLOFFS = ("disc", "gaussian")


class PointRender(NamedTuple):
    image: np.ndarray  # (H, W, 3) float32, composited over the background
    depth: np.ndarray  # (H, W) float32 z-depth of the nearest contributing point, inf where none
    alpha: np.ndarray  # (H, W) float32 accumulated opacity 1 - T (nearest mode: 1 where covered)


def _vec(x, n, name):
    a = np.asarray(x, np.float64)
    if a.ndim == 0:
        return np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"render_points {name}: expected a scalar or shape ({n},), got {a.shape}")
    return a


def render_points(xyz, colors, c2w, intrinsics, height: int, width: int, *, radius=1.0, world_radius=None,
                  opacity=None, mode: str = "nearest", falloff: str = "disc", background=0.0, near: float = 1e-6,
                  max_radius: float = 64.0, max_fragments: int = 1 << 21) -> PointRender:
    """Render points (P, 3) with colours (P, 3) from one camera (c2w (4, 4) OpenCV, intrinsics (4,) normalised).

    radius: footprint radius in pixels (scalar or (P,)); world_radius (P,) or scalar, if given, replaces it by
    world_radius * sqrt(fx fy) / z. opacity (P,) in [0, 1] (default 1) is used by mode='alpha'. background: scalar
    or (3,) colour. See the module docstring for the exact definition.
    """
    if mode not in MODES:
        raise ValueError(f"render_points mode: expected one of {MODES}, got {mode!r}")
    if falloff not in FALLOFFS:
        raise ValueError(f"render_points falloff: expected one of {FALLOFFS}, got {falloff!r}")
    H, W = int(height), int(width)
    if H <= 0 or W <= 0:
        raise ValueError(f"render_points: image size must be positive, got {H} x {W}")
    xyz = np.asarray(xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"render_points xyz: expected shape (P, 3), got {xyz.shape}")
    P = xyz.shape[0]
    colors = np.asarray(colors, np.float64)
    if colors.shape != (P, 3):
        raise ValueError(f"render_points colors: expected shape ({P}, 3), got {colors.shape}")
    c2w = np.asarray(c2w, np.float64)
    intr = np.asarray(intrinsics, np.float64)
    if c2w.shape != (4, 4) or intr.shape != (4,):
        raise ValueError(f"render_points: expected c2w (4, 4) and intrinsics (4,), got {c2w.shape}, {intr.shape}")
    bg = np.broadcast_to(np.asarray(background, np.float64), (3,))
    alpha_in = np.ones(P) if opacity is None else np.clip(_vec(opacity, P, "opacity"), 0.0, 1.0)

    fx, fy, cx, cy = intr[0] * W, intr[1] * H, intr[2] * W, intr[3] * H
    cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
    z = cam[:, 2]
    ok = np.isfinite(cam).all(-1) & (z > near)
    zs = np.where(ok, z, 1.0)
    u, v = fx * cam[:, 0] / zs + cx, fy * cam[:, 1] / zs + cy
    if world_radius is not None:
        r = _vec(world_radius, P, "world_radius") * math.sqrt(abs(fx * fy)) / zs
    else:
        r = _vec(radius, P, "radius")
    if falloff == "disc":
        ext = np.minimum(np.maximum(r, MIN_DISC_RADIUS), max_radius)
        sigma = ext
    else:
        sigma = np.minimum(np.sqrt(r * r + LOW_PASS), max_radius / 3.0)
        ext = 3.0 * sigma
    ok &= np.isfinite(u) & np.isfinite(v) & np.isfinite(ext)
    ok &= (u + ext >= 0) & (u - ext <= W) & (v + ext >= 0) & (v - ext <= H)
    if mode == "alpha":
        ok &= alpha_in >= MIN_ALPHA
    idx = np.nonzero(ok)[0]
    idx = idx[np.lexsort((idx, z[idx]))]  # front to back, ties by index

    color_acc = np.zeros((H * W, 3))
    trans = np.ones(H * W)
    depth = np.full(H * W, np.inf)
    filled = np.zeros(H * W, bool)
    box = np.ceil(ext[idx]).astype(np.int64) + 1  # half-size of the candidate pixel box
    cost = np.cumsum((2 * box + 1) ** 2)
    start = 0
    while start < len(idx):
        stop = int(np.searchsorted(cost, cost[start] - (2 * box[start] + 1) ** 2 + max_fragments, side="right"))
        stop = max(stop, start + 1)
        frag = _fragments(idx[start:stop], np.arange(start, stop), box[start:stop], u, v, ext, sigma, falloff, H, W)
        start = stop
        if frag is None:
            continue
        pix, rank, pt, wgt = frag
        order = np.lexsort((rank, pix))
        pix, pt, wgt = pix[order], pt[order], wgt[order]
        if mode == "nearest":
            first = np.unique(pix, return_index=True)[1]
            p, q = pix[first], pt[first]
            new = ~filled[p]
            p, q = p[new], q[new]
            color_acc[p] = colors[q]
            depth[p] = z[q]
            filled[p] = True
            trans[p] = 0.0
            continue
        a = np.minimum(MAX_ALPHA, alpha_in[pt] * wgt)
        keep = a >= MIN_ALPHA
        pix, pt, a = pix[keep], pt[keep], a[keep]
        if not len(pix):
            continue
        log_t = np.log1p(-a)
        excl = np.cumsum(log_t) - log_t  # exclusive prefix sum over the whole (pixel-sorted) array
        seg_start = np.r_[0, np.nonzero(np.diff(pix))[0] + 1]
        seg_id = np.cumsum(np.r_[0, (np.diff(pix) != 0).astype(np.int64)])
        t_in = np.exp(excl - excl[seg_start][seg_id])  # transmittance before each fragment within its pixel
        w = a * t_in
        upix = pix[seg_start]
        contrib = np.stack([np.bincount(seg_id, w * colors[pt, c]) for c in range(3)], -1)
        t_seg = np.exp(np.bincount(seg_id, log_t))
        color_acc[upix] += trans[upix, None] * contrib
        newd = ~filled[upix]
        depth[upix[newd]] = z[pt[seg_start[newd]]]
        filled[upix] = True
        trans[upix] *= t_seg
    image = color_acc + trans[:, None] * bg
    return PointRender(image.reshape(H, W, 3).astype(np.float32), depth.reshape(H, W).astype(np.float32),
                       (1.0 - trans).reshape(H, W).astype(np.float32))


def _fragments(pts, ranks, box, u, v, ext, sigma, falloff, H, W):
    """Candidate (pixel, rank, point, weight) for points `pts` whose pixel box half-sizes are `box`."""
    out = []
    for b in np.unique(box):
        sel = box == b
        p, rk = pts[sel], ranks[sel]
        off = np.arange(-b, b + 1)
        jj = (np.floor(u[p]).astype(np.int64)[:, None, None] + off[None, None, :])
        ii = (np.floor(v[p]).astype(np.int64)[:, None, None] + off[None, :, None])
        jj, ii = np.broadcast_arrays(jj, ii)
        d2 = (jj + 0.5 - u[p][:, None, None]) ** 2 + (ii + 0.5 - v[p][:, None, None]) ** 2
        m = (jj >= 0) & (jj < W) & (ii >= 0) & (ii < H) & (d2 <= (ext[p] ** 2)[:, None, None])
        n, a, c = np.nonzero(m)
        if not len(n):
            continue
        d2 = d2[n, a, c]
        wgt = np.ones_like(d2) if falloff == "disc" else np.exp(-0.5 * d2 / sigma[p[n]] ** 2)
        out.append((ii[n, a, c] * W + jj[n, a, c], rk[n], p[n], wgt))
    if not out:
        return None
    return tuple(np.concatenate(x) for x in zip(*out))


# ------------------------------------------------------------------------------------------- Gaussians


def gaussian_preview_inputs(g):
    """Gaussians -> (xyz, rgb, opacity, world_radius) for `render_points`: colour from the SH DC term (clipped to
    [0, 1]), alpha = sigmoid(opacity logit) (+inf -> 1), radius = geometric mean of the two largest scales."""
    from scene3d.geometry.gaussians import activate_opacity, dc_to_rgb

    xyz = np.asarray(g.xyz, np.float64)
    rgb = np.clip(dc_to_rgb(np.asarray(g.f_dc, np.float64)), 0.0, 1.0)
    alpha = activate_opacity(np.asarray(g.opacity, np.float64))
    s = np.sort(np.asarray(g.scale, np.float64), axis=-1)
    radius = np.exp(0.5 * (s[:, 1] + s[:, 2]))
    return xyz, rgb, alpha, radius


def render_gaussians(g, c2w, intrinsics, height: int, width: int, *, background=1.0,
                     max_radius: float = 48.0, **kwargs) -> PointRender:
    """Preview of 3DGS `Gaussians` as alpha-composited isotropic splats coloured by SH DC (no view dependence,
    no anisotropy): `render_points(..., mode='alpha', falloff='gaussian')`."""
    xyz, rgb, alpha, radius = gaussian_preview_inputs(g)
    return render_points(xyz, rgb, c2w, intrinsics, height, width, world_radius=radius, opacity=alpha,
                         mode="alpha", falloff="gaussian", background=background, max_radius=max_radius, **kwargs)


def orbit_camera(center, radius: float, up, azimuth: float = 0.0, elevation: float = 0.35,
                 fov_y: float = 0.8, aspect: float = 1.0, basis: Optional[tuple] = None):
    """(c2w (4, 4), intrinsics (4,)) of a camera looking at `center` from azimuth/elevation (radians) about `up`,
    far enough that a sphere of `radius` fits the vertical field of view `fov_y` (radians).

    basis: (e1, e2) unit vectors orthogonal to `up` defining azimuth 0 (e1) and pi/2 (e2); derived if None.
    """
    from scene3d.geometry.cameras import look_at

    up = np.asarray(up, np.float64)
    up = up / np.linalg.norm(up)
    if basis is None:
        from scene3d.render.plots import plane_basis
        e1, e2, _ = plane_basis(up)
    else:
        e1, e2 = (np.asarray(b, np.float64) for b in basis)
    half = 0.5 * min(fov_y, 2 * math.atan(aspect * math.tan(fov_y / 2)))
    dist = 1.05 * radius / math.sin(half)
    d = math.cos(elevation) * (math.cos(azimuth) * e1 + math.sin(azimuth) * e2) + math.sin(elevation) * up
    center = np.asarray(center, np.float64)
    c2w = look_at(center + dist * d, center, up)
    fy = 0.5 / math.tan(fov_y / 2)
    return c2w, np.array([fy / aspect, fy, 0.5, 0.5])
