"""SceneTok stage 1: the Scene Perceiver compressor and the rectified-flow decoder, trained jointly on posed views.

An example (after the data's ``MultiViewTransform`` and this task's ``flatten_views``) holds Vc context and M
target views: ``context_images`` / ``target_images`` (V, H, W, 3) in [-1, 1], ``*_c2w`` (V, 4, 4) OpenCV and
``*_intrinsics`` (V, 4) normalised. Poses are expressed in the frame of the first context camera (the data does
it with ``views.relative_poses``; the task applies ``relative_to_reference`` again, a no-op then, so data without
it is normalised too) and the scene scale is normalised by the data (``views.scale_mode``).

Image latents come from an image compressor (``config.image_compressor``, ``get_image_compressor``):
  - ``kind='pixels'``: patchified pixels (``patch``, ``scale``), no weights: runs need no pretrained compressor;
  - ``kind='vavae'``: an ImageVAE (``variant`` 'f16c32' | 'tiny' + ImageVAE kwargs). ``weights``: an official
    VA-VAE checkpoint (safetensors / .pt) imported at the start of a run, then frozen; ``train=True``: trained
    from scratch alongside SceneTok by its own loss ``vae_recon_weight * MSE(recon) + vae_kl_weight * KL``
    (SceneTok sees its latents through a stop-gradient); neither: random and frozen (smoke tests only).
Context and target views share the compressor; its channels and latent grid set the SceneTok compressor's and
decoder's ``in_channels`` / ``input_size`` (and the decoder's ``temporal_downsample`` = 1: one camera per latent).

loss = flow-matching velocity loss of the decoder on the target latents (x_t = (1 - t) x0 + t eps, v = eps - x0,
one t per chunk of M / ``flow.num_chunks`` target views from ``flow.time_sampler``, the scene tokens replaced by
the null token with probability ``flow.null_prob``) + ``loss.kl_weight`` x KL of the K x d tokens (0 allowed)
[+ the VAE loss]. Evaluation encodes the context (posterior mean), renders the target views from the tokens alone
(Euler / Heun, ``flow.sample_steps``, ``flow.sample_shift``, CFG ``flow.cfg_scale``), decodes them to pixels and
reports PSNR / SSIM (and LPIPS, ``metrics.lpips``) against the ground truth, the mean-image baseline, the spread
of repeated renders (``metrics.render_samples``), plus the velocity loss at fixed times. ``images``: per scene one
row [context | target | rendered] (``views``) and [target | mean render | per-pixel std | error] (``uncertainty``);
``write_outputs``: an orbit GIF rendered from the tokens alone.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from scene3d import losses
from scene3d.core.config import check_keys, model_section
from scene3d.core.dtypes import dtype as _dtype
from scene3d.geometry import trajectories
from scene3d.metrics import image as image_metrics
from scene3d.metrics import lpips as lpips_lib
from scene3d.metrics.image import to_unit
from scene3d.models import image_vae, scenetok, tokenizers
from scene3d.models.tokenizers import RenderSpec, SceneTokModel
from scene3d.nn.frozen import freeze
from scene3d.render import plots, video
from scene3d.render.plots import signed_to_uint8 as uint8, view_rows

_MODEL_KEYS = frozenset({"name", "variant", "compressor", "decoder", "attn_impl", "scan", "remat", "dtype",
                         "param_dtype"})
# SceneTok fields the image compressor determines.
_DATA_FIELDS = ("in_channels", "input_size")




def _as_dict(x) -> dict:
    if x is None:
        return {}
    return dict(x.to_dict() if hasattr(x, "to_dict") else x)


# ================================================================================================ data

VIEW_FIELDS = ("images", "c2w", "intrinsics")


def flatten_views(example: dict) -> dict:
    """Grain map: a multi-view example -> flat numeric fields ``{context,target}_{images,c2w,intrinsics}`` (the
    string ``scene_id`` and optional depth / points are dropped: the jitted steps take numbers only)."""
    out = {}
    for part in ("context", "target"):
        if part not in example:
            raise ValueError(f"scenetok example: expected 'context' and 'target' views (a multi-view dataset: "
                             f"data.name in builtin | clips | captures), got fields {sorted(example)}")
        for k in VIEW_FIELDS:
            out[f"{part}_{k}"] = np.asarray(example[part][k], np.float32)
    if "scale" in example:
        out["scale"] = np.float32(example["scale"])
    return out


def check_views(batch: dict, name: str = "scenetok batch") -> None:
    """Clear errors for missing fields or inconsistent shapes of a flattened multi-view batch."""
    for part in ("context", "target"):
        keys = [f"{part}_{k}" for k in VIEW_FIELDS]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"{name}: missing {missing} (has {sorted(batch)}); are the task's data_transforms "
                             "applied?")
        im, c2w, k = (batch[key] for key in keys)
        if im.ndim != 5 or im.shape[-1] != 3:
            raise ValueError(f"{name}['{part}_images']: expected (B, V, H, W, 3), got {tuple(im.shape)}")
        if tuple(c2w.shape) != tuple(im.shape[:2]) + (4, 4):
            raise ValueError(f"{name}['{part}_c2w']: expected {tuple(im.shape[:2]) + (4, 4)}, got {tuple(c2w.shape)}")
        if tuple(k.shape) != tuple(im.shape[:2]) + (4,):
            raise ValueError(f"{name}['{part}_intrinsics']: expected {tuple(im.shape[:2]) + (4,)} normalised "
                             f"(fx/W, fy/H, cx/W, cy/H), got {tuple(k.shape)}")



def relative_to_first(context_c2w: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Host-side pose normalisation: poses (B, V, 4, 4) in the frame of context view 0 ((B, Vc, 4, 4))."""
    ref = np.linalg.inv(np.asarray(context_c2w, np.float64)[:, :1])
    return (ref @ np.asarray(c2w, np.float64)).astype(np.float32)


