"""Posed multi-view examples: view sampling, resize + centre crop with exact intrinsics, relative poses, scale.

Scene record (what multi-view sources return, one per scene; V frames):

  scene_id    str
  images      object (V,) encoded PNG / JPEG bytes, or uint8 (V, H, W, 3); only the sampled views are decoded
  c2w         float (V, 4, 4)   OpenCV camera-to-world
  intrinsics  float (V, 4)      (fx/W, fy/H, cx/W, cy/H)
  depth       float32 (V, H, W) optional metric z-depth (0 = unknown; RGB-D captures: `scene3d.data.rgbd`)
  mask        bool (V, H, W)    optional valid-geometry mask
  points      float32 (V, H, W, 3) optional world point map (else derived from depth when needed)
  (other keys are ignored here: timestamps, gaussians, ...)

Multi-view example (`MultiViewTransform` output; Vc context and Vt target views, h x w from `ViewConfig`):

  context / target:  dicts with
      images      float32 (V, h, w, 3) in [-1, 1]  (or uint8 with image_dtype='uint8')
      c2w         float32 (V, 4, 4)   relative to the first context view (identity) and rescaled (see below)
      intrinsics  float32 (V, 4)      normalised, updated for the resize + crop
      index       int32 (V,)          frame indices in the scene
      depth       float32 (V, h, w)   z-depth in the rescaled units (only when the scene has depth)
      mask        bool (V, h, w)      True where depth / points are valid (only with depth)
      points      float32 (V, h, w, 3) point map in the relative, rescaled frame (only with depth)
  scene_id  str
  scale     float32 ()        factor applied to positions and depths; computed from the context views only
  ref_c2w   float32 (4, 4)    original world pose of the first context view: world = ref_c2w @ [p / scale; 1]

View sampling (`ViewConfig.strategy`), all sorted by frame index:
  'nearby'              a window of span s ~ U[window] frames at a random start; context spread evenly over it
                        (first and last frame for 2 views); targets from the window's other frames (with
                        replacement from the whole window when it has too few)
  'random'              a random subset of Vc + Vt distinct frames; context are the first Vc drawn
  'heldout_trajectory'  targets are a contiguous run of Vt frames; context drawn from the frames outside it

Randomness comes only from the generator passed to `random_map`, which grain seeds from (seed, element index)
(the index in the repeated, shuffled dataset encodes the epoch), so a restored iterator reproduces batches exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Optional, Sequence

import grain
import numpy as np

from scene3d.core.config import dataclass_from_config
from scene3d.geometry import cameras as cam
from scene3d.geometry import rays

STRATEGIES = ("nearby", "random", "heldout_trajectory")

# ----------------------------------------------------------------------------------------------- image codecs


def encode_png(image) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG bytes (PIL, lossless)."""
    from PIL import Image
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"encode_png: expected uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def object_array(items) -> np.ndarray:
    """(n,) object array of the given items (e.g. encoded frames), never broadcast into more dimensions."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _open(data):
    from PIL import Image
    return Image.open(io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, np.bytes_)) else data)


def _image_name(data, name: Optional[str]) -> str:
    if name is not None:
        return name
    if isinstance(data, (bytes, bytearray, np.bytes_, memoryview)):
        return f"encoded image ({len(data)} bytes)"
    return str(data)


@contextlib.contextmanager
def _decoding(data, name: Optional[str]):
    """Turn whatever the image decoder raises for bad data (PIL: UnidentifiedImageError, OSError 'truncated',
    SyntaxError, DecompressionBombError, struct.error, ...) into one ValueError naming the image. A missing file
    stays FileNotFoundError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except ValueError as e:
        label = _image_name(data, name)
        raise ValueError(str(e) if str(e).startswith(label) else f"{label}: cannot decode image ({e})") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types for corrupt data
        from PIL import UnidentifiedImageError
        why = "not a recognised image format" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"{_image_name(data, name)}: cannot decode image ({why})") from None


