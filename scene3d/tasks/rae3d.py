"""3DRAE stage 1: train the perceiver encoder and the ray-query decoder over a frozen 2D tower on posed views.

An example (the data's ``MultiViewTransform``, then :func:`flatten_views`) holds Vc context and Vt target views:
``{context,target}_{images,c2w,intrinsics}`` ((V, H, W, 3) in [-1, 1], (V, 4, 4) OpenCV relative to the first
context camera, (V, 4) normalised) and, where the data has depth, ``*_points`` (V, H, W, 3) in the same frame and
``*_mask`` (V, H, W) (zeros / False without depth: the point loss then vanishes).

loss = ``loss.l1`` |rgb - gt| + ``loss.l2`` (rgb - gt)^2 + ``loss.perceptual`` x perceptual(``loss.perceptual_kind``:
none | random_conv | features (the frozen tower's features)) + ``loss.points`` x confidence-weighted point-map
loss (``loss.conf_alpha``) + ``loss.align`` x (1 - cosine) between the decoder's predicted tower features and the
frozen tower's features of the ground-truth view (representation alignment; needs ``model.align``). The tokens
come from the context views; the decoder renders the target views (novel views) and, with
``loss.decode_context``, the context views too.

The RAE recipe (``configs/rae3d.py:recipe=rae``, on in the card variants), each part optional:

- noise-augmented decoding: ``loss.token_noise`` = tau > 0 adds N(0, sigma^2) noise to the tokens before decoding
  during training, sigma per scene ~ |N(0, tau^2)| (``loss.token_noise_dist='half_normal'``, RAE) or U(0, tau)
  (``'uniform'``), so the decoder tolerates imperfect (generated) tokens (:func:`noise_tokens`);
- ``loss.lpips`` x LPIPS(rendered, ground truth) (``scene3d.metrics.lpips``; weights from files named by
  ``loss.lpips_weights``, the same fields as ``config.metrics.lpips``; loaded at the first training step);
- ``loss.adv`` > 0: a hinge GAN (``scene3d.losses.adversarial``): trainable heads (``model.discriminator``) on
  frozen features (``loss.disc_features``: 'tower', the frozen 2D tower, or 'random_conv', a fixed random conv
  pyramid) learn to tell rendered from real views from step ``loss.disc_start`` (weight ``loss.disc_loss``); from
  step ``loss.adv_start`` the decoder adds ``adv`` x lambda x (-mean D(rendered)) with lambda the adaptive weight
  (``loss.adv_adaptive``: gradient-norm ratio of the reconstruction and GAN losses at the decoder's last layer,
  ``decoder.head.kernel``, clipped to ``loss.adv_max_weight``; else 1). Before the starts the branches are skipped
  (``lax.cond``). Both players share the one optimiser (the module docstring of ``scene3d.losses.adversarial``).

Any number of views: ``loss.context_views`` = (min, max) samples, per training example, how many of the batch's
context views the encoder reads (a view mask, :func:`sample_view_mask`; the first context view, the reference
frame, is always kept); masked-out views have no effect on the tokens and are still rendered when
``decode_context`` (as novel views). Evaluation reads all context views.

Evaluation (``evaluate_examples``: per scene; ``evaluate``: a batch's figures): PSNR and SSIM of target and context
views (images in [0, 1]), LPIPS of target views when ``metrics.lpips`` names weights
(``scene3d.metrics.lpips.from_config``), mean point-map error on valid pixels, L1. ``images``: per scene one row
[context | target | rendered target | rendered depth]. ``write_outputs``: per scene a rendered trajectory
(``trajectory_<i>.gif`` and a ``trajectory_<i>.png`` strip: an arc around the point ``render.focus`` (median
predicted depth of the first context view) in front of the reference camera) and coloured point clouds
``points_<i>.ply`` (decoded point maps of all views, predicted colours, the most confident ``render.ply_keep``
fraction) and ``points_<i>_gt.ply`` (ground truth of valid pixels).

The tower is random unless ``model.encoder_weights`` names an HF checkpoint (safetensors / .bin / folder) of
``model.encoder`` (loaded by ``restore_pretrained`` at the start of a run, via ``convert.hf_vit``).
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from scene3d.core.config import model_section
from scene3d.core.dtypes import dtype as _dtype
from scene3d.geometry import cameras, trajectories
from scene3d.losses import adversarial
from scene3d.losses import perceptual as perceptual_lib
from scene3d.losses import pointmap
from scene3d.metrics import geometry as geometry_metrics
from scene3d.metrics import image as image_metrics
from scene3d.metrics.image import to_unit
from scene3d.metrics import lpips as lpips_lib
from scene3d.metrics.baselines import LinearBaselines
from scene3d.models import rae3d as rae3d_lib
from scene3d.models import vit as vit_lib
from scene3d.render import ply, video
from scene3d.render.plots import signed_to_uint8 as uint8, view_rows
from scene3d.tasks import base as task_base

_MODEL_KEYS = frozenset({"name", "variant", "encoder_weights", "attn_impl", "scan", "remat", "dtype", "param_dtype"}
                        | {f for f in rae3d_lib.RAE3DConfig.__dataclass_fields__})
VIEW_FIELDS = ("images", "c2w", "intrinsics")
NOISE_DISTS = ("half_normal", "uniform")
DISC_FEATURES = ("tower", "random_conv")
HEAD_KERNEL = ("decoder", "head", "kernel")  # the decoder's last layer (the adaptive GAN weight's reference)
# Per-scene counts that weight other values in batch / split figures (not figures themselves).
COUNTS = ("point_pixels", "point_pixels_context", "depth_views")


def _as_dict(x) -> dict:
    return {} if x is None else dict(x.to_dict() if hasattr(x, "to_dict") else x)


# ================================================================================================ data


def flatten_views(example: dict) -> dict:
    """Grain map: a multi-view example -> flat float fields ``{context,target}_{images,c2w,intrinsics,points,mask}``
    (points / mask zero / False when the data has no depth)."""
    out = {}
    for part in ("context", "target"):
        if part not in example:
            raise ValueError(f"rae3d example: expected 'context' and 'target' views (a multi-view dataset: data.name "
                             f"in builtin | clips | captures), got fields {sorted(example)}")
        views = example[part]
        for k in VIEW_FIELDS:
            out[f"{part}_{k}"] = np.asarray(views[k], np.float32)
        im = out[f"{part}_images"]
        if im.ndim != 4 or im.shape[-1] != 3 or im.dtype != np.float32:
            raise ValueError(f"rae3d example['{part}']['images']: expected float (V, H, W, 3) in [-1, 1] "
                             f"(data.views.image_dtype='float32'), got {im.shape}")
        if "points" in views and "mask" in views:
            out[f"{part}_points"] = np.asarray(views["points"], np.float32)
            out[f"{part}_mask"] = np.asarray(views["mask"], bool)
        else:
            out[f"{part}_points"] = np.zeros(im.shape, np.float32)
            out[f"{part}_mask"] = np.zeros(im.shape[:3], bool)
    return out


def check_batch(batch: dict, name: str = "rae3d batch") -> None:
    for part in ("context", "target"):
        missing = [f"{part}_{k}" for k in VIEW_FIELDS + ("points", "mask") if f"{part}_{k}" not in batch]
        if missing:
            raise ValueError(f"{name}: missing {missing} (has {sorted(batch)}); are the task's data_transforms "
                             "applied?")
        im = batch[f"{part}_images"]
        rae3d_lib.check_views(im, batch[f"{part}_c2w"], batch[f"{part}_intrinsics"], f"{name} ({part})")
        if tuple(batch[f"{part}_points"].shape) != tuple(im.shape):
            raise ValueError(f"{name}['{part}_points']: expected {tuple(im.shape)}, got "
                             f"{tuple(batch[f'{part}_points'].shape)}")
        if tuple(batch[f"{part}_mask"].shape) != tuple(im.shape[:4]):
            raise ValueError(f"{name}['{part}_mask']: expected {tuple(im.shape[:4])}, got "
                             f"{tuple(batch[f'{part}_mask'].shape)}")


def depth_image(depth, lo=None, hi=None) -> np.ndarray:
    """(..., H, W) depth -> uint8 (..., H, W, 3) grey (near = bright) on the 2-98 percentile range."""
    d = np.asarray(depth, np.float32)
    lo = np.percentile(d, 2) if lo is None else lo
    hi = np.percentile(d, 98) if hi is None else hi
    g = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.repeat((g[..., None] * 255 + 0.5).astype(np.uint8), 3, -1)



def noise_tokens(rng, tokens: jax.Array, tau: float, dist: str = "half_normal") -> jax.Array:
    """tokens (B, ...) + sigma * N(0, I) with one sigma per example: |N(0, tau^2)| ('half_normal', the RAE
    noise-augmented decoder) or U(0, tau) ('uniform')."""
    if dist not in NOISE_DISTS:
        raise ValueError(f"config.loss.token_noise_dist: expected one of {NOISE_DISTS}, got {dist!r}")
    r_sigma, r_noise = jax.random.split(rng)
    shape = (tokens.shape[0],) + (1,) * (tokens.ndim - 1)
    if dist == "half_normal":
        sigma = tau * jnp.abs(jax.random.normal(r_sigma, shape, jnp.float32))
    else:
        sigma = jax.random.uniform(r_sigma, shape, jnp.float32, 0.0, tau)
    return tokens + (sigma * jax.random.normal(r_noise, tokens.shape, jnp.float32)).astype(tokens.dtype)


def sample_view_mask(rng, batch_size: int, num_views: int, lo: int, hi: int) -> jax.Array:
    """(B, V) bool: per example n ~ U{lo..hi} views kept, view 0 (the reference frame) always, the others a
    uniformly random subset."""
    if not 1 <= lo <= hi <= num_views:
        raise ValueError(f"sample_view_mask: need 1 <= min {lo} <= max {hi} <= {num_views} views")
    r_n, r_pick = jax.random.split(rng)
    n = jax.random.randint(r_n, (batch_size, 1), lo, hi + 1)
    scores = jax.random.uniform(r_pick, (batch_size, num_views)).at[:, 0].set(-1.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    return rank < n


def _flat_views(x):
    """(B, V, H, W, C) -> (B * V, H, W, C)."""
    return x.reshape((-1,) + x.shape[2:])


def _gated(step, start: int, on, off, model):
    """``on(model)`` from step ``start`` on, else ``off(model)`` (same output structure), as a ``lax.cond`` on the
    model's split state (only the taken branch runs); just ``on(model)`` when there is no delay."""
    if step is None or int(start) <= 0:
        return on(model)
    graphdef, state = nnx.split(model)
    return jax.lax.cond(jnp.asarray(step) >= int(start), lambda st: on(nnx.merge(graphdef, st)),
                        lambda st: off(nnx.merge(graphdef, st)), state)