def orbit_cameras(render_config, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c2w (n, 4, 4), intrinsics (n, 4)): the orbit of ``render_config.orbit`` (num_frames, focus_depth,
    elevation_deg, arc_deg, radius) in the reference-camera frame, every frame with the (4,) ``intrinsics``."""
    oc = (render_config or {}).get("orbit") or {}
    c2w = trajectories.focus_orbit(int(oc.get("num_frames", 24)), float(oc.get("focus_depth", 1.0)),
                                   elevation_deg=float(oc.get("elevation_deg", 0.0)),
                                   arc_deg=float(oc.get("arc_deg", 360.0)), radius=oc.get("radius"))
    return c2w.astype(np.float32), np.broadcast_to(np.asarray(intrinsics, np.float32), (len(c2w), 4))


def write_orbit_gifs(frames: np.ndarray, render_config, out_dir: str) -> None:
    """``orbit_<i>.gif`` of each scene's frames (B, n, H, W, 3) in [-1, 1] at ``render_config.orbit.fps``."""
    fps = float(((render_config or {}).get("orbit") or {}).get("fps", 8.0))
    for i in range(len(frames)):
        video.write_gif(os.path.join(out_dir, f"orbit_{i}.gif"), uint8(frames[i]), fps=fps)


def _render_latents(spec: RenderSpec, model, tokens, c2w, intrinsics, rng):
    return spec.render(model.scenetok, tokens, c2w, intrinsics, rng)


def _render_pixels(spec: RenderSpec, model, tokens, c2w, intrinsics, rng):
    return model.pixels(_render_latents(spec, model, tokens, c2w, intrinsics, rng))


def _context_tokens(model, images, c2w, intrinsics):
    return model.tokens(images, scenetok.relative_to_reference(c2w), intrinsics)[0]


def _tile(x, n: int):
    """x repeated n times along the batch axis: row j * B + i is x[i]."""
    return jnp.concatenate([x] * n, axis=0)


def render_uncertainty(samples: int, first, gt, render_more, rng) -> dict:
    """The spread of ``samples`` renders of the same target views from the same tokens (SceneTok's uncertainty
    analysis: a rectified-flow renderer samples the unseen parts of a scene, so its per-pixel variance is high
    where the tokens do not determine the view).

    first: one render (B, M, H, W, C) in [0, 1]; gt: the ground truth; ``render_more(n, rng)`` gives n more renders
    of the same views tiled along the batch ((n * B, M, H, W, C), row j * B + i = view set i). Returns
    ``render_var`` (per-pixel, per-channel variance over the samples, averaged), ``render_std`` (per-pixel std,
    averaged), ``psnr_sample_mean`` (PSNR of the samples' mean image) and ``uncertainty_error_corr`` (Pearson
    correlation over pixels between the per-pixel std and the absolute error of the mean image: > 0 when the
    renderer is uncertain where it is wrong)."""
    more = render_more(samples - 1, rng).reshape((samples - 1,) + first.shape)
    stack = jnp.concatenate([first[None], more]).astype(jnp.float32)
    mean, var = jnp.mean(stack, axis=0), jnp.var(stack, axis=0)
    std_px = jnp.sqrt(jnp.mean(var, axis=-1)).ravel()
    err_px = jnp.mean(jnp.abs(mean - gt), axis=-1).ravel()
    ds, de = std_px - jnp.mean(std_px), err_px - jnp.mean(err_px)
    corr = jnp.sum(ds * de) / jnp.maximum(jnp.sqrt(jnp.sum(ds * ds) * jnp.sum(de * de)), 1e-12)
    return {"render_var": jnp.mean(var), "render_std": jnp.mean(std_px),
            "psnr_sample_mean": jnp.mean(image_metrics.psnr(mean, gt)), "uncertainty_error_corr": corr}


# Jitted once per process (compile caches shared by every task instance with the same settings and shapes).
render_pixels = nnx.jit(_render_pixels, static_argnums=0)
context_tokens_jit = nnx.jit(_context_tokens)


# ================================================================================================ model


# ================================================================================================ task


def _model_variant(config) -> str:
    """The SceneTok variant of ``config.model`` (its keys checked)."""
    mc = model_section(config, "scenetok", "scenetok", _MODEL_KEYS,
                       f"(sizes go in config.model.compressor / decoder: {sorted(scenetok.COMPRESSOR_KEYS)})")
    variant = mc.get("variant", "tiny")
    if variant not in scenetok.VARIANTS:
        raise ValueError(f"config.model.variant: unknown SceneTok variant {variant!r} "
                         f"(known: {sorted(scenetok.VARIANTS)})")
    return variant


