"""3DDiT stage 2: flow matching over a frozen 3DRAE's scene tokens, conditioned per example on nothing, one view,
several views, a camera trajectory, or views + trajectory.

The example is the rae3d task's (:func:`scene3d.tasks.rae3d.flatten_views`). x0 = ``tokenizer.scale`` x the 3DRAE
tokens of all context views (the scene); the conditioning views are the first n context views (n = 1 for
'one_view', n ~ U{min(2, Vc) .. Vc} for 'views' / 'views_trajectory'; the first context view defines the scene frame,
so it is always among them), the trajectory is the target cameras. Every example draws its configuration from
``cond.probs`` (over ``models.dit3d.CONDITIONS``), then drops its views with probability ``cond.drop_views`` and
its trajectory with ``cond.drop_trajectory`` (CFG dropout per condition type; dropping = masking the tokens). The
loss is the velocity loss of DESIGN.md (t from ``flow.time_sampler``); the metrics split it by configuration.

Sampling (:meth:`DiT3DTask.sample`): Euler / Heun from t = 1 to 0 with classifier-free guidance of scale
``flow.cfg_scale`` against the fully unconditional model; different seeds give different scenes for the same
condition, and the sampled tokens decode (3DRAE decoder) to images and point maps along any trajectory with no
further sampling. Evaluation: velocity loss at t = 0.25 / 0.5 / 0.75 for the 'views' and 'uncond' configurations
and the PSNR of target views decoded from tokens sampled given all context views + the target trajectory.
``images``: per scene [conditioning view | target | decoded sample, seed 0 | seed 1]; ``write_outputs``: per seed
a decoded arc trajectory (GIF + PNG strip) and the decoded point cloud (PLY) of the sampled scene.

The 3DRAE lives inside the model as ``Frozen`` variables (``scene3d.tasks.stage1``): ``restore_pretrained`` fills
it from ``tokenizer.workdir`` (a rae3d run; checkpoint ``tokenizer.step`` or the latest, EMA unless
``tokenizer.use_ema`` is False) at the start of a run; without a workdir the tokenizer of ``tokenizer.model`` is
random (smoke tests). The task sees it only through its Tokenizer adapter (``scene3d.models.tokenizers``:
encode, decode along cameras, and the per-view condition).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.core.config import check_keys
from scene3d.core.dtypes import dtype as _dtype
from scene3d.diffusion import guidance
from scene3d.diffusion.objective import FlowMatching
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
                         "mlp_ratio", "qk_norm", "attn_impl", "scan", "remat", "dtype", "param_dtype"})


def _as_dict(x) -> dict:
    return {} if x is None else dict(x.to_dict() if hasattr(x, "to_dict") else x)


class DiT3DModel(nnx.Module):
    """The stage-2 model: ``dit`` (trainable :class:`DiT3D`) and ``rae`` (the frozen 3DRAE)."""

    def __init__(self, dit: dit3d_lib.DiT3D, rae: rae3d_lib.RAE3D):
        self.dit, self.rae = dit, rae


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
        # CFG dropout is per condition type (cond.drop_views / drop_trajectory), not flow.cond_drop.
        self.flow = FlowMatching.from_config(config.get("flow"), sample_steps=16)
        self.render_cfg = _as_dict(config.get("render"))
        self.lpips = lpips_lib.from_config((config.get("metrics") or {}).get("lpips"))

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
                              param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"), rngs=rngs,
                              dim=mc.get("dim"), depth=mc.get("depth"), heads=mc.get("heads"))
        return DiT3DModel(dit, rae)

    def restore_pretrained(self, variables):
        """Fill the frozen 3DRAE of a fresh run's (sharded) state from ``tokenizer.workdir``."""
        return stage1.restore_tokenizer(variables, "rae", self.config.tokenizer, self.workdir, name="3DRAE")

    def data_transforms(self, split: str):
        return [rae3d_task.flatten_views]

    # -- conditions and latents --------------------------------------------------------------------------------
    def tokens(self, model: DiT3DModel, batch) -> jax.Array:
        """x0 = scale x the frozen 3DRAE tokens of the context views."""
        views = {"images": batch["context_images"], "c2w": batch["context_c2w"],
                 "intrinsics": batch["context_intrinsics"]}
        return self.tokenizer.bind(model.rae).encode(views) * self.scale

    def decode(self, model: DiT3DModel, tokens, c2w, intrinsics, size) -> dict:
        """Unscaled tokens (B, K, latent_dim) -> the frozen 3DRAE's renders of cameras (B, M, ...) at ``size``:
        ``images`` (B, M, H, W, 3) in [-1, 1] (+ ``point_maps``, ``depth``, ``confidence`` with a point head)."""
        return self.tokenizer.bind(model.rae).decode(tokens, tokenizers.Cameras(c2w, intrinsics, tuple(size)))

    def cond(self, model: DiT3DModel, batch, view_mask, traj_mask) -> dict:
        """The DiT3D condition dict: context views (frozen tower features + patch rays) and target cameras."""
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
               cfg_scale: float | None = None, method: str | None = None) -> jax.Array:
        """Scene tokens (B, K, latent_dim) (unscaled: ready for the decoder) sampled from noise given ``cond``."""
        shape = (batch_size,) + self.tokenizer.token_shape
        noise = jax.random.normal(rng, shape, jnp.float32)
        graphdef, state = nnx.split(model.dit)

        def velocity(c):
            return lambda x, t: nnx.merge(graphdef, state)(x, t, c)[0]

        x0 = self.flow.sample(velocity(cond), noise, uncond_fn=None if cond is None else velocity(None),
                              num_steps=num_steps, method=method, cfg_scale=cfg_scale)
        return x0 / self.scale

    def evaluate(self, model, batch, rng):
        x0 = self.tokens(model, batch)
        eps = self.flow.noise(rng, x0)
        out = {}
        for mode in ("views", "uncond"):
            cond, key = self.cond(model, batch, *self._masks(batch, mode)), f"val_loss_{mode}"
            out[key] = self.flow.fixed_time_losses(lambda x, t: model.dit(x, t, cond)[0], x0, eps, name=key)[key]
        cond = self.cond(model, batch, *self._masks(batch, "views_trajectory"))
        tok = self.sample(model, cond, jax.random.fold_in(rng, 1), batch_size=x0.shape[0])
        size = batch["target_images"].shape[2:4]
        dec = self.decode(model, tok, batch["target_c2w"], batch["target_intrinsics"], size)
        pred, gt = image_metrics.to_unit(dec["images"]), image_metrics.to_unit(batch["target_images"])
        out["sample_psnr"] = jnp.mean(image_metrics.psnr(pred, gt))
        out["sample_ssim"] = jnp.mean(image_metrics.ssim(pred, gt))
        if self.lpips is not None:  # LPIPS takes [-1, 1]
            out["sample_lpips"] = jnp.mean(self.lpips(pred * 2.0 - 1.0, gt * 2.0 - 1.0))
        if "point_maps" in dec and "target_points" in batch:  # over the valid (depth) pixels of the targets
            m = batch["target_mask"].astype(jnp.float32)
            d = pointmap.point_distance(dec["point_maps"], batch["target_points"])
            out["sample_point_err"] = jnp.sum(d * m) / jnp.maximum(jnp.sum(m), 1.0)
        out["sample_token_std"] = jnp.std(tok)
        return out

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