# ================================================================================================ task


class RAE3DTask:
    """3DRAE stage-1 training (module docstring). Config fields: model, loss, render, data.views."""

    def __init__(self, config):
        self.config = config
        mc = model_section(config, "rae3d", "rae3d", _MODEL_KEYS)
        fields = {k: mc[k] for k in rae3d_lib.RAE3DConfig.__dataclass_fields__ if k in mc}
        self.model_cfg = rae3d_lib.rae3d_config(mc.get("variant", "tiny"), **fields)
        self.loss_cfg = _as_dict(config.get("loss"))
        self.render_cfg = _as_dict(config.get("render"))
        kind = self.loss_cfg.get("perceptual_kind", "random_conv")
        if kind not in perceptual_lib.KINDS:
            raise ValueError(f"config.loss.perceptual_kind: expected one of {perceptual_lib.KINDS}, got {kind!r}")
        if float(self.loss_cfg.get("align", 0.0)) > 0 and not self.model_cfg.align:
            raise ValueError("config.loss.align > 0 needs config.model.align=True (the decoder's feature head)")
        self.lpips = lpips_lib.from_config((config.get("metrics") or {}).get("lpips"))
        # Evaluation: the mean-training-image baseline from metrics.baselines training examples (0: off), the
        # Chamfer distance on at most metrics.chamfer_points valid pixels per scene (0: all of them).
        metrics_cfg = _as_dict(config.get("metrics"))
        self.baseline_examples = int(metrics_cfg.get("baselines", 0) or 0)
        self.chamfer_points = int(metrics_cfg.get("chamfer_points", 16384) or 0)
        self._baselines = None
        self._check_recipe(config)
        views = _as_dict(config.data.get("views"))
        res = views.get("resolution")
        if res is not None:
            p = int(np.lcm(self.model_cfg.patch, self.model_cfg.dec_patch))
            if int(res[0]) % p or int(res[1]) % p:
                raise ValueError(f"config.data.views.resolution {tuple(res)} must be a multiple of {p} (tower patch "
                                 f"{self.model_cfg.patch}, decoder patch {self.model_cfg.dec_patch})")

    def _check_recipe(self, config):
        """Clear errors for the recipe's loss fields (module docstring) before anything is built."""
        lc = self.loss_cfg
        self.noise_tau = float(lc.get("token_noise", 0.0) or 0.0)
        self.noise_dist = lc.get("token_noise_dist", "half_normal")
        if self.noise_tau < 0 or self.noise_dist not in NOISE_DISTS:
            raise ValueError(f"config.loss.token_noise must be >= 0 and token_noise_dist one of {NOISE_DISTS}, got "
                             f"{self.noise_tau} and {self.noise_dist!r}")
        cv = lc.get("context_views")
        self.context_views = None
        if cv is not None:
            nc = int(_as_dict(config.data.get("views")).get("num_context", 0))
            if len(tuple(cv)) != 2 or not 1 <= int(cv[0]) <= int(cv[1]) <= nc:
                raise ValueError(f"config.loss.context_views: expected (min, max) with 1 <= min <= max <= "
                                 f"data.views.num_context ({nc}), got {cv}")
            self.context_views = (int(cv[0]), int(cv[1]))
        self.lpips_weight = float(lc.get("lpips", 0.0) or 0.0)
        self._lpips_loss = None
        self.adv = float(lc.get("adv", 0.0) or 0.0)
        kind = lc.get("disc_features", "tower")
        if self.adv > 0 and kind not in DISC_FEATURES:
            raise ValueError(f"config.loss.disc_features: expected one of {DISC_FEATURES}, got {kind!r}")

    def lpips_loss(self) -> lpips_lib.LPIPS:
        """The LPIPS of the training loss (``loss.lpips_weights``, loaded on first use)."""
        if self._lpips_loss is None:
            spec = _as_dict(self.loss_cfg.get("lpips_weights"))
            if not any(spec.get(k) for k in ("file", "backbone", "random")):
                raise ValueError(f"config.loss.lpips={self.lpips_weight} needs LPIPS weights files (nothing "
                                 "downloads): set config.loss.lpips_weights.file=PATH (one lpips state_dict) or "
                                 "backbone=PATH and lin=PATH (torchvision VGG16 / AlexNet + lpips v0.1 lin; net="
                                 "vgg | alex), or config.loss.lpips=0")
            with jax.ensure_compile_time_eval():  # concrete weights even when first used inside a jitted step
                self._lpips_loss = lpips_lib.from_config(spec, "config.loss.lpips_weights")
        return self._lpips_loss

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> rae3d_lib.RAE3D:
        """The 3DRAE; with ``loss.adv`` > 0 it also holds the GAN's trainable ``discriminator`` heads."""
        mc = self.config.model
        fields = {k: getattr(self.model_cfg, k) for k in rae3d_lib.RAE3DConfig.__dataclass_fields__}
        dtype = _dtype(mc.get("dtype", "float32"), "model.dtype")
        param_dtype = _dtype(mc.get("param_dtype", "float32"), "model.param_dtype")
        model = rae3d_lib.RAE3D(None, rngs=rngs, impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                                remat=mc.get("remat", "none"), dtype=dtype, param_dtype=param_dtype, **fields)
        if self.adv > 0:
            lc = self.loss_cfg
            channels = ((self.model_cfg.feature_dim,) if lc.get("disc_features", "tower") == "tower"
                        else tuple(int(w) for w in lc.get("disc_widths", (16, 32, 64))))
            model.discriminator = adversarial.FeatureDiscriminator(channels, int(lc.get("disc_hidden", 256)),
                                                                   rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        return model

    def disc_features(self, model) -> Callable:
        """images (N, H, W, 3) in [-1, 1] -> the frozen feature levels the discriminator reads."""
        if self.loss_cfg.get("disc_features", "tower") == "tower":
            return lambda im: [model.encoder.features(im)]
        widths = tuple(int(w) for w in self.loss_cfg.get("disc_widths", (16, 32, 64)))
        return lambda im: perceptual_lib.random_conv_features(im, widths)

    def restore_pretrained(self, variables):
        """Load the tower's HF weights (``model.encoder_weights``) into the (frozen) encoder.vit variables (and
        check, before the first step, that the LPIPS loss has its weights)."""
        if self.lpips_weight > 0:
            self.lpips_loss()
        path = self.config.model.get("encoder_weights")
        if not path:
            logging.warning("rae3d: model.encoder_weights not set: the frozen %s tower keeps its random init",
                            self.model_cfg.encoder)
            return variables
        return load_tower_weights(variables, self.model_cfg.encoder, path)

    def data_transforms(self, split: str):
        return [flatten_views]

    # -- forward -----------------------------------------------------------------------------------------------
    def render(self, model: rae3d_lib.RAE3D, batch: dict, rng=None, *, with_context: bool | None = None):
        """Tokens of the context views -> decoder outputs for [context +] target views, and the tokens. With
        ``rng`` (training): a sampled context-view mask (``loss.context_views``) and token noise (module
        docstring)."""
        check_batch(batch)
        view_mask = None
        if rng is not None:
            r_views, r_noise = jax.random.split(rng)
            if self.context_views is not None:
                b, v = batch["context_images"].shape[:2]
                view_mask = sample_view_mask(r_views, b, v, *self.context_views)
        tokens, _ = model.encoder((batch["context_images"], batch["context_c2w"], batch["context_intrinsics"]),
                                  view_mask=view_mask)
        if rng is not None and self.noise_tau > 0:
            tokens = noise_tokens(r_noise, tokens, self.noise_tau, self.noise_dist)
        with_context = bool(self.loss_cfg.get("decode_context", True)) if with_context is None else with_context
        parts = (["context"] if with_context else []) + ["target"]
        c2w = jnp.concatenate([batch[f"{p}_c2w"] for p in parts], 1)
        intr = jnp.concatenate([batch[f"{p}_intrinsics"] for p in parts], 1)
        size = batch["target_images"].shape[2:4]
        return model.decode(tokens, c2w, intr, size), tokens, parts

    def _gt(self, batch, parts, key):
        return jnp.concatenate([batch[f"{p}_{key}"] for p in parts], 1)

    def loss(self, model, batch, rng, step=None):
        """The reconstruction loss (module docstring); with ``loss.adv`` > 0 plus the GAN terms."""
        if self.adv <= 0:
            total, metrics, _ = self.reconstruction_loss(model, batch, rng)
            return total, metrics
        return self._adversarial_loss(model, batch, rng, step)

    def _adversarial_loss(self, model, batch, rng, step):
        """reconstruction + adv x lambda x GAN(decoder) [from adv_start] + disc_loss x hinge(D) [from disc_start]."""
        lc = self.loss_cfg
        adaptive = bool(lc.get("adv_adaptive", True))
        max_w = float(lc.get("adv_max_weight", 1e4))

        def with_gan(m):
            # The decoder's last layer is split off so both losses can be differentiated with respect to it.
            graphdef, head, rest = nnx.split(m, lambda path, _: tuple(path) == HEAD_KERNEL, ...)

            def fn(head_state):
                mm = nnx.merge(graphdef, head_state, rest)
                rec, metrics, (rgb, gt) = self.reconstruction_loss(mm, batch, rng)
                fake = mm.discriminator.frozen_logits(self.disc_features(mm)(_flat_views(rgb)))
                return (rec, adversarial.level_hinge_g_loss(fake)), (metrics, rgb, gt)

            if adaptive:
                rec, g, lam, (metrics, rgb, gt) = adversarial.losses_with_adaptive_weight(fn, head, max_weight=max_w)
            else:
                (rec, g), (metrics, rgb, gt) = fn(head)
                lam = jnp.ones((), jnp.float32)
            return rec, g, lam, metrics, rgb, gt

        def without_gan(m):
            rec, metrics, (rgb, gt) = self.reconstruction_loss(m, batch, rng)
            return rec, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), metrics, rgb, gt

        rec, g, lam, metrics, rgb, gt = _gated(step, int(lc.get("adv_start", 0)), with_gan, without_gan, model)

        def disc(m):
            feats = self.disc_features(m)
            real = m.discriminator(feats(_flat_views(gt)))
            fake = m.discriminator(feats(jax.lax.stop_gradient(_flat_views(rgb))))
            return (adversarial.level_hinge_d_loss(real, fake), adversarial.mean_logits(real),
                    adversarial.mean_logits(fake))

        def no_disc(m):
            return (jnp.zeros((), jnp.float32),) * 3

        d_loss, real_mean, fake_mean = _gated(step, int(lc.get("disc_start", 0)), disc, no_disc, model)
        total = rec + self.adv * lam * g + float(lc.get("disc_loss", 1.0)) * d_loss
        metrics.update(recon=rec, adv_g=g, adv_weight=lam, disc_loss=d_loss, disc_real=real_mean,
                       disc_fake=fake_mean)
        return total, metrics

    def reconstruction_loss(self, model, batch, rng):
        """(loss, metrics, (rendered rgb, ground truth) (B, V, H, W, 3)) of the reconstruction terms."""
        lc = self.loss_cfg
        out, tokens, parts = self.render(model, batch, rng)
        gt = self._gt(batch, parts, "images")
        rgb = out["rgb"]
        err = rgb - gt.astype(jnp.float32)
        l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
        total = float(lc.get("l1", 1.0)) * l1 + float(lc.get("l2", 0.0)) * l2
        metrics = {"l1": l1, "l2": l2}
        w = float(lc.get("perceptual", 0.0))
        if w > 0:
            kind = lc.get("perceptual_kind", "random_conv")
            perc = perceptual_lib.perceptual_loss(kind, rgb, gt, feature_fn=model.encoder.features,
                                                  widths=tuple(lc.get("perceptual_widths", (16, 32, 64))))
            total = total + w * perc
            metrics["perceptual"] = perc
        if self.lpips_weight > 0:
            lp = jnp.mean(self.lpips_loss()(rgb, gt.astype(jnp.float32)))
            total = total + self.lpips_weight * lp
            metrics["lpips"] = lp
        if self.model_cfg.points:
            mask, pts = self._gt(batch, parts, "mask"), self._gt(batch, parts, "points")
            pl = pointmap.confidence_point_loss(out["points"], pts, out["conf"], mask,
                                                alpha=float(lc.get("conf_alpha", 0.2)))
            total = total + float(lc.get("points", 0.1)) * pl
            metrics.update(point_loss=pl, point_err=pointmap.point_error(out["points"], pts, mask),
                           conf_mean=jnp.mean(out["conf"]))
        w = float(lc.get("align", 0.0))
        if w > 0:
            f_gt = jax.lax.stop_gradient(model.encoder.features(gt))
            cos = jnp.sum(_unit(out["features"]) * _unit(f_gt), -1)
            al = 1.0 - jnp.mean(cos)
            total = total + w * al
            metrics["align"] = al
        metrics["psnr"] = jnp.mean(image_metrics.psnr(to_unit(rgb), to_unit(gt)))
        metrics["token_std"] = jnp.std(tokens)
        return total, metrics, (rgb, gt)

    # -- baselines ---------------------------------------------------------------------------------------------
    def training_target_images(self, count: int) -> np.ndarray:
        """(M, H, W, 3) target views in [0, 1] of ``count`` training examples made exactly as training makes them
        (the train split's transforms, random view choices from ``seed``-derived generators), cycling over the
        scenes."""
        examples = task_base.training_examples(self.config, count, self.data_transforms("train"))
        return np.concatenate([np.clip((np.asarray(ex["target_images"], np.float32) + 1.0) * 0.5, 0.0, 1.0)
                               for ex in examples])

    def baselines(self) -> LinearBaselines | None:
        """The mean training image (``scene3d.metrics.baselines``: the mean example of the target views of
        ``metrics.baselines`` training examples), fitted once; None when off or the training data cannot be
        read (a warning)."""
        if self.baseline_examples <= 0 or self._baselines is False:
            return None
        if self._baselines is None:
            try:
                images = self.training_target_images(self.baseline_examples)
            except (ValueError, OSError) as e:  # e.g. evaluating a run whose training data is not available
                logging.warning("config.metrics.baselines: no mean-image baseline, the training examples cannot be "
                                "read: %s", e)
                self._baselines = False
                return None
            self._baselines = LinearBaselines.fit(images, 1)
        return self._baselines

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate_examples(self, model, batch, rng):
        """Per-scene metrics (B,) of the views decoded from the context's tokens (the decoder is deterministic:
        no render variance), averaged over each scene's target views (and, ``*_context``, its context views):
        ``psnr`` / ``ssim`` (images in [0, 1]), ``lpips`` (``metrics.lpips`` set), ``l1`` (on [-1, 1]); the
        baselines ``psnr_context_mean`` (each target predicted by the per-pixel mean of its own context views) and
        ``psnr_mean_image`` (by the mean training image, ``metrics.baselines``); with a point head ``point_err``
        (mean Euclidean error over the valid pixels) with ``point_pixels`` (their count, the weight of the scene's
        error in a batch / split figure), ``depth_absrel`` / ``depth_delta1`` of the target views' z-depth after
        median scale alignment per view (``scene3d.metrics.geometry``; NaN without ground-truth depth) with
        ``depth_views`` (views with depth, their weight), ``chamfer`` (the fused point maps of the target views
        against the ground truth's, in the scene frame; :meth:`evaluation_convention`) and ``chamfer_all`` (of all
        decoded views, context + target)."""
        del rng
        out, _, parts = self.render(model, batch, None, with_context=True)
        gt = self._gt(batch, parts, "images").astype(jnp.float32)
        vc = batch["context_images"].shape[1]
        pred_u, gt_u = to_unit(out["rgb"]), to_unit(gt)
        p, s = image_metrics.psnr(pred_u, gt_u), image_metrics.ssim(pred_u, gt_u)  # (B, V)
        res = {"psnr": jnp.mean(p[:, vc:], 1), "psnr_context": jnp.mean(p[:, :vc], 1),
               "ssim": jnp.mean(s[:, vc:], 1), "ssim_context": jnp.mean(s[:, :vc], 1),
               "l1": jnp.mean(jnp.abs(out["rgb"][:, vc:].astype(jnp.float32) - gt[:, vc:]), axis=(1, 2, 3, 4))}
        if self.lpips is not None:  # LPIPS takes [-1, 1]
            res["lpips"] = jnp.mean(self.lpips(pred_u[:, vc:] * 2.0 - 1.0, gt_u[:, vc:] * 2.0 - 1.0), 1)
        res.update(self._baseline_psnr(gt_u[:, :vc], gt_u[:, vc:]))
        if self.model_cfg.points:
            for name, sl, part in (("point_err", slice(vc, None), "target"), ("point_err_context", slice(0, vc),
                                                                              "context")):
                m = batch[f"{part}_mask"].astype(jnp.float32)
                d = pointmap.point_distance(out["points"][:, sl], batch[f"{part}_points"])
                pixels = jnp.sum(m, axis=(1, 2, 3))
                res[name] = jnp.sum(d * m, axis=(1, 2, 3)) / jnp.maximum(pixels, 1.0)
                res[name.replace("err", "pixels")] = pixels
            res.update(self._geometry(out, batch, parts, vc))
        return res

    def _baseline_psnr(self, context_u, target_u) -> dict:
        """PSNR (B,) of the trivial predictors of the targets (images in [0, 1])."""
        out = {"psnr_context_mean": jnp.mean(image_metrics.psnr(
            jnp.broadcast_to(jnp.mean(context_u, axis=1, keepdims=True), target_u.shape), target_u), 1)}
        fit = self.baselines()
        if fit is not None and tuple(fit.mean.shape) == tuple(target_u.shape[2:]):
            out["psnr_mean_image"] = jnp.mean(image_metrics.psnr(fit.predict_mean(target_u), target_u), 1)
        return out

    def _geometry(self, out, batch, parts, vc) -> dict:
        """Scale-aligned depth of the target views and the Chamfer distance of all decoded views (per scene)."""
        mask, pts = batch["target_mask"], batch["target_points"]
        b, vt, h, w = mask.shape
        # ground-truth z-depth: the scene-frame points in each target camera's frame
        gt_depth = cameras.world_to_camera(pts.reshape(b * vt, h * w, 3).astype(jnp.float32),
                                           batch["target_c2w"].reshape(b * vt, 4, 4).astype(jnp.float32))[..., 2]
        dm = geometry_metrics.scale_aligned_depth(out["depth"][:, vc:], gt_depth.reshape(b, vt, h, w), mask)
        views = jnp.sum(dm["valid"], 1)
        res = {"depth_views": views.astype(jnp.float32)}
        for k in ("absrel", "delta1"):
            total = jnp.sum(jnp.where(dm["valid"], dm[k], 0.0), 1)
            res[f"depth_{k}"] = jnp.where(views > 0, total / jnp.maximum(views, 1), jnp.nan)
        for name, sl, views in (("chamfer", slice(vc, None), ["target"]), ("chamfer_all", slice(None), parts)):
            m = self._gt(batch, views, "mask").reshape(b, -1)
            gt_pts = self._gt(batch, views, "points").reshape(b, -1, 3)
            pred_pts = out["points"][:, sl].reshape(b, -1, 3)
            if self.chamfer_points > 0:
                idx, taken = geometry_metrics.sample_valid(jax.random.key(0), m, self.chamfer_points)
                take = lambda x: jnp.take_along_axis(x, idx[..., None], 1)  # noqa: E731
                pred_pts, gt_pts, m = take(pred_pts), take(gt_pts), taken
            res[name] = geometry_metrics.chamfer_distance(pred_pts, gt_pts, m, m)
        return res

    @staticmethod
    def _pool(values: dict, xp) -> dict:
        """Batch / split figures of per-scene values with the array module ``xp`` (jnp under jit, np on the host):
        means; point errors weighted by the scenes' valid-pixel counts (the error over all valid pixels); depth
        metrics weighted by the scenes' views with depth (the mean over all such views); Chamfer the mean over the
        scenes that have it. NaN where nothing had ground-truth depth."""
        weighted = ("depth_absrel", "depth_delta1", "chamfer", "chamfer_all")
        out = {k: xp.mean(v) for k, v in values.items() if k not in COUNTS and k not in weighted}
        for k in ("point_err", "point_err_context"):
            if k in values:
                w = values[k.replace("err", "pixels")]
                out[k] = xp.sum(values[k] * w) / xp.maximum(xp.sum(w), 1.0)
        for k in weighted:
            if k in values:
                w = values["depth_views"] if k.startswith("depth") else xp.isfinite(values[k]).astype(xp.float32)
                total = xp.sum(w)
                v = xp.sum(xp.where(w > 0, values[k], 0.0) * w) / xp.maximum(total, 1.0)
                out[k] = xp.where(total > 0, v, xp.nan)
        return out

    def summarize_examples(self, values: dict, batch_size: int) -> dict:
        """Split figures from per-scene values (``evaluate_examples``): means, point errors pixel-weighted, depth
        metrics view-weighted; figures without any ground-truth depth are left out."""
        del batch_size
        pooled = self._pool({k: np.asarray(v, np.float64) for k, v in values.items()}, np)
        return {k: float(v) for k, v in pooled.items() if not np.isnan(v)}

    def evaluation_convention(self, batch_size: int) -> dict:
        """What the figures mean (``scene3d.evaluate`` prints ``summary`` above its table)."""
        del batch_size
        fit = self.baselines()
        lp = ("LPIPS: not computed (config.metrics.lpips names no weights: set net=vgg|alex with file=PATH, or "
              "backbone=PATH and lin=PATH)" if self.lpips is None else
              f"LPIPS-{getattr(self.lpips, 'net', '?')}" + (" with RANDOM weights (tests only, not LPIPS)"
                                          if getattr(self.lpips, "random_weights", False) else ""))
        cham = (f"at most {self.chamfer_points} random valid pixels per scene" if self.chamfer_points
                else "every valid pixel")
        lines = [
            "3DRAE convention: tokens from every context view; target (novel) and context views decoded from them; "
            "PSNR / SSIM on [0, 1] (SSIM 11 x 11 Gaussian, population covariance), averaged over a scene's target "
            "views, then over scenes; " + lp + ".",
            "Depth: the decoder's z-depth of the target views, scaled per view by median(gt) / median(pred) over "
            "its valid ground-truth pixels (median scale alignment, the monocular-depth protocol), then AbsRel = "
            "mean |s d - gt| / gt and delta1 = share with max(s d / gt, gt / (s d)) < 1.25; mean over views with "
            "depth. Chamfer: (mean nearest-neighbour distance pred -> gt + gt -> pred) / 2 between the point maps "
            f"of the target views (chamfer_all: all decoded views, context + target) fused in the scene frame (the "
            f"first context camera's, the data's scale normalisation; no alignment), on {cham}. Only where the "
            "data has depth.",
            "Baselines (PSNR of the targets): context mean (per-pixel mean of the scene's own context views) and "
            + (f"mean training image (mean of {fit.num_examples} training target views)."
               if fit is not None else "no mean training image (config.metrics.baselines = 0 or no training data).")]
        return {"summary": "\n".join(lines), "depth_alignment": "median", "delta": geometry_metrics.DELTA,
                "chamfer_points": self.chamfer_points, "chamfer_views": "target",
                "chamfer_all_views": "context + target",
                "lpips": None if self.lpips is None else getattr(self.lpips, "net", "?"),
                "mean_image_views": None if fit is None else fit.num_examples}

    def evaluate(self, model, batch, rng):
        """The batch figures of ``evaluate_examples`` (means; point errors weighted by valid pixels)."""
        return self._pool(self.evaluate_examples(model, batch, rng), jnp)

    # -- figures and files -------------------------------------------------------------------------------------
    def _host(self, batch, k):
        return {key: np.asarray(jax.device_get(v))[:k] for key, v in batch.items()}

    def _decode_host(self, model, host):
        fn = nnx.jit(lambda m, b: self.render(m, b, None, with_context=True)[:2])
        out, tokens = fn(model, {k: jnp.asarray(v) for k, v in host.items()})
        return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), out), tokens

    def images(self, model, batch, rng):
        """``views``: per scene [context | target | rendered target | rendered depth (near = bright)]."""
        k = min(int(self.render_cfg.get("num_scenes", 2)), int(batch["context_images"].shape[0]))
        if k <= 0:
            return {}
        host = self._host(batch, k)
        out, _ = self._decode_host(model, host)
        vc = host["context_images"].shape[1]
        rows = []
        for i in range(k):
            row = [uint8(host["context_images"][i]), uint8(host["target_images"][i]), uint8(out["rgb"][i, vc:])]
            if "depth" in out:
                row.append(depth_image(out["depth"][i, vc:]))
            rows.append(row)
        return {"views": view_rows(rows)}

    def write_outputs(self, model, batch, rng, out_dir):
        """Per scene: the rendered trajectory (GIF + PNG strip) and the decoded / ground-truth point clouds (PLY)."""
        rc = self.render_cfg
        k = min(int(rc.get("num_output_scenes", 1)), int(batch["context_images"].shape[0]))
        if k <= 0:
            return
        os.makedirs(out_dir, exist_ok=True)
        host = self._host(batch, k)
        out, tokens = self._decode_host(model, host)
        size = host["target_images"].shape[2:4]
        n = int(rc.get("trajectory_frames", 12))
        decode = nnx.jit(lambda m, t, c, i: m.decode(t, c, i, size)["rgb"])
        keep = float(rc.get("ply_keep", 0.8))
        from PIL import Image
        for i in range(k):
            if "depth" in out:
                focus = float(np.median(out["depth"][i, 0]))
            else:
                focus = float(rc.get("focus", 1.0))
            focus = float(np.clip(focus, 0.1, 100.0))
            c2w = trajectories.focus_orbit(n, focus, arc_deg=float(rc.get("arc_deg", 60.0)),
                                           elevation_deg=float(rc.get("elevation_deg", 10.0)),
                                           centred=True).astype(np.float32)
            intr = np.broadcast_to(host["context_intrinsics"][i, 0], (n, 4)).astype(np.float32)
            frames = np.asarray(decode(model, tokens[i:i + 1], jnp.asarray(c2w[None]), jnp.asarray(intr[None])))[0]
            video.write_gif(os.path.join(out_dir, f"trajectory_{i}.gif"), uint8(frames),
                            fps=float(rc.get("fps", 8.0)))
            Image.fromarray(view_rows([[uint8(frames)]])).save(os.path.join(out_dir, f"trajectory_{i}.png"))
            if "points" in out:
                pts, conf = out["points"][i].reshape(-1, 3), out["conf"][i].reshape(-1)
                rgb = np.clip((out["rgb"][i].reshape(-1, 3) + 1) * 0.5, 0, 1)
                sel = np.isfinite(pts).all(-1) & (conf >= np.quantile(conf, 1.0 - keep))
                ply.write_point_ply(os.path.join(out_dir, f"points_{i}.ply"), pts[sel], rgb[sel])
                gt_pts = np.concatenate([host["context_points"][i], host["target_points"][i]]).reshape(-1, 3)
                gt_rgb = np.concatenate([host["context_images"][i], host["target_images"][i]]).reshape(-1, 3)
                m = np.concatenate([host["context_mask"][i], host["target_mask"][i]]).reshape(-1)
                ply.write_point_ply(os.path.join(out_dir, f"points_{i}_gt.ply"), gt_pts[m],
                                    np.clip((gt_rgb[m] + 1) * 0.5, 0, 1))


