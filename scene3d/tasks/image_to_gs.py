"""Image to 3DGS (the Can3Tok paper's application): an image encoder regresses the latent of a FROZEN stage-1
Can3Tok; the frozen decoder turns the predicted latent into Gaussians.

Target: the tokenizer's posterior mean z of the scene's crop (never a posterior sample) viewed as its decoder
tokens (T, E), times ``tokenizer.scale``: x0 = scale * z. The loss is the mean squared error in that scaled latent
space. The model (``ImageToGS``):

- ``regressor`` (``LatentRegressor``): the image (B, H, W, 3) in [0, 1] -> patch tokens
  (``cond_encoders.ImageEncoder``, pool 'none'), learned positions, ``model.depth`` pre-norm transformer blocks,
  mean over the patches, LayerNorm, a linear head to T * E numbers;
- ``baseline``: one latent (T, E), a parameter fitted by its own squared error to the same training latents,
  without the image: the "predict the mean training latent" answer (its optimum is the mean of the training
  latents), so every figure has the score of an image-blind guess next to it;
- ``tokenizer``: the frozen stage-1 model, used only through its Tokenizer adapter (``scene3d.tasks.stage1``);
  ``restore_pretrained`` fills it from ``tokenizer.workdir``.

The image of a scene is chosen as the latent-diffusion task's image condition (``config.cond.source``,
``scene3d.tasks.generate.SceneConditions``): 'file' = the dataset's own conditioning image (PLY folders:
``<stem>.png`` / ``cond.png`` next to each PLY), 'colours' = a preview render of the crop itself from a fixed
camera (after the crop's augmentation, so the image and the latent show the same Gaussians); 'auto' = the render for
the built-in scenes, the file otherwise. Images are resized to ``cond.image_size``.

Evaluation (per batch; ``scene3d.evaluate`` per scene): ``latent_mse`` (scaled latent space) and
``baseline_latent_mse``; the decoded prediction against the crop's raw Gaussians: per-scene L2 ``l2_mean``, the
release's ``l2_batch`` and ``failure_rate`` (``scene3d.metrics.gaussians``), the same for the decoded baseline
(``baseline_*``) and for the tokenizer's own reconstruction of the crop (``tokenizer_*``: the best a perfect
regressor can reach). Images: per example [input view | decoded prediction | tokenizer reconstruction | target
crop] preview renders.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.core.dtypes import dtype as _dtype
from scene3d.core.sharding import param_init
from scene3d.metrics import gaussians as gmetrics
from scene3d.models import cond_encoders
from scene3d.render import plots
from scene3d.tasks import generate, stage1

_MODEL_KEYS = frozenset({"name", "width", "depth", "heads", "patch", "mlp_ratio", "attn_impl", "scan", "remat",
                         "dtype", "param_dtype"})


class LatentRegressor(nnx.Module):
    """Image (B, S, S, 3) in [0, 1] -> latent (B, T, E): patch tokens, transformer blocks, mean pool, linear head."""

    def __init__(self, image_size: int, latent_shape: tuple[int, int], *, width: int = 64, depth: int = 2,
                 heads: int = 2, patch: int = 8, mlp_ratio: float = 4.0, attn_impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.image = cond_encoders.ImageEncoder(image_size, width, patch=patch, pool="none", rngs=rngs, **kw)
        length = (image_size // patch) ** 2
        self.pos = nnx.Param(param_init(nnx.initializers.normal(0.02), ("length", "embed"))(rngs.params(),
                                                                                           (length, width),
                                                                                           param_dtype))
        self.blocks = None if depth == 0 else nn.Stack(
            lambda r: nn.Block(width, heads, mlp_ratio=mlp_ratio, mlp="gelu", impl=attn_impl, rngs=r, **kw), depth,
            rngs=rngs, scan=scan, remat=remat)
        self.norm = nn.LayerNorm(width, **kw)
        t, e = self.latent_shape
        self.head = nn.dense(width, t * e, ("embed", "mlp"), rngs=rngs, **kw)

    def __call__(self, images: jax.Array) -> jax.Array:
        h, _ = self.image({"cond_image": images})
        h = h + self.pos[...].astype(h.dtype)
        if self.blocks is not None:
            h = self.blocks(h)
        out = self.head(self.norm(jnp.mean(h, axis=1))).astype(jnp.float32)
        return out.reshape((out.shape[0],) + self.latent_shape)


class ImageToGS(nnx.Module):
    """``regressor`` (LatentRegressor), ``baseline`` (a (T, E) latent parameter) and ``tokenizer`` (frozen)."""

    def __init__(self, regressor: LatentRegressor, baseline: nnx.Param, tokenizer):
        self.regressor, self.baseline, self.tokenizer = regressor, baseline, tokenizer


class ImageToGSTask:
    """Image -> Can3Tok latent regression on a frozen tokenizer (module docstring). Config fields: tokenizer, model,
    cond (source, image_size), data.gaussians, render, metrics."""

    cond_kind = "image"  # scene3d.sample: --cond is an image path

    def __init__(self, config):
        self.config = config
        tc = config.tokenizer
        if tc.get("sample_posterior", False):
            raise ValueError("config.tokenizer.sample_posterior: the image-to-3DGS target is the posterior mean; "
                             "set it to False")
        self.workdir, self.stage1 = stage1.resolve(config, stage2="image_to_gs", expected="autoencode")
        self.tokenizer = stage1.tokenizer(self.stage1, scale=float(tc.get("scale", 1.0)), sample_posterior=False)
        self.scale = self.tokenizer.scale
        self.latent_shape = self.tokenizer.token_shape
        self.output_shape = self.tokenizer.output_shape
        self.offset = generate.check_rows(config, self.stage1, self.output_shape)
        mc = config.model
        if mc.get("name", "img2gs") != "img2gs":
            raise ValueError(f"config.model.name: the image_to_gs task trains 'img2gs', got {mc.name!r}")
        unknown = set(mc.keys()) - _MODEL_KEYS
        if unknown:
            raise ValueError(f"config.model: unknown keys {sorted(unknown)}; known: {sorted(_MODEL_KEYS)}")
        self.conditions = generate.SceneConditions(config.get("cond") or {}, config.data, "image")
        self.image_size = self.conditions.image_size
        self.failure_threshold = float((config.get("metrics") or {}).get("failure_threshold",
                                                                         gmetrics.DEFAULT_FAILURE_THRESHOLD))

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> ImageToGS:
        mc = self.config.model
        kw = dict(dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                  param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"))
        reg = LatentRegressor(self.image_size, self.latent_shape, width=int(mc.get("width", 64)),
                              depth=int(mc.get("depth", 2)), heads=int(mc.get("heads", 2)),
                              patch=int(mc.get("patch", 8)), mlp_ratio=float(mc.get("mlp_ratio", 4.0)),
                              attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                              remat=mc.get("remat", "none"), rngs=rngs, **kw)
        baseline = nnx.Param(jnp.zeros(self.latent_shape, kw["param_dtype"]))
        return ImageToGS(reg, baseline, stage1.frozen_tokenizer(self.stage1, rngs))

    def restore_pretrained(self, params):
        """Fill the frozen tokenizer of a fresh run's (sharded) state from ``tokenizer.workdir``."""
        return stage1.restore_tokenizer(params, "tokenizer", self.config.tokenizer, self.workdir, name="tokenizer")

    def data_transforms(self, split: str):
        return [generate.example_transform(self.conditions, "image-to-3DGS")]

    # -- latents -----------------------------------------------------------------------------------------------
    def target(self, model: ImageToGS, batch: dict) -> jax.Array:
        """x0 (B, T, E) = scale * the tokenizer's posterior mean of the batch's rows (no gradient)."""
        rows = batch["gaussians"]
        if rows.ndim != 3 or rows.shape[2] != self.offset + self.output_shape[1]:
            raise ValueError(f"batch['gaussians']: expected (B, N, {self.offset + self.output_shape[1]}) rows, got "
                             f"{tuple(rows.shape)}")
        return self.scale * self.tokenizer.bind(model.tokenizer).encode({"gaussians": rows})

    def _images(self, batch) -> jax.Array:
        if "cond_image" not in batch:
            raise ValueError(f"image-to-3DGS batch: no 'cond_image' (has {sorted(batch)}); are the task's "
                             "data_transforms applied?")
        return batch["cond_image"]

    def predict(self, model: ImageToGS, images) -> jax.Array:
        """Images (B, S, S, 3) in [0, 1] -> predicted scaled latents (B, T, E)."""
        return model.regressor(jnp.asarray(images, jnp.float32))

    def decode(self, model: ImageToGS, x0) -> jax.Array:
        """Scaled latents (B, T, E) -> raw Gaussians (B, N, C) (float32)."""
        return self.tokenizer.bind(model.tokenizer).decode(x0 / self.scale)["gaussians"]

    # -- training ----------------------------------------------------------------------------------------------
    def loss(self, model, batch, rng, step=None):
        x0 = self.target(model, batch)
        pred = self.predict(model, self._images(batch))
        mse = jnp.mean(jnp.square(pred - x0))
        base = jnp.mean(jnp.square(model.baseline[...][None].astype(jnp.float32) - x0))
        return mse + base, {"latent_mse": mse, "baseline_latent_mse": base, "latent_std": jnp.std(x0) / self.scale}

    def evaluate(self, model, batch, rng):
        x0 = self.target(model, batch)
        pred = self.predict(model, self._images(batch))
        base = jnp.broadcast_to(model.baseline[...].astype(jnp.float32), x0.shape)
        raw = generate.raw_rows(batch["gaussians"], self.offset).astype(jnp.float32)
        out = {"latent_mse": jnp.mean(jnp.square(pred - x0)), "baseline_latent_mse": jnp.mean(jnp.square(base - x0))}
        for prefix, latent in (("", pred), ("baseline_", base), ("tokenizer_", x0)):
            for k, v in gmetrics.gaussian_metrics(self.decode(model, latent), raw, self.failure_threshold).items():
                out[prefix + k] = v
        return out

    # -- sampling (scene3d.sample) -----------------------------------------------------------------------------
    def cond_inputs(self, values: Sequence) -> dict:
        """Images (paths, or (H, W, 3) arrays) -> {'cond_image': (n, S, S, 3)} resized to ``cond.image_size``."""
        return {"cond_image": np.stack([generate.load_image(v, self.image_size) for v in values]).astype(np.float32)}

    def sample(self, model, rng=None, *, num: int, cond_inputs: dict, **unused) -> jax.Array:
        """The decoded prediction (num, N, C) for ``cond_inputs`` (deterministic: ``rng`` and the sampler settings
        of the latent-diffusion interface are unused)."""
        images = cond_inputs["cond_image"]
        if images.shape[0] != num:
            raise ValueError(f"image-to-3DGS: {images.shape[0]} images for num={num}")
        return self.decode(model, self.predict(model, images))

    def images(self, model, batch, rng):
        """``predictions``: per example [input view | decoded prediction | the tokenizer's reconstruction of the
        target (the best a perfect regressor can do) | target crop] preview renders."""
        n = min(int(self.config.get("num_sample_images", 4)), int(batch["gaussians"].shape[0]))
        images, rows = self._images(batch)[:n], batch["gaussians"][:n]
        decoded = nnx.jit(lambda m, im, r: (self.decode(m, self.predict(m, im)),
                                            self.decode(m, self.target(m, {"gaussians": r}))))(model, images, rows)
        pred, recon = (np.asarray(jax.device_get(x), np.float32) for x in decoded)
        size = int((self.config.get("render") or {}).get("size", 64))
        data = generate.raw_rows(np.asarray(jax.device_get(rows), np.float32), self.offset)
        radius = self.conditions.radius
        inputs = [generate.load_image(im, size) for im in np.asarray(jax.device_get(images), np.float32)]
        figure = [[np.stack([plots.to_uint8(x) for x in [inputs[i]] + [generate.render_preview(g[i], size, radius)
                                                                        for g in (pred, recon, data)]])]
                  for i in range(n)]
        return {"predictions": plots.view_rows(figure)}
