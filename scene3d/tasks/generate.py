"""Stage 2: flow-matching generation in a tokenizer's latent space.

``GenerateTask(config)`` picks one of two tasks:

- ``ImageFlowTask`` (no ``config.tokenizer``): the latent of an image is its patchified pixels, so the trainer is
  proven end to end before any scene tokenizer exists. Conditioning: the class label (LatentDiT's adaLN label
  embedding, null class for CFG).
- ``LatentFlowTask`` (``config.tokenizer`` set): latent diffusion on a FROZEN stage-1 tokenizer (Can3Tok). The
  latent of a 3DGS crop is the tokenizer's posterior mean (or a posterior sample, ``tokenizer.sample_posterior``)
  z (latent_dim,) viewed as its decoder tokens ``latent_shape`` (T, E), times ``tokenizer.scale``:
  x0 = scale * z. Choose the scale so that x0 has about unit variance (the noise's); the loss logs the batch's
  ``latent_std`` of z and ``suggested_scale`` = 1 / latent_std at every step to read it off the first steps.
  Conditioning: a pluggable encoder of ``scene3d.models.cond_encoders`` (``config.cond.kind``: label | text |
  image | none) whose tokens enter every DiT block by cross-attention. Where the conditions come from is
  ``config.cond.source`` (``SceneConditions``): 'file' takes the dataset's own per-scene fields (``caption``,
  ``cond_image``, ``label``; for PLY folders the files next to each PLY, ``scene3d.data.gs_pipeline.side_files``);
  'colours' derives them from the crop itself, for data without any (the built-in scenes): its dominant colour
  as the class label, a caption from its colour statistics ("a dark scene, mostly blue and some grey")
  (``scene_colours``), or a preview render of the crop from a fixed camera as the conditioning image; 'auto'
  (default) is 'colours' for the built-in scenes and 'file' for every other dataset.
  Rows: the tokenizer encodes the data rows as they are (``data.gaussians.rows='release18'``: 4 voxel columns in
  front of the 14 raw channels, read by the tokenizer at ``model.input_offset=4``); its decoder, the sampled
  scenes and every render are the raw channels (``raw_rows``).

Both train the velocity loss of DESIGN.md with condition dropout (``flow.cond_drop``) and sample from t = 1 to 0
(Euler / Heun) with classifier-free guidance of scale ``flow.cfg_scale`` inside ``flow.cfg_interval`` (scale 1 is
the conditional model alone).

The stage-1 tokenizer lives inside the stage-2 model as ``Frozen`` variables (``scene3d.tasks.stage1``): the
trainer optimises ``nnx.Param`` only; ``restore_pretrained`` fills it from ``tokenizer.workdir`` (EMA if that run
kept one) when a run starts, and stage-2 checkpoints then hold it, so sampling needs only the stage-2 run.
Without ``tokenizer.workdir`` the tokenizer of ``tokenizer.model`` is randomly initialised (smoke tests).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scene3d.core.dtypes import dtype as _dtype
from scene3d.data import gs_pipeline
from scene3d.diffusion.objective import FlowMatching
from scene3d.geometry import gaussians as gs
from scene3d.models import cond_encoders
from scene3d.models.latent_dit import VARIANTS as DIT_VARIANTS
from scene3d.models.latent_dit import LatentDiT
from scene3d.nn import patchify, unpatchify
from scene3d.render.plots import image_grid
from scene3d.specs.can3tok import VARIANTS as C3T_VARIANTS
from scene3d.tasks import stage1


def GenerateTask(config):
    """The stage-2 task for ``config``: ``LatentFlowTask`` when ``config.tokenizer`` is set, else ``ImageFlowTask``."""
    if config.get("tokenizer") is not None:
        return LatentFlowTask(config)
    return ImageFlowTask(config)


def flow_objective(config) -> FlowMatching:
    """The objective of ``config.flow`` (defaults: condition dropout 0.1, 32 sampler steps, guidance on all of
    [0, 1]). The tasks read it at every use, so a changed config (e.g. ``cfg_interval``) takes effect."""
    return FlowMatching.from_config(config.flow, cond_drop=0.1, sample_steps=32, cfg_interval=(0.0, 1.0))


class _Flow:
    @property
    def flow(self) -> FlowMatching:
        """The flow-matching objective of ``self.config`` (``flow_objective``)."""
        return flow_objective(self.config)


# =============================================================================================== images


class ImageFlowTask(_Flow):
    """Flow matching over pixel patches of images (procedural shapes), class-conditional with CFG."""

    def __init__(self, config):
        self.config = config
        mc, dc = config.model, config.data
        self.patch = int(mc.patch)
        self.image_size = int(dc.size)
        if self.image_size % self.patch:
            raise ValueError(f"config.data.size={self.image_size} is not divisible by config.model.patch={self.patch}")
        self.grid = (self.image_size // self.patch,) * 2
        self.channels = 3
        flow_objective(config)  # validates config.flow
        self.num_classes = int(mc.get("num_classes", 0))

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> LatentDiT:
        mc = self.config.model
        return LatentDiT(in_dim=self.patch * self.patch * self.channels, num_tokens=self.grid[0] * self.grid[1],
                         variant=mc.variant, width=mc.get("width"), depth=mc.get("depth"), heads=mc.get("heads"),
                         num_classes=self.num_classes, pos=mc.get("pos", "rope2d"), grid=self.grid,
                         qk_norm=mc.get("qk_norm", True), attn_impl=mc.get("attn_impl", "xla"),
                         scan=mc.get("scan", True), remat=mc.get("remat", "none"),
                         dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                         param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"),
                         rngs=rngs)

    # -- latents -----------------------------------------------------------------------------------------------
    def encode(self, batch: dict) -> jax.Array:
        return patchify(batch["image"], self.patch)

    def decode(self, tokens: jax.Array) -> jax.Array:
        return unpatchify(tokens, self.patch, (self.image_size, self.image_size))

    def data_transforms(self, split: str):
        return []

    # -- training ----------------------------------------------------------------------------------------------
    def _labels(self, batch, rng=None):
        """The batch's labels (None without classes), each dropped to the null class with probability
        ``flow.cond_drop`` when ``rng`` is given."""
        if not self.num_classes:
            return None
        labels = batch["label"].astype(jnp.int32)
        fm = self.flow
        if rng is not None and fm.cond_drop > 0:
            labels = fm.drop_condition(rng, labels, self.num_classes)
        return labels

    def loss(self, model, batch, rng, step=None):
        x0 = self.encode(batch)
        fm = self.flow
        r_t, r_eps, r_drop = jax.random.split(rng, 3)
        t, eps, x_t = fm.draw(x0, r_t, r_eps)
        v, _ = model(x_t, t, labels=self._labels(batch, r_drop))
        loss, _ = fm.loss(v, x0, eps, t)
        return loss, {"x0_rmse": jnp.sqrt(jnp.mean(jnp.square(fm.x0(v, x_t, t) - x0)))}

    def evaluate(self, model, batch, rng):
        """Velocity loss at fixed times (a low-variance validation curve) for one batch."""
        x0 = self.encode(batch)
        fm = self.flow
        labels = self._labels(batch)
        return fm.fixed_time_losses(lambda x, t: model(x, t, labels=labels)[0], x0, fm.noise(rng, x0),
                                    (0.1, 0.5, 0.9))

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample(self, model, rng, *, num: int, labels=None, num_steps: int | None = None, method: str | None = None,
               cfg_scale: float | None = None):
        """Draw ``num`` samples (decoded images (num, H, W, 3)) from noise."""
        noise = jax.random.normal(rng, (num, self.grid[0] * self.grid[1], self.patch * self.patch * self.channels))
        # Split once: the sampler's lax.scan must merge a fresh module inside its own trace.
        graphdef, state = nnx.split(model)

        def velocity(lab):
            return lambda x, t: nnx.merge(graphdef, state)(x, t, labels=lab)[0]

        guided = bool(self.num_classes and labels is not None)
        labels = None if labels is None else jnp.asarray(labels)
        uncond = velocity(jnp.full_like(labels, self.num_classes)) if guided else None
        x0 = self.flow.sample(velocity(labels), noise, uncond_fn=uncond, num_steps=num_steps, method=method,
                              cfg_scale=cfg_scale)
        return self.decode(x0)

    def images(self, model, batch, rng):
        n = int(self.config.get("num_sample_images", 16))
        labels = (jnp.arange(n, dtype=jnp.int32) % self.num_classes) if self.num_classes else None
        samples = nnx.jit(lambda m, r: self.sample(m, r, num=n, labels=labels))(model, rng)
        data = np.asarray(jax.device_get(batch["image"]))[:n]
        return {"samples": image_grid(np.asarray(jax.device_get(samples))), "data": image_grid(data)}


# =============================================================================================== scenes

# Colour names of ``scene_colours``; the class label of a scene is the index of its dominant colour.
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white", "grey", "black")
# Upper hue bounds (degrees) of the chromatic names; red wraps around 360.
_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
         (290, "purple"), (345, "pink"), (360, "red"))


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in [0, 1] -> (N,) indices into COLOURS: value < 0.2 black; saturation < 0.2 white (value >
    0.8) or grey; else by hue (HSV, degrees) with the bounds of ``_HUES``."""
    rgb = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    mx, mn = rgb.max(-1), rgb.min(-1)
    v = mx
    s = np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1.0), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.where(mx > mn, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / d) % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0)) * 60.0
    idx = np.full(rgb.shape[:-1], COLOURS.index("red"))
    for bound, name in reversed(_HUES):
        idx = np.where(h < bound, COLOURS.index(name), idx)
    idx = np.where(s < 0.2, np.where(v > 0.8, COLOURS.index("white"), COLOURS.index("grey")), idx)
    return np.where(v < 0.2, COLOURS.index("black"), idx)