def _unit(x, eps: float = 1e-6):
    x = x.astype(jnp.float32)
    return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) + eps)


def load_tower_weights(variables, encoder: str, path):
    """``variables`` (an nnx State of a model holding ``encoder.vit``) with the tower's variables replaced by the
    HF checkpoint at ``path`` (converted by ``convert.hf_vit``), placed with the existing shardings and dtypes.

    ``path``: a safetensors / torch file or a folder (a downloaded Hugging Face snapshot or ``save_pretrained``
    output: its shards; a ``config.json`` there must match ``encoder``'s sizes). Full checkpoints work too (a
    ``Siglip2Model``'s text tower, a classifier's head are ignored)."""
    from scene3d.convert import hf_vit as convert_hf
    if not os.path.exists(path):
        raise ValueError(f"config.model.encoder_weights={os.fspath(path)!r}: no such file or folder (an HF "
                         "checkpoint of the tower: a .safetensors / .bin file or a downloaded snapshot folder)")
    convert_hf.check_hf_config(path, encoder)
    try:
        sd = convert_hf.read_hf_checkpoint(path)
    except FileNotFoundError as e:
        raise ValueError(f"config.model.encoder_weights={os.fspath(path)!r}: {e}") from e
    abstract = nnx.eval_shape(lambda: vit_lib.ViT(encoder, rngs=nnx.Rngs(0)))
    state, report = convert_hf.from_hf_state_dict(abstract, sd)
    target = variables["encoder"]["vit"]
    new, old = nnx.to_pure_dict(state), nnx.to_pure_dict(target)
    placed = jax.tree.map(lambda n, o: jax.device_put(jnp.asarray(n, o.dtype), o.sharding), new, old)
    nnx.replace_by_pure_dict(target, placed)
    logging.info("rae3d: loaded %s tower weights from %s (%s)", encoder, path, report)
    return variables
