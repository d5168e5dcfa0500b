"""Stage 2: flow-matching generation in a tokenizer's latent space.

The latent of an example comes from ``encode`` (for image data without a trained tokenizer: the patchified
pixels, so the trainer is proven end to end before any scene tokenizer exists). The generator is a
``LatentDiT`` trained with the velocity loss of DESIGN.md; sampling integrates from t = 1 to 0 with Euler/Heun
and classifier-free guidance over the class label within a guidance interval.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.diffusion import guidance, paths, samplers, timesteps
from scene3d.models.latent_dit import LatentDiT
from scene3d.nn import patchify, unpatchify


def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> one uint8 grid image."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[i]
    return np.clip((grid + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


class GenerateTask:
    """Flow matching over latent tokens; for image data the tokens are pixel patches."""

    def __init__(self, config):
        self.config = config
        mc, dc = config.model, config.data
        self.patch = int(mc.patch)
        self.image_size = int(dc.size)
        if self.image_size % self.patch:
            raise ValueError(f"config.data.size={self.image_size} is not divisible by config.model.patch={self.patch}")
        self.grid = (self.image_size // self.patch,) * 2
        self.channels = 3
        self.time_sampler = timesteps.TimeSampler.from_spec(config.flow.get("time_sampler", "logit_normal"))
        self.num_classes = int(mc.get("num_classes", 0))

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> LatentDiT:
        mc = self.config.model
        return LatentDiT(in_dim=self.patch * self.patch * self.channels, num_tokens=self.grid[0] * self.grid[1],
                         variant=mc.variant, width=mc.get("width"), depth=mc.get("depth"), heads=mc.get("heads"),
                         num_classes=self.num_classes, pos=mc.get("pos", "rope2d"), grid=self.grid,
                         qk_norm=mc.get("qk_norm", True), attn_impl=mc.get("attn_impl", "xla"),
                         scan=mc.get("scan", True), remat=mc.get("remat", "none"),
                         dtype=_dtype(mc.get("dtype", "float32")), param_dtype=_dtype(mc.get("param_dtype", "float32")),
                         rngs=rngs)

    # -- latents -----------------------------------------------------------------------------------------------
    def encode(self, batch: dict) -> jax.Array:
        return patchify(batch["image"], self.patch)

    def decode(self, tokens: jax.Array) -> jax.Array:
        return unpatchify(tokens, self.patch, (self.image_size, self.image_size))

    def data_transforms(self, split: str):
        return []

    # -- training ----------------------------------------------------------------------------------------------
    def _labels(self, batch, rng, p_drop):
        if not self.num_classes:
            return None
        labels = batch["label"].astype(jnp.int32)
        if p_drop > 0:
            labels = guidance.drop_condition(rng, labels, p_drop, self.num_classes)
        return labels

    def loss(self, model, batch, rng, step=None):
        x0 = self.encode(batch)
        r_t, r_eps, r_drop = jax.random.split(rng, 3)
        t = self.time_sampler(r_t, (x0.shape[0],))
        eps = jax.random.normal(r_eps, x0.shape, x0.dtype)
        labels = self._labels(batch, r_drop, float(self.config.flow.get("cond_drop", 0.1)))
        v, _ = model(paths.interpolate(x0, eps, t), t, labels=labels)
        loss = paths.velocity_loss(v, x0, eps)
        return loss, {"x0_rmse": jnp.sqrt(jnp.mean(jnp.square(paths.x0_from_velocity(
            paths.interpolate(x0, eps, t), v, t) - x0)))}

    def evaluate(self, model, batch, rng):
        """Velocity loss at fixed times (a low-variance validation curve) for one batch."""
        x0 = self.encode(batch)
        eps = jax.random.normal(rng, x0.shape, x0.dtype)
        labels = self._labels(batch, rng, 0.0)
        out = {}
        for tv in (0.1, 0.5, 0.9):
            t = jnp.full((x0.shape[0],), tv, jnp.float32)
            v, _ = model(paths.interpolate(x0, eps, t), t, labels=labels)
            out[f"val_loss_t{tv}"] = paths.velocity_loss(v, x0, eps)
        out["val_loss"] = sum(out.values()) / 3.0
        return out

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample(self, model, rng, *, num: int, labels=None, num_steps: int | None = None, method: str | None = None,
               cfg_scale: float | None = None):
        """Draw ``num`` samples (decoded images (num, H, W, 3)) from noise."""
        fc = self.config.flow
        num_steps = int(num_steps or fc.get("sample_steps", 32))
        method = method or fc.get("sampler", "euler")
        cfg_scale = float(fc.get("cfg_scale", 1.0) if cfg_scale is None else cfg_scale)
        interval = tuple(fc.get("cfg_interval", (0.0, 1.0)))
        noise = jax.random.normal(rng, (num, self.grid[0] * self.grid[1], self.patch * self.patch * self.channels))

        # Split once: the sampler's lax.scan must merge a fresh module inside its own trace.
        graphdef, state = nnx.split(model)

        def apply(x, t, lab):
            return nnx.merge(graphdef, state)(x, t, labels=lab)[0]

        def cond_fn(x, t):
            return apply(x, t, labels)

        model_fn = cond_fn
        if self.num_classes and labels is not None and cfg_scale != 1.0:
            null = jnp.full((num,), self.num_classes, jnp.int32)
            model_fn = guidance.guided(cond_fn, lambda x, t: apply(x, t, null), cfg_scale,
                                       interval=interval)
        x0 = samplers.sample(model_fn, noise, num_steps=num_steps, method=method,
                             shift=float(fc.get("sample_shift", 1.0)))
        return self.decode(x0)

    def images(self, model, batch, rng):
        n = int(self.config.get("num_sample_images", 16))
        labels = (jnp.arange(n, dtype=jnp.int32) % self.num_classes) if self.num_classes else None
        samples = nnx.jit(lambda m, r: self.sample(m, r, num=n, labels=labels))(model, rng)
        data = np.asarray(jax.device_get(batch["image"]))[:n]
        return {"samples": image_grid(np.asarray(jax.device_get(samples))), "data": image_grid(data)}