def scene_colours(raw: np.ndarray) -> tuple[int, str]:
    """Packed raw Gaussians (N, C) -> (label, caption) from their colours (SH DC), weighted by opacity.

    label: index in COLOURS of the dominant colour. caption: "a [dark |bright ]scene, mostly C1[ and some C2]"
    with C2 the second colour if it holds >= 20% of the weight; dark / bright for a mean HSV value < 0.35 / > 0.65.
    """
    raw = np.asarray(raw, np.float64)
    g = gs.unpack(raw)
    rgb = np.clip(gs.dc_to_rgb(g.f_dc), 0.0, 1.0)
    w = gs.sigmoid(np.clip(g.opacity, -30, 30))
    w = w / max(w.sum(), 1e-12)
    hist = np.bincount(colour_names(rgb), weights=w, minlength=len(COLOURS))
    order = np.argsort(-hist, kind="stable")
    label = int(order[0])
    value = float(np.sum(w * rgb.max(-1)))
    tone = "dark " if value < 0.35 else "bright " if value > 0.65 else ""
    caption = f"a {tone}scene, mostly {COLOURS[label]}"
    if hist[order[1]] >= 0.2:
        caption += f" and some {COLOURS[int(order[1])]}"
    return label, caption


def _preview_camera(radius: float = 1.0):
    """A fixed camera (c2w, intrinsics) looking at the ball of ``radius`` of a normalised crop (z up)."""
    from scene3d.render.points import orbit_camera
    return orbit_camera(np.zeros(3), float(radius), (0.0, 0.0, 1.0), azimuth=0.6, elevation=0.5, fov_y=0.9)


