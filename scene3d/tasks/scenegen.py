"""SceneGen stage 2: flow matching over a frozen SceneTok's scene tokens, conditioned on views and camera anchors.

The stage-1 model (``scene3d.models.tokenizers.SceneTokModel``: image compressor + SceneTok) lives inside the
stage-2 model as ``Frozen`` variables (``scene3d.tasks.stage1``) and is used only through its Tokenizer adapter
(``SceneTokTokenizer``: image latents, encode, decode = render along cameras). ``restore_pretrained`` fills it from
``tokenizer.workdir`` (a configs/scenetok.py run: its config.json gives the architecture, its checkpoint the
weights, EMA if kept); without a workdir it is built from ``tokenizer.image_compressor`` / ``tokenizer.model`` and
randomly initialised (smoke tests only).

Per example (the multi-view examples of scene3d.tasks.scenetok, poses in context view 0's frame):
  x0      = token_scale x the stage-1 tokens of the Vc context views (posterior mean, or a sample with
            ``tokenizer.sample_tokens``) (K, d);
  cond    = the context views' image latents and cameras, each view kept with probability 1 - ``cond.p_view``
            (view 0 always), all dropped with probability ``cond.p_uncond`` (the null scene condition, for CFG);
  anchors = the context cameras (the extent of the scene the tokens describe), as Pluecker maps.
loss = velocity loss of SceneGen at x_t = (1 - t) x0 + t eps, t from ``flow.time_sampler`` (logit-normal with
a time shift). Sampling integrates t = 1 -> 0 (``flow.sampler``, ``flow.sample_steps``, shift
``flow.sample_shift``) with classifier-free guidance ``flow.cfg_scale`` over the scene condition (anchors kept);
the generated tokens decode with the stage-1 renderer along any cameras without another generative pass.

Evaluation: the velocity loss at fixed times, and tokens generated from the first ``sample.num_cond_views``
context views rendered at the target cameras: PSNR / SSIM vs the ground truth (``gen_psnr``), vs the renders of
the stage-1 tokens (``stage1_psnr`` is stage 1's own PSNR, the ceiling), and the token error. ``images``: rows
[conditioning views | target | rendered from generated tokens | rendered from stage-1 tokens];
``write_outputs``: an orbit GIF of each generated scene.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scene3d.core.config import check_keys
from scene3d.core.dtypes import dtype as _dtype
from scene3d.diffusion.objective import FlowMatching
from scene3d.metrics import image as image_metrics
from scene3d.metrics import lpips as lpips_lib
from scene3d.models import scenegen, scenetok, tokenizers
from scene3d.render import plots
from scene3d.tasks import stage1
from scene3d.tasks import scenetok as stok

COND_LAYOUTS = ("context", "release")
_MODEL_KEYS = frozenset({"name", "variant", "hidden", "depth", "heads", "mlp_ratio", "latent_patch", "camera_patch",
                         "freq_dim", "token_scale", "camera_dtype", "camera_dropout", "attn_impl", "scan", "remat",
                         "dtype", "param_dtype"})




class SceneGenModel(nnx.Module):
    """The stage-2 model: ``generator`` (SceneGen, trained) and ``tokenizer`` (the frozen SceneTokModel)."""

    def __init__(self, generator: scenegen.SceneGen, tokenizer: tokenizers.SceneTokModel):
        self.generator, self.tokenizer = generator, tokenizer


class SceneGenTask:
    """SceneGen training on a frozen SceneTok (module docstring). Config fields: tokenizer, model, cond, flow,
    sample, render, data.views."""

    def __init__(self, config):
        self.config = config
        tc = config.tokenizer
        self.workdir, self.stage1 = stage1.resolve(
            config, stage2="scenegen", expected="scenetok", init_fields="model + image_compressor",
            extra={"image_compressor": (tc.get("image_compressor") or ml_collections.ConfigDict()).to_dict(),
                   "flow": config.flow.to_dict()})
        self.sample_tokens = bool(tc.get("sample_tokens", False))
        # The stage-1 model through its adapter; generated tokens render with the stage-1 run's decoder sampler
        # (its flow settings, with the non-None ``decode`` overrides).
        self.tokenizer = stage1.tokenizer(self.stage1, sample_tokens=self.sample_tokens,
                                          flow_overrides=config.get("decode"))
        views = dict(config.data.get("views") or {})
        res = tuple(int(v) for v in views.get("resolution") or ())
        if res != self.tokenizer.resolution:
            raise ValueError(f"config.data.views.resolution={res or None} must equal the stage-1 run's "
                             f"{self.tokenizer.resolution} (the tokenizer's latents are tied to it)")
        self.num_context = int(views.get("num_context", 2))
        self.num_target = int(views.get("num_target", 1))
        num_tokens, token_dim = self.tokenizer.token_shape
        self.info = dict(latent_grid=self.tokenizer.latent_grid, latent_channels=self.tokenizer.latent_channels,
                         num_tokens=num_tokens, token_dim=token_dim, resolution=res)
        mc = config.model
        check_keys(mc, _MODEL_KEYS, "config.model")
        if mc.get("variant", "tiny") not in scenegen.VARIANTS:
            raise ValueError(f"config.model.variant: unknown SceneGen variant {mc.variant!r} "
                             f"(known: {sorted(scenegen.VARIANTS)})")
        lp = int(mc.get("latent_patch", 1))
        gh, gw = self.info["latent_grid"]
        if gh % lp or gw % lp:
            raise ValueError(f"config.model.latent_patch={lp} must divide the stage-1 latent grid {(gh, gw)}")
        cp = int(mc.get("camera_patch", 2))
        # The camera patch grid must equal the latent token grid: Pluecker maps of (grid x camera_patch) pixels.
        self.camera_size = (gh // lp * cp, gw // lp * cp)
        # Condition dropout is SceneGen's own (cond.p_view / p_uncond, scenegen.random_cond_mask).
        self.flow = FlowMatching.from_config(config.flow, time_sampler="logit_normal,shift=4.0", sample_steps=25,
                                             sample_shift=4.0)
        self.lpips = lpips_lib.from_config((config.get("metrics") or {}).get("lpips"))
        cc = config.get("cond") or {}
        check_keys(cc, frozenset({"p_view", "p_uncond", "layout", "max_views"}), "config.cond")
        self.p_view, self.p_uncond = float(cc.get("p_view", 0.5)), float(cc.get("p_uncond", 0.1))
        self.cond_layout = cc.get("layout", "context")
        if self.cond_layout not in COND_LAYOUTS:
            raise ValueError(f"config.cond.layout must be one of {COND_LAYOUTS}, got {self.cond_layout!r}")
        if self.cond_layout == "release":
            self.num_cond = int(cc.get("max_views", 3))
            if not 1 <= self.num_cond <= self.num_target + 1:
                raise ValueError(f"config.cond.max_views={self.num_cond}: the release layout draws views 2.. from the "
                                 f"{self.num_target} target views (data.views.num_target), so 1..{self.num_target + 1}")
        else:
            self.num_cond = self.num_context
        sc = config.get("sample") or {}
        self.num_cond_views = int(sc.get("num_cond_views", 1))
        if not 1 <= self.num_cond_views <= self.num_cond:
            raise ValueError(f"config.sample.num_cond_views={self.num_cond_views} must be in 1..{self.num_cond} (the "
                             f"conditioning views of the '{self.cond_layout}' layout)")

    # -- model -------------------------------------------------------------------------------------------------
    def build_generator(self, rngs: nnx.Rngs) -> scenegen.SceneGen:
        mc = self.config.model
        kw = {k: mc[k] for k in ("hidden", "depth", "heads", "freq_dim") if mc.get(k) is not None}
        return scenegen.SceneGen(
            mc.get("variant", "tiny"), num_tokens=self.info["num_tokens"], token_dim=self.info["token_dim"],
            latent_channels=self.info["latent_channels"], latent_patch=int(mc.get("latent_patch", 1)),
            camera_size=self.camera_size, camera_patch=int(mc.get("camera_patch", 2)),
            mlp_ratio=float(mc.get("mlp_ratio", 4.0)), token_scale=float(mc.get("token_scale", 1.0)),
            shift=self.flow.sample_shift, camera_dtype=mc.get("camera_dtype", "float32"),
            camera_dropout=float(mc.get("camera_dropout", 0.1)), max_cond_views=self.num_cond,
            attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True), remat=mc.get("remat", "none"),
            dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
            param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"), rngs=rngs, **kw)

    def build_model(self, rngs: nnx.Rngs) -> SceneGenModel:
        tokenizer = stage1.frozen_tokenizer(self.stage1, rngs)
        return SceneGenModel(self.build_generator(rngs), tokenizer)

    def restore_pretrained(self, params):
        """Fill the frozen stage-1 model of a fresh run's (sharded) state from ``tokenizer.workdir``."""
        return stage1.restore_tokenizer(params, "tokenizer", self.config.tokenizer, self.workdir, name="SceneTok")

    def data_transforms(self, split: str):
        return [stok.flatten_views]

    # -- pieces ------------------------------------------------------------------------------------------------
    def prepare(self, model: SceneGenModel, batch: dict, rng=None, cond_rng=None) -> dict:
        """Stage-1 tokens (x0 = token_scale x tokens), the conditioning views (latents + cameras), the anchors (the
        context cameras) and the poses. Layout 'context': the context views condition, poses in context view 0's
        frame. Layout 'release' (the release's SceneGen training): the poses in the frame of a random context view
        (``cond_rng``; context view 0 without it), which is conditioning view 0, followed by ``cond.max_views - 1``
        other frames of the clip (random target views; the first ones without ``cond_rng``)."""
        stok.check_views(batch, "scenegen batch")
        ctx_c2w = jnp.asarray(batch["context_c2w"], jnp.float32)
        tgt_c2w = jnp.asarray(batch["target_c2w"], jnp.float32)
        ctx_k = jnp.asarray(batch["context_intrinsics"], jnp.float32)
        tgt_k = jnp.asarray(batch["target_intrinsics"], jnp.float32)
        tok = self.tokenizer.bind(model.tokenizer)
        lat = tok.image_latents(batch["context_images"])
        b = ctx_c2w.shape[0]
        rows = jnp.arange(b)
        if self.cond_layout == "release":
            if cond_rng is None:
                ref = jnp.zeros((b,), jnp.int32)
                picks = jnp.broadcast_to(jnp.arange(self.num_cond - 1), (b, self.num_cond - 1))
            else:
                r_ref, r_pick = jax.random.split(cond_rng)
                ref = jax.random.randint(r_ref, (b,), 0, self.num_context)
                order = jax.vmap(lambda k: jax.random.permutation(k, self.num_target))(jax.random.split(r_pick, b))
                picks = order[:, :self.num_cond - 1]
            ref_inv = jnp.linalg.inv(ctx_c2w[rows, ref])[:, None]
            ctx_c2w, tgt_c2w = ref_inv @ ctx_c2w, ref_inv @ tgt_c2w
            extra_lat = tok.image_latents(jnp.asarray(batch["target_images"])[rows[:, None], picks])
            cond = dict(cond_latents=jnp.concatenate([lat[rows, ref][:, None], extra_lat], 1),
                        cond_c2w=jnp.concatenate([ctx_c2w[rows, ref][:, None], tgt_c2w[rows[:, None], picks]], 1),
                        cond_intrinsics=jnp.concatenate([ctx_k[rows, ref][:, None], tgt_k[rows[:, None], picks]], 1))
        else:
            ctx_c2w, tgt_c2w = scenetok.relative_to_reference(ctx_c2w, tgt_c2w)
            cond = dict(cond_latents=lat, cond_c2w=ctx_c2w, cond_intrinsics=ctx_k)
        tokens = tok.encode({"latents": lat, "c2w": ctx_c2w, "intrinsics": ctx_k}, rng)
        return dict(tokens=tokens, x0=model.generator.scale_tokens(tokens), context_c2w=ctx_c2w,
                    context_intrinsics=ctx_k, target_c2w=tgt_c2w, target_intrinsics=tgt_k, **cond)

    def velocity(self, model: SceneGenModel, inputs: dict, x_t, t, cond_mask, rng=None):
        return model.generator(x_t, t, inputs["cond_latents"], inputs["context_c2w"], inputs["context_intrinsics"],
                               inputs["cond_c2w"], inputs["cond_intrinsics"], cond_mask=cond_mask, rng=rng)[0]

    def eval_mask(self, batch_size: int) -> jax.Array:
        """(B, conditioning views) mask keeping the first ``sample.num_cond_views``."""
        return jnp.broadcast_to(jnp.arange(self.num_cond) < self.num_cond_views, (batch_size, self.num_cond))

    def generate(self, model: SceneGenModel, inputs: dict, rng, cond_mask, *, num_steps=None, cfg_scale=None):
        """Scene tokens (B, K, d) (compressor units) sampled from noise for the condition in ``inputs``."""
        return model.generator.sample(
            rng, inputs["cond_latents"], inputs["context_c2w"], inputs["context_intrinsics"], inputs["cond_c2w"],
            inputs["cond_intrinsics"], cond_mask=cond_mask, flow=self.flow, num_steps=num_steps,
            cfg_scale=cfg_scale)

    def render(self, model: SceneGenModel, tokens, c2w, intrinsics, rng):
        """Target-view images (B, M, H, W, 3) (float, unclipped [-1, 1]) rendered by the frozen stage 1 (cameras
        in context view 0's frame)."""
        cameras = tokenizers.Cameras(c2w, intrinsics)
        return self.tokenizer.bind(model.tokenizer).decode(tokens, cameras, rng)["images"]

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, model, batch, rng, step=None):
        r_tok, r_t, r_eps, r_mask, r_cam = jax.random.split(rng, 5)
        r_cond = jax.random.fold_in(rng, 5)  # the release layout's reference / extra conditioning views
        inputs = self.prepare(model, batch, r_tok, r_cond)
        x0 = inputs["x0"]
        b = x0.shape[0]
        t, eps, x_t = self.flow.draw(x0, r_t, r_eps)
        mask = scenegen.random_cond_mask(r_mask, b, self.num_cond, p_view=self.p_view, p_uncond=self.p_uncond)
        v = self.velocity(model, inputs, x_t, t, mask, r_cam)
        loss, _ = self.flow.loss(v, x0, eps, t)
        std = jnp.std(inputs["tokens"])
        return loss, {"x0_rmse": jnp.sqrt(jnp.mean(jnp.square(self.flow.x0(v, x_t, t) - x0))),
                      "token_std": std, "suggested_token_scale": 1.0 / jnp.maximum(std, 1e-12),
                      "x0_std": jnp.std(x0), "cond_views": jnp.mean(jnp.sum(mask, axis=1).astype(jnp.float32))}

    def evaluate(self, model, batch, rng):
        """Velocity loss at t in (0.25, 0.5, 0.75) (all context views kept) and the PSNR / SSIM of renders of
        generated tokens (module docstring)."""
        r_eps, r_gen, r_render = jax.random.split(rng, 3)
        inputs = self.prepare(model, batch)
        x0 = inputs["x0"]
        b = x0.shape[0]
        full = jnp.ones((b, self.num_cond), bool)
        out = self.flow.fixed_time_losses(lambda x, t: self.velocity(model, inputs, x, t, full), x0,
                                          self.flow.noise(r_eps, x0))
        if not bool((self.config.get("sample") or {}).get("in_eval", True)):
            return out
        gen = self.generate(model, inputs, r_gen, self.eval_mask(b))
        cams = (inputs["target_c2w"], inputs["target_intrinsics"])
        # The same decoder noise for both token sets: differences come from the tokens.
        pred = image_metrics.to_unit(self.render(model, gen, *cams, r_render))
        ref = image_metrics.to_unit(self.render(model, inputs["tokens"], *cams, r_render))
        gt = image_metrics.to_unit(batch["target_images"])
        out.update(gen_psnr=jnp.mean(image_metrics.psnr(pred, gt)), gen_ssim=jnp.mean(image_metrics.ssim(pred, gt)),
                   stage1_psnr=jnp.mean(image_metrics.psnr(ref, gt)),
                   gen_vs_stage1_psnr=jnp.mean(image_metrics.psnr(pred, ref)),
                   token_rmse=jnp.sqrt(jnp.mean(jnp.square(gen - inputs["tokens"]))))
        if self.lpips is not None:  # LPIPS takes [-1, 1]
            out["gen_lpips"] = jnp.mean(self.lpips(pred * 2.0 - 1.0, gt * 2.0 - 1.0))
        return out

    metric_kind = "g"  # scene3d.evaluate's gFID / gKID / gFVD: samples against the held-out views

    def metric_frames(self, model, batch, rng) -> dict:
        """``scene3d.evaluate``'s FID / KID / FVD frames: the target views rendered from generated tokens (the keys
        of :meth:`evaluate`: the same samples) vs the held-out ground truth, (B, V, H, W, 3) in [-1, 1]."""
        _, r_gen, r_render = jax.random.split(rng, 3)
        inputs = self.prepare(model, batch)
        gen = self.generate(model, inputs, r_gen, self.eval_mask(inputs["x0"].shape[0]))
        fake = self.render(model, gen, inputs["target_c2w"], inputs["target_intrinsics"], r_render)
        return {"fake": fake, "real": batch["target_images"]}

    # -- figures and files -------------------------------------------------------------------------------------
    def _num_scenes(self, batch) -> int:
        return min(int((self.config.get("render") or {}).get("num_scenes", 2)),
                   int(batch["context_images"].shape[0]))

    def context_tokens(self, model, batch: dict) -> jax.Array:
        """Stage-1 tokens (B, K, d) (posterior mean) of a batch's context views (host or device arrays)."""
        return _context_tokens(self, model, *(jnp.asarray(batch[k], jnp.float32) for k in
                                              ("context_images", "context_c2w", "context_intrinsics")))

    def render_views(self, model, tokens, c2w, intrinsics, rng) -> np.ndarray:
        """Host images (B, M, H, W, 3) in [-1, 1] (unclipped) of cameras (B, M, ...) in context view 0's frame,
        rendered from tokens (B, K, d) by the frozen stage 1."""
        return np.asarray(jax.device_get(_render(self, model, jnp.asarray(tokens), jnp.asarray(c2w, jnp.float32),
                                                 jnp.asarray(intrinsics, jnp.float32), rng)))

    def generate_tokens(self, model, batch: dict, rng) -> jax.Array:
        """Tokens generated for a batch's first ``sample.num_cond_views`` context views (host or device arrays)."""
        return _generate_tokens(self, model, {k: jnp.asarray(v) for k, v in batch.items()}, rng)

    def images(self, model, batch, rng):
        """``views``: one row per scene: [conditioning views | target | rendered from generated tokens | rendered
        from the stage-1 tokens of all context views] (the same decoder noise for both token sets)."""
        k = self._num_scenes(batch)
        if k <= 0:
            return {}
        host = {key: np.asarray(jax.device_get(batch[key]))[:k] for key in batch}
        r_gen, r_render = jax.random.split(rng)
        gen = self.generate_tokens(model, host, r_gen)
        ref = self.context_tokens(model, host)
        cams = (stok.relative_to_first(host["context_c2w"], host["target_c2w"]), host["target_intrinsics"])
        u8 = plots.signed_to_uint8
        out = [self.render_views(model, tokens, *cams, r_render) for tokens in (gen, ref)]
        rows = [[u8(host["context_images"][i, :self.num_cond_views]), u8(host["target_images"][i]), u8(out[0][i]),
                 u8(out[1][i])] for i in range(k)]
        return {"views": plots.view_rows(rows)}

    def write_outputs(self, model, batch, rng, out_dir):
        """``orbit_<i>.gif``: the orbit of ``render.orbit`` rendered from scene i's generated tokens."""
        k = self._num_scenes(batch)
        if k <= 0:
            return
        os.makedirs(out_dir, exist_ok=True)
        host = {key: np.asarray(jax.device_get(batch[key]))[:k] for key in batch}
        r_gen, r_render = jax.random.split(rng)
        tokens = self.generate_tokens(model, host, r_gen)
        rc = self.config.get("render")
        c2w, intr = stok.orbit_cameras(rc, host["context_intrinsics"][0, 0])
        frames = self.render_views(model, tokens, np.broadcast_to(c2w, (k,) + c2w.shape),
                                   np.broadcast_to(intr, (k,) + intr.shape), r_render)
        stok.write_orbit_gifs(frames, rc, out_dir)


def _generate(task: SceneGenTask, model, batch, rng):
    inputs = task.prepare(model, batch)
    return task.generate(model, inputs, rng, task.eval_mask(inputs["x0"].shape[0]))


def _encode_context(task: SceneGenTask, model, images, c2w, intrinsics):
    inputs = {"images": images, "c2w": scenetok.relative_to_reference(c2w), "intrinsics": intrinsics}
    return task.tokenizer.bind(model.tokenizer).encode(inputs)


# Compiled once per task instance and shapes.
_generate_tokens = nnx.jit(_generate, static_argnums=0)
_context_tokens = nnx.jit(_encode_context, static_argnums=0)
_render = nnx.jit(lambda task, model, tokens, c2w, intrinsics, rng: task.render(model, tokens, c2w, intrinsics, rng),
                  static_argnums=0)
