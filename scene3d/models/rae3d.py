"""3DRAE ("Any 3D Scene is Worth 1K Tokens"): a frozen 2D representation encoder per view, a 3D perceiver that reads
any number of posed views into K learned scene tokens, and a ray-query decoder that renders any camera.

Encoder (:class:`RAE3DEncoder`): each view (B, V, H, W, 3) in [-1, 1] goes through the frozen ViT tower
(:mod:`scene3d.models.vit`, ``Frozen`` variables); every patch feature is normalised, projected to ``dim`` and added
to an embedding of that patch's camera ray (Pluecker (o x d, d) through the patch centre, Fourier features). K
learned queries read these tokens with ``read_layers`` cross-attentions (each followed by ``process_depth``
self-attention blocks over the K latents); a final projection (and a LayerNorm without affine, ``token_norm``)
gives the scene tokens (B, K, latent_dim).

The read is blockwise: views are processed ``view_chunk`` at a time (``lax.map`` for the tower, ``lax.scan`` for
the cross-attention) and the chunks' attention outputs are merged with their log-sum-exps (online softmax), so the
cost is linear in V and the attention temporaries are O(K x view_chunk x N), not O(K x V x N); each chunk is
rematerialised in the backward pass. Nothing depends on the position of a view in the list (no view-index
embeddings, only rays): the tokens are invariant to the view order up to float rounding. Views may be padded
(``view_mask``), and several groups of views of different resolutions / aspect ratios can be read together
(:meth:`RAE3DEncoder.__call__` takes a list of groups).

Decoder (:class:`RAE3DDecoder`): for each target camera, one query per ``dec_patch`` x ``dec_patch`` patch (its ray
embedding) runs through ``dec_depth`` blocks of self-attention within the view, cross-attention to the K tokens and
an MLP; a linear head predicts the patch's RGB, optionally a point map with confidence (``points='depth'``: a
positive z-depth per pixel, lifted along the pixel's ray into the scene frame; ``'xyz'``: camera centre + a free
offset) and optionally the frozen encoder's features of that view (``align``, representation alignment).

Cameras: OpenCV c2w (B, V, 4, 4) in the scene frame (the data expresses poses relative to the first context view),
intrinsics (B, V, 4) normalised by image size.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d import nn
from scene3d.geometry import rays as rays_lib
from scene3d.models import vit as vit_lib
from scene3d.specs.rae3d import POINT_MODES, VARIANTS, RAE3DConfig, rae3d_config  # noqa: F401  (public names)


# ---------------------------------------------------------------------------------------------------------
# Pieces


class RayEmbed(nnx.Module):
    """Pluecker rays (..., 6) -> Fourier features (bands 2^0 .. 2^(num_bands-1), input included) -> dense."""

    def __init__(self, dim: int, num_bands: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_bands, self.dtype = int(num_bands), dtype
        self.proj = nn.dense(nn.fourier_dim(6, self.num_bands), dim, (None, "embed"), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

    def __call__(self, rays: jax.Array) -> jax.Array:
        if rays.shape[-1] != 6:
            raise ValueError(f"RayEmbed: rays must be (..., 6) Pluecker coordinates, got {rays.shape}")
        return self.proj(nn.fourier_features(rays, self.num_bands).astype(self.dtype))


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


_EYE = jnp.eye(4, dtype=jnp.float32)
_DEFAULT_INTRINSICS = jnp.asarray([1.0, 1.0, 0.5, 0.5], jnp.float32)


def _chunked(x, chunk: int, fill=None):
    """(B, V, ...) -> (V / chunk, B, chunk, ...); V is padded to a multiple of chunk with ``fill`` (one view's
    value, e.g. an identity camera so padded rays stay finite) or zeros."""
    b, v = x.shape[:2]
    n = -(-v // chunk)
    if n * chunk > v:
        pad = jnp.zeros((b, n * chunk - v) + x.shape[2:], x.dtype) if fill is None else \
            jnp.broadcast_to(jnp.asarray(fill, x.dtype), (b, n * chunk - v) + x.shape[2:])
        x = jnp.concatenate([x, pad], axis=1)
    return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)


def _unchunked(x, v: int):
    """(n, B, chunk, ...) -> (B, V, ...) (padding dropped)."""
    n, b, c = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape((b, n * c) + x.shape[3:])[:, :v]


# ---------------------------------------------------------------------------------------------------------
# Encoder


class RAE3DEncoder(nnx.Module):
    """Posed views -> K scene tokens (module docstring). Holds the frozen tower as ``vit``."""

    def __init__(self, cfg: RAE3DConfig, *, rngs: nnx.Rngs, impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32):
        self.cfg, self.dtype = cfg, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        # stop_gradient=False: the tower's weights are Frozen (never trained); keeping its input differentiable
        # lets a task use its features as a perceptual loss. The encoder stops the gradient of its features.
        self.vit = vit_lib.freeze(vit_lib.ViT(cfg.encoder, rngs=rngs, impl=impl, scan=scan, stop_gradient=False,
                                              **kw))
        fd = cfg.feature_dim
        self.feat_norm = nn.LayerNorm(fd, **kw)
        self.feat_proj = nn.dense(fd, cfg.dim, (None, "embed"), rngs=rngs, **kw)
        self.ray_embed = RayEmbed(cfg.dim, cfg.ray_bands, rngs=rngs, **kw)
        rkw = dict(mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm, impl=impl, rngs=rngs, **kw)
        self.reads = nnx.List([nn.PerceiverRead(cfg.dim, cfg.heads, num_latents=cfg.num_tokens if i == 0 else None,
                                                **rkw) for i in range(cfg.read_layers)])
        self.process = nnx.List([
            nn.PerceiverProcess(cfg.dim, cfg.heads, cfg.process_depth, scan=scan, remat=remat,
                                mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm, impl=impl, rngs=rngs, **kw)
            if cfg.process_depth else None for _ in range(cfg.read_layers)])
        self.norm_out = nn.LayerNorm(cfg.dim, **kw)
        self.out = nn.dense(cfg.dim, cfg.latent_dim, ("embed", "latent"), rngs=rngs, **kw)
        self.token_norm = nn.LayerNorm(cfg.latent_dim, use_scale=False, use_bias=False, **kw) if cfg.token_norm \
            else None

    def features(self, images: jax.Array) -> jax.Array:
        """Frozen tower features of views (..., H, W, 3) in [-1, 1] -> (..., H/p, W/p, feature_dim)."""
        lead = images.shape[:-3]
        x = vit_lib.preprocess(images.reshape((-1,) + images.shape[-3:]), self.cfg.family)
        f, _ = self.vit(x.astype(self.dtype))
        return f.reshape(lead + f.shape[1:])

    def view_tokens(self, images, c2w, intrinsics, view_mask=None) -> tuple[jax.Array, jax.Array]:
        """One group of views -> blocks of tokens (n, B, chunk * N, dim) and their key mask (n, B, chunk * N).

        ``view_mask`` (B, V) bool: False views are ignored (padding)."""
        check_views(images, c2w, intrinsics, "RAE3DEncoder", multiple=self.cfg.patch)
        b, v, hh, ww = images.shape[:4]
        p = self.cfg.patch
        gh, gw = hh // p, ww // p
        chunk = min(self.cfg.view_chunk, v)
        if view_mask is None:
            view_mask = jnp.ones((b, v), bool)
        elif tuple(view_mask.shape) != (b, v):
            raise ValueError(f"RAE3DEncoder: view_mask must be ({b}, {v}) bool, got {tuple(view_mask.shape)}")
        masks = _chunked(jnp.asarray(view_mask, bool), chunk)  # padded views: False
        blocks = (_chunked(images, chunk), _chunked(c2w.astype(jnp.float32), chunk, _EYE),
                  _chunked(intrinsics.astype(jnp.float32), chunk, _DEFAULT_INTRINSICS), masks)

        def tokens(block):
            im, cw, kk, vm = block
            f = jax.lax.stop_gradient(self.features(im))  # (B, C, gh, gw, F)
            r = rays_lib.plucker_map(cw, kk, hh, ww, p)  # (B, C, gh, gw, 6)
            t = self.feat_proj(self.feat_norm(f)) + self.ray_embed(r)
            t = jnp.where(vm[:, :, None, None, None], t, 0.0)  # ignored views carry no values (e.g. NaN rays)
            return t.reshape(b, chunk * gh * gw, self.cfg.dim)

        toks = jax.lax.map(tokens, blocks)
        kmask = jnp.repeat(masks, gh * gw, axis=-1)
        return toks, kmask

    def __call__(self, views, *, view_mask=None) -> tuple[jax.Array, dict]:
        """views: (images, c2w, intrinsics) or a list of such groups (each its own resolution) -> (tokens
        (B, K, latent_dim), aux {'latents': (B, K, dim) before the output projection}). ``view_mask``: (B, V)
        for one group, or a list with one per group (None entries allowed)."""
        groups = [views] if isinstance(views, tuple) and len(views) == 3 and not isinstance(views[0], tuple) \
            else list(views)
        masks = view_mask if isinstance(view_mask, (list, tuple)) else [view_mask] * len(groups)
        if len(masks) != len(groups):
            raise ValueError(f"RAE3DEncoder: {len(groups)} view groups but {len(masks)} view masks")
        blocks = [self.view_tokens(*g, view_mask=m) for g, m in zip(groups, masks)]
        b = blocks[0][0].shape[1]
        lat = self.reads[0].latents[...].astype(self.dtype)
        x = jnp.broadcast_to(lat[None], (b,) + lat.shape)
        for read, proc in zip(self.reads, self.process):
            x = read.blockwise(blocks, x)
            if proc is not None:
                x = proc(x)
        tokens = self.out(self.norm_out(x))
        if self.token_norm is not None:
            tokens = self.token_norm(tokens)
        return tokens, {"latents": x}


# ---------------------------------------------------------------------------------------------------------
# Decoder


class RAE3DDecoder(nnx.Module):
    """K scene tokens + target cameras -> RGB (+ point map, confidence, encoder features) (module docstring)."""

    def __init__(self, cfg: RAE3DConfig, *, rngs: nnx.Rngs, impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32):
        self.cfg, self.dtype = cfg, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        d, p = cfg.dec_dim, cfg.dec_patch
        self.tok_in = nn.dense(cfg.latent_dim, d, ("latent", "embed"), rngs=rngs, **kw)
        self.tok_norm = nn.LayerNorm(d, **kw)
        self.ray_embed = RayEmbed(d, cfg.ray_bands, rngs=rngs, **kw)
        self.blocks = nn.Stack(lambda r: nn.Block(d, cfg.dec_heads, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                                                  cross_attn=True, context_dim=d, impl=impl, rngs=r, **kw),
                               cfg.dec_depth, rngs=rngs, scan=scan, remat=remat)
        self.norm_out = nn.LayerNorm(d, **kw)
        self.channels = 3 + (4 if cfg.points else 0)
        self.head = nn.dense(d, p * p * self.channels, ("embed", "patch"), rngs=rngs, **kw)
        self.feat_head = nn.dense(d, cfg.feature_dim, ("embed", None), rngs=rngs, **kw) if cfg.align else None

    def _views(self, context, c2w, intrinsics, size):
        """Decode views (Bv, ...) sharing ``context`` (Bv, K, d)."""
        cfg, p = self.cfg, self.cfg.dec_patch
        hh, ww = size
        gh, gw = hh // p, ww // p
        bv = c2w.shape[0]
        q = self.ray_embed(rays_lib.plucker_map(c2w, intrinsics, hh, ww, p)).reshape(bv, gh * gw, cfg.dec_dim)
        x = self.norm_out(self.blocks(q.astype(self.dtype), context))
        raw = nn.unpatchify(self.head(x).astype(jnp.float32), p, (hh, ww))  # (Bv, H, W, C)
        out = {"rgb": raw[..., :3]}
        if cfg.points:
            o, dirs = rays_lib.ray_map(c2w, intrinsics, hh, ww, 1, normalise=False)  # z = 1 directions
            if cfg.points == "depth":
                depth = jnp.exp(jnp.clip(raw[..., 3], -12.0, 12.0))
                pts = o + depth[..., None] * dirs
            else:
                pts = o + raw[..., 3:6]
                depth = jnp.sum((pts - o) * (c2w[:, None, None, :3, 2]), -1)
            out.update(points=pts, depth=depth, conf=1.0 + jnp.exp(jnp.clip(raw[..., 6], -12.0, 12.0)))
        if self.feat_head is not None:
            f = self.feat_head(x).astype(jnp.float32).reshape(bv, gh, gw, cfg.feature_dim)
            r = cfg.patch // p
            out["features"] = f.reshape(bv, gh // r, r, gw // r, r, cfg.feature_dim).mean((2, 4))
        return out

    def __call__(self, tokens: jax.Array, c2w: jax.Array, intrinsics: jax.Array, size: Sequence[int]) -> dict:
        """tokens (B, K, latent_dim); target cameras c2w (B, T, 4, 4), intrinsics (B, T, 4); size (H, W), a
        multiple of dec_patch -> dict of (B, T, ...) maps: 'rgb' (H, W, 3) [-1, 1]-scaled, and with points
        'points' (H, W, 3) scene frame, 'depth' (H, W) z-depth, 'conf' (H, W) >= 1; with align 'features'
        (H/patch, W/patch, feature_dim). Target views are decoded ``view_chunk`` at a time."""
        cfg = self.cfg
        hh, ww = int(size[0]), int(size[1])
        if hh % cfg.dec_patch or ww % cfg.dec_patch or (cfg.align and (hh % cfg.patch or ww % cfg.patch)):
            raise ValueError(f"RAE3DDecoder: size {(hh, ww)} must be a multiple of dec_patch {cfg.dec_patch}"
                             + (f" and of the tower patch {cfg.patch} (align)" if cfg.align else ""))
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.latent_dim:
            raise ValueError(f"RAE3DDecoder: tokens must be (B, K, {cfg.latent_dim}), got {tuple(tokens.shape)}")
        check_views(None, c2w, intrinsics, "RAE3DDecoder", need_images=False)
        b, t = c2w.shape[:2]
        if c2w.shape[0] != tokens.shape[0]:
            raise ValueError(f"RAE3DDecoder: tokens batch {tokens.shape[0]} != cameras batch {b}")
        ctx = self.tok_norm(self.tok_in(tokens.astype(self.dtype)))
        chunk = min(cfg.view_chunk, t)
        c2w, intrinsics = c2w.astype(jnp.float32), intrinsics.astype(jnp.float32)

        def run(block):
            cw, kk = block  # (B, C, ...)
            ctx_v = jnp.repeat(ctx, chunk, axis=0)  # (B * C, K, d), b-major like the cameras
            out = self._views(ctx_v, cw.reshape((b * chunk, 4, 4)), kk.reshape((b * chunk, 4)), (hh, ww))
            return jax.tree.map(lambda a: a.reshape((b, chunk) + a.shape[1:]), out)

        if chunk == t:
            return run((c2w, intrinsics))
        out = jax.lax.map(run, (_chunked(c2w, chunk, _EYE), _chunked(intrinsics, chunk, _DEFAULT_INTRINSICS)))
        return jax.tree.map(lambda a: _unchunked(a, t), out)


# ---------------------------------------------------------------------------------------------------------
# The autoencoder


class RAE3D(nnx.Module):
    """3DRAE: ``encoder`` (:class:`RAE3DEncoder`) + ``decoder`` (:class:`RAE3DDecoder`).

    ``RAE3D(variant, rngs=..., encoder='dinov2-B', num_tokens=512, ...)``; options impl / scan / remat / dtype.
    """

    def __init__(self, variant: str | None = "tiny", *, rngs: nnx.Rngs, impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32, **overrides):
        self.config = cfg = rae3d_config(variant, **overrides)
        kw = dict(rngs=rngs, impl=impl, scan=scan, remat=remat, dtype=dtype, param_dtype=param_dtype)
        self.encoder = RAE3DEncoder(cfg, **kw)
        self.decoder = RAE3DDecoder(cfg, **kw)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.config.num_tokens, self.config.latent_dim)

    def encode(self, images, c2w, intrinsics, *, view_mask=None) -> jax.Array:
        """Views (B, V, H, W, 3) in [-1, 1] + cameras -> tokens (B, K, latent_dim)."""
        return self.encoder((images, c2w, intrinsics), view_mask=view_mask)[0]

    def decode(self, tokens, c2w, intrinsics, size) -> dict:
        """Tokens -> renders of the cameras (see :meth:`RAE3DDecoder.__call__`)."""
        return self.decoder(tokens, c2w, intrinsics, size)

    def __call__(self, context: dict, target: dict, size: Sequence[int] | None = None) -> tuple[dict, dict]:
        """context: images / c2w / intrinsics (+ optional view_mask); target: c2w / intrinsics (+ images: its size
        is used when ``size`` is None) -> (renders of the targets, aux {'tokens'})."""
        tokens, aux = self.encoder((context["images"], context["c2w"], context["intrinsics"]),
                                   view_mask=context.get("view_mask"))
        if size is None:
            size = (target.get("images", context["images"])).shape[2:4]
        out = self.decoder(tokens, target["c2w"], target["intrinsics"], size)
        return out, {"tokens": tokens, **aux}

