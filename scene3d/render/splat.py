"""Differentiable 3D Gaussian Splatting rasteriser in JAX (EWA splatting as in Kerbl et al. 2023).

Per Gaussian (camera: OpenCV c2w, normalised intrinsics; pixel (row i, col j) is sampled at its centre
(j + 0.5, i + 0.5), see `geometry.cameras`):

- t = world_to_camera(xyz); Gaussians with z-depth t_z <= `near` or non-finite parameters are culled.
- mean2D = project(xyz); Sigma2D = J W Sigma W^T J^T + 0.3 I (the 3DGS low-pass dilation), with Sigma =
  R diag(exp(2 scale)) R^T, W the world-to-camera rotation and J the pinhole Jacobian at t, whose t_x / t_z and
  t_y / t_z are clamped to the image extent widened by 15% of its size on each side (the 3DGS `1.3 tan(fov/2)`
  for a centred principal point).
- colour = max(0, 0.5 + sum_lm c_lm Y_lm(d)), d = xyz - camera centre (`geometry.gaussians.sh_color`).
- extent r = 3 sqrt(lambda_max(Sigma2D)): the Gaussian touches the pixels whose centre p has |p - mean2D|_inf <= r.

Per pixel, touching Gaussians in front-to-back order (z-depth, then index) give alpha_i = min(0.99, sigmoid(
opacity_i) exp(-0.5 d^T Sigma2D^-1 d)), fragments with alpha_i < 1/255 are skipped, and with T_i = prod_{j<i}
(1 - alpha_j): rgb = sum_i T_i alpha_i c_i + T background, alpha = 1 - T, depth = sum_i T_i alpha_i z_i / alpha
(0 where alpha = 0). There is no early termination at small T (3DGS stops at T < 1e-4), so the result is the
exact composite of all fragments.

Implementation (tile-based, as the CUDA reference, but load-balanced for XLA): the image is cut into
`tile_size`^2 tiles; every (tile, Gaussian) overlap of the box above becomes a pair, and pairs are sorted by
(tile, depth rank), so each tile holds a front-to-back list. The lists are cut into work items of `chunk_size`
Gaussians; a `lax.scan` computes `items_per_step` items at a time (an item's pixels x its Gaussians, with the
item's own colour/depth composite and transmittance; steps past the last item are skipped by `lax.cond`, the
step is rematerialised under autodiff), and a sequential scan over items chains each tile's items in order
(C = C_1 + T_1 C_2 + T_1 T_2 C_3 ...). Work is proportional to the number of pairs, not to the busiest tile.

The only approximation is the static pair capacity `ceil(max_pairs_per_gaussian * N)`: pairs are numbered front
to back, so overflow drops the farthest Gaussians' overlaps; the output `dropped` counts the (tile, Gaussian)
overlaps not composited, and the render is exact iff it is 0. `render_checked` (eager) retries with a larger
capacity.

Memory: besides the pairs, the per-item partials take about 20 bytes x tile_size^2 x (pair capacity / chunk_size
+ number of tiles), i.e. ~640 bytes per Gaussian at the defaults (32 MB for 50k).

Measured on fox.ply (50k Gaussians, 256 x 256, 2 shared CPU cores, default BlockSizes): ~0.1-0.3 s per render
after a ~5 s compile; about 2 pairs per Gaussian.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from scene3d.geometry import cameras
from scene3d.geometry.gaussians import (Gaussians, activate_opacity, covariance, num_rest_coeffs, sh_color)

LOW_PASS = 0.3
MAX_ALPHA = 0.99
MIN_ALPHA = 1.0 / 255.0
EXTENT_SIGMAS = 3.0
JACOBIAN_MARGIN = 0.15  # fraction of the image size the Jacobian's clamp extends beyond each image border
log = logging.getLogger(__name__)

_TILE_EPS = 1e-3  # pixels added to the extent for tile culling only (conservative against round-off)
# per-Gaussian feature columns (see `preprocess`)
_U, _V, _CA, _CB, _CC, _OP, _R, _RGB, _Z = 0, 1, 2, 3, 4, 5, 6, slice(7, 10), 10


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static sizes of the tiled rasteriser (see module docstring)."""
    tile_size: int = 8
    chunk_size: int = 32
    items_per_step: int = 128
    max_pairs_per_gaussian: float = 16.0

    def __post_init__(self):
        for f in ("tile_size", "chunk_size", "items_per_step"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"BlockSizes.{f}: expected a positive int, got {v!r}")
        if not self.max_pairs_per_gaussian > 0:
            raise ValueError(f"BlockSizes.max_pairs_per_gaussian: expected > 0, got {self.max_pairs_per_gaussian}")


