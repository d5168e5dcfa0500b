"""DINOv2 / DINOv2-with-registers / SigLIP2 vision towers in plain PyTorch.

Port of :mod:`scene3d.models.vit` (same module tree, so ``state_dict`` keys are the torch_port layout of the
JAX model). ``ViT(images) -> (patch_features (B, h, w, D), aux)`` for images (B, H, W, 3) normalised by
:func:`preprocess`, any H, W multiple of the patch. Position embeddings are resized to the patch grid with
``F.interpolate`` as transformers does: 'dinov2' bicubic (skipped at the native grid), 'dinov2_reg' bicubic with
antialias, 'siglip2' bilinear with antialias (always).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn as tnn

from scene3d.specs.vit import FAMILIES, IMAGE_MEAN_STD, VARIANTS, ViTConfig, vit_config  # noqa: F401
from scene3d_torch import nn


def resize_pos_embed(grid: torch.Tensor, size: tuple[int, int], family: str) -> torch.Tensor:
    """Learned position grid (S, S, D) -> (h, w, D) the way transformers resizes it for ``family``."""
    if family == "dinov2":
        if tuple(size) == tuple(grid.shape[:2]):
            return grid
        mode, antialias = "bicubic", False
    elif family == "dinov2_reg":
        mode, antialias = "bicubic", True
    elif family == "siglip2":
        mode, antialias = "bilinear", True
    else:
        raise ValueError(f"resize_pos_embed: family must be one of {FAMILIES}, got {family!r}")
    x = grid.to(torch.float32).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).to(grid.dtype)


def preprocess(images, family: str) -> torch.Tensor:
    """uint8 images in [0, 255], or float images in [-1, 1], (..., H, W, 3) -> normalised as the HF processor
    of ``family`` does (rescale to [0, 1], then (x - mean) / std). No resizing or cropping."""
    if family not in IMAGE_MEAN_STD:
        raise ValueError(f"preprocess: family must be one of {FAMILIES}, got {family!r}")
    x = torch.as_tensor(images)
    if x.shape[-1:] != (3,):
        raise ValueError(f"preprocess: images must be (..., H, W, 3), got {tuple(x.shape)}")
    x = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else (x.to(torch.float32) + 1.0) * 0.5
    mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device) for v in IMAGE_MEAN_STD[family])
    return (x - mean) / std


class MAPHead(tnn.Module):
    """SigLIP multi-head attention pooling: a learned probe attends to the tokens, then h + mlp(norm(h))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, act: str = "gelu_tanh", norm_eps: float = 1e-6):
        super().__init__()
        self.probe = tnn.Parameter(torch.zeros(1, dim))
        self.attn = nn.Attention(dim, num_heads, kv_dim=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = nn.Mlp(dim, mlp_dim, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim) -> (B, dim)."""
        q = self.probe.to(x.dtype)[None].expand(x.shape[0], 1, x.shape[-1])
        h = self.attn(q, x)
        h = h + self.mlp(self.norm(h))
        return h[:, 0]


class ViT(tnn.Module):
    """DINOv2 / DINOv2-with-registers / SigLIP2 vision tower: ``ViT(variant, **overrides)`` with a VARIANTS
    name and/or :class:`ViTConfig` fields (the torch_port model_spec passes the config fields)."""

    def __init__(self, variant: str | None = None, **overrides):
        super().__init__()
        cfg = vit_config(variant, **overrides)
        self.config, self.family = cfg, cfg.family
        d = cfg.dim
        self.patch_embed = nn.PatchEmbed(3, d, cfg.patch)
        self.pos_embed = tnn.Parameter(torch.zeros(cfg.pos_grid, cfg.pos_grid, d))
        if cfg.family == "siglip2":
            self.cls_token = self.cls_pos = self.mask_token = self.registers = None
        else:
            self.cls_token = tnn.Parameter(torch.zeros(d))
            self.cls_pos = tnn.Parameter(torch.zeros(d))
            self.mask_token = tnn.Parameter(torch.zeros(d))  # unused by the forward pass (HF round trip)
            self.registers = tnn.Parameter(torch.zeros(cfg.num_registers, d)) if cfg.num_registers else None
        layer_scale = None if cfg.family == "siglip2" else cfg.layerscale_value
        self.blocks = nn.Stack(lambda: nn.Block(d, cfg.num_heads, mlp=cfg.act, mlp_dim=cfg.mlp_dim,
                                                norm_eps=cfg.norm_eps, qkv_bias=cfg.qkv_bias,
                                                layer_scale=layer_scale), cfg.depth)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.head = (MAPHead(d, cfg.num_heads, cfg.mlp_dim, act=cfg.act, norm_eps=cfg.norm_eps)
                     if cfg.use_head else None)

    def preprocess(self, images) -> torch.Tensor:
        """:func:`preprocess` with this tower's family."""
        return preprocess(images, self.family)

    def forward(self, images: torch.Tensor, *, return_hidden_states: bool = False):
        """images (B, H, W, 3), normalised (:meth:`preprocess`) -> (patch_features (B, H/p, W/p, D), aux).

        aux: 'cls' (B, D) and 'registers' (B, R, D) (DINOv2, after the final norm; None otherwise), 'pooled'
        (B, D) (the cls token for DINOv2, the attention-pooling head for SigLIP2), and with
        ``return_hidden_states`` 'hidden_states' (depth + 1, B, L, D): embeddings and every layer's output.
        """
        cfg, p = self.config, self.config.patch
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ViT({self.family}): images must be (B, H, W, 3), got {tuple(images.shape)}")
        if images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"ViT({self.family}): image size (H, W) = {tuple(images.shape[1:3])} must be a "
                             f"multiple of the patch size {p}")
        b, hh, ww = images.shape[0], images.shape[1] // p, images.shape[2] // p
        x = self.patch_embed(images.to(self.pos_embed.dtype))
        pos = resize_pos_embed(self.pos_embed, (hh, ww), cfg.family).reshape(hh * ww, cfg.dim)
        x = x + pos.to(x.dtype)
        if cfg.family != "siglip2":
            cls = (self.cls_token + self.cls_pos).to(x.dtype)
            prefix = [cls.expand(b, 1, cfg.dim)]
            if self.registers is not None:
                prefix.append(self.registers.to(x.dtype)[None].expand(b, cfg.num_registers, cfg.dim))
            x = torch.cat(prefix + [x], dim=1)
        hidden = [x] if return_hidden_states else None
        for layer in self.blocks.layers:
            x = layer(x)
            if hidden is not None:
                hidden.append(x)
        out = self.norm(x)
        n = cfg.num_prefix
        feats = out[:, n:].reshape(b, hh, ww, cfg.dim)
        aux = {"cls": None, "registers": None, "pooled": None,
               "hidden_states": None if hidden is None else torch.stack(hidden, 0)}
        if cfg.family != "siglip2":
            aux["cls"] = aux["pooled"] = out[:, 0]
            if cfg.num_registers:
                aux["registers"] = out[:, 1:n]
        elif self.head is not None:
            aux["pooled"] = self.head(out)
        return feats, aux