def render_preview(raw: np.ndarray, size: int, radius: float = 1.0) -> np.ndarray:
    """(N, C) raw Gaussians of a crop normalised into the ball of ``radius`` (``data.gaussians.radius``) ->
    (size, size, 3) float32 in [0, 1]: splats coloured by SH DC seen from ``_preview_camera`` on white
    (``scene3d.render.points.render_gaussians``)."""
    from scene3d.render.points import render_gaussians
    c2w, intr = _preview_camera(radius)
    g = gs.unpack(np.asarray(raw, np.float64))
    return render_gaussians(g, c2w, intr, size, size, background=1.0).image.astype(np.float32)


def row_offset(data_config) -> int:
    """Columns in front of the raw channels in the data rows (``data.gaussians.rows``: 4 for 'release18')."""
    rows = (data_config.get("gaussians") or {}).get("rows", "raw")
    if rows not in gs_pipeline.ROWS:
        raise ValueError(f"config.data.gaussians.rows: expected one of {gs_pipeline.ROWS}, got {rows!r}")
    return gs_pipeline.RELEASE_PREFIX if rows == "release18" else 0


def raw_rows(rows, offset: int):
    """The raw Gaussian channels of data rows (..., N, offset + C) (what decoders output and renders take)."""
    return rows[..., offset:]