def _as_float(x, name, shape_tail):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if tuple(x.shape) != tuple(shape_tail):
        raise ValueError(f"render {name}: expected shape {tuple(shape_tail)}, got {tuple(x.shape)}")
    return x


def _check_gaussians(g: Gaussians, sh_degree: Optional[int]) -> Gaussians:
    if not isinstance(g, Gaussians):
        raise ValueError(f"render gaussians: expected a scene3d.geometry.gaussians.Gaussians, got {type(g).__name__}")
    g = Gaussians(*(None if a is None else jnp.asarray(a) for a in g))
    g.validate("render gaussians")
    if g.xyz.ndim != 2:
        raise ValueError(f"render gaussians.xyz: expected an unbatched scene (N, 3) (vmap for batches), got "
                         f"{tuple(g.xyz.shape)}")
    if sh_degree is None:
        sh_degree = g.sh_degree
    num_rest_coeffs(sh_degree)
    if sh_degree > g.sh_degree:
        raise ValueError(f"render sh_degree={sh_degree} but the Gaussians only have degree {g.sh_degree} "
                         f"(f_rest shape {None if g.f_rest is None else tuple(g.f_rest.shape)})")
    k = num_rest_coeffs(sh_degree)
    dtype = jnp.result_type(g.xyz.dtype, jnp.float32)
    f_rest = None if k == 0 else g.f_rest[:, :k].astype(dtype)
    return Gaussians(xyz=g.xyz.astype(dtype), f_dc=g.f_dc.astype(dtype), opacity=g.opacity.astype(dtype),
                     scale=g.scale.astype(dtype), rot=g.rot.astype(dtype), f_rest=f_rest)


def render(gaussians: Gaussians, c2w, intrinsics, height: int, width: int, *, background=0.0,
           sh_degree: Optional[int] = None, near: float = 0.01, blocks: BlockSizes = BlockSizes()) -> dict:
    """Render one unbatched scene from one camera.

    gaussians: raw parameters (N, ...) (`geometry.gaussians.Gaussians`); c2w (4, 4) OpenCV camera-to-world;
    intrinsics (4,) normalised (fx/W, fy/H, cx/W, cy/H); height, width: static ints; background: scalar or (3,)
    RGB; sh_degree: SH degree to use (<= the Gaussians'; None = all); near: cull z-depth <= near.
    Returns dict(rgb (H, W, 3), alpha (H, W), depth (H, W), dropped () int32 (see module docstring)).
    Differentiable w.r.t. every float input; usable under jit, grad and vmap (under vmap the skipped steps are
    computed as well).
    """
    if not isinstance(blocks, BlockSizes):
        raise ValueError(f"render blocks: expected a BlockSizes, got {type(blocks).__name__}")
    for n, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"render {n}: expected a positive static int, got {v!r}")
    g = _check_gaussians(gaussians, sh_degree)
    dtype = g.xyz.dtype
    c2w = _as_float(c2w, "c2w", (4, 4)).astype(dtype)
    intrinsics = _as_float(intrinsics, "intrinsics", (4,)).astype(dtype)
    bg = jnp.asarray(background, dtype)
    if bg.shape not in ((), (3,)):
        raise ValueError(f"render background: expected a scalar or shape (3,), got {tuple(bg.shape)}")
    bg = jnp.broadcast_to(bg, (3,))
    near = jnp.asarray(near, dtype)
    if g.num_gaussians == 0:
        return {"rgb": jnp.broadcast_to(bg, (height, width, 3)), "alpha": jnp.zeros((height, width), dtype),
                "depth": jnp.zeros((height, width), dtype), "dropped": jnp.zeros((), jnp.int32)}
    return _render(g, c2w, intrinsics, bg, near, int(height), int(width), blocks)


