"""DINOv2 / DINOv2-with-registers / SigLIP2 vision towers in plain PyTorch.

Port of :mod:`scene3d.models.vit` (same module tree, so ``state_dict`` keys are the torch_port layout of the
JAX model). ``ViT(images) -> (patch_features (B, h, w, D), aux)`` for images (B, H, W, 3) normalised by
:func:`preprocess`, any H, W multiple of the patch. Position embeddings are resized to the patch grid with
``F.interpolate`` as transformers does: 'dinov2' bicubic (skipped at the native grid), 'dinov2_reg' bicubic with
antialias, 'siglip2' bilinear with antialias (always).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn as tnn

from scene3d_torch import nn

FAMILIES = ("dinov2", "dinov2_reg", "siglip2")

IMAGE_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "dinov2_reg": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# Same table as scene3d.models.vit.VARIANTS (pos_grid: side of the learned position grid).
VARIANTS: dict[str, dict[str, Any]] = {
    "dinov2-S": dict(family="dinov2", dim=384, depth=12, num_heads=6, patch=14, pos_grid=37),
    "dinov2-B": dict(family="dinov2", dim=768, depth=12, num_heads=12, patch=14, pos_grid=37),
    "dinov2-L": dict(family="dinov2", dim=1024, depth=24, num_heads=16, patch=14, pos_grid=37),
    "dinov2reg-S": dict(family="dinov2_reg", dim=384, depth=12, num_heads=6, patch=14, pos_grid=37,
                        num_registers=4),
    "dinov2reg-B": dict(family="dinov2_reg", dim=768, depth=12, num_heads=12, patch=14, pos_grid=37,
                        num_registers=4),
    "dinov2reg-L": dict(family="dinov2_reg", dim=1024, depth=24, num_heads=16, patch=14, pos_grid=37,
                        num_registers=4),
    "siglip2-B": dict(family="siglip2", dim=768, depth=12, num_heads=12, patch=16, pos_grid=16, mlp_dim=3072),
    "siglip2-L": dict(family="siglip2", dim=1024, depth=24, num_heads=16, patch=16, pos_grid=16, mlp_dim=4096),
    "siglip2-So400m": dict(family="siglip2", dim=1152, depth=27, num_heads=16, patch=16, pos_grid=16,
                           mlp_dim=4304),
    "tiny-dinov2": dict(family="dinov2", dim=64, depth=2, num_heads=4, patch=14, pos_grid=3),
    "tiny-dinov2reg": dict(family="dinov2_reg", dim=64, depth=2, num_heads=4, patch=14, pos_grid=3,
                           num_registers=4),
    "tiny-siglip2": dict(family="siglip2", dim=64, depth=2, num_heads=4, patch=16, pos_grid=4, mlp_dim=128),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Sizes of a tower (the fields of ``scene3d.models.vit.ViTConfig``, same defaults and checks)."""
    family: str
    dim: int
    depth: int
    num_heads: int
    patch: int
    pos_grid: int
    mlp_dim: int | None = None
    num_registers: int = 0
    use_head: bool | None = None
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str | None = None
    layerscale_value: float = 1.0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ViTConfig.family: expected one of {FAMILIES}, got {self.family!r}")
        if self.family != "dinov2_reg" and self.num_registers:
            raise ValueError(f"ViTConfig.num_registers: only 'dinov2_reg' has registers, got {self.num_registers} "
                             f"for family {self.family!r}")
        if self.family == "dinov2_reg" and self.num_registers < 1:
            raise ValueError("ViTConfig.num_registers: family 'dinov2_reg' needs num_registers >= 1")
        if self.dim % self.num_heads:
            raise ValueError(f"ViTConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.use_head and self.family != "siglip2":
            raise ValueError(f"ViTConfig.use_head: only 'siglip2' has a pooling head, not {self.family!r}")
        object.__setattr__(self, "mlp_dim", int(self.mlp_dim or 4 * self.dim))
        object.__setattr__(self, "use_head", bool(self.family == "siglip2" if self.use_head is None
                                                  else self.use_head))
        object.__setattr__(self, "act", self.act or ("gelu_tanh" if self.family == "siglip2" else "gelu"))

    @property
    def num_prefix(self) -> int:
        """Tokens before the patches: cls + registers for DINOv2, none for SigLIP2."""
        return 0 if self.family == "siglip2" else 1 + self.num_registers


def vit_config(variant: str | None = None, **overrides) -> ViTConfig:
    """A :class:`ViTConfig` from a VARIANTS name and/or explicit fields (overrides win)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"ViT: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    fields = dict(VARIANTS[variant]) if variant else {}
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"ViT: unknown config fields {unknown}; expected some of {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(ViTConfig)
                     if f.default is dataclasses.MISSING and f.name not in fields)
    if missing:
        raise ValueError(f"ViT: missing config fields {missing} (pass a variant or set them)")
    return ViTConfig(**fields)


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