def decode_image(data, min_size: Optional[tuple] = None, name: Optional[str] = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) or a file path -> uint8 (H, W, 3) RGB.

    With `min_size=(h, w)` a JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling) when the result still
    covers (h, w) and the factor divides the image size exactly (so normalised intrinsics are unchanged).
    Data that does not decode (not an image, truncated, corrupt, a decompression bomb) raises ValueError naming
    `name` (default: the path, or the byte count of encoded data).
    """
    with _decoding(data, name):
        return _decode(data, min_size)


def check_image(data, name: Optional[str] = None) -> tuple:
    """(H, W) of encoded image bytes or a file path after decoding every pixel (a JPEG at 1/8 scale, which still
    reads the whole entropy-coded stream): a ValueError naming `name` when the data is not a complete image.
    What a reader calls before it stores a file's bytes as a frame."""
    with _decoding(data, name):
        with _open(data) as im:
            W, H = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, W // 8), max(1, H // 8)))
            im.load()
            return H, W


def _decode(data, min_size):
    im = _open(data)
    with im:
        W, H = im.size
        if min_size is not None and im.format == "JPEG":
            h, w = min_size
            k = 8
            while k > 1 and not (W % k == 0 and H % k == 0 and W // k >= w and H // k >= h):
                k //= 2
            if k > 1:
                im.draft("RGB", (W // k, H // k))
                if im.size != (W // k, H // k):  # PIL picked another scale: decode at full size instead
                    im.close()
                    im = _open(data)
        return np.asarray(im.convert("RGB"))


def image_size(data, name: Optional[str] = None) -> tuple:
    """(H, W) of encoded image bytes or a file path, without decoding the pixels (ValueError naming `name` when
    the data is not an image)."""
    with _decoding(data, name):
        with _open(data) as im:
            return im.size[1], im.size[0]


# ----------------------------------------------------------------------------------------- resize + crop


def crop_resize_geometry(in_hw, out_hw):
    """Resize that covers `out_hw` keeping the aspect ratio, then a centre crop.

    Returns ((sh, sw) resized size, (oy, ox) crop offset). The per-axis scales are sh/H and sw/W exactly
    (rounding makes them differ slightly; the intrinsics update uses each axis' own scale).
    """
    (H, W), (h, w) = map(int, in_hw[:2]), tuple(map(int, out_hw))
    if min(H, W, h, w) <= 0:
        raise ValueError(f"crop_resize_geometry: sizes must be positive, got input {in_hw}, output {out_hw}")
    s = max(h / H, w / W)
    sh, sw = max(h, int(round(H * s))), max(w, int(round(W * s)))
    return (sh, sw), ((sh - h) // 2, (sw - w) // 2)


def crop_resize_intrinsics(intrinsics, in_hw, out_hw):
    """Normalised intrinsics (..., 4) of an H x W image -> those of its `crop_resize_geometry` output."""
    (H, W), (h, w) = tuple(map(int, in_hw[:2])), tuple(map(int, out_hw))
    (sh, sw), (oy, ox) = crop_resize_geometry((H, W), (h, w))
    k = np.asarray(intrinsics, np.float64)
    if k.shape[-1] != 4:
        raise ValueError(f"crop_resize_intrinsics: expected intrinsics (..., 4), got {k.shape}")
    # pixel coordinates (corner origin): u' = u * sw / W - ox, v' = v * sh / H - oy
    return np.stack([k[..., 0] * sw / w, k[..., 1] * sh / h, (k[..., 2] * sw - ox) / w, (k[..., 3] * sh - oy) / h],
                    -1)


def _nearest_index(n_in, n_scaled, offset, n_out):
    """Source index of each output pixel for nearest-neighbour resampling (pixel centres at i + 0.5)."""
    centres = (np.arange(n_out) + offset + 0.5) * (n_in / n_scaled)
    return np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)


def crop_resize_maps(maps: dict, in_hw, out_hw) -> dict:
    """Nearest-neighbour `crop_resize_geometry` of per-pixel maps {name: (V, H, W, ...)} (None values pass).

    Each output pixel takes the value of the source pixel containing its centre, so depths and points stay
    values of real source pixels.
    """
    (H, W), (h, w) = tuple(map(int, in_hw[:2])), tuple(map(int, out_hw))
    (sh, sw), (oy, ox) = crop_resize_geometry((H, W), (h, w))
    rows, cols = _nearest_index(H, sh, oy, h), _nearest_index(W, sw, ox, w)
    out = {}
    for name, a in maps.items():
        if a is not None:
            a = np.asarray(a)
            if a.ndim < 3 or a.shape[1:3] != (H, W):
                raise ValueError(f"crop_resize_maps {name}: expected shape (V, {H}, {W}, ...), got {a.shape}")
            a = a[:, rows][:, :, cols]
        out[name] = a
    return out


_FILTERS = ("bicubic", "bilinear", "lanczos", "nearest")


def resize_and_crop(images, intrinsics, out_hw, depth=None, mask=None, points=None, resample: str = "bicubic"):
    """Resize (aspect kept, covering `out_hw`) and centre-crop views; returns a dict with updated intrinsics.

    images uint8 (V, H, W, 3) are resampled with PIL (antialiased when shrinking); depth (V, H, W), mask
    (V, H, W) and points (V, H, W, 3) nearest-neighbour (`crop_resize_maps`).
    """
    from PIL import Image
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"resize_and_crop images: expected uint8 (V, H, W, 3), got {images.dtype} {images.shape}")
    if resample not in _FILTERS:
        raise ValueError(f"resize_and_crop resample: expected one of {_FILTERS}, got {resample!r}")
    V, H, W, _ = images.shape
    h, w = map(int, out_hw)
    (sh, sw), (oy, ox) = crop_resize_geometry((H, W), (h, w))
    out = {"intrinsics": crop_resize_intrinsics(intrinsics, (H, W), (h, w))}
    out.update(crop_resize_maps({"depth": depth, "mask": mask, "points": points}, (H, W), (h, w)))
    if (sh, sw) == (H, W):
        out["images"] = images[:, oy:oy + h, ox:ox + w]
        return out
    filt = getattr(Image, resample.upper())
    box = (ox, oy, ox + w, oy + h)
    out["images"] = np.stack([np.asarray(Image.fromarray(im).resize((sw, sh), filt).crop(box)) for im in images]) \
        if V else np.zeros((0, h, w, 3), np.uint8)
    return out


# ----------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """How multi-view examples are sampled and shaped (`data.views` in a config)."""

    num_context: int = 2
    num_target: int = 1
    strategy: str = "nearby"  # one of STRATEGIES
    window: tuple = (2, 16)  # 'nearby': (min, max) frame span between the first and last sampled frame
    resolution: Optional[tuple] = None  # (h, w) output size; None keeps the source size
    image_dtype: str = "float32"  # 'float32' in [-1, 1] or 'uint8'
    relative_poses: bool = True  # express poses in the first context view's frame
    scale_mode: Optional[str] = "max_camera_distance"  # cameras.SCALE_MODES or None
    scale_target: float = 1.0
    with_depth: bool = True  # emit depth / mask / points when the scene has depth
    resample: str = "bicubic"

    def __post_init__(self):
        if self.num_context < 1 or self.num_target < 0:
            raise ValueError(f"ViewConfig: need num_context >= 1 and num_target >= 0, got "
                             f"{self.num_context}, {self.num_target}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"ViewConfig.strategy: expected one of {STRATEGIES}, got {self.strategy!r}")
        win = tuple(self.window)
        if len(win) != 2 or not 1 <= win[0] <= win[1]:
            raise ValueError(f"ViewConfig.window: expected (min, max) span with 1 <= min <= max, got {self.window!r}")
        if self.resolution is not None and (len(tuple(self.resolution)) != 2 or min(self.resolution) < 1):
            raise ValueError(f"ViewConfig.resolution: expected (h, w) or None, got {self.resolution!r}")
        if self.image_dtype not in ("float32", "uint8"):
            raise ValueError(f"ViewConfig.image_dtype: expected 'float32' or 'uint8', got {self.image_dtype!r}")
        if self.scale_mode is not None and self.scale_mode not in cam.SCALE_MODES:
            raise ValueError(f"ViewConfig.scale_mode: expected None or one of {cam.SCALE_MODES}, "
                             f"got {self.scale_mode!r}")

    @classmethod
    def from_config(cls, cfg) -> "ViewConfig":
        """From a dict / ConfigDict (None -> defaults); unknown keys are an error."""
        d = dataclass_from_config(cls, cfg, "config.data.views")
        for k in ("window", "resolution"):
            if d.get(k) is not None:
                d[k] = tuple(int(x) for x in d[k])
        return cls(**d)


# ----------------------------------------------------------------------------------------------- sampling


def select_views(num_frames: int, cfg: ViewConfig, rng: np.random.Generator, scene_id: str = "?"):
    """(context indices (Vc,), target indices (Vt,)) int64, each sorted, following `cfg.strategy`."""
    vc, vt, n = cfg.num_context, cfg.num_target, int(num_frames)
    if cfg.strategy == "nearby":
        if n < vc:
            raise ValueError(f"scene {scene_id}: {n} frames, need at least num_context={vc} for 'nearby'")
        lo = max(cfg.window[0], vc - 1)
        hi = min(cfg.window[1], n - 1)
        if lo > hi:
            lo = hi = min(lo, n - 1)
        span = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, n - span))
        if vc == 1:
            ctx = np.array([start + span // 2])
        else:
            ctx = np.unique(np.round(np.linspace(start, start + span, vc)).astype(np.int64))
        window = np.arange(start, start + span + 1)
        rest = np.setdiff1d(window, ctx)
        if len(rest) >= vt:
            tgt = rng.choice(rest, vt, replace=False)
        else:
            tgt = rng.choice(window, vt, replace=True)
    elif cfg.strategy == "random":
        if n < vc + vt:
            raise ValueError(f"scene {scene_id}: {n} frames, 'random' needs num_context + num_target = {vc + vt}")
        pick = rng.permutation(n)[:vc + vt]
        ctx, tgt = pick[:vc], pick[vc:]
    else:  # heldout_trajectory
        if n < vc + vt:
            raise ValueError(f"scene {scene_id}: {n} frames, 'heldout_trajectory' needs num_context + num_target "
                             f"= {vc + vt}")
        start = int(rng.integers(0, n - vt + 1))
        tgt = np.arange(start, start + vt)
        rest = np.setdiff1d(np.arange(n), tgt)
        ctx = rng.choice(rest, vc, replace=False)
    return np.sort(np.asarray(ctx, np.int64)), np.sort(np.asarray(tgt, np.int64))


# ----------------------------------------------------------------------------------------------- examples


def _scene_id(scene) -> str:
    s = scene.get("scene_id", "?")
    if isinstance(s, np.ndarray):
        s = s.item()
    return s.decode() if isinstance(s, bytes) else str(s)


def num_frames(scene) -> int:
    """Number of frames V of a scene record (validating c2w / intrinsics / images agree)."""
    sid = _scene_id(scene)
    for k in ("images", "c2w", "intrinsics"):
        if k not in scene:
            raise ValueError(f"scene {sid}: record has no {k!r} (has {sorted(scene)})")
    c2w, intr = np.shape(scene["c2w"]), np.shape(scene["intrinsics"])
    if len(c2w) != 3 or c2w[1:] != (4, 4):
        raise ValueError(f"scene {sid}: c2w expected shape (V, 4, 4), got {c2w}")
    v = c2w[0]
    if intr != (v, 4):
        raise ValueError(f"scene {sid}: intrinsics expected shape ({v}, 4), got {intr}")
    if len(scene["images"]) != v:
        raise ValueError(f"scene {sid}: {len(scene['images'])} images for {v} cameras")
    return v


def _take_images(images, idx, sid, min_size):
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"scene {sid}: images expected uint8 (V, H, W, 3), got {images.shape}")
        return images[idx]
    out = [decode_image(images[int(i)], min_size, name=f"scene {sid}: frame {int(i)}") for i in idx]
    shapes = sorted({im.shape for im in out})
    if len(shapes) != 1:
        raise ValueError(f"scene {sid}: sampled frames have different sizes {shapes}")
    return np.stack(out)


def make_views(scene: dict, context: Sequence[int], target: Sequence[int], cfg: ViewConfig) -> dict:
    """The multi-view example (module docstring) for given context / target frame indices."""
    sid = _scene_id(scene)
    num_frames(scene)
    ctx, tgt = np.asarray(context, np.int64), np.asarray(target, np.int64)
    idx = np.concatenate([ctx, tgt])
    vc = len(ctx)
    c2w = np.asarray(scene["c2w"], np.float64)[idx]
    intr = np.asarray(scene["intrinsics"], np.float64)[idx]

    has_depth = cfg.with_depth and scene.get("depth") is not None
    # Decode only the chosen views; without depth, a JPEG may be decoded at reduced scale (exact divisor, so the
    # normalised intrinsics are unchanged) when that still covers the output.
    src = scene["images"]
    min_size = None
    if cfg.resolution is not None and not has_depth and not (isinstance(src, np.ndarray) and src.dtype == np.uint8):
        min_size = crop_resize_geometry(image_size(src[int(idx[0])], name=f"scene {sid}: frame {int(idx[0])}"),
                                        cfg.resolution)[0]
    images = _take_images(src, idx, sid, min_size)
    V, H, W, _ = images.shape

    depth = mask = points = None
    if has_depth:
        depth = np.asarray(scene["depth"])[idx].astype(np.float32)
        if depth.shape != (V, H, W):
            raise ValueError(f"scene {sid}: depth expected shape ({V}, {H}, {W}) like the images, got {depth.shape}")
        mask = np.asarray(scene["mask"])[idx].astype(bool) if scene.get("mask") is not None else depth > 0
        if scene.get("points") is not None:
            points = np.asarray(scene["points"])[idx].astype(np.float64)
        else:
            points = rays.depth_to_points(depth.astype(np.float64), c2w, intr)
        points = np.where(mask[..., None], points, 0.0)

    if cfg.resolution is not None:
        out = resize_and_crop(images, intr, cfg.resolution, depth, mask, points, resample=cfg.resample)
        images, intr, depth, mask, points = (out[k] for k in ("images", "intrinsics", "depth", "mask", "points"))

    ref = c2w[0].copy()
    if cfg.relative_poses:
        c2w = cam.relative_poses(c2w, 0)
        if points is not None:
            points = cam.world_to_camera(points.reshape(V, -1, 3), ref).reshape(points.shape)
    scale = 1.0
    if cfg.scale_mode is not None:
        pts = None
        if cfg.scale_mode in ("median_depth", "points_radius"):
            if points is None:
                raise ValueError(f"scene {sid}: scale_mode {cfg.scale_mode!r} needs depth, the scene has none")
            pts = points[:vc][mask[:vc]]
        _, _, scale = cam.normalise_scene_scale(c2w[:vc], pts, cfg.scale_mode, cfg.scale_target)
        scale = float(scale)
        c2w = cam.scale_poses(c2w, scale)
        if depth is not None:
            depth = depth * scale
            points = points * scale
    if cfg.image_dtype == "float32":
        images = images.astype(np.float32) / 127.5 - 1.0

    def part(sl, ix):
        d = {"images": images[sl], "c2w": c2w[sl].astype(np.float32), "intrinsics": intr[sl].astype(np.float32),
             "index": ix.astype(np.int32)}
        if depth is not None:
            d.update(depth=depth[sl].astype(np.float32), mask=np.asarray(mask[sl], bool),
                     points=np.where(mask[sl][..., None], points[sl], 0).astype(np.float32))
        return d

    return {"context": part(slice(0, vc), ctx), "target": part(slice(vc, None), tgt), "scene_id": sid,
            "scale": np.float32(scale), "ref_c2w": ref.astype(np.float32)}


class MultiViewTransform(grain.transforms.RandomMap):
    """grain random map: scene record -> multi-view example (module docstring)."""

    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        ctx, tgt = select_views(num_frames(element), self.cfg, rng, _scene_id(element))
        return make_views(element, ctx, tgt, self.cfg)


# ----------------------------------------------------------------------------------------------- sources


class NpzSceneSource:
    """Built-in scenes straight from `builtin.build_dataset` .npz files (no tfds), as scene records.

    `indices` selects scenes by their dataset index (default: all in index.json).
    """

    def __init__(self, folder, indices: Optional[Sequence[int]] = None):
        import json
        import pathlib
        self.folder = pathlib.Path(folder)
        index_path = self.folder / "index.json"
        if not index_path.is_file():
            raise ValueError(f"{self.folder}: no index.json (build it with scene3d.data.builtin.build_dataset)")
        index = json.loads(index_path.read_text())
        files = {s["index"]: s["file"] for s in index["scenes"]}
        self.indices = sorted(files) if indices is None else [int(i) for i in indices]
        missing = [i for i in self.indices if i not in files]
        if missing:
            raise ValueError(f"{index_path}: scene indices {missing[:5]} not in the dataset ({len(files)} scenes)")
        self.files = [self.folder / files[i] for i in self.indices]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from scene3d.data import builtin
        rec = builtin.load_scene(self.files[i])
        rec["scene_id"] = f"builtin/{self.indices[i]:06d}"
        return rec