def load_image(v, size: int, what: str = "image condition") -> np.ndarray:
    """An image path, an (H, W, 3) uint8 array or a float array in [0, 1] -> (size, size, 3) float32 in [0, 1]:
    centre-cropped to a square, then resized (bilinear). An unreadable file or a wrong shape is a ValueError naming
    ``what`` and the file."""
    from PIL import Image
    if isinstance(v, np.ndarray):
        img = v.astype(np.float32) / (255.0 if v.dtype == np.uint8 or v.max() > 1.0 else 1.0)
    else:
        try:
            with Image.open(str(v)) as im:
                img = np.asarray(im.convert("RGB"), np.float32) / 255.0
        except (OSError, ValueError) as e:
            raise ValueError(f"{what} {str(v)!r}: cannot read an image: {e}") from None
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{what}: expected an (H, W, 3) image, got {img.shape}")
    h, w = img.shape[:2]
    if h != w:
        m = min(h, w)
        img = img[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if img.shape[:2] != (size, size):
        pil = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        img = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32) / 255.0
    return img


def _sid(example: dict) -> str:
    s = example.get("scene_id", "?")
    return s.decode() if isinstance(s, bytes) else str(s)


COND_SOURCES = ("auto", "file", "colours")
BUILTIN_DATA = ("builtin_gaussians", "tabletop")  # datasets without captions / images of their own: conditions from colours