def render_checked(gaussians: Gaussians, c2w, intrinsics, height: int, width: int, *, max_retries: int = 2,
                   **kwargs) -> dict:
    """`render` outside jit that re-renders with a pair capacity grown to a power of two per Gaussian that fits
    all overlaps whenever some were dropped (`dropped` counts exactly the missing pairs); logs a warning if
    overlaps are still dropped after `max_retries`. Same arguments and output as `render`."""
    blocks = kwargs.pop("blocks", BlockSizes())
    n = max(1, int(np.shape(gaussians.xyz)[0]))
    for attempt in range(max_retries + 1):
        out = render(gaussians, c2w, intrinsics, height, width, blocks=blocks, **kwargs)
        dropped = int(out["dropped"])
        if dropped == 0:
            return out
        if attempt < max_retries:
            need = (math.ceil(blocks.max_pairs_per_gaussian * n) + dropped) / n
            factor = max(2.0 * blocks.max_pairs_per_gaussian, 2.0 ** math.ceil(math.log2(need)))
            blocks = dataclasses.replace(blocks, max_pairs_per_gaussian=factor)
    log.warning("render: %d tile overlaps dropped even with max_pairs_per_gaussian=%g", dropped,
                blocks.max_pairs_per_gaussian)
    return out


@functools.partial(jax.jit, static_argnums=(5, 6, 7))
def _render(g, c2w, intrinsics, bg, near, height, width, blocks):
    feats, valid = preprocess(g, c2w, intrinsics, height, width, near)
    return rasterize(feats, valid, bg, height, width, blocks)