class SceneTokTask:
    """SceneTok stage-1 training (module docstring). Config fields: image_compressor, model, flow, loss, render."""

    # Metrics of ``evaluate`` that mean something only over a batch of scenes (the mean-image baseline predicts every
    # target by the mean of all the batch's targets): ``scene3d.evaluate``'s per-example path leaves them out.
    batch_metrics = ("psnr_mean_image",)

    def __init__(self, config):
        self.config = config
        self.variant = _model_variant(config)
        self.ic = _as_dict(config.get("image_compressor")) or {"kind": "pixels", "patch": 8}
        self.train_vae = bool(self.ic.get("train", False))
        self.vae_weights = self.ic.get("weights") or None
        if self.ic.get("kind", "pixels") == "pixels" and (self.train_vae or self.vae_weights):
            raise ValueError("config.image_compressor: train / weights apply to kind='vavae' only")
        if self.train_vae and self.vae_weights:
            raise ValueError("config.image_compressor: set either train=True (from scratch) or weights (frozen)")
        views = _as_dict(config.data.get("views"))
        res = views.get("resolution")
        if res is None:
            raise ValueError("config.data.views.resolution: the scenetok task needs a fixed (h, w) view size")
        self.resolution = (int(res[0]), int(res[1]))
        self.num_context, self.num_target = int(views.get("num_context", 2)), int(views.get("num_target", 1))
        probe = nnx.eval_shape(lambda: self._build_image(nnx.Rngs(0)))
        f = int(probe.downsample)
        if self.resolution[0] % f or self.resolution[1] % f:
            raise ValueError(f"config.data.views.resolution {self.resolution} must be divisible by the image "
                             f"compressor's downsampling factor {f}")
        self.latent_grid = (self.resolution[0] // f, self.resolution[1] // f)
        self.latent_channels = int(probe.latent_channels)
        if self.latent_grid[0] != self.latent_grid[1]:
            raise ValueError(f"config.data.views.resolution {self.resolution}: SceneTok needs square latents, got "
                             f"{self.latent_grid}")
        self.compressor_cfg = self._overrides("compressor", dict(in_channels=self.latent_channels,
                                                                 input_size=self.latent_grid[0]))
        self.decoder_cfg = self._overrides("decoder", dict(in_channels=self.latent_channels,
                                                           input_size=self.latent_grid[0], temporal_downsample=1))
        self.flow = scenetok.flow_objective(config.get("flow"))
        if self.num_target % self.flow.num_chunks:
            raise ValueError(f"config.flow.num_chunks={self.flow.num_chunks} must divide data.views.num_target="
                             f"{self.num_target} (one noise level per chunk of target views)")
        lc = config.get("loss") or {}
        kl = lc.get("kl_weight")
        self.kl_weight = None if kl is None else float(kl)
        if self.kl_weight is not None and self.kl_weight < 0:
            raise ValueError(f"config.loss.kl_weight must be >= 0, got {self.kl_weight}")
        self.vae_recon_weight = float(lc.get("vae_recon_weight", 1.0))
        self.vae_kl_weight = float(lc.get("vae_kl_weight", 1e-6))
        mc = _as_dict(config.get("metrics"))
        self.render_samples = int(mc.get("render_samples", 1))
        if self.render_samples < 1:
            raise ValueError(f"config.metrics.render_samples must be >= 1, got {self.render_samples}")
        self.lpips = lpips_lib.from_config(mc.get("lpips"))

    def _overrides(self, part: str, derived: dict) -> dict:
        given = _as_dict(self.config.model.get(part))
        keys = scenetok.COMPRESSOR_KEYS if part == "compressor" else scenetok.DECODER_KEYS
        check_keys(given, keys, f"config.model.{part}")
        for k, v in derived.items():
            if k in given and given[k] != v:
                raise ValueError(f"config.model.{part}.{k}={given[k]} disagrees with the image latents ({k}={v} from "
                                 f"config.image_compressor and data.views.resolution); leave it unset")
        return dict(given, **derived)

    # -- model -------------------------------------------------------------------------------------------------
    def _build_image(self, rngs):
        cfg = {k: v for k, v in self.ic.items() if k not in ("train", "weights")}
        for k in ("ch_mult", "attn_levels"):
            if k in cfg:
                cfg[k] = tuple(cfg[k])
        return image_vae.get_image_compressor(cfg, rngs=rngs)

    def build_model(self, rngs: nnx.Rngs) -> SceneTokModel:
        mc = self.config.model
        image = self._build_image(rngs)
        if isinstance(image, image_vae.ImageVAE) and not self.train_vae:
            image = freeze(image)
        model = scenetok.SceneTok(variant=self.variant, compressor=self.compressor_cfg, decoder=self.decoder_cfg,
                                  attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                                  remat=mc.get("remat", "none"),
                                  dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                                  param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"),
                                  rngs=rngs)
        return SceneTokModel(image, model)

    def restore_pretrained(self, params):
        """Import the official VA-VAE weights (``image_compressor.weights``) into the frozen image compressor."""
        if self.ic.get("kind", "pixels") != "vavae" or self.train_vae:
            return params
        if not self.vae_weights:
            logging.warning("config.image_compressor: a frozen VA-VAE without weights is RANDOM (smoke tests only)")
            return params
        from scene3d.convert import image_vae as convert_image_vae
        vae = nnx.eval_shape(lambda: self._build_image(nnx.Rngs(0)))
        loaded, report = convert_image_vae.official_to_state(vae, convert_image_vae.load_official(self.vae_weights),
                                                              name=str(self.vae_weights))
        target = params["image"]
        values = jax.tree.map(lambda t, v: jax.device_put(jnp.asarray(v, t.dtype), t.sharding),
                              nnx.to_pure_dict(target), nnx.to_pure_dict(loaded))
        nnx.replace_by_pure_dict(target, values)
        params["image"] = target
        logging.info("image compressor: VA-VAE weights from %s (%s)", self.vae_weights, report)
        return params

    def data_transforms(self, split: str):
        return [flatten_views]

    # -- pieces ------------------------------------------------------------------------------------------------
    def prepare(self, model: SceneTokModel, batch: dict, rng=None) -> dict:
        """Flattened batch -> SceneTok.loss inputs: latents of both view sets (no gradient into the image
        compressor) and poses in the first context camera's frame."""
        check_views(batch)
        ctx_c2w, tgt_c2w = scenetok.relative_to_reference(jnp.asarray(batch["context_c2w"], jnp.float32),
                                                          jnp.asarray(batch["target_c2w"], jnp.float32))
        ctx = jax.lax.stop_gradient(model.latents(batch["context_images"]))
        tgt = jax.lax.stop_gradient(model.latents(batch["target_images"]))
        return dict(context_latents=ctx, context_c2w=ctx_c2w, context_intrinsics=batch["context_intrinsics"],
                    target_latents=tgt, target_c2w=tgt_c2w, target_intrinsics=batch["target_intrinsics"])

    def vae_loss(self, model: SceneTokModel, batch: dict, rng) -> tuple[jax.Array, dict]:
        """Reconstruction (+ KL) loss of a trainable VA-VAE on all views of the batch."""
        images = jnp.concatenate([batch["context_images"], batch["target_images"]], axis=1)
        flat = images.reshape((-1,) + images.shape[2:]).astype(jnp.float32)
        rec, aux = model.image(flat, rng)
        mse = jnp.mean(jnp.square(rec.astype(jnp.float32) - flat))
        kl = losses.kl_loss(aux["mean"], aux["logvar"], axes=None)
        loss = self.vae_recon_weight * mse + self.vae_kl_weight * kl
        return loss, {"vae_mse": mse, "vae_kl": kl, "vae_psnr": jnp.mean(image_metrics.psnr(
            to_unit(rec), to_unit(flat)))}

    def render_spec(self, *, num_steps=None, cfg_scale=None) -> RenderSpec:
        return tokenizers.render_spec(self.flow, self.latent_grid, num_steps=num_steps, cfg_scale=cfg_scale)

    def render(self, model: SceneTokModel, tokens, c2w, intrinsics, rng, *, num_steps=None, cfg_scale=None):
        """Target-view latents (B, M, h, w, C) for cameras (B, M, ...) from the scene tokens alone."""
        return _render_latents(self.render_spec(num_steps=num_steps, cfg_scale=cfg_scale), model, tokens, c2w,
                               intrinsics, rng)

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, model, batch, rng, step=None):
        r_loss, r_vae = jax.random.split(rng)
        inputs = self.prepare(model, batch)
        loss, aux = model.scenetok.loss(inputs, r_loss, flow=self.flow, kl_weight=self.kl_weight)
        metrics = {"flow_loss": aux["flow_loss"], "kl": aux["kl"],
                   "token_std": jnp.std(aux["mean"]), "token_logvar": jnp.mean(aux["logvar"]),
                   "latent_std": jnp.std(inputs["target_latents"])}
        if self.train_vae:
            vl, vm = self.vae_loss(model, batch, r_vae)
            loss = loss + vl
            metrics.update(vm)
        return loss, metrics

    def evaluate(self, model, batch, rng):
        """PSNR / SSIM of target views rendered from the context's tokens (``psnr_1step``: of the one-step
        conditional-mean estimate x0 = eps - v(eps, t=1)), the baselines ``psnr_mean_image`` (each target predicted
        by the per-pixel mean of the batch's targets) and ``psnr_context_mean`` (by the mean of its context views),
        LPIPS (``metrics.lpips`` set), the spread of ``metrics.render_samples`` renders of the same views
        (:func:`render_uncertainty`) and the velocity loss at t in (0.25, 0.5, 0.75)."""
        r_render, r_eps, r_repeat = jax.random.split(rng, 3)
        inputs = self.prepare(model, batch)
        tokens, aux = model.scenetok.encode(inputs["context_latents"], inputs["context_c2w"],
                                            inputs["context_intrinsics"], sample=False)
        lat = self.render(model, tokens, inputs["target_c2w"], inputs["target_intrinsics"], r_render)
        pred, gt = to_unit(model.pixels(lat)), to_unit(batch["target_images"])
        # One Euler step from t = 1: the decoder's conditional-mean estimate of the views from the tokens alone.
        noise = jax.random.normal(r_render, lat.shape, jnp.float32)
        ones = jnp.ones(lat.shape[:2], jnp.float32)
        v1, _ = model.scenetok.decoder(noise, ones, inputs["target_c2w"], inputs["target_intrinsics"], tokens)
        mean_view = to_unit(model.pixels(noise - v1))
        # Baselines. mean image: every target predicted by the per-pixel mean of all the batch's target views (the
        # best constant image for them); context mean: by the per-pixel mean of its own scene's context views
        # (scene-specific and given every context pixel, not a K x d bottleneck).
        mean_image = jnp.broadcast_to(jnp.mean(gt, axis=(0, 1), keepdims=True), gt.shape)
        context_mean = jnp.broadcast_to(jnp.mean(to_unit(batch["context_images"]), axis=1, keepdims=True), gt.shape)
        out = {"psnr": jnp.mean(image_metrics.psnr(pred, gt)), "ssim": jnp.mean(image_metrics.ssim(pred, gt)),
               "psnr_1step": jnp.mean(image_metrics.psnr(mean_view, gt)),
               "psnr_mean_image": jnp.mean(image_metrics.psnr(mean_image, gt)),
               "psnr_context_mean": jnp.mean(image_metrics.psnr(context_mean, gt)),
               "latent_mse": jnp.mean(jnp.square(lat - inputs["target_latents"])),
               "kl": jnp.mean(aux["kl"])}
        if self.lpips is not None:
            flat = lambda x: x.reshape((-1,) + x.shape[-3:]) * 2.0 - 1.0  # noqa: E731  LPIPS takes [-1, 1]
            out["lpips"] = jnp.mean(self.lpips(flat(pred), flat(gt)))
        if self.render_samples > 1:
            def render_more(n, key):
                cams = (_tile(inputs["target_c2w"], n), _tile(inputs["target_intrinsics"], n))
                return to_unit(model.pixels(self.render(model, _tile(tokens, n), *cams, key)))

            out.update(render_uncertainty(self.render_samples, pred, gt, render_more, r_repeat))
        x0 = inputs["target_latents"]
        cams = (inputs["target_c2w"], inputs["target_intrinsics"])
        out.update(self.flow.fixed_time_losses(lambda x, t: model.scenetok.decoder(x, t, *cams, tokens)[0], x0,
                                               self.flow.noise(r_eps, x0), name="val_flow_loss", per_view=True))
        if isinstance(model.image, image_vae.ImageVAE):  # the compressor's own ceiling on the PSNR
            out["compressor_psnr"] = jnp.mean(image_metrics.psnr(to_unit(model.pixels(x0)), gt))
        return out

    metric_kind = "r"  # scene3d.evaluate's rFID / rKID / rFVD: reconstructions of the inputs

    def metric_frames(self, model, batch, rng) -> dict:
        """``scene3d.evaluate``'s FID / KID / FVD frames: the target views rendered from the context's tokens (the
        key of :meth:`evaluate`'s renders: the same images) vs the ground truth, (B, V, H, W, 3) in [-1, 1]."""
        r_render, _, _ = jax.random.split(rng, 3)
        inputs = self.prepare(model, batch)
        tokens, _ = model.scenetok.encode(inputs["context_latents"], inputs["context_c2w"],
                                          inputs["context_intrinsics"], sample=False)
        lat = self.render(model, tokens, inputs["target_c2w"], inputs["target_intrinsics"], r_render)
        return {"fake": model.pixels(lat), "real": batch["target_images"]}

    # -- figures and files -------------------------------------------------------------------------------------
    def _num_scenes(self, batch) -> int:
        return min(int((self.config.get("render") or {}).get("num_scenes", 2)),
                   int(batch["context_images"].shape[0]))

    def context_tokens(self, model: SceneTokModel, batch: dict) -> jax.Array:
        """Posterior-mean scene tokens (B, K, d) of a batch's context views (host or device arrays)."""
        return context_tokens_jit(model, *(jnp.asarray(batch[k], jnp.float32) for k in
                                           ("context_images", "context_c2w", "context_intrinsics")))

    def render_views(self, model: SceneTokModel, tokens, c2w: np.ndarray, intrinsics: np.ndarray, rng
                     ) -> np.ndarray:
        """Images (B, n, H, W, 3) in [-1, 1] (unclipped) for cameras (B, n, 4, 4) / (B, n, 4) in context view 0's
        frame, from scene tokens (B, K, d) alone, ``data.views.num_target`` views per decoder call (the number it
        was trained on; the last chunk repeats its final camera), one key per chunk from ``rng``."""
        c2w, intrinsics = np.asarray(c2w, np.float32), np.asarray(intrinsics, np.float32)
        n, m = c2w.shape[1], self.num_target
        chunks = math.ceil(n / m)
        idx = np.minimum(np.arange(chunks * m), n - 1)
        spec = self.render_spec()
        keys = jax.random.split(rng, chunks) if chunks > 1 else rng[None]
        out = [np.asarray(jax.device_get(render_pixels(spec, model, tokens, jnp.asarray(c2w[:, idx[j * m:(j + 1) * m]]),
                                                       jnp.asarray(intrinsics[:, idx[j * m:(j + 1) * m]]), keys[j])))
               for j in range(chunks)]
        return np.concatenate(out, axis=1)[:, :n]

    def images(self, model, batch, rng):
        """``views``: one row per scene, [context | target | rendered from the context's tokens]."""
        k = self._num_scenes(batch)
        if k <= 0:
            return {}
        host = {key: np.asarray(jax.device_get(batch[key]))[:k] for key in batch}
        tokens = self.context_tokens(model, host)
        rendered = self.render_views(model, tokens, relative_to_first(host["context_c2w"], host["target_c2w"]),
                                     host["target_intrinsics"], rng)
        rows = [[uint8(host["context_images"][i]), uint8(host["target_images"][i]), uint8(rendered[i])]
                for i in range(k)]
        out = {"views": view_rows(rows)}
        if self.render_samples > 1:
            out["uncertainty"] = self.uncertainty_figure(model, host, tokens, rng)
        return out

    def uncertainty_figure(self, model, host: dict, tokens, rng) -> np.ndarray:
        """One row per scene: [target | mean of ``metrics.render_samples`` renders | per-pixel std | |error| of
        the mean] (std and error on the same colour scale, dark blue 0 -> yellow at the largest error)."""
        r, k = self.render_samples, int(tokens.shape[0])
        c2w = relative_to_first(host["context_c2w"], host["target_c2w"])
        tile = lambda x: np.concatenate([np.asarray(x)] * r, axis=0)  # noqa: E731
        samples = self.render_views(model, tile(tokens), tile(c2w), tile(host["target_intrinsics"]), rng)
        samples = (np.clip(samples, -1, 1).reshape((r, k) + samples.shape[1:]) + 1) / 2
        gt = (np.asarray(host["target_images"], np.float32) + 1) / 2
        mean, std = samples.mean(0), np.sqrt(samples.var(0).mean(-1))
        err = np.abs(mean - gt).mean(-1)
        top = max(float(err.max()), 1e-6)
        rows = [[uint8(host["target_images"][i]), uint8(mean[i] * 2 - 1), plots.heatmap(std[i], top),
                 plots.heatmap(err[i], top)] for i in range(k)]
        return view_rows(rows)

    def orbit(self, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The orbit of ``render.orbit`` (reference-camera frame) with the given (4,) intrinsics for every frame."""
        return orbit_cameras(self.config.get("render"), intrinsics)

    def write_orbits(self, model, tokens, intrinsics: np.ndarray, rng, out_dir: str) -> None:
        """``orbit_<i>.gif`` for each scene's tokens (B, K, d): the orbit of ``render.orbit`` with ``intrinsics``
        (4,), rendered from the tokens alone."""
        c2w, intr = self.orbit(intrinsics)
        b = int(tokens.shape[0])
        frames = self.render_views(model, tokens, np.broadcast_to(c2w, (b,) + c2w.shape),
                                   np.broadcast_to(intr, (b,) + intr.shape), rng)
        write_orbit_gifs(frames, self.config.get("render"), out_dir)

    def write_outputs(self, model, batch, rng, out_dir):
        """``orbit_<i>.gif``: the orbit of ``render.orbit`` rendered from scene i's tokens alone; ``context_<i>.png``:
        its context views."""
        k = self._num_scenes(batch)
        if k <= 0:
            return
        os.makedirs(out_dir, exist_ok=True)
        host = {key: np.asarray(jax.device_get(batch[key]))[:k] for key in
                ("context_images", "context_c2w", "context_intrinsics")}
        self.write_orbits(model, self.context_tokens(model, host), host["context_intrinsics"][0, 0], rng, out_dir)
        from PIL import Image
        for i in range(k):
            Image.fromarray(view_rows([[uint8(host["context_images"][i])]])).save(
                os.path.join(out_dir, f"context_{i}.png"))



# ================================================================================================ release layout
#
# ``config.layout = 'release'``: SceneTok trained as the release trains it, on precomputed video-autoencoder target
# latents (``data.name = 'target_latents'``, written by ``python -m scene3d.data.encode_targets``; the examples come
# from ``scene3d.data.target_latents.ReleaseViewTransform``: farthest-point context views over the whole clip, 8
# contiguous target latents in 1-2 chunks, 50% mirrored clips, poses relative to a random context camera).
#
# Model: ``scene3d.models.scenetok_release.ReleaseSceneTok`` = SceneTok (decoder: 4 cameras per latent) + the frozen
# context image compressor (``image_compressor``; the VA-VAE f16c32 normalised with the release's statistics) +
# the frozen target autoencoder (``target``: kind, variant, overrides, weights, config, seed; the dataset's, checked
# against its target_latents.json), used to decode rendered latents for the figures and image metrics.
#
# loss = velocity loss of the decoder on the target latents (x ``release.latent_scale``) with one time per chunk of
# M / ``flow.num_chunks`` latents (the release's random_chunked_uniform), all chunks of an example sharing one
# time with probability ``release.shared_time_prob`` (its enforce_uniform_noise: 0.2), the scene tokens a
# posterior sample of the compressor and its context latents a VA-VAE posterior sample (``release.
# context_sample``), + kl_weight x KL. Optimiser recipe (configs/scenetok.py release variants): multistep LR,
# clipping at 0.05, steps whose mean per-tensor gradient norm exceeds 1 skipped (scene3d.train).

RELEASE_TARGET_KEYS = frozenset({"kind", "variant", "overrides", "weights", "config", "seed"})
RELEASE_KEYS = frozenset({"shared_time_prob", "latent_scale", "context_sample"})
LAYOUTS = ("views", "release")


def make_task(config):
    """The scenetok task for ``config.layout``: 'views' (default: SceneTokTask, posed views through one image
    compressor) or 'release' (ReleaseSceneTokTask: precomputed video target latents)."""
    layout = config.get("layout", "views") or "views"
    if layout not in LAYOUTS:
        raise ValueError(f"config.layout must be one of {LAYOUTS}, got {layout!r}")
    return ReleaseSceneTokTask(config) if layout == "release" else SceneTokTask(config)


def _target_spec(cfg) -> dict:
    t = _as_dict(cfg)
    check_keys(t, RELEASE_TARGET_KEYS, "config.target")
    t = {**dict(kind="videodc", variant="dc-ae-f32t4c128", overrides={}, weights=None, config=None, seed=None), **t}
    t["overrides"] = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in _as_dict(t["overrides"]).items()}
    if t["kind"] != "videodc":
        raise ValueError(f"config.target.kind: the release layout trains on 'videodc' target latents here (the "
                         f"release's Wan view sampler is not ported), got {t['kind']!r}")
    return t


def build_target_autoencoder(spec: dict, rngs_seed: int | None = None):
    """The Video DC-AE of a ``config.target`` spec (random from ``seed`` until weights are imported)."""
    from scene3d.models.video_dcae import VideoDCAE
    seed = spec.get("seed") if rngs_seed is None else rngs_seed
    if spec.get("config"):  # another architecture's official config.json
        from scene3d.convert import video_dcae as convert_video_dcae
        return VideoDCAE(rngs=nnx.Rngs(int(seed or 0)), **convert_video_dcae.load_config(spec["config"]))
    return VideoDCAE(spec.get("variant") or "dc-ae-f32t4c128", rngs=nnx.Rngs(int(seed or 0)),
                     **dict(spec.get("overrides") or {}))


def target_autoencoder_sizes(spec: dict) -> tuple[int, int, int]:
    """(spatial compression, temporal compression, latent channels) of a ``config.target`` Video DC-AE, from its
    architecture table (what VideoDCAE derives; no model built)."""
    from scene3d.specs import video_dcae as spec_lib
    if spec.get("config"):
        from scene3d.convert import video_dcae as convert_video_dcae
        hp = convert_video_dcae.load_config(spec["config"])
    else:
        variant = spec.get("variant") or "dc-ae-f32t4c128"
        if variant not in spec_lib.VARIANTS:
            raise ValueError(f"config.target.variant: unknown Video DC-AE variant {variant!r} "
                             f"(known: {sorted(spec_lib.VARIANTS)})")
        hp = dict(spec_lib.VARIANTS[variant], **dict(spec.get("overrides") or {}))
    n = len(hp["width_list"])
    return 2 ** (n - 1), 2 ** sum(bool(t) for t in tuple(hp["temporal"])[:-1]), int(hp["latent_channels"])


def _put_loaded(target, loaded):
    values = jax.tree.map(lambda t, v: jax.device_put(jnp.asarray(v, t.dtype), t.sharding),
                          nnx.to_pure_dict(target), nnx.to_pure_dict(loaded))
    nnx.replace_by_pure_dict(target, values)
    return target


class ReleaseSceneTokTask:
    """SceneTok in the release's training layout (the comment above). Config: layout='release', data (name
    'target_latents', path, resolution, views), image_compressor, target, model, flow, release, loss, metrics."""

    batch_metrics = ("latent_mse_mean_latent",)

    def __init__(self, config):
        from scene3d.data import target_latents as tl
        from scene3d.models import scenetok_release
        self.config = config
        self.variant = _model_variant(config)
        dc = config.data
        if dc.get("name") != "target_latents":
            raise ValueError(f"config.data.name: the release layout reads precomputed target latents "
                             f"('target_latents', written by scene3d.data.encode_targets), got {dc.get('name')!r}")
        res = dc.get("resolution")
        if res is None or len(tuple(res)) != 2:
            raise ValueError("config.data.resolution: the release layout needs the (h, w) of the encoded frames")
        self.resolution = (int(res[0]), int(res[1]))
        self.views = tl.ReleaseViewConfig.from_config(dc.get("views"))
        self.num_context, self.num_target = self.views.num_context, self.views.num_target
        self.ic = _as_dict(config.get("image_compressor")) or {"kind": "vavae", "variant": "f16c32"}
        if self.ic.get("train"):
            raise ValueError("config.image_compressor.train: the release layout keeps the context compressor frozen")
        self.vae_weights = self.ic.get("weights") or None
        self.target = _target_spec(config.get("target"))
        rc = _as_dict(config.get("release"))
        check_keys(rc, RELEASE_KEYS, "config.release")
        self.shared_time_prob = float(rc.get("shared_time_prob", 0.2))
        self.latent_scale = float(rc.get("latent_scale", 1.0))
        self.context_sample = bool(rc.get("context_sample", True))
        if not 0.0 <= self.shared_time_prob <= 1.0:
            raise ValueError(f"config.release.shared_time_prob must be in [0, 1], got {self.shared_time_prob}")
        # Sizes: context latents from the image compressor, target latents from the target autoencoder (from their
        # architecture tables: building even abstract models here costs seconds).
        f, image_channels = self._image_sizes()
        if self.resolution[0] % f or self.resolution[1] % f or self.resolution[0] != self.resolution[1]:
            raise ValueError(f"config.data.resolution {self.resolution} must be square and divisible by the image "
                             f"compressor's downsampling factor {f}")
        self.context_grid = (self.resolution[0] // f,) * 2
        fa, ft, self.latent_channels = target_autoencoder_sizes(self.target)
        if self.resolution[0] % fa:
            raise ValueError(f"config.data.resolution {self.resolution} must be divisible by the target "
                             f"autoencoder's {fa}x compression")
        self.latent_grid = (self.resolution[0] // fa,) * 2
        if ft != 4:
            raise ValueError(f"config.target: the release layout needs 4 frames per latent, the autoencoder "
                             f"compresses time {ft}x")
        self.compressor_cfg = SceneTokTask._overrides(self, "compressor", dict(
            in_channels=image_channels, input_size=self.context_grid[0]))
        self.decoder_cfg = SceneTokTask._overrides(self, "decoder", dict(
            in_channels=self.latent_channels, input_size=self.latent_grid[0], temporal_downsample=4))
        self.flow = scenetok.flow_objective(config.get("flow"))
        if self.num_target % self.flow.num_chunks:
            raise ValueError(f"config.flow.num_chunks={self.flow.num_chunks} must divide data.views.num_target="
                             f"{self.num_target} (one noise level per chunk of target latents)")
        lc = config.get("loss") or {}
        kl = lc.get("kl_weight")
        self.kl_weight = None if kl is None else float(kl)
        self.lpips = lpips_lib.from_config(_as_dict(config.get("metrics")).get("lpips"))
        self._check_dataset(tl, scenetok_release)

    def _check_dataset(self, tl, scenetok_release) -> None:
        """The dataset at data.path (when written) must hold latents of this config's autoencoder and size."""
        import json
        path = self.config.data.get("path")
        if not path or not tl.settings_path(path).is_file():
            return
        s = tl.read_settings(path)
        ae = s.get("autoencoder") or {}
        want = dict(kind=self.target["kind"], resolution=list(self.resolution),
                    latent_shape=[*self.latent_grid, self.latent_channels])
        got = dict(kind=s.get("kind"), resolution=s.get("resolution"), latent_shape=s.get("latent_shape"))
        random_cfg, random_data = not self.target.get("weights"), not ae.get("weights")
        if random_cfg and random_data:
            want.update(variant=self.target["variant"], seed=int(self.target.get("seed") or 0),
                        overrides=json.loads(json.dumps(self.target["overrides"])))
            got.update(variant=ae.get("variant"), seed=ae.get("seed"), overrides=ae.get("overrides"))
        bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if random_cfg != random_data:
            bad["weights"] = (ae.get("weights"), self.target.get("weights"))
        if bad:
            raise ValueError(f"config.data.path={path}: the dataset was encoded with other settings than "
                             f"config.target / data.resolution ({{field: (dataset, config)}}: {bad})")

    def _image_sizes(self) -> tuple[int, int]:
        """(downsampling factor, latent channels) of the context image compressor."""
        kind = self.ic.get("kind", "pixels")
        if kind == "pixels":
            p = int(self.ic.get("patch", 16))
            return p, p * p * int(self.ic.get("in_channels", 3))
        if kind != "vavae":
            raise ValueError(f"config.image_compressor.kind must be 'vavae' or 'pixels', got {kind!r}")
        variant = self.ic.get("variant", "tiny")
        if variant not in image_vae.VARIANTS:
            raise ValueError(f"config.image_compressor.variant: unknown {variant!r} (known: "
                             f"{sorted(image_vae.VARIANTS)})")
        v = dict(image_vae.VARIANTS[variant], **{k: self.ic[k] for k in ("ch_mult", "embed_dim") if
                                                  self.ic.get(k) is not None})
        return 2 ** (len(tuple(v["ch_mult"])) - 1), int(v["embed_dim"])

    # -- model -------------------------------------------------------------------------------------------------
    def _build_image(self, rngs):
        from scene3d.models import scenetok_release
        cfg = {k: v for k, v in self.ic.items() if k not in ("train", "weights")}
        for k in ("ch_mult", "attn_levels"):
            if k in cfg:
                cfg[k] = tuple(cfg[k])
        if cfg.get("kind", "pixels") == "vavae" and cfg.get("variant") == "f16c32":
            for k, v in scenetok_release.vavae_stats().items():  # the release's VA-VAE latent normalisation
                cfg.setdefault(k, v)
        return image_vae.get_image_compressor(cfg, rngs=rngs)

    def build_model(self, rngs: nnx.Rngs):
        from scene3d.models.scenetok_release import ReleaseSceneTok
        mc = self.config.model
        image = self._build_image(rngs)
        if isinstance(image, image_vae.ImageVAE):
            image = freeze(image)
        model = scenetok.SceneTok(variant=self.variant, compressor=self.compressor_cfg, decoder=self.decoder_cfg,
                                  attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                                  remat=mc.get("remat", "none"),
                                  dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                                  param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"),
                                  rngs=rngs)
        return ReleaseSceneTok(model, image, freeze(build_target_autoencoder(self.target)), self.target["kind"])

    def restore_pretrained(self, params):
        """Official weights into the frozen parts: the VA-VAE (``image_compressor.weights``) and the target
        autoencoder (``target.weights``: the official safetensors layout; ``target.config`` for another
        architecture's config.json)."""
        if self.ic.get("kind", "pixels") == "vavae":
            if not self.vae_weights:
                logging.warning("config.image_compressor: a frozen VA-VAE without weights is RANDOM (smoke tests only)")
            else:
                from scene3d.convert import image_vae as convert_image_vae
                vae = nnx.eval_shape(lambda: self._build_image(nnx.Rngs(0)))
                loaded, report = convert_image_vae.official_to_state(
                    vae, convert_image_vae.load_official(self.vae_weights), name=str(self.vae_weights))
                params["vavae"] = _put_loaded(params["vavae"], loaded)
                logging.info("context compressor: VA-VAE weights from %s (%s)", self.vae_weights, report)
        weights = self.target.get("weights")
        if not weights:
            logging.warning("config.target: the target autoencoder is RANDOM (seed %s): decoded frames and image "
                            "metrics are meaningless unless the dataset was encoded with the same random one",
                            self.target.get("seed"))
            return params
        from scene3d.convert import engine, video_dcae as convert_video_dcae
        ae = nnx.eval_shape(lambda: build_target_autoencoder(self.target, 0))
        sd, name = engine.read(weights)
        loaded, report = convert_video_dcae.official_to_state(ae, sd, name=name)
        params["target"] = _put_loaded(params["target"], loaded)
        logging.info("target autoencoder: Video DC-AE weights from %s (%s)", weights, report)
        return params

    def data_transforms(self, split: str):
        return []  # the data's ReleaseViewTransform gives flat numeric examples

    # -- training ----------------------------------------------------------------------------------------------
    def chunk_times(self, rng, batch: int, views: int) -> jax.Array:
        """(B, M) training times: one per chunk of M / num_chunks latents; with probability shared_time_prob all
        chunks of an example share the first chunk's time."""
        r_t, r_s = jax.random.split(rng)
        t = self.flow.sample_times(r_t, batch, views)
        if self.shared_time_prob > 0 and self.flow.num_chunks > 1:
            shared = jax.random.bernoulli(r_s, self.shared_time_prob, (batch, 1))
            t = jnp.where(shared, t[:, :1], t)
        return t

    def _context_tokens(self, model, batch, rng=None):
        """(tokens, aux): a posterior sample with ``rng`` (training), the mean without."""
        r_ctx = r_tok = None
        if rng is not None:
            r_ctx, r_tok = jax.random.split(rng)
        lat = model.context_latents(batch["context_images"], r_ctx if self.context_sample else None)
        lat = jax.lax.stop_gradient(lat)
        return model.scenetok.encode(lat, batch["context_c2w"], batch["context_intrinsics"], rng=r_tok,
                                     sample=rng is not None)

    def loss(self, model, batch, rng, step=None):
        r_enc, r_t, r_eps, r_drop = jax.random.split(rng, 4)
        tokens, caux = self._context_tokens(model, batch, r_enc)
        x0 = jnp.asarray(batch["target_latents"], jnp.float32) * self.latent_scale
        b, m = x0.shape[:2]
        t = self.chunk_times(r_t, b, m)
        eps = self.flow.noise(r_eps, x0)
        x_t = self.flow.x_t(x0, eps, t)
        drop = self.flow.drop(r_drop, b) if self.flow.cond_drop > 0 else None
        v, _ = model.scenetok.decoder(x_t, t, batch["target_c2w"], batch["target_intrinsics"], tokens, drop=drop)
        fm, _ = self.flow.loss(v, x0, eps, t)
        kl = jnp.mean(caux["kl"])
        w = model.scenetok.compressor.config["kl_weight"] if self.kl_weight is None else self.kl_weight
        return fm + w * kl, {"flow_loss": fm, "kl": kl, "token_std": jnp.std(caux["mean"]),
                             "token_logvar": jnp.mean(caux["logvar"]), "latent_std": jnp.std(x0),
                             "t_mean": jnp.mean(t),
                             "chunks_share_time": jnp.mean((t[:, 0] == t[:, -1]).astype(jnp.float32))}

    # -- evaluation --------------------------------------------------------------------------------------------
    def render_latents(self, model, tokens, c2w, intrinsics, rng) -> jax.Array:
        """Target latents (B, M, h, w, C) (scaled units) of cameras (B, 4M, ...) sampled from the tokens alone (all
        M latents in one call: the release's full-sequence window for M <= 8)."""
        return model.scenetok.decoder.render(tokens, c2w, intrinsics, rng, latent_size=self.latent_grid,
                                             flow=self.flow)

    def frames(self, model, latents_scaled) -> jax.Array:
        """Scaled target latents -> frames (B, 4M, H, W, 3) in [0, 1] through the frozen target autoencoder."""
        return model.frames(latents_scaled / self.latent_scale)

    def evaluate(self, model, batch, rng):
        """Latent metrics: ``latent_mse`` of target latents rendered from the context tokens alone (vs the batch
        mean latent, ``latent_mse_mean_latent``), the velocity loss at fixed times, the KL; with the target frames
        in the batch (evaluation split): PSNR / SSIM (LPIPS) of the decoded renders and ``autoencoder_psnr``, the
        target autoencoder's own ceiling (decoded ground-truth latents)."""
        r_render, r_eps = jax.random.split(rng)
        tokens, aux = self._context_tokens(model, batch)
        x0 = jnp.asarray(batch["target_latents"], jnp.float32) * self.latent_scale
        cams = (batch["target_c2w"], batch["target_intrinsics"])
        lat = self.render_latents(model, tokens, *cams, r_render)
        mean_latent = jnp.broadcast_to(jnp.mean(x0, axis=(0, 1), keepdims=True), x0.shape)
        out = {"latent_mse": jnp.mean(jnp.square(lat - x0)),
               "latent_mse_mean_latent": jnp.mean(jnp.square(mean_latent - x0)), "kl": jnp.mean(aux["kl"])}
        out.update(self.flow.fixed_time_losses(lambda x, t: model.scenetok.decoder(x, t, *cams, tokens)[0], x0,
                                               self.flow.noise(r_eps, x0), name="val_flow_loss", per_view=True))
        if "target_images" in batch:
            gt = jnp.asarray(batch["target_images"], jnp.float32)
            pred, ceiling = self.frames(model, lat), self.frames(model, x0)
            out.update(psnr=jnp.mean(image_metrics.psnr(pred, gt)), ssim=jnp.mean(image_metrics.ssim(pred, gt)),
                       autoencoder_psnr=jnp.mean(image_metrics.psnr(ceiling, gt)))
            if self.lpips is not None:
                flat = lambda x: x.reshape((-1,) + x.shape[-3:]) * 2.0 - 1.0  # noqa: E731
                out["lpips"] = jnp.mean(self.lpips(flat(pred), flat(gt)))
        return out

    metric_kind = "r"  # scene3d.evaluate's rFID / rKID / rFVD: reconstructions of the inputs

    def metric_frames(self, model, batch, rng) -> dict:
        """``scene3d.evaluate``'s FID / KID / FVD frames: the target frames decoded from latents rendered from the
        context tokens alone (as :meth:`evaluate` renders them) vs the batch's target frames, (B, 4M, H, W, 3) in
        [-1, 1]. Needs the frames in the batch (the evaluation split of the precomputed latents)."""
        if "target_images" not in batch:
            raise ValueError("FID / FVD of a release-layout SceneTok need the target frames in the batch (the "
                             "evaluation split of scene3d.data.encode_targets keeps them)")
        r_render, _ = jax.random.split(rng)
        tokens, _ = self._context_tokens(model, batch)
        lat = self.render_latents(model, tokens, batch["target_c2w"], batch["target_intrinsics"], r_render)
        gt = jnp.asarray(batch["target_images"], jnp.float32)
        return {"fake": self.frames(model, lat) * 2.0 - 1.0, "real": gt * 2.0 - 1.0}

    def images(self, model, batch, rng):
        """``views``: one row per scene: [context views | target frames (evaluation split) | the ground-truth target
        latents decoded (the autoencoder's ceiling) | latents rendered from the context tokens alone, decoded], one
        frame per target latent (its first). With a random target autoencoder (release_runlocal) only the last two
        groups compare: both are its decodings."""
        k = min(int((self.config.get("render") or {}).get("num_scenes", 2)), int(batch["context_images"].shape[0]))
        if k <= 0:
            return {}
        host = {key: jnp.asarray(np.asarray(jax.device_get(batch[key]))[:k]) for key in
                ("context_images", "context_c2w", "context_intrinsics", "target_latents", "target_c2w",
                 "target_intrinsics")}
        rendered, ceiling = (np.asarray(x) for x in jax.device_get(_release_figure_frames(self, model, host, rng)))
        u8 = lambda x: uint8(np.asarray(x, np.float32) * 2.0 - 1.0)  # noqa: E731  ([0, 1] -> uint8)
        target = np.asarray(jax.device_get(batch["target_images"]))[:k] if "target_images" in batch else None
        rows = [[u8(host["context_images"][i])] + ([u8(target[i, ::4])] if target is not None else []) +
                [u8(ceiling[i, ::4]), u8(rendered[i, ::4])] for i in range(k)]
        return {"views": view_rows(rows)}


def _release_figure(task: ReleaseSceneTokTask, model, batch, rng):
    """(frames of latents rendered from the context tokens, frames of the ground-truth latents), both decoded."""
    tokens, _ = task._context_tokens(model, batch)
    lat = task.render_latents(model, tokens, batch["target_c2w"], batch["target_intrinsics"], rng)
    x0 = jnp.asarray(batch["target_latents"], jnp.float32) * task.latent_scale
    return task.frames(model, lat), task.frames(model, x0)


_release_figure_frames = nnx.jit(_release_figure, static_argnums=0)