class SceneConditions:
    """Per-scene conditions of 3DGS examples for ``config.cond`` (kind, source, text, image_size), host side.

    ``source`` (``cond.source``): 'file' reads the example's own fields: ``caption`` (str or bytes), ``cond_image``
    ((H, W, 3) uint8 or float in [0, 1], resized to ``cond.image_size``), ``label`` (int in [0, len(COLOURS))); a
    missing one is a ValueError naming the scene and where the field comes from. 'colours' derives them from the
    crop (``scene_colours``, ``render_preview``). 'auto': 'colours' for ``BUILTIN_DATA``, else 'file'. Text
    features of the frozen backbone (``cond.text``) are cached per caption (a scene's caption is fixed).
    """

    def __init__(self, cond_config, data_config, kind: str):
        cc = cond_config
        self.kind, self.config = kind, cc
        self.image_size = int(cc.get("image_size", 32))
        self.offset = row_offset(data_config)
        self.radius = float((data_config.get("gaussians") or {}).get("radius", 1.0))
        source = cc.get("source", "auto")
        if source not in COND_SOURCES:
            raise ValueError(f"config.cond.source: expected one of {COND_SOURCES}, got {source!r}")
        self.data_name = data_config.get("name")
        self.source = source if source != "auto" else ("colours" if self.data_name in BUILTIN_DATA else "file")
        self._text = None
        self._features: dict[str, tuple] = {}

    @property
    def text_backbone(self):
        if self._text is None:
            spec = dict((self.config.get("text") or {}))
            self._text = cond_encoders.make_text_backbone(spec.pop("backbone", "hashed_bow"), **spec)
        return self._text

    def text_features(self, caption: str):
        """(tokens (L, D), mask (L,)) of one caption (cached)."""
        if caption not in self._features:
            tokens, mask = self.text_backbone([caption])
            self._features[caption] = (tokens[0], mask[0])
        return self._features[caption]

    def _field(self, example: dict, key: str):
        if key not in example:
            sid = _sid(example)
            where = {"caption": "a caption.txt or <stem>.txt", "cond_image": "a cond.png or <stem>.png",
                     "label": "a label field"}[key]
            raise ValueError(f"scene {sid!r}: config.cond.source={self.source!r} (data.name={self.data_name!r}) "
                             f"needs the dataset's {key!r} field, which it lacks (PLY folders: {where} next to "
                             f"the PLY file; prepared datasets: the {key!r} feature); or set "
                             f"config.cond.source=colours to derive the condition from the scene's colours")
        return example[key]

    def caption(self, example: dict, raw: np.ndarray) -> str:
        if self.source == "colours":
            return scene_colours(raw)[1]
        c = self._field(example, "caption")
        c = np.asarray(c).item() if isinstance(c, np.ndarray) else c
        c = (c.decode("utf-8") if isinstance(c, bytes) else str(c)).strip()
        if not c:  # e.g. a prepared dataset's scene without a caption.txt ('' stored)
            raise ValueError(f"scene {_sid(example)!r}: config.cond.source={self.source!r} needs a caption; the "
                             f"dataset's is empty (add a caption.txt to the scene, or set config.cond.source=colours)")
        return c

    def image(self, example: dict, raw: np.ndarray) -> np.ndarray:
        """(image_size, image_size, 3) float32 in [0, 1]."""
        if self.source == "colours":
            return render_preview(raw, self.image_size, self.radius)
        return load_image(np.asarray(self._field(example, "cond_image")), self.image_size,
                          what=f"scene {_sid(example)!r} cond_image")

    def __call__(self, example: dict) -> dict:
        """The numeric conditioning fields of one example (``label``; ``text_tokens`` + ``text_mask`` for text;
        ``cond_image`` for image) from its fields and its rows ``gaussians`` (N, offset + C)."""
        raw = raw_rows(np.asarray(example["gaussians"], np.float32), self.offset)
        out = {}
        if self.source == "colours":
            out["label"] = np.int32(scene_colours(raw)[0])
        elif self.kind == "label":
            label = int(np.asarray(self._field(example, "label")))
            if not 0 <= label < len(COLOURS):
                raise ValueError(f"scene {_sid(example)!r}: label {label} outside 0..{len(COLOURS) - 1}")
            out["label"] = np.int32(label)
        if self.kind == "text":
            out["text_tokens"], out["text_mask"] = self.text_features(self.caption(example, raw))
        elif self.kind == "image":
            out["cond_image"] = self.image(example, raw)
        return out


def check_rows(config, stage1_config, output_shape) -> int:
    """The row offset of ``config.data`` (``row_offset``), checked against the frozen tokenizer: the same row
    layout as its stage-1 run's data, ``model.input_offset`` equal to the offset, ``num_gaussians`` equal to the
    decoder's. Returns the offset."""
    offset = row_offset(config.data)
    rows = (config.data.get("gaussians") or {}).get("rows", "raw")
    s1_rows = ((stage1_config.get("data") or {}).get("gaussians") or {}).get("rows", "raw")
    if rows != s1_rows:
        raise ValueError(f"config.data.gaussians.rows={rows!r}, but the stage-1 tokenizer was trained on "
                         f"rows={s1_rows!r}: use the stage-1 run's data section (configs/can3tok_ldm.py: the "
                         f"matching stage1=...)")
    mc = stage1_config.get("model") or {}
    want = mc.get("input_offset", C3T_VARIANTS.get(mc.get("variant", "tiny"), {}).get("input_offset"))
    if want is not None and int(want) != offset:
        raise ValueError(f"config.data.gaussians.rows={rows!r} has {offset} columns before the raw channels; the "
                         f"tokenizer reads them at model.input_offset={want}")
    n_data = (config.data.get("gaussians") or {}).get("num_gaussians")
    if n_data is not None and int(n_data) != output_shape[0]:
        raise ValueError(f"config.data.gaussians.num_gaussians={n_data} must equal the tokenizer's "
                         f"num_gaussians={output_shape[0]} (stage-1 config.model)")
    return offset


