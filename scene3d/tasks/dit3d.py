"""3DDiT stage 2: flow matching over a frozen 3DRAE's scene tokens, conditioned per example on nothing, one view,
several views, a camera trajectory, or views + trajectory.

The example is the rae3d task's (:func:`scene3d.tasks.rae3d.flatten_views`). x0 = ``tokenizer.scale`` x the 3DRAE
tokens of ``tokenizer.num_views`` of the Vc context views (the scene; 0 = all, e.g. 16 views of a clip); the
conditioning views are the first n of ``cond.num_views`` context views (0 = all; n = 1 for 'one_view', n ~ U{min(2,
Vc') .. Vc'} for 'views' / 'views_trajectory'), the trajectory is the target cameras. Both view subsets are spread
evenly over the context views (:func:`spread_views`) and start with the first one, which defines the scene frame.
Every example draws its configuration from ``cond.probs`` (over ``models.dit3d.CONDITIONS``), then drops its views
with probability ``cond.drop_views`` and its trajectory with ``cond.drop_trajectory`` (CFG dropout per condition
type; dropping = masking the tokens). The loss is the velocity loss of DESIGN.md (t from ``flow.time_sampler``);
the metrics split it by configuration.

Time shift (``time_shift.by_dim``, the RAE work's dimension-dependent shift): the training times and the sampler's
time grid both go through t' = s t / (1 + (s - 1) t) with s = sqrt(N C / ``time_shift.base_dim``) for N tokens of C
channels (``scene3d.diffusion.timesteps.shift_for_dim``; s > 1 moves both towards the noise end t = 1). The
``flow`` section's own ``time_sampler`` shift and ``sample_shift`` must then be 1.

Sampling (:meth:`DiT3DTask.sample`): Euler / Heun from t = 1 to 0 with classifier-free guidance of scale
``flow.cfg_scale`` against the fully unconditional model; different seeds give different scenes for the same
condition, and the sampled tokens decode (3DRAE decoder) to images and point maps along any trajectory with no
further sampling. Evaluation: velocity loss at t = 0.25 / 0.5 / 0.75 for the 'views' and 'uncond' configurations
and the PSNR of target views decoded from tokens sampled given all conditioning views + the target trajectory;
per condition type (``metrics.eval_conditions``) PSNR / SSIM / LPIPS of samples of ``metrics.eval_seeds`` seeds
against the held-out target views and their diversity across seeds (:meth:`DiT3DTask.condition_samples`).
``images``: per scene [conditioning view | target | decoded sample, seed 0 | seed 1]; ``write_outputs``: per seed
a decoded arc trajectory (GIF + PNG strip) and the decoded point cloud (PLY) of the sampled scene.

The 3DRAE lives inside the model as ``Frozen`` variables (``scene3d.tasks.stage1``): ``restore_pretrained`` fills
it from ``tokenizer.workdir`` (a rae3d run; checkpoint ``tokenizer.step`` or the latest, EMA unless
``tokenizer.use_ema`` is False) at the start of a run; without a workdir the tokenizer of ``tokenizer.model`` is
random (smoke tests). The task sees it only through its Tokenizer adapter (``scene3d.models.tokenizers``:
encode, decode along cameras, and the per-view condition).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from scene3d.core.config import check_keys
from scene3d.core.dtypes import dtype as _dtype
from scene3d.diffusion import guidance
from scene3d.diffusion.objective import FlowMatching
from scene3d.diffusion.timesteps import shift_for_dim
from scene3d.geometry import trajectories
from scene3d.losses import pointmap
from scene3d.metrics import image as image_metrics
from scene3d.metrics import lpips as lpips_lib
from scene3d.models import dit3d as dit3d_lib
from scene3d.models import tokenizers
from scene3d.models import rae3d as rae3d_lib
from scene3d.render import plots, ply, video
from scene3d.tasks import rae3d as rae3d_task
from scene3d.tasks import stage1

_MODEL_KEYS = frozenset({"name", "variant", "cond_mode", "dim", "depth", "heads", "ray_bands", "traj_grid",
                         "mlp_ratio", "qk_norm", "head_depth", "head_width", "head_heads", "attn_impl", "scan",
                         "remat", "dtype", "param_dtype"})
_TIME_SHIFT_KEYS = frozenset({"by_dim", "base_dim"})
_VIEW_KEYS = ("images", "c2w", "intrinsics")


def _as_dict(x) -> dict:
    return {} if x is None else dict(x.to_dict() if hasattr(x, "to_dict") else x)


class DiT3DModel(nnx.Module):
    """The stage-2 model: ``dit`` (trainable :class:`DiT3D`) and ``rae`` (the frozen 3DRAE)."""

    def __init__(self, dit: dit3d_lib.DiT3D, rae: rae3d_lib.RAE3D):
        self.dit, self.rae = dit, rae


def spread_views(total: int, n: int) -> np.ndarray:
    """Indices of ``n`` of ``total`` views spread evenly from the first to the last (the first, the scene frame,
    always included); ``n`` = 0 or ``total``: all of them, in order."""
    total, n = int(total), int(n)
    if n <= 0 or n >= total:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, n)).astype(np.int64))


def select_context(batch: dict, idx) -> dict:
    """``batch`` with its ``context_{images,c2w,intrinsics}`` reduced to the views ``idx`` (all other fields kept;
    ``batch`` itself when ``idx`` is all of them, in order)."""
    idx = np.asarray(idx)
    if np.array_equal(idx, np.arange(batch["context_images"].shape[1])):
        return batch
    return {**batch, **{f"context_{k}": batch[f"context_{k}"][:, idx] for k in _VIEW_KEYS}}


def condition_masks(rng, batch_size: int, num_views: int, num_traj: int, probs, drop_views: float = 0.0,
                    drop_trajectory: float = 0.0):
    """Per-example condition configuration: (modes (B,) int index into CONDITIONS, view_mask (B, Vc),
    traj_mask (B, T)) after CFG dropout (module docstring)."""
    probs = jnp.asarray(probs, jnp.float32)
    r_mode, r_n, r_dv, r_dt = jax.random.split(rng, 4)
    modes = jax.random.categorical(r_mode, jnp.log(jnp.maximum(probs, 1e-30)), shape=(batch_size,))
    lo = min(2, num_views)
    n_many = jax.random.randint(r_n, (batch_size,), lo, num_views + 1)
    idx = {name: i for i, name in enumerate(dit3d_lib.CONDITIONS)}
    n = jnp.where(modes == idx["one_view"], 1,
                  jnp.where((modes == idx["views"]) | (modes == idx["views_trajectory"]), n_many, 0))
    has_traj = (modes == idx["trajectory"]) | (modes == idx["views_trajectory"])
    n = jnp.where(guidance.drop_mask(r_dv, batch_size, drop_views), 0, n)
    has_traj &= ~guidance.drop_mask(r_dt, batch_size, drop_trajectory)
    view_mask = jnp.arange(num_views)[None, :] < n[:, None]
    traj_mask = jnp.broadcast_to(has_traj[:, None], (batch_size, num_traj))
    return modes, view_mask, traj_mask


class DiT3DTask:
    """3DDiT training on a frozen 3DRAE (module docstring). Config fields: tokenizer, model, cond, flow, render."""

    def __init__(self, config):
        self.config = config
        self.workdir, self.stage1 = stage1.resolve(config, stage2="dit3d", expected="rae3d", extra={"loss": {}})
        # The 3DRAE through its adapter (shapes from the stage-1 config; bound to model.rae when used).
        self.tokenizer = stage1.tokenizer(self.stage1, scale=float(config.tokenizer.get("scale", 1.0)))
        self.scale = self.tokenizer.scale
        mc = config.model
        check_keys(mc, _MODEL_KEYS, "config.model")
        cc = _as_dict(config.get("cond"))
        probs = _as_dict(cc.get("probs")) or {name: 1.0 for name in dit3d_lib.CONDITIONS}
        bad = set(probs) - set(dit3d_lib.CONDITIONS)
        if bad or sum(float(v) for v in probs.values()) <= 0 or min(float(v) for v in probs.values()) < 0:
            raise ValueError(f"config.cond.probs: non-negative weights over {dit3d_lib.CONDITIONS} with a positive "
                             f"sum, got {probs}")
        total = sum(float(v) for v in probs.values())
        self.probs = tuple(float(probs.get(name, 0.0)) / total for name in dit3d_lib.CONDITIONS)
        self.drop_views, self.drop_trajectory = float(cc.get("drop_views", 0.1)), float(cc.get("drop_trajectory", 0.1))
        # Context views the target tokens come from / the conditions may use (0 = all; spread_views).
        self.num_views = int(config.tokenizer.get("num_views") or 0)
        self.cond_views = int(cc.get("num_views") or 0)
        if self.num_views < 0 or self.cond_views < 0:
            raise ValueError(f"config.tokenizer.num_views / config.cond.num_views must be >= 0 (0 = all context "
                             f"views), got {self.num_views} / {self.cond_views}")
        # CFG dropout is per condition type (cond.drop_views / drop_trajectory), not flow.cond_drop.
        self.flow = FlowMatching.from_config(config.get("flow"), sample_steps=16)
        self.time_shift = self._dim_shift(_as_dict(config.get("time_shift")))
        self.render_cfg = _as_dict(config.get("render"))
        self.lpips = lpips_lib.from_config((config.get("metrics") or {}).get("lpips"))
        # Evaluation: samples per condition type (metrics.eval_conditions) and seeds (metrics.eval_seeds).
        metrics_cfg = _as_dict(config.get("metrics"))
        self.eval_conditions = tuple(metrics_cfg.get("eval_conditions", dit3d_lib.CONDITIONS))
        self.eval_seeds = int(metrics_cfg.get("eval_seeds", 2))
        bad = [c for c in self.eval_conditions if c not in dit3d_lib.CONDITIONS]
        if bad or self.eval_seeds < 1:
            raise ValueError(f"config.metrics.eval_conditions: a subset of {dit3d_lib.CONDITIONS} (got "
                             f"{self.eval_conditions}) and config.metrics.eval_seeds >= 1 (got {self.eval_seeds})")

    def _dim_shift(self, ts: dict) -> float:
        """With ``time_shift.by_dim``: put s = sqrt(N C / base_dim) into ``self.flow``'s training-time sampler and
        its sampling grid (module docstring); returns the shift in use (1.0 when off)."""
        check_keys(ts, _TIME_SHIFT_KEYS, "config.time_shift")
        if not ts.get("by_dim", False):
            return 1.0
        if self.flow.time_sampler.shift != 1.0 or self.flow.sample_shift != 1.0:
            raise ValueError(f"config.time_shift.by_dim sets the shift of the training times and of the sampler; "
                             f"config.flow.time_sampler (shift {self.flow.time_sampler.shift}) and "
                             f"config.flow.sample_shift ({self.flow.sample_shift}) must then leave it at 1")
        base = int(ts.get("base_dim", 4096))
        if base < 1:
            raise ValueError(f"config.time_shift.base_dim must be >= 1, got {base}")
        n, c = self.tokenizer.token_shape
        shift = shift_for_dim(n * c, base)
        logging.info("3DDiT time shift: %.4g = sqrt(%d tokens x %d channels / %d)", shift, n, c, base)
        self.flow = dataclasses.replace(self.flow, time_sampler=dataclasses.replace(self.flow.time_sampler,
                                                                                   shift=shift), sample_shift=shift)
        return shift

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> DiT3DModel:
        rae = stage1.frozen_tokenizer(self.stage1, rngs)
        mc = self.config.model
        dtype = _dtype(mc.get("dtype", "float32"), "config.model.dtype")
        num_tokens, latent_dim = self.tokenizer.token_shape
        dit = dit3d_lib.DiT3D(mc.get("variant", "tiny"), num_tokens=num_tokens,
                              latent_dim=latent_dim, view_dim=self.tokenizer.feature_dim,
                              cond_mode=mc.get("cond_mode", "cross"), ray_bands=int(mc.get("ray_bands", 4)),
                              traj_grid=int(mc.get("traj_grid", 4)), mlp_ratio=float(mc.get("mlp_ratio", 4.0)),
                              qk_norm=mc.get("qk_norm", True), impl=mc.get("attn_impl", "xla"),
                              scan=mc.get("scan", True), remat=mc.get("remat", "none"), dtype=dtype,
                              param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"),
                              rngs=rngs, head_depth=int(mc.get("head_depth") or 0), head_width=mc.get("head_width"),
                              head_heads=mc.get("head_heads"), dim=mc.get("dim"), depth=mc.get("depth"),
                              heads=mc.get("heads"))
        return DiT3DModel(dit, rae)

    def restore_pretrained(self, variables):
        """Fill the frozen 3DRAE of a fresh run's (sharded) state from ``tokenizer.workdir``."""
        return stage1.restore_tokenizer(variables, "rae", self.config.tokenizer, self.workdir, name="3DRAE")

    def data_transforms(self, split: str):
        return [rae3d_task.flatten_views]

    # -- conditions and latents --------------------------------------------------------------------------------
    def _subset(self, batch, n: int, field: str):
        """``spread_views`` of the batch's context views for ``n`` (``field`` names the setting in errors)."""
        vc = int(batch["context_images"].shape[1])
        if n > vc:
            raise ValueError(f"{field}={n}: the batch has only {vc} context views (config.data.views.num_context)")
        return spread_views(vc, n)

    def encode_batch(self, batch) -> dict:
        """``batch`` reduced to the context views the target tokens are encoded from (``tokenizer.num_views``)."""
        return select_context(batch, self._subset(batch, self.num_views, "config.tokenizer.num_views"))

    def cond_batch(self, batch) -> dict:
        """``batch`` reduced to the context views the conditions may use (``cond.num_views``)."""
        return select_context(batch, self._subset(batch, self.cond_views, "config.cond.num_views"))

    def tokens(self, model: DiT3DModel, batch) -> jax.Array:
        """x0 = scale x the frozen 3DRAE tokens of ``tokenizer.num_views`` of the context views (0: all)."""
        batch = self.encode_batch(batch)
        views = {"images": batch["context_images"], "c2w": batch["context_c2w"],
                 "intrinsics": batch["context_intrinsics"]}
        return self.tokenizer.bind(model.rae).encode(views) * self.scale

    def decode(self, model: DiT3DModel, tokens, c2w, intrinsics, size) -> dict:
        """Unscaled tokens (B, K, latent_dim) -> the frozen 3DRAE's renders of cameras (B, M, ...) at ``size``:
        ``images`` (B, M, H, W, 3) in [-1, 1] (+ ``point_maps``, ``depth``, ``confidence`` with a point head)."""
        return self.tokenizer.bind(model.rae).decode(tokens, tokenizers.Cameras(c2w, intrinsics, tuple(size)))

    def cond(self, model: DiT3DModel, batch, view_mask, traj_mask) -> dict:
        """The DiT3D condition dict: ALL context views of ``batch`` (frozen tower features + patch rays; reduce it
        with :meth:`cond_batch` first) and the target cameras."""
        views = self.tokenizer.bind(model.rae).view_condition(batch["context_images"], batch["context_c2w"],
                                                              batch["context_intrinsics"])
        return {**views, "view_mask": view_mask,
                "traj_c2w": batch["target_c2w"], "traj_intrinsics": batch["target_intrinsics"], "traj_mask": traj_mask}

    def _masks(self, batch, mode: str):
        b, vc = batch["context_images"].shape[:2]
        t = batch["target_c2w"].shape[1]
        views = {"uncond": 0, "one_view": 1, "views": vc, "trajectory": 0, "views_trajectory": vc}[mode]
        vm = jnp.broadcast_to(jnp.arange(vc)[None] < views, (b, vc))
        tm = jnp.full((b, t), mode in ("trajectory", "views_trajectory"))
        return vm, tm

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, model, batch, rng, step=None):
        rae3d_task.check_batch(batch, "dit3d batch")
        x0 = self.tokens(model, batch)
        batch = self.cond_batch(batch)
        b = x0.shape[0]
        r_c, r_t, r_e = jax.random.split(rng, 3)
        modes, vm, tm = condition_masks(r_c, b, batch["context_images"].shape[1], batch["target_c2w"].shape[1],
                                        self.probs, self.drop_views, self.drop_trajectory)
        t, eps, x_t = self.flow.draw(x0, r_t, r_e)
        v, _ = model.dit(x_t, t, self.cond(model, batch, vm, tm))
        loss, per = self.flow.loss(v, x0, eps, t)
        metrics = {"x0_std": jnp.std(x0), "views_kept": jnp.mean(jnp.sum(vm, 1).astype(jnp.float32)),
                   "traj_kept": jnp.mean(tm[:, 0].astype(jnp.float32))}
        for i, name in enumerate(dit3d_lib.CONDITIONS):
            sel = (modes == i).astype(jnp.float32)
            metrics[f"loss_{name}"] = jnp.sum(per * sel) / jnp.maximum(jnp.sum(sel), 1.0)
        return loss, metrics

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample(self, model: DiT3DModel, cond: dict | None, rng, *, batch_size: int, num_steps: int | None = None,
               cfg_scale: float | None = None, method: str | None = None, noise: jax.Array | None = None) -> jax.Array:
        """Scene tokens (B, K, latent_dim) (unscaled: ready for the decoder) sampled from noise given ``cond``
        (``noise``: the starting noise, else N(0, I) from ``rng``)."""
        shape = (batch_size,) + self.tokenizer.token_shape
        noise = jax.random.normal(rng, shape, jnp.float32) if noise is None else noise
        graphdef, state = nnx.split(model.dit)

        def velocity(c):
            return lambda x, t: nnx.merge(graphdef, state)(x, t, c)[0]

        x0 = self.flow.sample(velocity(cond), noise, uncond_fn=None if cond is None else velocity(None),
                              num_steps=num_steps, method=method, cfg_scale=cfg_scale)
        return x0 / self.scale

    def evaluate(self, model, batch, rng):
        x0 = self.tokens(model, batch)
        batch = self.cond_batch(batch)
        eps = self.flow.noise(rng, x0)
        out = {}
        for mode in ("views", "uncond"):
            cond, key = self.cond(model, batch, *self._masks(batch, mode)), f"val_loss_{mode}"
            out[key] = self.flow.fixed_time_losses(lambda x, t: model.dit(x, t, cond)[0], x0, eps, name=key)[key]
        out.update(self.condition_samples(model, batch, rng))
        return out

    def condition_samples(self, model, batch, rng) -> dict:
        """Samples scored against the held-out targets per condition type, and their diversity across seeds.

        For every condition c of ``metrics.eval_conditions`` (and always 'views_trajectory') and seed s <
        ``metrics.eval_seeds``, tokens are sampled from the noise N(0, I) of key ``fold_in(rng, 1 + s)`` (the same
        noise for every condition: differences between conditions come from the condition) given the batch's
        conditioning views and target trajectory masked as c prescribes, and decoded at the target cameras. One
        sampler call over all (seed, condition, example) triples. Figures (batch means):

        - ``sample_{psnr,ssim,lpips}_{c}``: of the decoded target views against the ground truth (images in [0, 1];
          LPIPS when ``metrics.lpips`` names weights), averaged over seeds and views;
        - ``diversity_std_{c}``: the per-pixel standard deviation across seeds, averaged over pixels (> 1 seed);
        - ``diversity_lpips_{c}``: the mean LPIPS between the decoded views of every pair of seeds (> 1 seed, LPIPS);
        - ``sample_psnr`` / ``sample_ssim`` / ``sample_lpips`` / ``sample_point_err`` / ``sample_token_std``: of
          seed 0 given all conditioning views + the trajectory (the samples of ``metric_frames``)."""
        conds = ("views_trajectory",) + tuple(c for c in self.eval_conditions if c != "views_trajectory")
        seeds = self.eval_seeds
        b = batch["context_images"].shape[0]
        n = len(conds) * seeds
        tile = lambda x: jnp.concatenate([x] * n, 0)  # noqa: E731  (seed, condition, example) order
        cond = {k: tile(v) for k, v in self.cond(model, batch, *self._masks(batch, "uncond")).items()}
        masks = [self._masks(batch, c) for c in conds]
        cond["view_mask"] = jnp.concatenate([m[0] for m in masks] * seeds, 0)
        cond["traj_mask"] = jnp.concatenate([m[1] for m in masks] * seeds, 0)
        shape = (b,) + self.tokenizer.token_shape
        noise = jnp.concatenate([jax.random.normal(jax.random.fold_in(rng, 1 + s), shape, jnp.float32)
                                 for s in range(seeds) for _ in conds], 0)
        tok = self.sample(model, cond, None, batch_size=n * b, noise=noise)
        size = batch["target_images"].shape[2:4]
        dec = self.decode(model, tok, tile(batch["target_c2w"]), tile(batch["target_intrinsics"]), size)
        grid = lambda x: x.reshape((seeds, len(conds), b) + x.shape[1:])  # noqa: E731
        pred = grid(image_metrics.to_unit(dec["images"]))  # (S, C, B, T, H, W, 3)
        gt = image_metrics.to_unit(batch["target_images"])
        gt_all = jnp.broadcast_to(gt, pred.shape)
        psnr, ssim = image_metrics.psnr(pred, gt_all), image_metrics.ssim(pred, gt_all)  # (S, C, B, T)
        lp = None
        if self.lpips is not None:  # LPIPS takes [-1, 1]
            lp = self.lpips(pred * 2.0 - 1.0, gt_all * 2.0 - 1.0)
        out = {"sample_psnr": jnp.mean(psnr[0, 0]), "sample_ssim": jnp.mean(ssim[0, 0])}
        if lp is not None:
            out["sample_lpips"] = jnp.mean(lp[0, 0])
        for i, c in enumerate(conds):
            if c not in self.eval_conditions:
                continue
            out[f"sample_psnr_{c}"], out[f"sample_ssim_{c}"] = jnp.mean(psnr[:, i]), jnp.mean(ssim[:, i])
            if lp is not None:
                out[f"sample_lpips_{c}"] = jnp.mean(lp[:, i])
            if seeds > 1:
                out[f"diversity_std_{c}"] = jnp.mean(jnp.std(pred[:, i], axis=0))
                if self.lpips is not None:
                    pairs = [(a, z) for a in range(seeds) for z in range(a + 1, seeds)]
                    out[f"diversity_lpips_{c}"] = jnp.mean(jnp.stack([
                        self.lpips(pred[a, i] * 2.0 - 1.0, pred[z, i] * 2.0 - 1.0) for a, z in pairs]))
        first = {k: v[:b] for k, v in dec.items()}  # seed 0, views + trajectory
        if "point_maps" in first and "target_points" in batch:  # over the valid (depth) pixels of the targets
            m = batch["target_mask"].astype(jnp.float32)
            d = pointmap.point_distance(first["point_maps"], batch["target_points"])
            out["sample_point_err"] = jnp.sum(d * m) / jnp.maximum(jnp.sum(m), 1.0)
        out["sample_token_std"] = jnp.std(tok[:b])
        return out

    def summary_rows(self, metrics: dict) -> dict:
        """``scene3d.evaluate``'s table of the sample figures per condition type (``condition_samples``)."""
        cols = [("psnr", "sample_psnr_{}"), ("ssim", "sample_ssim_{}"), ("lpips", "sample_lpips_{}"),
                ("pixel std across seeds", "diversity_std_{}"), ("LPIPS across seeds", "diversity_lpips_{}")]
        conds = [c for c in dit3d_lib.CONDITIONS if f"sample_psnr_{c}" in metrics]
        cols = [(name, key) for name, key in cols if any(key.format(c) in metrics for c in conds)]
        rows = [("condition",) + tuple(name for name, _ in cols)]
        for c in conds:
            rows.append((c,) + tuple(f"{metrics[key.format(c)]:.4g}" if key.format(c) in metrics else "-"
                                     for _, key in cols))
        return {f"samples per condition type ({self.eval_seeds} seeds each, scored against the held-out target "
                f"views):": rows}

    def evaluation_convention(self, batch_size: int) -> dict:
        """What the figures mean (``scene3d.evaluate`` prints ``summary`` above its table)."""
        del batch_size
        lp = ("LPIPS: not computed (config.metrics.lpips names no weights: set net=vgg|alex with file=PATH, or "
              "backbone=PATH and lin=PATH)" if self.lpips is None else f"LPIPS-{getattr(self.lpips, 'net', '?')}"
              + (" with RANDOM weights (tests only, not LPIPS)" if getattr(self.lpips, "random_weights", False)
                 else ""))
        summary = (f"3DDiT convention: per example and condition type ({', '.join(self.eval_conditions)}) "
                   f"{self.eval_seeds} samples (seeds 0..{self.eval_seeds - 1}, the same noise for every condition; "
                   f"{self.flow.sample_steps} {self.flow.sampler} steps, CFG {self.flow.cfg_scale}, time shift "
                   f"{self.time_shift:.3g}) decoded at the held-out target cameras and scored against the target "
                   f"views (PSNR / SSIM on [0, 1]); diversity: per-pixel std across seeds (and pairwise LPIPS). "
                   f"'uncond' and 'trajectory' see no view: their PSNR is the floor. {lp}.")
        return {"summary": summary, "conditions": list(self.eval_conditions), "seeds": self.eval_seeds,
                "lpips": None if self.lpips is None else getattr(self.lpips, "net", "?")}

    metric_kind = "g"  # scene3d.evaluate's gFID / gKID / gFVD: samples against the held-out views

    def metric_frames(self, model, batch, rng) -> dict:
        """``scene3d.evaluate``'s FID / KID / FVD frames: the target views decoded from tokens sampled given the
        context views and the trajectory (the key of :meth:`evaluate`: the same samples) vs the held-out ground
        truth, (B, V, H, W, 3) in [-1, 1]."""
        size = batch["target_images"].shape[2:4]
        cond_batch = self.cond_batch(batch)
        cond = self.cond(model, cond_batch, *self._masks(cond_batch, "views_trajectory"))
        tok = self.sample(model, cond, jax.random.fold_in(rng, 1), batch_size=batch["target_images"].shape[0])
        fake = self.decode(model, tok, batch["target_c2w"], batch["target_intrinsics"], size)["images"]
        return {"fake": fake, "real": batch["target_images"]}

    def _sample_views(self, model, host, mode: str, seeds, extra_c2w=None, extra_intr=None):
        """Decoded samples for each seed: rgb at the target cameras (and at extra cameras)."""
        b = host["context_images"].shape[0]
        size = tuple(host["target_images"].shape[2:4])
        # One jitted sampler per (mode, batch, size), kept on the task: every evaluation and every seed of
        # write_outputs reuses its compiled program.
        cache = self.__dict__.setdefault("_sample_fns", {})
        fn = cache.get((mode, b, size))
        if fn is None:
            def run(m, batch, seed_key):
                batch = self.cond_batch(batch)
                cond = self.cond(m, batch, *self._masks(batch, mode))
                tok = self.sample(m, cond, seed_key, batch_size=b)
                out = self.decode(m, tok, batch["target_c2w"], batch["target_intrinsics"], size)
                return tok, out

            fn = cache[(mode, b, size)] = nnx.jit(run)
        batch = {k: jnp.asarray(v) for k, v in host.items()}
        return [jax.tree.map(lambda a: np.asarray(jax.device_get(a)), fn(model, batch, jax.random.key(s)))
                for s in seeds]

    def images(self, model, batch, rng):
        """``samples``: per scene [conditioning view | target | decoded sample seed 0 | seed 1] (one-view condition)."""
        k = min(int(self.render_cfg.get("num_scenes", 2)), int(batch["context_images"].shape[0]))
        if k <= 0:
            return {}
        host = {key: np.asarray(jax.device_get(v))[:k] for key, v in batch.items()}
        outs = self._sample_views(model, host, "one_view", (0, 1))
        rows = [[plots.signed_to_uint8(host["context_images"][i, :1]), plots.signed_to_uint8(host["target_images"][i])]
                + [plots.signed_to_uint8(o[1]["images"][i]) for o in outs] for i in range(k)]
        return {"samples": plots.view_rows(rows)}

    def write_outputs(self, model, batch, rng, out_dir):
        """Per seed (``render.num_seeds``), for the first scene conditioned on its first view: ``seed<s>_trajectory``
        .gif / .png (an arc decoded from the sampled tokens) and ``seed<s>_points.ply`` (decoded point maps of the
        target cameras, predicted colours)."""
        rc = self.render_cfg
        os.makedirs(out_dir, exist_ok=True)
        host = {key: np.asarray(jax.device_get(v))[:1] for key, v in batch.items()}
        size = host["target_images"].shape[2:4]
        n = int(rc.get("trajectory_frames", 12))
        decode = nnx.jit(lambda m, t, c, i: self.decode(m, t, c, i, size))
        from PIL import Image
        for s in range(int(rc.get("num_seeds", 2))):
            tok, out = self._sample_views(model, host, "one_view", (s,))[0]
            focus = float(np.clip(np.median(out["depth"][0]), 0.1, 100.0)) if "depth" in out else 1.0
            c2w = trajectories.focus_orbit(n, focus, arc_deg=float(rc.get("arc_deg", 60.0)),
                                           elevation_deg=float(rc.get("elevation_deg", 10.0)),
                                           centred=True).astype(np.float32)
            intr = np.broadcast_to(host["context_intrinsics"][0, 0], (n, 4)).astype(np.float32)
            frames = np.asarray(decode(model, jnp.asarray(tok), jnp.asarray(c2w[None]),
                                       jnp.asarray(intr[None]))["images"])
            video.write_gif(os.path.join(out_dir, f"seed{s}_trajectory.gif"), plots.signed_to_uint8(frames[0]),
                            fps=float(rc.get("fps", 8.0)))
            Image.fromarray(plots.view_rows([[plots.signed_to_uint8(frames[0])]])).save(
                os.path.join(out_dir, f"seed{s}_trajectory.png"))
            if "point_maps" in out:
                pts = out["point_maps"][0].reshape(-1, 3)
                rgb = np.clip((out["images"][0].reshape(-1, 3) + 1) * 0.5, 0, 1)
                ok = np.isfinite(pts).all(-1)
                ply.write_point_ply(os.path.join(out_dir, f"seed{s}_points.ply"), pts[ok], rgb[ok])
