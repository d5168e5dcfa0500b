"""Preview figures drawn with PIL (no matplotlib): top-down camera / point plots, contact sheets, figure layout.

The top-down plot looks along -up at the plane orthogonal to `up` (usually the mean camera up vector): camera
centres with their frustums (pyramid edges to the image corners at a fixed depth) and viewing direction,
coloured from dark blue (first view) to yellow (last), and points drawn highest-first so the top surface shows.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (250, 250, 250)
PANEL = (236, 237, 240)
INK = (30, 30, 30)
_AXES = ("x", "y", "z")
# A short perceptual ramp (viridis anchors) for "first view -> last view".
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


@functools.lru_cache(maxsize=None)
def font(size: int = 13, mono: bool = False):
    """DejaVu (Sans or Sans Mono) at `size` if installed, else PIL's built-in font."""
    names = ("DejaVuSansMono.ttf",) if mono else ("DejaVuSans.ttf",)
    for n in names:
        try:
            return ImageFont.truetype(n, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def ramp(n: int) -> np.ndarray:
    """(n, 3) uint8 colours from dark blue to yellow."""
    t = np.linspace(0, 1, max(n, 1)) * (len(_RAMP) - 1)
    i = np.minimum(np.floor(t).astype(int), len(_RAMP) - 2)
    f = (t - i)[:, None]
    return np.rint(_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)[:n]


def text_size(draw: ImageDraw.ImageDraw, text: str, fnt) -> tuple:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=fnt)
    return x1 - x0, y1 - y0


# ------------------------------------------------------------------------------------------------ geometry


def plane_basis(up) -> tuple:
    """(e1, e2, n) orthonormal with n = up / |up| and e2 = n x e1, so a viewer above the plane looking along -n sees
    e1 to the right and e2 upwards. e1 is the first of the world x, y, z axes with |cos| < 0.75 to n, projected onto
    the plane: z up gives an x-y map, y up an x-(-z) map."""
    n = np.asarray(up, np.float64)
    norm = np.linalg.norm(n)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"plane_basis: up must be a non-zero finite 3-vector, got {up!r}")
    n = n / norm
    a = next(e for e in np.eye(3) if abs(e @ n) < 0.75)  # prefer x, then y, as the plot's right axis
    e1 = a - n * (a @ n)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1), n


def up_from_cameras(c2w) -> tuple:
    """Mean camera 'up' (-y of OpenCV c2w), normalised, and its agreement |mean of unit ups| in [0, 1]."""
    ups = -np.asarray(c2w, np.float64)[..., :3, 1]
    ups = ups / np.linalg.norm(ups, axis=-1, keepdims=True)
    m = ups.mean(0)
    agree = float(np.linalg.norm(m))
    return (m / agree if agree > 0 else np.array([0.0, 0.0, 1.0])), agree


def axis_name(e, tol: float = 1e-3) -> str:
    """'+x', '-z', ... if `e` is a world axis (within tol), else the rounded vector."""
    e = np.asarray(e, np.float64)
    k = int(np.argmax(np.abs(e)))
    if abs(abs(e[k]) - 1) < tol:
        return ("+" if e[k] > 0 else "-") + _AXES[k]
    return "(" + ", ".join(f"{c:.2f}" for c in e) + ")"