def example_transform(conditions: SceneConditions, what: str):
    """The per-example transform of the Can3Tok stage-2 tasks: the rows ``gaussians`` (N, offset + C) and the
    numeric conditioning fields of ``conditions`` (strings dropped: the batch is numeric)."""
    def transform(example: dict) -> dict:
        if "gaussians" not in example:
            raise ValueError(f"{what} example: expected a 'gaussians' field (N, C), got {sorted(example)}")
        return {"gaussians": np.asarray(example["gaussians"], np.float32), **conditions(example)}
    return transform


class LatentDiffusion(nnx.Module):
    """The stage-2 model: ``dit`` (LatentDiT), ``cond`` (a cond_encoders encoder or None) and ``tokenizer`` (the
    frozen stage-1 model)."""

    def __init__(self, dit: LatentDiT, cond, tokenizer):
        self.dit, self.cond, self.tokenizer = dit, cond, tokenizer

    def velocity(self, x, t, cond_inputs: dict | None = None, drop=None):
        tokens = mask = None
        if self.cond is not None:
            tokens, mask = self.cond(cond_inputs, drop=drop)
            mask = mask[:, None, None, :]
        return self.dit(x, t, cond=tokens, cond_mask=mask)[0]


class LatentFlowTask(_Flow):
    """Latent diffusion on a frozen stage-1 tokenizer's latents (module docstring). Config fields: tokenizer,
    model (LatentDiT), cond, flow, data.gaussians, render."""

    def __init__(self, config):
        self.config = config
        tc = config.tokenizer
        self.workdir, self.stage1 = stage1.resolve(config, stage2="generate", expected="autoencode")
        # The stage-1 model is seen only through its Tokenizer adapter (bound to model.tokenizer when used).
        self.tokenizer = stage1.tokenizer(self.stage1, scale=float(tc.get("scale", 1.0)),
                                          sample_posterior=bool(tc.get("sample_posterior", False)))
        self.scale = self.tokenizer.scale
        self.latent_shape = self.tokenizer.token_shape
        self.output_shape = self.tokenizer.output_shape
        self.offset = check_rows(config, self.stage1, self.output_shape)
        flow_objective(config)  # validates config.flow
        cc = config.get("cond") or ml_collections.ConfigDict({"kind": "none"})
        self.cond_kind = cc.get("kind", "none")
        if self.cond_kind not in ("none",) + cond_encoders.ENCODERS:
            raise ValueError(f"config.cond.kind: unknown {self.cond_kind!r} (known: none, "
                             f"{', '.join(cond_encoders.ENCODERS)})")
        self.cond_config = cc
        self.conditions = SceneConditions(cc, config.data, self.cond_kind)
        self.image_size = self.conditions.image_size

    # -- conditioning (host side) ------------------------------------------------------------------------------
    @property
    def text_backbone(self):
        return self.conditions.text_backbone

    def cond_spec(self) -> dict:
        if self.cond_kind == "label":
            return {"kind": "label", "num_classes": len(COLOURS)}
        if self.cond_kind == "text":
            return {"kind": "text", "backbone_dim": self.text_backbone.dim}
        if self.cond_kind == "image":
            return {"kind": "image", "image_size": self.image_size, "patch": int(self.cond_config.get("patch", 8)),
                    "pool": self.cond_config.get("pool", "mean")}
        return {"kind": "none"}

    def cond_inputs(self, values: Sequence) -> dict:
        """Conditioning inputs for sampling from user values (one per sample): label -> a colour name or index;
        text -> a caption; image -> an image path or an (H, W, 3) array in [0, 1] (resized to image_size)."""
        values = list(values)
        if self.cond_kind == "none":
            return {}
        if self.cond_kind == "label":
            out = []
            for v in values:
                v = str(v).strip().lower()
                if v.isdigit() and int(v) < len(COLOURS):
                    out.append(int(v))
                elif v in COLOURS:
                    out.append(COLOURS.index(v))
                else:
                    raise ValueError(f"label condition {v!r}: expected a colour of {COLOURS} or an index "
                                     f"0..{len(COLOURS) - 1}")
            return {"label": np.asarray(out, np.int32)}
        if self.cond_kind == "text":
            tokens, mask = self.text_backbone([str(v) for v in values])
            return {"text_tokens": tokens, "text_mask": mask}
        images = [load_image(v, self.image_size) for v in values]
        return {"cond_image": np.stack(images).astype(np.float32)}

    def data_transforms(self, split: str):
        return [example_transform(self.conditions, "latent generation")]

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> LatentDiffusion:
        tokenizer = stage1.frozen_tokenizer(self.stage1, rngs)
        return LatentDiffusion(*self.build_generator(rngs), tokenizer)

    def build_generator(self, rngs: nnx.Rngs):
        """(LatentDiT, condition encoder or None): the trainable part of the model."""
        mc = self.config.model
        kw = dict(dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                         param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"))
        variant = mc.get("variant", "S")
        if variant not in DIT_VARIANTS:
            raise ValueError(f"config.model.variant: unknown LatentDiT variant {variant!r} ({sorted(DIT_VARIANTS)})")
        width = int(mc.get("width") or DIT_VARIANTS[variant]["width"])
        cond = cond_encoders.make_cond_encoder(self.cond_spec(), width, rngs=rngs, **kw)
        t, e = self.latent_shape
        dit = LatentDiT(in_dim=e, num_tokens=t, variant=variant, width=width, depth=mc.get("depth"),
                        heads=mc.get("heads"), num_classes=0, cond_dim=width if cond is not None else 0,
                        pos=mc.get("pos", "learned"), qk_norm=mc.get("qk_norm", True),
                        attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                        remat=mc.get("remat", "none"), rngs=rngs, **kw)
        return dit, cond

    def restore_pretrained(self, params):
        """Fill the frozen tokenizer of a fresh run's (sharded) state from ``tokenizer.workdir``."""
        return stage1.restore_tokenizer(params, "tokenizer", self.config.tokenizer, self.workdir, name="tokenizer")

    # -- latents -----------------------------------------------------------------------------------------------
    def _cond_inputs(self, batch) -> dict:
        if self.cond_kind == "none":
            return {}
        keys = {"label": ("label",), "text": ("text_tokens", "text_mask"), "image": ("cond_image",)}[self.cond_kind]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"config.cond.kind={self.cond_kind!r}: batch lacks {missing} (has {sorted(batch)}); "
                             "are the task's data_transforms applied?")
        return {k: batch[k] for k in keys}

    def encode(self, model: LatentDiffusion, batch: dict, rng=None):
        """-> (x0 (B, T, E) = scale * z, z (B, latent_dim)) from the frozen tokenizer (no gradient)."""
        rows = batch["gaussians"]
        if rows.ndim != 3 or rows.shape[2] != self.offset + self.output_shape[1]:
            raise ValueError(f"batch['gaussians']: expected (B, N, {self.offset + self.output_shape[1]}) rows "
                             f"({self.offset} prefix columns + {self.output_shape[1]} raw channels) for the "
                             f"tokenizer, got {tuple(rows.shape)}")
        tokens = self.tokenizer.bind(model.tokenizer).encode({"gaussians": rows}, rng)
        return self.scale * tokens, tokens.reshape(tokens.shape[0], -1)

    def decode(self, model: LatentDiffusion, x0: jax.Array) -> jax.Array:
        """Latent tokens (B, T, E) -> raw Gaussians (B, N, C) (float32)."""
        return self.tokenizer.bind(model.tokenizer).decode(x0 / self.scale)["gaussians"]

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, model, batch, rng, step=None):
        r_enc, r_t, r_eps, r_drop = jax.random.split(rng, 4)
        x0, z = self.encode(model, batch, r_enc)
        fm = self.flow
        t, eps, xt = fm.draw(x0, r_t, r_eps)
        v = model.velocity(xt, t, self._cond_inputs(batch), fm.drop(r_drop, x0.shape[0]))
        loss, _ = fm.loss(v, x0, eps, t)
        std = jnp.std(z)
        return loss, {"x0_rmse": jnp.sqrt(jnp.mean(jnp.square(fm.x0(v, xt, t) - x0))),
                      "latent_std": std, "latent_mean": jnp.mean(z), "suggested_scale": 1.0 / jnp.maximum(std, 1e-12),
                      "x0_std": jnp.std(x0)}

    def evaluate(self, model, batch, rng):
        """Velocity loss at fixed times with the condition kept, for one batch."""
        x0, _ = self.encode(model, batch)
        fm = self.flow
        cond, keep = self._cond_inputs(batch), jnp.zeros((x0.shape[0],), bool)
        return fm.fixed_time_losses(lambda x, t: model.velocity(x, t, cond, keep), x0, fm.noise(rng, x0),
                                    (0.1, 0.5, 0.9))

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample_latents(self, model, rng, *, num: int, cond_inputs: dict | None = None, num_steps=None,
                       method=None, cfg_scale=None) -> jax.Array:
        """``num`` latents (num, T, E) from noise drawn with ``rng``, conditioned on ``cond_inputs`` (batch
        fields of ``num`` examples, see ``cond_inputs``) with classifier-free guidance."""
        if self.cond_kind != "none" and not cond_inputs:
            raise ValueError(f"config.cond.kind={self.cond_kind!r}: sampling needs cond_inputs (task.cond_inputs)")
        noise = jax.random.normal(rng, (num,) + self.latent_shape)
        graphdef, state = nnx.split(model)

        def velocity(drop: bool):
            return lambda x, t: nnx.merge(graphdef, state).velocity(x, t, cond_inputs, jnp.full((num,), drop))

        uncond = velocity(True) if self.cond_kind != "none" else None
        return self.flow.sample(velocity(False), noise, uncond_fn=uncond, num_steps=num_steps, method=method,
                                cfg_scale=cfg_scale)

    def sample(self, model, rng, *, num: int, cond_inputs: dict | None = None, num_steps=None, method=None,
               cfg_scale=None) -> jax.Array:
        """``num`` sampled scenes as raw Gaussians (num, N, C)."""
        x0 = self.sample_latents(model, rng, num=num, cond_inputs=cond_inputs, num_steps=num_steps, method=method,
                                 cfg_scale=cfg_scale)
        return self.decode(model, x0)

    def images(self, model, batch, rng):
        """``samples``: preview renders of scenes sampled with the first eval examples' conditions; ``data``:
        the same examples."""
        n = min(int(self.config.get("num_sample_images", 4)), int(batch["gaussians"].shape[0]))
        cond = {k: v[:n] for k, v in self._cond_inputs(batch).items()}
        rows = nnx.jit(lambda m, r, c: self.sample(m, r, num=n, cond_inputs=c))(model, rng, cond)
        size = int((self.config.get("render") or {}).get("size", 64))
        data = raw_rows(np.asarray(jax.device_get(batch["gaussians"]), np.float32)[:n], self.offset)
        out = {}
        for name, scenes in (("samples", np.asarray(jax.device_get(rows), np.float32)), ("data", data)):
            out[name] = image_grid(np.stack([render_preview(s, size, self.conditions.radius) * 2.0 - 1.0
                                             for s in scenes]))
        return out
