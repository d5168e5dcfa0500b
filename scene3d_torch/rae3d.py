"""3DRAE inference in plain PyTorch: frozen ViT per view -> perceiver read into K scene tokens -> ray-query decoder.

Port of :mod:`scene3d.models.rae3d` with the same module tree (``state_dict`` keys = the torch_port layout of the
JAX model) and the same API: :meth:`RAE3D.encode`, :meth:`RAE3D.decode`, :meth:`RAE3D.forward`. The JAX encoder
reads the views blockwise with an online softmax; here all views are read with one masked attention, equal up to
float32 rounding. Cameras: OpenCV c2w (B, V, 4, 4), intrinsics (B, V, 4) normalised by image size; images
(B, V, H, W, 3) in [-1, 1].
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn as tnn

from scene3d.specs.rae3d import POINT_MODES, VARIANTS, RAE3DConfig, rae3d_config  # noqa: F401
from scene3d_torch import geometry
from scene3d_torch import nn
from scene3d_torch import vit as vit_lib


# ---------------------------------------------------------------------------------------------------------
# Pieces


class RayEmbed(tnn.Module):
    """Pluecker rays (..., 6) -> Fourier features (bands 2^0 .. 2^(num_bands-1), input included) -> dense."""

    def __init__(self, dim: int, num_bands: int):
        super().__init__()
        self.num_bands = int(num_bands)
        self.proj = tnn.Linear(nn.fourier_dim(6, self.num_bands), dim)

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        if rays.shape[-1] != 6:
            raise ValueError(f"RayEmbed: rays must be (..., 6) Pluecker coordinates, got {tuple(rays.shape)}")
        return self.proj(nn.fourier_features(rays, self.num_bands))


def check_views(images, c2w, intrinsics, name: str, *, multiple: int | None = None, need_images: bool = True):
    """Clear errors for a group of posed views: images (B, V, H, W, 3), c2w (B, V, 4, 4), intrinsics (B, V, 4)."""
    if need_images:
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ValueError(f"{name}: images must be (B, V, H, W, 3), got {tuple(images.shape)}")
        if multiple and (images.shape[2] % multiple or images.shape[3] % multiple):
            raise ValueError(f"{name}: image size {tuple(images.shape[2:4])} must be a multiple of the patch "
                             f"{multiple}")
        lead = tuple(images.shape[:2])
    else:
        lead = tuple(c2w.shape[:2])
    if tuple(c2w.shape) != lead + (4, 4):
        raise ValueError(f"{name}: c2w must be {lead + (4, 4)} (OpenCV camera-to-world), got {tuple(c2w.shape)}")
    if tuple(intrinsics.shape) != lead + (4,):
        raise ValueError(f"{name}: intrinsics must be {lead + (4,)} (fx/W, fy/H, cx/W, cy/H), got "
                         f"{tuple(intrinsics.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Encoder


class RAE3DEncoder(tnn.Module):
    """Posed views -> K scene tokens. Holds the frozen tower as ``vit``."""

    def __init__(self, cfg: RAE3DConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = vit_lib.ViT(cfg.encoder)
        fd = cfg.feature_dim
        self.feat_norm = nn.LayerNorm(fd)
        self.feat_proj = tnn.Linear(fd, cfg.dim)
        self.ray_embed = RayEmbed(cfg.dim, cfg.ray_bands)
        rkw = dict(mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm)
        self.reads = tnn.ModuleList([
            nn.PerceiverRead(cfg.dim, cfg.heads, num_latents=cfg.num_tokens if i == 0 else None, **rkw)
            for i in range(cfg.read_layers)])
        self.process = tnn.ModuleList([
            nn.PerceiverProcess(cfg.dim, cfg.heads, cfg.process_depth, **rkw) if cfg.process_depth else None
            for _ in range(cfg.read_layers)])
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.out = tnn.Linear(cfg.dim, cfg.latent_dim)
        self.token_norm = nn.LayerNorm(cfg.latent_dim, use_scale=False, use_bias=False) if cfg.token_norm \
            else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen tower features of views (..., H, W, 3) in [-1, 1] -> (..., H/p, W/p, feature_dim)."""
        lead = images.shape[:-3]
        x = vit_lib.preprocess(images.reshape((-1,) + tuple(images.shape[-3:])), self.cfg.family)
        f, _ = self.vit(x)
        return f.reshape(tuple(lead) + tuple(f.shape[1:]))

    def view_tokens(self, images, c2w, intrinsics, view_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One group of views -> tokens (B, V * N, dim) and their key mask (B, V * N) bool.

        ``view_mask`` (B, V) bool: False views are ignored (padding; their values may be anything, even NaN)."""
        check_views(images, c2w, intrinsics, "RAE3DEncoder", multiple=self.cfg.patch)
        b, v, hh, ww = images.shape[:4]
        p = self.cfg.patch
        n = (hh // p) * (ww // p)
        if view_mask is None:
            view_mask = torch.ones((b, v), dtype=torch.bool, device=images.device)
        elif tuple(view_mask.shape) != (b, v):
            raise ValueError(f"RAE3DEncoder: view_mask must be ({b}, {v}) bool, got {tuple(view_mask.shape)}")
        view_mask = torch.as_tensor(view_mask, device=images.device).bool()
        f = self.features(images)  # (B, V, gh, gw, F)
        r = geometry.plucker_map(c2w.float(), intrinsics.float(), hh, ww, p)  # (B, V, gh, gw, 6)
        t = self.feat_proj(self.feat_norm(f)) + self.ray_embed(r)
        t = torch.where(view_mask[:, :, None, None, None], t, torch.zeros_like(t))
        return t.reshape(b, v * n, self.cfg.dim), view_mask.repeat_interleave(n, dim=1)

    def forward(self, views, *, view_mask=None) -> tuple[torch.Tensor, dict]:
        """views: (images, c2w, intrinsics) or a list of such groups (each its own resolution) -> (tokens
        (B, K, latent_dim), aux {'latents': (B, K, dim) before the output projection}). ``view_mask``: (B, V)
        for one group, or a list with one per group (None entries allowed)."""
        groups = [views] if isinstance(views, tuple) and len(views) == 3 and not isinstance(views[0], tuple) \
            else list(views)
        masks = view_mask if isinstance(view_mask, (list, tuple)) else [view_mask] * len(groups)
        if len(masks) != len(groups):
            raise ValueError(f"RAE3DEncoder: {len(groups)} view groups but {len(masks)} view masks")
        parts = [self.view_tokens(*g, view_mask=m) for g, m in zip(groups, masks)]
        inputs = torch.cat([t for t, _ in parts], dim=1)
        kmask = torch.cat([m for _, m in parts], dim=1)
        lat = self.reads[0].latents
        x = lat.to(inputs.dtype)[None].expand((inputs.shape[0],) + tuple(lat.shape))
        for read, proc in zip(self.reads, self.process):
            x = read(inputs, x, mask=kmask)
            if proc is not None:
                x = proc(x)
        tokens = self.out(self.norm_out(x))
        if self.token_norm is not None:
            tokens = self.token_norm(tokens)
        return tokens, {"latents": x}


# ---------------------------------------------------------------------------------------------------------
# Decoder


class RAE3DDecoder(tnn.Module):
    """K scene tokens + target cameras -> RGB (+ point map, confidence, encoder features)."""

    def __init__(self, cfg: RAE3DConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dec_dim, cfg.dec_patch
        self.tok_in = tnn.Linear(cfg.latent_dim, d)
        self.tok_norm = nn.LayerNorm(d)
        self.ray_embed = RayEmbed(d, cfg.ray_bands)
        self.blocks = nn.Stack(lambda: nn.Block(d, cfg.dec_heads, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                                                cross_attn=True, context_dim=d), cfg.dec_depth)
        self.norm_out = nn.LayerNorm(d)
        self.channels = 3 + (4 if cfg.points else 0)
        self.head = tnn.Linear(d, p * p * self.channels)
        self.feat_head = tnn.Linear(d, cfg.feature_dim) if cfg.align else None

    def _views(self, context, c2w, intrinsics, size) -> dict:
        """Decode views (Bv, ...) sharing ``context`` (Bv, K, d)."""
        cfg, p = self.cfg, self.cfg.dec_patch
        hh, ww = size
        gh, gw = hh // p, ww // p
        bv = c2w.shape[0]
        x = self.ray_embed(geometry.plucker_map(c2w, intrinsics, hh, ww, p)).reshape(bv, gh * gw, cfg.dec_dim)
        for layer in self.blocks.layers:
            x = layer(x, context)
        x = self.norm_out(x)
        raw = nn.unpatchify(self.head(x).float(), p, (hh, ww))  # (Bv, H, W, C)
        out = {"rgb": raw[..., :3]}
        if cfg.points:
            o, dirs = geometry.ray_map(c2w, intrinsics, hh, ww, 1, normalise=False)  # z = 1 directions
            if cfg.points == "depth":
                depth = torch.exp(torch.clamp(raw[..., 3], -12.0, 12.0))
                pts = o + depth[..., None] * dirs
            else:
                pts = o + raw[..., 3:6]
                depth = torch.sum((pts - o) * c2w[:, None, None, :3, 2], -1)
            out.update(points=pts, depth=depth, conf=1.0 + torch.exp(torch.clamp(raw[..., 6], -12.0, 12.0)))
        if self.feat_head is not None:
            f = self.feat_head(x).float().reshape(bv, gh, gw, cfg.feature_dim)
            r = cfg.patch // p
            out["features"] = f.reshape(bv, gh // r, r, gw // r, r, cfg.feature_dim).mean((2, 4))
        return out

    def forward(self, tokens: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor,
                size: Sequence[int]) -> dict:
        """tokens (B, K, latent_dim); target cameras c2w (B, T, 4, 4), intrinsics (B, T, 4); size (H, W), a
        multiple of dec_patch -> dict of (B, T, ...) maps: 'rgb' (H, W, 3) [-1, 1]-scaled, and with points
        'points' (H, W, 3) scene frame, 'depth' (H, W) z-depth, 'conf' (H, W) >= 1; with align 'features'
        (H/patch, W/patch, feature_dim)."""
        cfg = self.cfg
        hh, ww = int(size[0]), int(size[1])
        if hh % cfg.dec_patch or ww % cfg.dec_patch or (cfg.align and (hh % cfg.patch or ww % cfg.patch)):
            raise ValueError(f"RAE3DDecoder: size {(hh, ww)} must be a multiple of dec_patch {cfg.dec_patch}"
                             + (f" and of the tower patch {cfg.patch} (align)" if cfg.align else ""))
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.latent_dim:
            raise ValueError(f"RAE3DDecoder: tokens must be (B, K, {cfg.latent_dim}), got {tuple(tokens.shape)}")
        check_views(None, c2w, intrinsics, "RAE3DDecoder", need_images=False)
        b, t = c2w.shape[:2]
        if b != tokens.shape[0]:
            raise ValueError(f"RAE3DDecoder: tokens batch {tokens.shape[0]} != cameras batch {b}")
        ctx = self.tok_norm(self.tok_in(tokens))
        ctx_v = ctx.repeat_interleave(t, dim=0)  # (B * T, K, d), b-major like the cameras
        out = self._views(ctx_v, c2w.float().reshape(b * t, 4, 4), intrinsics.float().reshape(b * t, 4), (hh, ww))
        return {k: a.reshape((b, t) + tuple(a.shape[1:])) for k, a in out.items()}


# ---------------------------------------------------------------------------------------------------------
# The autoencoder


class RAE3D(tnn.Module):
    """3DRAE: ``encoder`` (:class:`RAE3DEncoder`) + ``decoder`` (:class:`RAE3DDecoder`).

    ``RAE3D(variant='tiny', **fields)`` with :class:`RAE3DConfig` fields, e.g. the torch_port model_spec
    kwargs ``RAE3D(**spec['kwargs'])``."""

    def __init__(self, variant: str | None = "tiny", **overrides):
        super().__init__()
        self.config = cfg = rae3d_config(variant, **overrides)
        self.encoder = RAE3DEncoder(cfg)
        self.decoder = RAE3DDecoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.config.num_tokens, self.config.latent_dim)

    def encode(self, images, c2w, intrinsics, view_mask=None) -> torch.Tensor:
        """Views (B, V, H, W, 3) in [-1, 1] + cameras -> tokens (B, K, latent_dim)."""
        return self.encoder((images, c2w, intrinsics), view_mask=view_mask)[0]

    def decode(self, tokens, c2w, intrinsics, size) -> dict:
        """Tokens -> renders of the cameras (see :meth:`RAE3DDecoder.forward`)."""
        return self.decoder(tokens, c2w, intrinsics, size)

    def forward(self, context: dict, target: dict, size: Sequence[int] | None = None) -> tuple[dict, dict]:
        """context: images / c2w / intrinsics (+ optional view_mask); target: c2w / intrinsics (+ images: its size
        is used when ``size`` is None) -> (renders of the targets, aux {'tokens', 'latents'})."""
        tokens, aux = self.encoder((context["images"], context["c2w"], context["intrinsics"]),
                                   view_mask=context.get("view_mask"))
        if size is None:
            size = (target.get("images", context["images"])).shape[2:4]
        out = self.decoder(tokens, target["c2w"], target["intrinsics"], size)
        return out, {"tokens": tokens, **aux}
