"""Frozen 2D representation encoders: DINOv2 (with and without registers) and SigLIP2 vision towers.

One module, :class:`ViT`, reproduces the Hugging Face transformers (5.23) ``Dinov2Model``,
``Dinov2WithRegistersModel`` and ``Siglip2VisionModel`` forward passes; weights come from their PyTorch
state_dicts through :mod:`scene3d.convert.hf_vit`. ``ViT(images) -> (patch_features (B, h, w, D), aux)``
for images (B, H, W, 3) normalised as the HF processor would (:func:`preprocess`), any H, W multiple of the patch.

Position embeddings are resized to the patch grid of the input as transformers does, with the same
``torch.nn.functional.interpolate`` formulas (:func:`torch_interpolate`):

- 'dinov2': bicubic (a = -0.75), align_corners=False, no antialias; skipped at the native grid.
- 'dinov2_reg': bicubic with antialias=True (PIL-style separable filter, a = -0.5, renormalised weights).
- 'siglip2': bilinear with antialias=True, always (identity at the native grid). Images are unpadded: NaFlex's
  pixel_attention_mask is all ones and spatial_shapes is the patch grid of the batch.

Frozen use: ``stop_gradient=True`` (default) stops gradients at the outputs (no backward pass through the tower);
:func:`freeze` turns the parameters into non-``nnx.Param`` variables so the trainer keeps no optimiser state.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.nn.frozen import freeze  # noqa: F401  (re-exported: vit.freeze(tower))
from scene3d.core.sharding import param_init
from scene3d.specs.vit import FAMILIES, IMAGE_MEAN_STD, VARIANTS, ViTConfig, vit_config  # noqa: F401  (public names)


# ---------------------------------------------------------------------------------------------------------
# torch.nn.functional.interpolate, align_corners=False, as explicit separable weight matrices


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def interpolate_weights(n_in: int, n_out: int, mode: str, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 matrix W with ``out = W @ in`` along one axis, as torch's interpolate computes it.

    mode 'bicubic' without antialias: cubic convolution (a = -0.75) at source ``(i + 0.5) * n_in / n_out - 0.5``,
    border-replicated taps. With antialias ('bilinear' | 'bicubic'): torch's PIL-style filter (triangle, or
    cubic with a = -0.5) stretched by the downscale factor, truncated to the input and renormalised.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"interpolate_weights: sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    if not antialias:
        if mode != "bicubic":
            raise ValueError(f"interpolate_weights: without antialias only mode='bicubic' is implemented, "
                             f"got {mode!r}")
        for i in range(n_out):
            src = scale * (i + 0.5) - 0.5
            fl = math.floor(src)
            t = src - fl
            for k in range(-1, 3):
                w[i, min(max(fl + k, 0), n_in - 1)] += _cubic(np.float64(k - t), -0.75)
        return w
    if mode == "bilinear":
        size, filt = 2, lambda x: np.maximum(0.0, 1.0 - np.abs(x))
    elif mode == "bicubic":
        size, filt = 4, lambda x: _cubic(x, -0.5)
    else:
        raise ValueError(f"interpolate_weights: mode must be 'bilinear' or 'bicubic', got {mode!r}")
    support = size / 2 * scale if scale >= 1 else size / 2
    invscale = 1 / scale if scale >= 1 else 1.0
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = filt((np.arange(lo, hi) - center + 0.5) * invscale)
        total = taps.sum()
        w[i, lo:hi] = taps / total if total != 0 else taps
    return w


def torch_interpolate(x: jax.Array, size: tuple[int, int], mode: str = "bicubic",
                      antialias: bool = False) -> jax.Array:
    """Resize channels-last ``x`` (..., H, W, C) to ``size`` = (h, w) like ``F.interpolate(align_corners=False)``.

    Computed in fp32 as two matrix products with :func:`interpolate_weights` (separable; equal to torch up to
    fp32 rounding). Known torch CPU quirk not reproduced: antialias with an output width of 1 while the height
    is upsampled.
    """
    if x.ndim < 3:
        raise ValueError(f"torch_interpolate: x must be (..., H, W, C), got {x.shape}")
    wh = jnp.asarray(interpolate_weights(x.shape[-3], int(size[0]), mode, antialias), jnp.float32)
    ww = jnp.asarray(interpolate_weights(x.shape[-2], int(size[1]), mode, antialias), jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,...hwc->...owc", wh, x.astype(jnp.float32), precision=hp)
    return jnp.einsum("pw,...owc->...opc", ww, y, precision=hp)


def resize_pos_embed(grid: jax.Array, size: tuple[int, int], family: str) -> jax.Array:
    """Learned position grid (S, S, D) -> (h, w, D) the way transformers resizes it for ``family``."""
    if family == "dinov2":
        if tuple(size) == tuple(grid.shape[:2]):
            return grid
        return torch_interpolate(grid, size, "bicubic", antialias=False).astype(grid.dtype)
    if family == "dinov2_reg":
        return torch_interpolate(grid, size, "bicubic", antialias=True).astype(grid.dtype)
    if family == "siglip2":
        return torch_interpolate(grid, size, "bilinear", antialias=True).astype(grid.dtype)
    raise ValueError(f"resize_pos_embed: family must be one of {FAMILIES}, got {family!r}")


# ---------------------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(images, family: str) -> jax.Array:
    """uint8 images in [0, 255], or float images in [-1, 1], (..., H, W, 3) -> normalised as the HF processor
    of ``family`` does (rescale to [0, 1], then (x - mean) / std). No resizing or cropping."""
    if family not in IMAGE_MEAN_STD:
        raise ValueError(f"preprocess: family must be one of {FAMILIES}, got {family!r}")
    x = jnp.asarray(images)
    if x.shape[-1:] != (3,):
        raise ValueError(f"preprocess: images must be (..., H, W, 3), got {x.shape}")
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else (x.astype(jnp.float32) + 1.0) * 0.5
    mean, std = (jnp.asarray(v, jnp.float32) for v in IMAGE_MEAN_STD[family])
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------------------
# Modules


def _param(init, shape, names, param_dtype, rngs):
    return nnx.Param(param_init(init, names)(rngs.params(), shape, param_dtype))


class MAPHead(nnx.Module):
    """SigLIP multi-head attention pooling: a learned probe attends to the tokens, then h + mlp(norm(h))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, act: str = "gelu_tanh", norm_eps: float = 1e-6,
                 impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.probe = _param(nnx.initializers.normal(1.0), (1, dim), (None, "embed"), param_dtype, rngs)
        self.attn = nn.Attention(dim, num_heads, kv_dim=dim, impl=impl, rngs=rngs, **kw)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **kw)
        self.mlp = nn.Mlp(dim, mlp_dim, act=act, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, L, dim) -> (B, dim)."""
        q = jnp.broadcast_to(self.probe[...].astype(x.dtype)[None], (x.shape[0], 1, x.shape[-1]))
        h = self.attn(q, x)
        h = h + self.mlp(self.norm(h))
        return h[:, 0]


class ViT(nnx.Module):
    """DINOv2 / DINOv2-with-registers / SigLIP2 vision tower.

    ``ViT(variant, rngs=..., **overrides)`` with a VARIANTS name and/or :class:`ViTConfig` fields. Options:
    impl (attention kernel), scan / remat (the layer Stack), stop_gradient (outputs carry no gradient: a frozen
    tower), dtype / param_dtype.
    """

    def __init__(self, variant: str | None = None, *, rngs: nnx.Rngs, impl: str = "xla", scan: bool = True,
                 remat: str = "none", stop_gradient: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
                 **overrides):
        cfg = vit_config(variant, **overrides)
        self.config, self.family, self.stop_gradient, self.dtype = cfg, cfg.family, stop_gradient, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        d = cfg.dim
        self.patch_embed = nn.PatchEmbed(3, d, cfg.patch, rngs=rngs, **kw)
        init = nnx.initializers.normal(0.02)
        self.pos_embed = _param(init, (cfg.pos_grid, cfg.pos_grid, d), (None, None, "embed"), param_dtype, rngs)
        if cfg.family == "siglip2":
            self.cls_token = self.cls_pos = self.mask_token = self.registers = None
        else:
            self.cls_token = _param(init, (d,), ("embed",), param_dtype, rngs)
            self.cls_pos = _param(init, (d,), ("embed",), param_dtype, rngs)
            # HF's BEiT-style masked-modelling token: unused by the forward pass, kept for a lossless round trip.
            self.mask_token = _param(nnx.initializers.zeros_init(), (d,), ("embed",), param_dtype, rngs)
            self.registers = (_param(init, (cfg.num_registers, d), (None, "embed"), param_dtype, rngs)
                              if cfg.num_registers else None)
        layer_scale = None if cfg.family == "siglip2" else cfg.layerscale_value

        def make_layer(r):
            return nn.Block(d, cfg.num_heads, mlp=cfg.act, mlp_dim=cfg.mlp_dim, norm_eps=cfg.norm_eps,
                            qkv_bias=cfg.qkv_bias, impl=impl, layer_scale=layer_scale, rngs=r, **kw)

        self.blocks = nn.Stack(make_layer, cfg.depth, rngs=rngs, scan=scan, remat=remat)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps, **kw)
        self.head = (MAPHead(d, cfg.num_heads, cfg.mlp_dim, act=cfg.act, norm_eps=cfg.norm_eps, impl=impl,
                             rngs=rngs, **kw) if cfg.use_head else None)

    def preprocess(self, images) -> jax.Array:
        """:func:`preprocess` with this tower's family."""
        return preprocess(images, self.family)

    def _check(self, images):
        p = self.config.patch
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ViT({self.family}): images must be (B, H, W, 3), got {images.shape}")
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"ViT({self.family}): image size (H, W) = {images.shape[1:3]} must be a multiple of "
                             f"the patch size {p}")

    def __call__(self, images: jax.Array, *, return_hidden_states: bool = False):
        """images (B, H, W, 3), normalised (:meth:`preprocess`) -> (patch_features (B, H/p, W/p, D), aux).

        aux: 'cls' (B, D) and 'registers' (B, R, D) (DINOv2, after the final norm; None otherwise), 'pooled'
        (B, D) (HF pooler_output: the cls token for DINOv2, the attention-pooling head for SigLIP2), and with
        ``return_hidden_states`` 'hidden_states' (depth + 1, B, L, D): the embeddings and every layer's output
        before the final norm (HF output_hidden_states).
        """
        self._check(images)
        cfg = self.config
        b, hh, ww = images.shape[0], images.shape[1] // cfg.patch, images.shape[2] // cfg.patch
        x = self.patch_embed(images.astype(self.dtype))
        pos = resize_pos_embed(self.pos_embed[...], (hh, ww), cfg.family).reshape(hh * ww, cfg.dim)
        x = x + pos.astype(x.dtype)
        if cfg.family != "siglip2":
            cls = (self.cls_token[...] + self.cls_pos[...]).astype(x.dtype)
            prefix = [jnp.broadcast_to(cls, (b, 1, cfg.dim))]
            if self.registers is not None:
                prefix.append(jnp.broadcast_to(self.registers[...].astype(x.dtype), (b, cfg.num_registers, cfg.dim)))
            x = jnp.concatenate(prefix + [x], axis=1)
        hidden = None
        if return_hidden_states:
            graphdef, state = nnx.split(self.blocks.layers)

            def body(h, layer_state):
                h = nnx.merge(graphdef, layer_state)(h)
                return h, h

            x0 = x
            x, hs = jax.lax.scan(body, x, state)
            hidden = jnp.concatenate([x0[None], hs], axis=0)
        else:
            x = self.blocks(x)
        out = self.norm(x)
        n = cfg.num_prefix
        feats = out[:, n:].reshape(b, hh, ww, cfg.dim)
        aux = {"cls": None, "registers": None, "pooled": None, "hidden_states": hidden}
        if cfg.family != "siglip2":
            aux["cls"] = aux["pooled"] = out[:, 0]
            if cfg.num_registers:
                aux["registers"] = out[:, 1:n]
        elif self.head is not None:
            aux["pooled"] = self.head(out)
        if self.stop_gradient:
            feats, aux = jax.lax.stop_gradient((feats, aux))
        return feats, aux
