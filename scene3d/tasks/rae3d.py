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
``loss.decode_context``, the context views too. ``loss.token_noise`` > 0 adds N(0, s^2) noise to the tokens before
decoding, s ~ U(0, token_noise) per scene, so the decoder tolerates imperfect (generated) tokens.

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

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from scene3d.core.config import model_section
from scene3d.core.dtypes import dtype as _dtype
from scene3d.geometry import trajectories
from scene3d.losses import perceptual as perceptual_lib
from scene3d.losses import pointmap
from scene3d.metrics import image as image_metrics
from scene3d.metrics.image import to_unit
from scene3d.metrics import lpips as lpips_lib
from scene3d.models import rae3d as rae3d_lib
from scene3d.models import vit as vit_lib
from scene3d.render import ply, video
from scene3d.render.plots import signed_to_uint8 as uint8, view_rows

_MODEL_KEYS = frozenset({"name", "variant", "encoder_weights", "attn_impl", "scan", "remat", "dtype", "param_dtype"}
                        | {f for f in rae3d_lib.RAE3DConfig.__dataclass_fields__})
VIEW_FIELDS = ("images", "c2w", "intrinsics")




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
        views = _as_dict(config.data.get("views"))
        res = views.get("resolution")
        if res is not None:
            p = int(np.lcm(self.model_cfg.patch, self.model_cfg.dec_patch))
            if int(res[0]) % p or int(res[1]) % p:
                raise ValueError(f"config.data.views.resolution {tuple(res)} must be a multiple of {p} (tower patch "
                                 f"{self.model_cfg.patch}, decoder patch {self.model_cfg.dec_patch})")

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> rae3d_lib.RAE3D:
        mc = self.config.model
        fields = {k: getattr(self.model_cfg, k) for k in rae3d_lib.RAE3DConfig.__dataclass_fields__}
        return rae3d_lib.RAE3D(None, rngs=rngs, impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                               remat=mc.get("remat", "none"), dtype=_dtype(mc.get("dtype", "float32"), "model.dtype"),
                               param_dtype=_dtype(mc.get("param_dtype", "float32"), "model.param_dtype"), **fields)

    def restore_pretrained(self, variables):
        """Load the tower's HF weights (``model.encoder_weights``) into the (frozen) encoder.vit variables."""
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
        """Tokens of the context views -> decoder outputs for [context +] target views, and the tokens."""
        check_batch(batch)
        tokens, _ = model.encoder((batch["context_images"], batch["context_c2w"], batch["context_intrinsics"]))
        noise = float(self.loss_cfg.get("token_noise", 0.0))
        if rng is not None and noise > 0:
            r1, r2 = jax.random.split(rng)
            sigma = jax.random.uniform(r1, (tokens.shape[0], 1, 1), tokens.dtype, 0.0, noise)
            tokens = tokens + sigma * jax.random.normal(r2, tokens.shape, tokens.dtype)
        with_context = bool(self.loss_cfg.get("decode_context", True)) if with_context is None else with_context
        parts = (["context"] if with_context else []) + ["target"]
        c2w = jnp.concatenate([batch[f"{p}_c2w"] for p in parts], 1)
        intr = jnp.concatenate([batch[f"{p}_intrinsics"] for p in parts], 1)
        size = batch["target_images"].shape[2:4]
        return model.decode(tokens, c2w, intr, size), tokens, parts

    def _gt(self, batch, parts, key):
        return jnp.concatenate([batch[f"{p}_{key}"] for p in parts], 1)

    def loss(self, model, batch, rng, step=None):
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
        return total, metrics

    def evaluate_examples(self, model, batch, rng):
        """Per-scene metrics (B,) of the views decoded from the context's tokens (the decoder is deterministic:
        no render variance), averaged over each scene's target views (and, ``*_context``, its context views):
        ``psnr`` / ``ssim`` (images in [0, 1]), ``lpips`` (``metrics.lpips`` set), ``l1`` (on [-1, 1]) and, with a
        point head, ``point_err`` (mean Euclidean error over the valid pixels) with ``point_pixels`` (their count,
        the weight of the scene's error in a batch / split figure)."""
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
        if self.model_cfg.points:
            for name, sl, part in (("point_err", slice(vc, None), "target"), ("point_err_context", slice(0, vc),
                                                                              "context")):
                m = batch[f"{part}_mask"].astype(jnp.float32)
                d = pointmap.point_distance(out["points"][:, sl], batch[f"{part}_points"])
                pixels = jnp.sum(m, axis=(1, 2, 3))
                res[name] = jnp.sum(d * m, axis=(1, 2, 3)) / jnp.maximum(pixels, 1.0)
                res[name.replace("err", "pixels")] = pixels
        return res

    @staticmethod
    def _pool(values: dict, xp) -> dict:
        """Batch / split figures of per-scene values with the array module ``xp`` (jnp under jit, np on the host):
        means; point errors weighted by the scenes' valid-pixel counts (the error over all valid pixels)."""
        out = {k: xp.mean(v) for k, v in values.items() if not k.startswith("point_pixels")}
        for k in ("point_err", "point_err_context"):
            if k in values:
                w = values[k.replace("err", "pixels")]
                out[k] = xp.sum(values[k] * w) / xp.maximum(xp.sum(w), 1.0)
        return out

    def summarize_examples(self, values: dict, batch_size: int) -> dict:
        """Split figures from per-scene values (``evaluate_examples``): means, point errors pixel-weighted."""
        del batch_size
        return {k: float(v) for k, v in self._pool({k: np.asarray(v, np.float64) for k, v in values.items()},
                                                    np).items()}

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
    HF checkpoint at ``path`` (converted by ``convert.hf_vit``), placed with the existing shardings and dtypes."""
    from scene3d.convert import hf_vit as convert_hf
    sd = convert_hf.read_hf_checkpoint(path)
    abstract = nnx.eval_shape(lambda: vit_lib.ViT(encoder, rngs=nnx.Rngs(0)))
    state, report = convert_hf.from_hf_state_dict(abstract, sd)
    target = variables["encoder"]["vit"]
    new, old = nnx.to_pure_dict(state), nnx.to_pure_dict(target)
    placed = jax.tree.map(lambda n, o: jax.device_put(jnp.asarray(n, o.dtype), o.sharding), new, old)
    nnx.replace_by_pure_dict(target, placed)
    logging.info("rae3d: loaded %s tower weights from %s (%s)", encoder, path, report)
    return variables