def preprocess(g: Gaussians, c2w, intrinsics, height: int, width: int, near):
    """Per-Gaussian screen-space features (N, 11): u v | conic (a b c of Sigma2D^-1) | alpha | r | rgb | z,
    and a validity mask (N,) (in front of `near`, finite)."""
    dtype = g.xyz.dtype
    t = cameras.world_to_camera(g.xyz, c2w)  # (N, 3)
    z = t[:, 2]
    finite = jnp.all(jnp.isfinite(t), -1) & jnp.all(jnp.isfinite(g.scale), -1) & jnp.all(jnp.isfinite(g.rot), -1)
    valid = finite & (z > near)
    zs = jnp.where(valid, z, 1.0)  # safe depth: culled Gaussians never produce inf / nan (nor nan gradients)
    fx, fy = intrinsics[0] * width, intrinsics[1] * height
    cx, cy = intrinsics[2] * width, intrinsics[3] * height
    xz, yz = t[:, 0] / zs, t[:, 1] / zs
    u, v = fx * xz + cx, fy * yz + cy
    mx, my = JACOBIAN_MARGIN * width / fx, JACOBIAN_MARGIN * height / fy
    xzc = jnp.clip(xz, -cx / fx - mx, (width - cx) / fx + mx)
    yzc = jnp.clip(yz, -cy / fy - my, (height - cy) / fy + my)
    zero = jnp.zeros_like(zs)
    J = jnp.stack([jnp.stack([fx / zs, zero, -fx * xzc / zs], -1),
                   jnp.stack([zero, fy / zs, -fy * yzc / zs], -1)], -2)  # (N, 2, 3)
    M = J @ c2w[:3, :3].T  # J W
    scale = jnp.where(valid[:, None], g.scale, 0.0)
    rot = jnp.where(valid[:, None], g.rot, jnp.asarray([1.0, 0.0, 0.0, 0.0], dtype))
    cov2d = M @ covariance(scale, rot) @ jnp.swapaxes(M, -1, -2)
    a, b, c = cov2d[:, 0, 0] + LOW_PASS, cov2d[:, 0, 1], cov2d[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    conic = jnp.stack([c, -b, a], -1) / det[:, None]
    mid = 0.5 * (a + c)
    lam = jax.lax.stop_gradient(mid + jnp.sqrt(jnp.maximum(mid * mid - det, 0.0)))
    r = EXTENT_SIGMAS * jnp.sqrt(lam)
    dirs = g.xyz - c2w[:3, 3]
    dirs = jnp.where(valid[:, None], dirs, jnp.asarray([0.0, 0.0, 1.0], dtype))  # safe normalisation
    rgb = jnp.maximum(sh_color(g, dirs), 0.0)
    alpha = activate_opacity(g.opacity)
    valid = valid & (det > 0) & jnp.isfinite(alpha) & jnp.all(jnp.isfinite(rgb), -1)
    feats = jnp.concatenate([u[:, None], v[:, None], conic, alpha[:, None], r[:, None], rgb, z[:, None]], -1)
    return jnp.where(valid[:, None], feats, 0.0), valid


def _count_le(sorted_ints, length: int):
    """`searchsorted(sorted_ints, arange(length), side='right')` for non-negative ints, by a histogram and a
    cumulative sum (cheaper to compile and run on CPU than a binary search)."""
    return jnp.cumsum(jnp.zeros(length, jnp.int32).at[sorted_ints].add(1, mode="drop"))


def _tile_pairs(feats, valid, height, width, blocks):
    """Depth-sort Gaussians, duplicate them per overlapped tile, sort pairs by tile.

    Returns (sorted feats (N, F), pair Gaussian indices sorted by tile (P,), tile start (T,), tile count (T,),
    pairs dropped by the capacity P)."""
    n = feats.shape[0]
    s = blocks.tile_size
    ty_n, tx_n = -(-height // s), -(-width // s)
    n_tiles = ty_n * tx_n
    order = jnp.argsort(jnp.where(valid, feats[:, _Z], jnp.inf), stable=True)
    feats, valid = feats[order], valid[order]
    u, v, r = feats[:, _U], feats[:, _V], feats[:, _R] + _TILE_EPS

    def span(m, size, nt):  # tiles [lo, hi] whose pixel centres come within r of m along one axis
        lo = jnp.ceil((m - r + 0.5) / s - 1.0)
        hi = jnp.floor((m + r - 0.5) / s)
        lo = jnp.clip(lo, 0, nt).astype(jnp.int32)
        hi = jnp.clip(hi, -1, nt - 1).astype(jnp.int32)
        inside = (m - r <= size - 0.5) & (m + r >= 0.5)
        return lo, jnp.where(inside, jnp.maximum(hi - lo + 1, 0), 0)

    tx0, nx = span(u, width, tx_n)
    ty0, ny = span(v, height, ty_n)
    count = jnp.where(valid, nx * ny, 0)
    incl = jnp.cumsum(count)
    total = incl[-1]
    cap = max(1, int(math.ceil(blocks.max_pairs_per_gaussian * n)))
    p = jnp.arange(cap, dtype=jnp.int32)
    gi = jnp.minimum(_count_le(incl, cap), n - 1)  # slot -> Gaussian
    local = p - (incl[gi] - count[gi])
    nxg = jnp.maximum(nx[gi], 1)
    tile = (ty0[gi] + local // nxg) * tx_n + tx0[gi] + local % nxg
    tile = jnp.where(p < total, tile, n_tiles)  # unused slots sort last
    if (n_tiles + 1) * n < 2 ** 31:  # one packed int32 key (tile, depth rank): 4x faster to sort
        key = jnp.sort(tile * n + gi)
        tile, gi = key // n, key % n
    else:  # slots are in depth order, so a stable sort by tile keeps each tile's list front to back
        tile, gi = jax.lax.sort((tile, gi), num_keys=1, is_stable=True)
    cnt = jnp.zeros(n_tiles, jnp.int32).at[tile].add(1, mode="drop")  # unused slots (tile = n_tiles) dropped
    start = jnp.cumsum(cnt) - cnt
    dropped_cap = jnp.maximum(total - cap, 0)
    return feats, gi, start, cnt, dropped_cap


def rasterize(feats, valid, bg, height: int, width: int, blocks: BlockSizes = BlockSizes()) -> dict:
    """Composite preprocessed Gaussians (`preprocess`) into an H x W image (see module docstring)."""
    s, C = blocks.tile_size, blocks.chunk_size
    ty_n, tx_n = -(-height // s), -(-width // s)
    n_tiles, npix = ty_n * tx_n, s * s
    dtype = feats.dtype
    feats, pair_g, start, cnt, dropped = _tile_pairs(feats, valid, height, width, blocks)

    # work items: (tile, chunk of C consecutive Gaussians of its depth-ordered list), ordered by tile then chunk
    m = -(-cnt // C)
    m_incl = jnp.cumsum(m)
    n_items = m_incl[-1]
    cap = -(-pair_g.shape[0] // C) + n_tiles  # >= sum_t ceil(cnt_t / C) for any cnt with sum <= #pairs
    B = max(1, min(blocks.items_per_step, cap))
    n_steps = -(-cap // B)
    j = jnp.arange(n_steps * B, dtype=jnp.int32)
    item_tile = _count_le(m_incl, n_steps * B)  # n_tiles past the last item
    t_safe = jnp.minimum(item_tile, n_tiles - 1)
    item_chunk = j - (m_incl[t_safe] - m[t_safe])
    item_ok = j < n_items

    # pixel centres per tile: (T, s*s)
    jj, ii = jnp.meshgrid(jnp.arange(s, dtype=dtype), jnp.arange(s, dtype=dtype), indexing="xy")
    px = ((jnp.arange(tx_n, dtype=dtype) * s)[None, :, None, None] + jj + 0.5)
    py = ((jnp.arange(ty_n, dtype=dtype) * s)[:, None, None, None] + ii + 0.5)
    px = jnp.broadcast_to(px, (ty_n, tx_n, s, s)).reshape(n_tiles, npix)
    py = jnp.broadcast_to(py, (ty_n, tx_n, s, s)).reshape(n_tiles, npix)

    def composite(step):
        sl = jax.lax.dynamic_slice_in_dim
        t, c, ok = (sl(x, step * B, B) for x in (t_safe, item_chunk, item_ok))
        pos = c[:, None] * C + jnp.arange(C, dtype=jnp.int32)  # (B, C) rank within the tile's list
        ok = ok[:, None] & (pos < cnt[t][:, None])
        idx = pair_g[jnp.clip(start[t][:, None] + pos, 0, pair_g.shape[0] - 1)]
        f = feats[idx][:, None]  # (B, 1, C, F)
        dx = px[t][:, :, None] - f[..., _U]  # (B, P, C)
        dy = py[t][:, :, None] - f[..., _V]
        power = -0.5 * (f[..., _CA] * dx * dx + f[..., _CC] * dy * dy) - f[..., _CB] * dx * dy
        a = jnp.minimum(MAX_ALPHA, f[..., _OP] * jnp.exp(jnp.minimum(power, 0.0)))
        r = f[..., _R]
        hit = ok[:, None, :] & (jnp.abs(dx) <= r) & (jnp.abs(dy) <= r) & (power <= 0) & (a >= MIN_ALPHA)
        a = jnp.where(hit, a, 0.0)
        log_t = jnp.log1p(-a)  # a <= 0.99: finite; prefix sums of logs differentiate faster than cumprod
        cum = jnp.cumsum(log_t, axis=2)
        excl = jnp.exp(cum - log_t)  # transmittance in front of each Gaussian within the item
        acc = jnp.einsum("bpc,bcf->bpf", a * excl, f[:, 0, :, _RGB.start:])  # (B, P, 4): rgb, z
        return acc, jnp.exp(cum[..., -1])

    def chain(t_run, inp):  # t_run: transmittance in front of this item if it continues the previous tile
        acc, t_item, first = inp
        before = jnp.where(first, 1.0, t_run)
        after = before * t_item
        return after, jnp.concatenate([before[:, None] * acc, after[:, None]], -1)

    def step_fn(t_run, step):
        acc, t_item = composite(step)
        first = jax.lax.dynamic_slice_in_dim(item_chunk, step * B, B) == 0
        return jax.lax.scan(chain, t_run, (acc, t_item, first))

    def skip(t_run, step):
        return t_run, jnp.concatenate([jnp.zeros((B, npix, 4), dtype), jnp.ones((B, npix, 1), dtype)], -1)

    def body(t_run, step):
        return jax.lax.cond(step * B < n_items, jax.checkpoint(step_fn), skip, t_run, step)

    _, items = jax.lax.scan(body, jnp.ones((npix,), dtype), jnp.arange(n_steps, dtype=jnp.int32))
    items = items.reshape(n_steps * B, npix, 5)  # per item: (T in front) x (its rgb, z composite) | T after it
    acc = jax.ops.segment_sum(items[..., :4], item_tile, num_segments=n_tiles)
    last = jnp.clip(m_incl - 1, 0, items.shape[0] - 1)
    trans = jnp.where((m > 0)[:, None], items[last, :, 4], 1.0)  # (T, P)

    def to_image(x):  # (T, s*s, ...) -> (H, W, ...)
        x = x.reshape((ty_n, tx_n, s, s) + x.shape[2:])
        x = jnp.swapaxes(x, 1, 2).reshape((ty_n * s, tx_n * s) + x.shape[4:])
        return x[:height, :width]

    acc, trans = to_image(acc), to_image(trans)
    alpha = 1.0 - trans
    rgb = acc[..., :3] + trans[..., None] * bg
    covered = alpha > 0
    depth = jnp.where(covered, acc[..., 3] / jnp.where(covered, alpha, 1.0), 0.0)
    return {"rgb": rgb, "alpha": alpha, "depth": depth, "dropped": dropped.astype(jnp.int32)}


def to_uint8(rgb) -> np.ndarray:
    """Float RGB in [0, 1] (any shape) -> uint8 numpy, clipped and rounded."""
    return np.clip(np.rint(np.asarray(rgb, np.float32) * 255.0), 0, 255).astype(np.uint8)


def render_side_by_side(g_in: Gaussians, g_rec: Gaussians, cams: cameras.Cameras, *, height: Optional[int] = None,
                        width: Optional[int] = None, background=1.0, sh_degree: Optional[int] = None,
                        gap: int = 4, blocks: BlockSizes = BlockSizes()) -> np.ndarray:
    """Evaluation figure: one row per camera, [input | reconstruction] renders; uint8 (n*H + (n-1)*gap,
    2*W + gap, 3) with `background`-coloured gaps. Image size from the arguments or `cams.height/width`."""
    if not isinstance(cams, cameras.Cameras):
        raise ValueError(f"render_side_by_side cameras: expected a geometry.cameras.Cameras, got "
                         f"{type(cams).__name__}")
    h, w = height or cams.height, width or cams.width
    if h is None or w is None:
        raise ValueError("render_side_by_side: image size unknown; pass height and width or set Cameras.height/width")
    bg = np.broadcast_to(np.asarray(background, np.float32), (3,))
    rows = []
    for i in range(len(cams)):
        pair = [to_uint8(render_checked(g, cams.c2w[i], cams.intrinsics[i], h, w, background=bg, sh_degree=sh_degree,
                                blocks=blocks)["rgb"]) for g in (g_in, g_rec)]
        sep = np.broadcast_to(to_uint8(bg), (h, gap, 3))
        rows.append(np.concatenate([pair[0], sep, pair[1]], 1))
    out = []
    for i, row in enumerate(rows):
        if i:
            out.append(np.broadcast_to(to_uint8(bg), (gap, row.shape[1], 3)))
        out.append(row)
    return np.ascontiguousarray(np.concatenate(out, 0))