def nice_length(x: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above x (for scale bars)."""
    if not x > 0:
        return 1.0
    k = math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * 10 ** k <= x:
            return m * 10 ** k
    return 10 ** k


def frustum_corners(c2w, intrinsics, depth: float) -> np.ndarray:
    """(N, 4, 3) world positions of the image corners at z-depth `depth` (pinhole, normalised intrinsics)."""
    c2w, k = np.asarray(c2w, np.float64), np.asarray(intrinsics, np.float64)
    cu = np.array([0.0, 1.0, 1.0, 0.0])
    cv = np.array([0.0, 0.0, 1.0, 1.0])
    x = (cu[None] - k[:, 2:3]) / k[:, 0:1]
    y = (cv[None] - k[:, 3:4]) / k[:, 1:2]
    cam = np.stack([x, y, np.ones_like(x)], -1) * depth  # (N, 4, 3)
    return np.einsum("nij,nkj->nki", c2w[:, :3, :3], cam) + c2w[:, None, :3, 3]


# ------------------------------------------------------------------------------------------------ top-down


def topdown_plot(c2w=None, intrinsics=None, points=None, point_colors=None, up=(0.0, 0.0, 1.0), size: int = 560,
                 title: str = "", max_points: int = 80000, frustum_frac: float = 0.07,
                 seed: int = 0) -> Image.Image:
    """Top-down view (looking along -up) of cameras and points as a square RGB image of side `size`.

    c2w (N, 4, 4) OpenCV and intrinsics (N, 4) normalised (None: default 60 deg frusta); points (P, 3) with
    point_colors (P, 3) uint8 or float in [0, 1] (None: shaded by height). The view fits all camera centres
    and the 1-99 percentile box of the points. Non-finite cameras / points are skipped.
    """
    e1, e2, n = plane_basis(up)
    img = Image.new("RGB", (size, size), PANEL)
    draw = ImageDraw.Draw(img)
    f_title, f_small = font(14), font(11)
    top = 24 if title else 6
    margin, bottom = 14, 34
    pts2 = h = cols = None
    if points is not None and len(points):
        points = np.asarray(points, np.float64)
        good = np.isfinite(points).all(-1)
        if point_colors is not None:
            point_colors = np.asarray(point_colors)
            if point_colors.dtype != np.uint8:
                point_colors = np.rint(np.clip(point_colors, 0, 1) * 255).astype(np.uint8)
            point_colors = point_colors[good]
        points = points[good]
        if len(points) > max_points:
            sel = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
            points = points[sel]
            point_colors = None if point_colors is None else point_colors[sel]
        pts2 = np.stack([points @ e1, points @ e2], -1)
        h = points @ n
        cols = point_colors
    cams = None
    if c2w is not None and len(c2w):
        c2w = np.asarray(c2w, np.float64)
        if intrinsics is None:
            intrinsics = np.broadcast_to([0.866, 0.866, 0.5, 0.5], (len(c2w), 4))
        intrinsics = np.asarray(intrinsics, np.float64)
        good = np.isfinite(c2w).all((-1, -2)) & np.isfinite(intrinsics).all(-1)
        cams = (c2w[good], intrinsics[good], np.nonzero(good)[0], len(c2w))
    # view box
    boxes = []
    if pts2 is not None and len(pts2):
        boxes += [np.percentile(pts2, 1, axis=0), np.percentile(pts2, 99, axis=0)]
    if cams is not None and len(cams[0]):
        cc = cams[0][:, :3, 3]
        c2 = np.stack([cc @ e1, cc @ e2], -1)
        boxes += [c2.min(0), c2.max(0)]
    if boxes:
        lo, hi = np.min(boxes, 0), np.max(boxes, 0)
    else:
        lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
    if cams is not None and len(cams[0]):  # make room for the frusta (drawn at a depth relative to the span)
        k = frustum_corners(cams[0], cams[1], frustum_frac * span).reshape(-1, 3)
        k2 = np.stack([k @ e1, k @ e2], -1)
        lo, hi = np.minimum(lo, k2.min(0)), np.maximum(hi, k2.max(0))
        span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-6))
    mid = (lo + hi) / 2
    avail = min(size - 2 * margin, size - top - bottom)
    scale = avail / (span * 1.12)
    cx0, cy0 = size / 2, top + (size - top - bottom) / 2

    def to_px(q):  # (..., 2) plane coordinates -> (..., 2) pixel (x right, y down)
        q = np.asarray(q, np.float64)
        return np.stack([cx0 + (q[..., 0] - mid[0]) * scale, cy0 - (q[..., 1] - mid[1]) * scale], -1)

    if pts2 is not None and len(pts2):
        arr = np.asarray(img).copy()
        px = np.floor(to_px(pts2)).astype(np.int64)
        if cols is None:
            t = (h - np.percentile(h, 2)) / max(np.percentile(h, 98) - np.percentile(h, 2), 1e-9)
            t = np.clip(t, 0, 1)[:, None]
            cols = np.rint((1 - t) * np.array([150, 155, 165]) + t * np.array([40, 45, 60])).astype(np.uint8)
        dot = 2 if len(pts2) <= 100000 else 1
        offs = [(dx, dy) for dy in range(dot) for dx in range(dot)]
        x = np.concatenate([px[:, 0] + dx for dx, _ in offs])
        y = np.concatenate([px[:, 1] + dy for _, dy in offs])
        src = np.tile(np.arange(len(px)), len(offs))
        ok = (x >= 0) & (x < size) & (y >= top) & (y < size - bottom + 8)
        x, y, src = x[ok], y[ok], src[ok]
        order = np.argsort(-h[src], kind="stable")  # highest point wins each pixel
        x, y, src = x[order], y[order], src[order]
        _, first = np.unique(y * size + x, return_index=True)
        arr[y[first], x[first]] = cols[src[first]]
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
    if cams is not None and len(cams[0]):
        c2w_g, intr_g, ids, total = cams
        depth = frustum_frac * span
        corners = frustum_corners(c2w_g, intr_g, depth)
        cen = c2w_g[:, :3, 3]
        colours = ramp(total)[ids]
        cpx = to_px(np.stack([cen @ e1, cen @ e2], -1))
        kpx = to_px(np.stack([corners @ e1, corners @ e2], -1))
        fwd = c2w_g[:, :3, 2]
        fwd_px = to_px(np.stack([(cen + 1.6 * depth * fwd) @ e1, (cen + 1.6 * depth * fwd) @ e2], -1))
        if len(cpx) > 1:  # trajectory line in view order
            draw.line([tuple(p) for p in cpx], fill=(160, 160, 170), width=1)
        for i in range(len(cpx)):
            col = tuple(int(c) for c in colours[i])
            c, k = tuple(cpx[i]), [tuple(p) for p in kpx[i]]
            for p in k:
                draw.line([c, p], fill=col, width=1)
            draw.line(k + [k[0]], fill=col, width=1)
            draw.line([c, tuple(fwd_px[i])], fill=(200, 40, 40), width=1)
        for i in range(len(cpx)):
            col = tuple(int(c) for c in colours[i])
            x, y = cpx[i]
            r = 4 if ids[i] == 0 else 2.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col, outline=INK if ids[i] == 0 else None)
        x, y = cpx[0]
        draw.text((x + 6, y - 6), "0", fill=INK, font=f_small)
    # title, axes, scale bar
    if title:
        draw.rectangle([0, 0, size, top - 2], fill=BACKGROUND)
        draw.text((6, 4), title, fill=INK, font=f_title)
    draw.rectangle([0, size - bottom + 8, size, size], fill=BACKGROUND)
    ox, oy = 12, size - 8
    draw.line([(ox, oy - 4), (ox + 30, oy - 4)], fill=INK, width=2)
    draw.line([(ox, oy - 4), (ox, oy - 34)], fill=INK, width=2)
    draw.text((ox + 33, oy - 12), axis_name(e1), fill=INK, font=f_small)
    draw.text((ox + 4, oy - 40), axis_name(e2), fill=INK, font=f_small)
    bar = nice_length(0.25 * span * 1.12)
    blen = bar * scale
    bx = size - 14 - blen
    draw.line([(bx, oy - 4), (bx + blen, oy - 4)], fill=INK, width=2)
    draw.text((bx, oy - 18), f"{bar:g}", fill=INK, font=f_small)
    draw.text((ox + 80, oy - 16), f"up {axis_name(n)}", fill=INK, font=f_small)
    return img


# --------------------------------------------------------------------------------------------- contact sheet


def to_uint8(img) -> np.ndarray:
    """(H, W), (H, W, 3|4) uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(np.nan_to_num(a.astype(np.float64)), 0, 1) * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"to_uint8: expected (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return np.ascontiguousarray(a[..., :3])


def contact_sheet(images: Sequence, labels: Optional[Sequence[str]] = None, cols: Optional[int] = None,
                  cell: int = 180, title: str = "", max_width: int = 760) -> Image.Image:
    """Grid of thumbnails (each fitted into a cell x cell box, aspect kept) with an optional label under each."""
    if not len(images):
        raise ValueError("contact_sheet: no images")
    n = len(images)
    if cols is None:
        cols = max(1, min(n, max_width // (cell + 6), math.ceil(math.sqrt(n * 1.4))))
    rows = math.ceil(n / cols)
    f_small, f_title = font(11), font(14)
    lab_h = 15 if labels else 0
    top = 24 if title else 6
    pad = 6
    W = cols * (cell + pad) + pad
    Hh = top + rows * (cell + lab_h + pad) + pad
    sheet = Image.new("RGB", (W, Hh), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((6, 4), title, fill=INK, font=f_title)
    for k, im in enumerate(images):
        thumb = Image.fromarray(to_uint8(im)) if not isinstance(im, Image.Image) else im.convert("RGB")
        thumb = thumb.copy()
        thumb.thumbnail((cell, cell), Image.BILINEAR) if max(thumb.size) > cell else None
        if max(thumb.size) < cell // 2:  # tiny images (built-in 64 x 64): upscale with visible pixels
            f = max(1, cell // max(thumb.size))
            thumb = thumb.resize((thumb.size[0] * f, thumb.size[1] * f), Image.NEAREST)
        r, c = divmod(k, cols)
        x = pad + c * (cell + pad) + (cell - thumb.size[0]) // 2
        y = top + r * (cell + lab_h + pad) + (cell - thumb.size[1]) // 2
        sheet.paste(thumb, (x, y))
        if labels:
            lab = str(labels[k])
            tw, _ = text_size(draw, lab, f_small)
            draw.text((pad + c * (cell + pad) + max(0, (cell - tw) // 2), top + r * (cell + lab_h + pad) + cell + 1),
                      lab, fill=INK, font=f_small)
    return sheet


# ------------------------------------------------------------------------------------------------ layout


def elide(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters by replacing its middle with '...' (both ends kept)."""
    if max_chars < 5:
        raise ValueError(f"elide: max_chars must be >= 5, got {max_chars}")
    if len(text) <= max_chars:
        return text
    head = (max_chars - 3) // 3
    return text[:head] + "..." + text[len(text) - (max_chars - 3 - head):]


def compose(panels: Sequence[Image.Image], title: str = "", footer: Sequence[str] = (), gap: int = 10,
            max_footer_lines: int = 40, max_title_chars: int = 100) -> Image.Image:
    """Panels side by side (top-aligned) under a title, with monospaced `footer` text lines below. A title longer
    than ``max_title_chars`` is elided in the middle, so a long path never widens the figure."""
    title = elide(title, max_title_chars) if title else title
    f_title, f_mono = font(16), font(12, mono=True)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = list(footer)[:max_footer_lines]
    line_h = text_size(probe, "Ag", f_mono)[1] + 4
    text_w = max([text_size(probe, ln, f_mono)[0] for ln in lines], default=0)
    W = max(sum(p.size[0] for p in panels) + gap * (len(panels) + 1), text_w + 2 * gap,
            text_size(probe, title, f_title)[0] + 2 * gap)
    top = 30 if title else gap
    ph = max([p.size[1] for p in panels], default=0)
    Hh = top + ph + gap + (len(lines) * line_h + gap if lines else 0)
    out = Image.new("RGB", (W, Hh), BACKGROUND)
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((gap, 7), title, fill=INK, font=f_title)
    x = gap
    for p in panels:
        out.paste(p, (x, top))
        x += p.size[0] + gap
    y = top + ph + gap
    for ln in lines:
        draw.text((gap, y), ln, fill=INK, font=f_mono)
        y += line_h
    return out


def signed_to_uint8(images) -> np.ndarray:
    """Images with values in [-1, 1] -> uint8 (clipped, rounded)."""
    return np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def view_rows(rows, gap: int = 2) -> np.ndarray:
    """Rows of groups of views (each group (V, H, W, 3) uint8) -> one uint8 figure on white; 1 px between views,
    ``gap`` px between groups and rows."""
    widths = [sum(g.shape[0] * (g.shape[2] + 1) - 1 for g in row) + gap * (len(row) - 1) for row in rows]
    heights = [max(g.shape[1] for g in row) for row in rows]
    out = np.full((sum(heights) + gap * (len(rows) - 1), max(widths), 3), 255, np.uint8)
    y = 0
    for row, h in zip(rows, heights):
        x = 0
        for g in row:
            for v in g:
                out[y:y + v.shape[0], x:x + v.shape[1]] = v
                x += v.shape[1] + 1
            x += gap - 1
        y += h + gap
    return out


def image_grid(images, cols: Optional[int] = None) -> np.ndarray:
    """Images (N, H, W, C) in [-1, 1] (C = 1 or 3) -> one uint8 grid of ``cols`` columns (default: about square),
    row by row, laid out by :func:`view_rows`."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(f"image_grid: images must be (N >= 1, H, W, 1 or 3), got {images.shape}")
    u8 = signed_to_uint8(np.broadcast_to(images, images.shape[:3] + (3,)))
    cols = int(cols or math.ceil(math.sqrt(len(u8))))
    return view_rows([[u8[i:i + cols]] for i in range(0, len(u8), cols)])


def heatmap(values, vmax: Optional[float] = None) -> np.ndarray:
    """Non-negative values (..., H, W) -> uint8 (..., H, W, 3) on the dark-blue -> yellow ramp, 0 -> dark blue,
    ``vmax`` (default: the maximum of ``values``) and above -> yellow."""
    v = np.asarray(values, np.float64)
    top = float(v.max()) if vmax is None else float(vmax)
    t = np.clip(v / top, 0.0, 1.0) if top > 0 else np.zeros_like(v)
    lut = ramp(256)
    return lut[np.rint(t * 255).astype(np.int64)]


# ------------------------------------------------------------------------------------------------ scatter

# Categorical colours (matplotlib's tab10 without its grey) for "one colour per group".
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [188, 189, 34], [23, 190, 207]], np.uint8)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 categorical colours (``PALETTE``, repeated when n exceeds it)."""
    return PALETTE[np.arange(n) % len(PALETTE)]


def cyclic_ramp(n: int) -> np.ndarray:
    """(n, 3) uint8 colours once round the hue wheel (red, yellow, green, cyan, blue, magenta, back towards red)
    at evenly spaced hues k / n: the colouring for a periodic quantity such as a rotation angle over a full turn,
    where the last colour must sit next to the first."""
    h = np.arange(n, dtype=np.float64) / max(n, 1) * 6.0
    # HSV with S = V = 1: each channel is a trapezoid in the hue sector.
    rgb = np.stack([np.clip(np.abs(h - 3.0) - 1.0, 0, 1), np.clip(2.0 - np.abs(h - 2.0), 0, 1),
                    np.clip(2.0 - np.abs(h - 4.0), 0, 1)], -1)
    return np.rint(rgb * 235 + 10).astype(np.uint8)  # a touch darker than pure hues, readable on a light panel


def scatter_plot(xy, colors, *, radius=3.0, outline=None, legend: Sequence = (), ramp_legend=None, path=None,
                 title: str = "", size: int = 560, legend_width: int = 200) -> Image.Image:
    """A 2D scatter plot (e.g. a t-SNE / PCA embedding) as an RGB image: a square plot panel of side ``size`` with
    equal axis scales fitted to the points, and a legend column of ``legend_width`` pixels on its right.

    xy (N, 2) float (non-finite points are skipped); colors (N, 3) uint8 (or float in [0, 1]); radius () or (N,)
    pixels; outline (N,) bool: ring those points in ink. Points are drawn in the given order (later ones on top).
    ``path`` (N,) int: points with the same non-negative id are joined by a thin line in the given order (e.g. a
    sequence of rotations). ``legend``: (label, colour, radius[, ringed]) entries (colour None: a heading line);
    ``ramp_legend``: (colours (K, 3) uint8, label of the first colour, label of the last colour, caption ('\\n'
    breaks its lines)) drawn as a colour bar under the entries.
    """
    xy = np.asarray(xy, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"scatter_plot: xy must be (N, 2), got {xy.shape}")
    n = len(xy)
    colors = np.asarray(colors)
    if colors.dtype != np.uint8:
        colors = np.rint(np.clip(colors, 0, 1) * 255).astype(np.uint8)
    if colors.shape != (n, 3):
        raise ValueError(f"scatter_plot: colors must be ({n}, 3), got {colors.shape}")
    radius = np.broadcast_to(np.asarray(radius, np.float64), (n,))
    outline = np.zeros(n, bool) if outline is None else np.broadcast_to(np.asarray(outline, bool), (n,))
    good = np.isfinite(xy).all(-1)
    top = 26 if title else 8
    margin = 14
    img = Image.new("RGB", (size + legend_width, size + top - 8), BACKGROUND)
    draw = ImageDraw.Draw(img)
    f_title, f_small = font(14), font(11)
    draw.rectangle([margin, top, size - margin, size + top - 8 - margin], fill=PANEL)
    if good.any():
        lo, hi = xy[good].min(0), xy[good].max(0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-12))
    mid = (lo + hi) / 2
    inner = size - 2 * margin - 2 * (int(radius.max(initial=3)) + 6)
    scale = inner / span
    cx0, cy0 = size / 2, top + (size - 8 - margin) / 2

    def to_px(q):
        return cx0 + (q[..., 0] - mid[0]) * scale, cy0 - (q[..., 1] - mid[1]) * scale

    px, py = to_px(xy)
    if path is not None:
        path = np.broadcast_to(np.asarray(path, np.int64), (n,))
        for pid in np.unique(path[path >= 0]):
            sel = np.flatnonzero((path == pid) & good)
            if len(sel) > 1:
                draw.line([(px[i], py[i]) for i in sel], fill=(170, 170, 180), width=1)
    for i in np.flatnonzero(good):
        r = radius[i]
        draw.ellipse([px[i] - r, py[i] - r, px[i] + r, py[i] + r], fill=tuple(int(c) for c in colors[i]),
                     outline=INK if outline[i] else None, width=2 if outline[i] else 1)
    if title:
        draw.text((margin, 5), title, fill=INK, font=f_title)
    # legend column
    x0, y = size + 4, top + 4
    line_h = 18
    for label, colour, r, *ring in legend:
        if colour is None:  # a heading
            draw.text((x0 + 4, y), elide(str(label), 34), fill=INK, font=f_small)
            y += line_h
            continue
        colour = tuple(int(c) for c in np.asarray(colour).reshape(3))
        draw.ellipse([x0 + 8 - r, y + 7 - r, x0 + 8 + r, y + 7 + r], fill=colour,
                     outline=INK if ring and ring[0] else None, width=2 if ring and ring[0] else 1)
        draw.text((x0 + 20, y), elide(str(label), 32), fill=INK, font=f_small)
        y += line_h
    if ramp_legend is not None:
        ramp_cols, first, last, caption = ramp_legend
        ramp_cols = np.asarray(ramp_cols, np.uint8)
        y += 6
        for part in str(caption).split("\n"):
            draw.text((x0 + 4, y), elide(part, 34), fill=INK, font=f_small)
            y += 15
        bar_w = legend_width - 24
        for k in range(bar_w):
            c = ramp_cols[min(len(ramp_cols) - 1, k * len(ramp_cols) // bar_w)]
            draw.line([(x0 + 4 + k, y), (x0 + 4 + k, y + 12)], fill=tuple(int(v) for v in c))
        draw.text((x0 + 4, y + 15), str(first), fill=INK, font=f_small)
        tw, _ = text_size(draw, str(last), f_small)
        draw.text((x0 + 4 + bar_w - tw, y + 15), str(last), fill=INK, font=f_small)
    return img
