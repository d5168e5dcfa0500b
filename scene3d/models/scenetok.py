"""SceneTok (CVPR 2026): a two-stream Scene Perceiver that compresses posed image latents into K scene tokens,
and a rectified-flow DiT decoder that renders target-view latents for any camera trajectory from those tokens.

Compressor (``SceneTokCompressor``, the release's ``compressor.*``):
  image stream  y = PatchEmbed(latents) per view (B, V*n, D); c = ray-map embedding per image token (B, V*n, D)
  scene stream  x = learned scene queries (K, D)
  block i:      y += g1 * SelfAttn(modulate(norm1(y), sh1, sc1))     2D RoPE on q, k (restarting in every view)
                x += SelfAttn(norm2(x))
                x += CrossAttn(q=x, kv=y)                             no norms; 2D RoPE on k only
                y += g2 * MLP(modulate(norm3(y), sh2, sc2))           (not in the last block)
                x += MLP(norm4(x))
  (sh1, sc1, g1, sh2, sc2, g2) = Linear(silu(c)) per image token. Head: Linear(D -> 2 d) = [mean | logvar],
  logvar clipped to ``logvar_range``; tokens = mean + exp(logvar / 2) * eps (a diagonal Gaussian, K x d).
  Views carry no index: the tokens do not depend on the order of the context views.

Decoder (``SceneTokDecoder``, the release's ``denoiser.*`` LightningDiT):
  x = PatchEmbed(x_t) per target latent view (B, M*n, D); c = TimestepMLP(t) per view + ray embedding per token;
  state = Linear(scene tokens) (B, K, D) (or the learned null token, for classifier-free guidance);
  block:  x += g1 * SelfAttn(modulate(norm1(x), sh1, sc1))   qk RMS-norm, 3D RoPE (view, row, col) on q, k
          x += CrossAttn(q=x, kv=state)                       qk RMS-norm, 3D RoPE on q only, no norm on x
          x += g2 * SwiGLU(modulate(norm2(x), sh2, sc2))
  final:  Linear(modulate(norm(x), sh, sc)) -> unpatchify -> velocity v (B, M, h, w, C).
  With ``num_target_split`` r the M views form r groups whose RoPE view index restarts (attention stays global).
  Each latent view has ``temporal_downsample`` cameras (video latents): their ray maps are stacked as channels.

Layouts: latents are channels-last (B, V, H, W, C); cameras are OpenCV c2w (B, V, 4, 4) and intrinsics
normalised by the image size, (B, V, 4) = (fx/W, fy/H, cx/W, cy/H) or a normalised K (B, V, 3, 3).
Flow matching: x_t = (1 - t) x0 + t eps, v = eps - x0, t = 1 is noise (scene3d.diffusion).

Ray maps (``ray_kind``): 'official' = the release's [d, o] per pixel with d = R K^-1 [u, v, 1] normalised by
(|.| + 1e-6); 'origin_direction' = [o, d] and 'plucker' = [o x d, d] from ``scene3d.geometry.rays``. The ray
map has (token grid x ``ray_patch``) pixels and is embedded per token by a bias-free linear map of its patch.

Release quirks, as options: ``force_incorrect`` (DL3DV-Wan: per-token camera features ordered (row, col,
frame, channel) instead of (frame, row, col, channel)), ``wan_pose_padding`` (each 17-frame Wan chunk becomes
[f0, 0, 0, 0, f1..f16] ray maps = 5 latents x 4), ``pose_embed_bf16`` (the camera embedding is rounded to
bfloat16 in the decoder), ``timestep_input='official'`` (the networks see clip(1000 t - 1, 0)).
The importer of the official PyTorch checkpoints is ``scene3d.convert.scenetok``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import constrain, param_init
from scene3d.diffusion import paths
from scene3d.diffusion.objective import FlowMatching
from scene3d.geometry import rays as georays
from scene3d.geometry.cameras import as_intrinsics4
from scene3d.nn.gaussian import diagonal_gaussian_kl
from scene3d.specs.scenetok import (  # noqa: F401  (public names)
    COMPRESSOR_KEYS, DECODER_KEYS, PREDICTIONS, RAY_KINDS, TIMESTEP_INPUTS, TORCH_RMS_EPS, VARIANTS, resolve,
    rope_split_3d)


def flow_objective(flow=None) -> FlowMatching:
    """SceneTok's flow matching from a run's ``flow`` config (``null_prob``: the scene-token dropout; 25 decoder
    steps unless set)."""
    return FlowMatching.from_config(flow, rename={"null_prob": "cond_drop"}, sample_steps=25)


_resolve = resolve  # the config rules live with the tables (scene3d.specs.scenetok), shared with scene3d_torch


# ------------------------------------------------------------------------------------------------- cameras


def official_ray_map(c2w: jax.Array, intrinsics: jax.Array, height: int, width: int) -> jax.Array:
    """The release's per-pixel ray map (…, H, W, 6) = [d, o]: d = R K^-1 [u, v, 1] / (|K^-1 [u, v, 1]| + 1e-6),
    (u, v) = ((j + 0.5) / W, (i + 0.5) / H); o = camera centre. c2w (…, 4, 4), intrinsics (…, 4) normalised."""
    pix = georays.pixel_centers(height, width, jnp)
    d = georays.camera_directions(pix, intrinsics, height, width, normalise=False)
    d = d / (jnp.linalg.norm(d, axis=-1, keepdims=True) + 1e-6)
    # R d as three scaled columns (the 3-term reduction written out): XLA CPU otherwise materialises the
    # (…, H, W, 3, 3) product and reduces it in a library fusion, the largest kernel in the profile of a small
    # RE10K-like train step (32 cameras at 128 x 128); written out it runs about 1.5-2x faster (fp32 rounding).
    rot = c2w[..., None, None, :3, :3]
    d = d[..., 0:1] * rot[..., 0] + d[..., 1:2] * rot[..., 1] + d[..., 2:3] * rot[..., 2]
    o = jnp.broadcast_to(c2w[..., None, None, :3, 3], d.shape)
    return jnp.concatenate([d, o], -1)


def ray_features(c2w: jax.Array, intrinsics: jax.Array, height: int, width: int, kind: str) -> jax.Array:
    """Per-pixel 6-channel ray map (…, H, W, 6) of ``kind`` in RAY_KINDS."""
    if kind == "official":
        return official_ray_map(c2w, intrinsics, height, width)
    return georays.ray_map_features(c2w, intrinsics, height, width, 1, kind).astype(jnp.float32)


def wan_pad_frames(x: jax.Array, axis: int = 1) -> jax.Array:
    """Wan pose padding along ``axis``: every 17-frame chunk [f0, f1..f16] -> [f0, 0, 0, 0, f1..f16] (20 frames)."""
    n = x.shape[axis]
    if n % 17:
        raise ValueError(f"wan_pose_padding: the number of target cameras must be a multiple of 17 (one Wan chunk "
                         f"of 17 frames per 5 latent views), got {n}")
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape((n // 17, 17) + x.shape[1:])
    zeros = jnp.zeros((n // 17, 3) + x.shape[2:], x.dtype)
    x = jnp.concatenate([x[:, :1], zeros, x[:, 1:]], axis=1).reshape((n // 17 * 20,) + x.shape[2:])
    return jnp.moveaxis(x, 0, axis)


class RayEmbed(nnx.Module):
    """Camera embedding per token: a bias-free linear map of the (frames x ray_patch^2 x 6) ray-map patch.

    rays (B, V, T, gh * p, gw * p, 6) -> (B, V, gh * gw, dim). Features are ordered (frame, row, col, channel),
    or (row, col, frame, channel) with ``force_incorrect`` (the release's DL3DV-Wan layout).
    """

    def __init__(self, frames: int, patch: int, dim: int, *, force_incorrect: bool = False, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.frames, self.patch, self.force_incorrect, self.dtype = frames, patch, force_incorrect, dtype
        self.proj = nn.dense(frames * patch * patch * 6, dim, ("patch", "embed"), use_bias=False, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

    def __call__(self, rays: jax.Array) -> jax.Array:
        b, v, t = rays.shape[:3]
        if t != self.frames or rays.shape[-1] != 6:
            raise ValueError(f"RayEmbed: rays must be (B, V, {self.frames}, H, W, 6), got {rays.shape}")
        if self.force_incorrect:
            stacked = jnp.moveaxis(rays, 2, -2).reshape(rays.shape[:2] + rays.shape[3:5] + (t * 6,))
            feats = nn.patchify(stacked, self.patch)
        else:
            feats = jnp.moveaxis(nn.patchify(rays, self.patch), 2, 3)  # (B, V, n, T, p*p*6)
            feats = feats.reshape(feats.shape[:3] + (-1,))
        return self.proj(feats.astype(self.dtype))


# ------------------------------------------------------------------------------------------------- rope


def rope_2d_positions(views: int, gh: int, gw: int) -> jax.Array:
    """(views * gh * gw, 2) (row, col) ids, restarting in every view."""
    return jnp.tile(nn.grid_positions_2d(gh, gw), (views, 1))


def rope_3d_positions(views: int, gh: int, gw: int, groups: int) -> jax.Array:
    """(views * gh * gw, 3) (view, row, col) ids; the view index restarts in each of ``groups`` groups."""
    if views % groups:
        raise ValueError(f"3D RoPE: {views} target views cannot be cut into num_target_split={groups} groups")
    return jnp.tile(nn.grid_positions_3d(views // groups, gh, gw), (groups, 1))


def eva_rope_tables(head_dim: int, grid: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """The release's stored 2D-RoPE buffers (freqs_cos, freqs_sin), (grid^2, head_dim) fp32 (EVA-02 layout)."""
    dim = head_dim // 2
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / np.float32(dim)))
    t = np.arange(grid, dtype=np.float32) / np.float32(grid) * np.float32(grid)
    f = np.repeat(np.einsum("i,f->if", t, freqs.astype(np.float32)), 2, axis=-1)
    full = np.concatenate([np.broadcast_to(f[:, None], (grid, grid, dim)),
                           np.broadcast_to(f[None, :], (grid, grid, dim))], -1).reshape(-1, head_dim)
    return np.cos(full).astype(np.float32), np.sin(full).astype(np.float32)


# ------------------------------------------------------------------------------------------------- compressor


class PerceiverBlock(nnx.Module):
    """One Scene Perceiver block over (scene x, image y) with per-image-token adaLN from the camera embedding c.

    ``last=True`` drops the image-stream MLP (norm3 / mlp1), as the release does in its last block.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, norm_eps: float, last: bool = False,
                 impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        akw = dict(qkv_bias=True, impl=impl, rngs=rngs, **kw)
        hidden = int(2 / 3 * mlp_ratio * dim)
        self.norm1 = nn.RMSNorm(dim, eps=norm_eps, **kw)
        self.attn1 = nn.Attention(dim, num_heads, **akw)
        self.norm2 = nn.RMSNorm(dim, eps=norm_eps, **kw)
        self.attn2 = nn.Attention(dim, num_heads, **akw)
        self.attn3 = nn.Attention(dim, num_heads, **akw)
        if last:
            self.norm3 = self.mlp1 = None
        else:
            self.norm3 = nn.RMSNorm(dim, eps=norm_eps, **kw)
            self.mlp1 = nn.SwiGLU(dim, hidden, use_bias=True, rngs=rngs, **kw)
        self.norm4 = nn.RMSNorm(dim, eps=norm_eps, **kw)
        self.mlp2 = nn.SwiGLU(dim, hidden, use_bias=True, rngs=rngs, **kw)
        self.adaln = nn.AdaLNZero(dim, dim, 6, rngs=rngs, **kw)

    def __call__(self, carry: tuple[jax.Array, jax.Array], c: jax.Array, *, rope) -> tuple[jax.Array, jax.Array]:
        x, y = carry
        sh1, sc1, g1, sh2, sc2, g2 = self.adaln(c)
        y = y + g1 * self.attn1(nn.modulate(self.norm1(y), sh1, sc1), q_rope=rope)
        x = x + self.attn2(self.norm2(x))
        x = x + self.attn3(x, y, k_rope=rope)
        if self.mlp1 is not None:
            y = y + g2 * self.mlp1(nn.modulate(self.norm3(y), sh2, sc2))
        x = x + self.mlp2(self.norm4(x))
        return nn.constrain_tokens(x, "act_embed"), nn.constrain_tokens(y, "act_embed")


class SceneTokCompressor(nnx.Module):
    """tokens, aux = SceneTokCompressor(...)(latents (B, V, H, W, C), c2w (B, V, 4, 4), intrinsics, rng=key).

    Sizes come from ``VARIANTS[variant]['compressor']``; any of its keys can be overridden by keyword
    (COMPRESSOR_KEYS). attn_impl: the attention kernel; scan / remat: how the block stack runs.
    """

    def __init__(self, *, variant: str = "tiny", attn_impl: str = "xla", scan: bool = True, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs, **overrides):
        c = _resolve("compressor", variant, overrides, COMPRESSOR_KEYS)
        if c["depth"] < 1:
            raise ValueError(f"SceneTokCompressor: depth must be >= 1, got {c['depth']}")
        self._config_items = tuple(sorted(c.items()))
        self.variant, self.dtype = variant, dtype
        w, kw = c["width"], dict(dtype=dtype, param_dtype=param_dtype)
        self.head_dim = w // c["heads"]
        if self.head_dim % 4:
            raise ValueError(f"SceneTokCompressor: 2D RoPE needs head_dim % 4 == 0, got {self.head_dim}")
        self.image_embed = nn.PatchEmbed(c["in_channels"], w, c["patch"], rngs=rngs, **kw)
        self.ray_embed = RayEmbed(1, c["ray_patch"], w, rngs=rngs, **kw)
        self.scene_queries = nnx.Param(param_init(nnx.initializers.normal(c["query_init_std"]),
                                                  ("queries", "embed"))(rngs.params(), (c["num_tokens"], w),
                                                                        param_dtype))
        blk = dict(mlp_ratio=c["mlp_ratio"], norm_eps=c["norm_eps"], impl=attn_impl, **kw)
        self.blocks = (nn.Stack(lambda r: PerceiverBlock(w, c["heads"], rngs=r, **blk), c["depth"] - 1, rngs=rngs,
                                scan=scan, remat=remat) if c["depth"] > 1 else None)
        self.last_block = PerceiverBlock(w, c["heads"], last=True, rngs=rngs, **blk)
        self.out_proj = nn.dense(w, 2 * c["token_dim"], ("embed", "latent"), rngs=rngs, **kw)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config_items)

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.config["num_tokens"], self.config["token_dim"]

    def _check(self, latents, c2w, intrinsics):
        c = self.config
        if latents.ndim != 5 or latents.shape[-1] != c["in_channels"]:
            raise ValueError(f"SceneTokCompressor: latents must be channels-last (B, V, H, W, {c['in_channels']}), "
                             f"got {latents.shape}")
        b, v, h, w, _ = latents.shape
        if h % c["patch"] or w % c["patch"]:
            raise ValueError(f"SceneTokCompressor: latent size {(h, w)} is not divisible by the patch {c['patch']}")
        if tuple(c2w.shape) != (b, v, 4, 4):
            raise ValueError(f"SceneTokCompressor: c2w must be ({b}, {v}, 4, 4) camera-to-world, got {c2w.shape}")
        return as_intrinsics4(jnp.asarray(intrinsics, jnp.float32), (b, v), "SceneTokCompressor")

    def embed(self, latents, c2w, intrinsics) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
        """-> (image tokens y (B, V*n, D), camera embedding c (B, V*n, D), token grid (gh, gw))."""
        c = self.config
        k4 = self._check(latents, c2w, intrinsics)
        b, v, h, w, _ = latents.shape
        gh, gw = h // c["patch"], w // c["patch"]
        y = self.image_embed(latents.astype(self.dtype)).reshape(b, v * gh * gw, -1)
        rp = c["ray_patch"]
        rays = ray_features(jnp.asarray(c2w, jnp.float32), k4, gh * rp, gw * rp, c["ray_kind"])
        cam = self.ray_embed(rays[:, :, None]).reshape(b, v * gh * gw, -1)
        names = ("batch", "length", "act_embed")
        return constrain(y, names), constrain(cam, names), (gh, gw)

    def __call__(self, latents: jax.Array, c2w: jax.Array, intrinsics: jax.Array, *, rng: jax.Array | None = None,
                 eps: jax.Array | None = None, sample: bool = True) -> tuple[jax.Array, dict]:
        """-> (tokens (B, K, d), aux). With ``sample`` the tokens are mean + std * eps (eps (B, K, d), else drawn
        from ``rng``), otherwise the mean. aux: mean, logvar, std (B, K, d), kl (B,), moments (B, K, 2d),
        image_tokens / pose_embed (B, V*n, D) (the embeddings), scene_features (B, K, D)."""
        c = self.config
        if sample and eps is None and rng is None:
            raise ValueError("SceneTokCompressor: sample=True needs rng (a jax PRNG key) or eps (B, K, d)")
        y, cam, (gh, gw) = self.embed(latents, c2w, intrinsics)
        b, v = latents.shape[:2]
        rope = nn.make_rope(rope_2d_positions(v, gh, gw), c["rope_theta"], (self.head_dim // 2,) * 2, axial=True,
                            interleaved=True)
        x = jnp.broadcast_to(self.scene_queries[...].astype(y.dtype)[None], (b,) + self.scene_queries.shape)
        carry = (x, y)
        if self.blocks is not None:
            carry = self.blocks(carry, cam, rope=rope)
        x, _ = self.last_block(carry, cam, rope=rope)
        moments = self.out_proj(x).astype(jnp.float32)
        d = c["token_dim"]
        mean, logvar = moments[..., :d], jnp.clip(moments[..., d:], *c["logvar_range"])
        std = jnp.exp(0.5 * logvar)
        if sample:
            if eps is None:
                eps = jax.random.normal(rng, mean.shape, jnp.float32)
            if tuple(eps.shape) != mean.shape:
                raise ValueError(f"SceneTokCompressor: eps must be {mean.shape}, got {tuple(eps.shape)}")
            tokens = mean + std * eps
        else:
            tokens = mean
        aux = dict(mean=mean, logvar=logvar, std=std, kl=diagonal_gaussian_kl(mean, logvar, axes=None), moments=moments,
                   image_tokens=y, pose_embed=cam, scene_features=x)
        return tokens, aux


# ------------------------------------------------------------------------------------------------- decoder


class SceneTokDecoder(nnx.Module):
    """v, aux = SceneTokDecoder(...)(x_t (B, M, h, w, C), t (B, M), c2w (B, P, 4, 4), intrinsics, scene_tokens).

    P cameras per call: M * temporal_downsample, or M / 5 * 17 with ``wan_pose_padding``. scene_tokens (B, K, d) or
    None (the learned null token: the unconditional branch of classifier-free guidance). Sizes come from
    ``VARIANTS[variant]['decoder']`` (+ overrides, DECODER_KEYS).

    ``prediction``: 'v' (the release: the network's output is the velocity) or 'x' (the output is the clean
    latent x0 and v = (x_t - x0) / max(t, x_pred_t_min); the loss stays the velocity loss). x-prediction learns far
    faster when the per-token latent (patch^2 x channels) is large next to the width, as in CPU-sized runs on
    patchified pixels: a network then only has to output the low-dimensional clean signal, never the noise.
    """

    def __init__(self, *, variant: str = "tiny", attn_impl: str = "xla", scan: bool = True, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs, **overrides):
        c = _resolve("decoder", variant, overrides, DECODER_KEYS)
        if c["timestep_input"] not in TIMESTEP_INPUTS:
            raise ValueError(f"SceneTokDecoder: timestep_input must be one of {TIMESTEP_INPUTS}, "
                             f"got {c['timestep_input']!r}")
        if c["prediction"] not in PREDICTIONS:
            raise ValueError(f"SceneTokDecoder: prediction must be one of {PREDICTIONS}, got {c['prediction']!r}")
        if c["wan_pose_padding"] and c["temporal_downsample"] != 4:
            raise ValueError("SceneTokDecoder: wan_pose_padding needs temporal_downsample=4 (17 frames -> 5 x 4)")
        self._config_items = tuple(sorted(c.items()))
        self.variant, self.dtype = variant, dtype
        w, p, kw = c["width"], c["patch"], dict(dtype=dtype, param_dtype=param_dtype)
        self.head_dim = w // c["heads"]
        self.rope_split = rope_split_3d(self.head_dim)
        self.x_embed = nn.PatchEmbed(c["in_channels"], w, p, rngs=rngs, **kw)
        self.t_embed = nn.TimestepEmbedder(w, freq_dim=c["freq_dim"], t_scale=1.0, rngs=rngs, **kw)
        self.ray_embed = RayEmbed(c["temporal_downsample"], c["ray_patch"], w, force_incorrect=c["force_incorrect"],
                                  rngs=rngs, **kw)
        self.cond_proj = nn.dense(c["token_dim"], w, ("latent", "embed"), rngs=rngs, **kw)
        self.null_token = nnx.Param(param_init(nnx.initializers.zeros_init(), ("embed",))(rngs.params(), (w,),
                                                                                          param_dtype))
        blk = dict(nn.LIGHTNING_DIT, mlp_dim=int(2 / 3 * c["mlp_ratio"] * w), cross_rope="q",
                   norm_eps=c["norm_eps"], impl=attn_impl, **kw)
        self.blocks = nn.Stack(lambda r: nn.DiTBlock(w, c["heads"], rngs=r, **blk), c["depth"], rngs=rngs,
                               scan=scan, remat=remat)
        self.final = nn.FinalLayer(w, p * p * c["in_channels"], norm="rms", norm_affine=True, norm_eps=c["norm_eps"],
                                   rngs=rngs, **kw)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config_items)

    def num_cameras(self, num_views: int) -> int:
        """Cameras P needed for ``num_views`` latent views."""
        c = self.config
        if c["wan_pose_padding"]:
            if num_views % 5:
                raise ValueError(f"SceneTokDecoder (Wan): the number of latent views must be a multiple of 5, "
                                 f"got {num_views}")
            return num_views // 5 * 17
        return num_views * c["temporal_downsample"]

    def timestep_input(self, t: jax.Array) -> jax.Array:
        """What the timestep MLP sees: clip(1000 t - 1, 0) ('official') or 1000 t ('scaled')."""
        t = jnp.asarray(t, jnp.float32) * 1000.0
        return jnp.maximum(t - 1.0, 0.0) if self.config["timestep_input"] == "official" else t

    def camera_embed(self, c2w: jax.Array, intrinsics: jax.Array, num_views: int, grid: tuple[int, int]) -> jax.Array:
        """Target cameras (B, P, 4, 4) / (B, P, 4 | 3, 3) -> per-token camera embedding (B, M, n, D)."""
        c = self.config
        b = c2w.shape[0]
        p = self.num_cameras(num_views)
        if tuple(c2w.shape) != (b, p, 4, 4):
            per = ("Wan chunks of 17 cameras per 5 views" if c["wan_pose_padding"]
                   else f"{c['temporal_downsample']} cameras per view")
            raise ValueError(f"SceneTokDecoder: c2w must be ({b}, {p}, 4, 4) for {num_views} latent views ({per}), "
                             f"got {c2w.shape}")
        k4 = as_intrinsics4(jnp.asarray(intrinsics, jnp.float32), (b, p), "SceneTokDecoder")
        rp = c["ray_patch"]
        rays = ray_features(jnp.asarray(c2w, jnp.float32), k4, grid[0] * rp, grid[1] * rp, c["ray_kind"])
        if c["wan_pose_padding"]:
            rays = wan_pad_frames(rays, axis=1)
        rays = rays.reshape((b, num_views, c["temporal_downsample"]) + rays.shape[2:])
        return self.ray_embed(rays)

    def __call__(self, x_t: jax.Array, t: jax.Array, c2w: jax.Array, intrinsics: jax.Array,
                 scene_tokens: jax.Array | None, *, drop: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """-> (v (B, M, h, w, C) fp32, aux). t: (B, M) per view, (B,) or a scalar. drop (B,) bool: use the null
        token for these examples. aux: state (B, K, D), pose_embed (B, M*n, D), cond (B, M*n, D), features."""
        c = self.config
        if x_t.ndim != 5 or x_t.shape[-1] != c["in_channels"]:
            raise ValueError(f"SceneTokDecoder: x_t must be channels-last (B, M, h, w, {c['in_channels']}), "
                             f"got {x_t.shape}")
        b, m, h, w, ch = x_t.shape
        p = c["patch"]
        if h % p or w % p:
            raise ValueError(f"SceneTokDecoder: latent size {(h, w)} is not divisible by the patch {p}")
        gh, gw = h // p, w // p
        n = gh * gw
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0 or t.shape == (b,):
            t = jnp.broadcast_to(t.reshape((-1, 1)) if t.ndim else t, (b, m))
        if t.shape != (b, m):
            raise ValueError(f"SceneTokDecoder: t must be ({b}, {m}), ({b},) or a scalar, got {t.shape}")
        x = self.x_embed(x_t.astype(self.dtype)).reshape(b, m * n, -1)
        pemb = self.camera_embed(c2w, intrinsics, m, (gh, gw))
        if c["pose_embed_bf16"]:
            pemb = pemb.astype(jnp.bfloat16)
        temb = self.t_embed(self.timestep_input(t).reshape(-1)).reshape(b, m, 1, -1)
        cond = (temb + pemb.astype(temb.dtype)).reshape(b, m * n, -1)
        cond = constrain(cond, ("batch", "length", "act_embed"))
        state = self.scene_state(scene_tokens, b, drop)
        rope = nn.make_rope(rope_3d_positions(m, gh, gw, c["num_target_split"]), c["rope_theta"], self.rope_split,
                            axial=True, interleaved=True)
        feats = self.blocks(constrain(x, ("batch", "length", "act_embed")), cond, state, rope=rope)
        out = self.final(feats, cond).astype(jnp.float32)
        v = nn.unpatchify(out.reshape(b, m, n, -1), p, (h, w))
        if c["prediction"] == "x":  # the network predicts x0; its velocity is (x_t - x0) / t (t clipped below)
            v = paths.velocity_from_x0(x_t.astype(jnp.float32), v, t, c["x_pred_t_min"])
        return v, dict(state=state, pose_embed=pemb.reshape(b, m * n, -1), cond=cond, features=feats)

    def scene_state(self, scene_tokens: jax.Array | None, batch: int, drop: jax.Array | None = None) -> jax.Array:
        """Scene tokens (B, K, d) -> cross-attention state (B, K, D); the null token where ``drop`` (or if None)."""
        c = self.config
        null = self.null_token[...].astype(self.dtype)
        if scene_tokens is None:
            return jnp.broadcast_to(null, (batch, 1, null.shape[0]))
        if scene_tokens.ndim != 3 or scene_tokens.shape[0] != batch or scene_tokens.shape[-1] != c["token_dim"]:
            raise ValueError(f"SceneTokDecoder: scene_tokens must be ({batch}, K, {c['token_dim']}), "
                             f"got {scene_tokens.shape}")
        state = self.cond_proj(scene_tokens.astype(self.dtype))
        if drop is not None:
            drop = jnp.asarray(drop, bool)
            if drop.shape != (batch,):
                raise ValueError(f"SceneTokDecoder: drop must be ({batch},) bool, got {drop.shape}")
            state = jnp.where(drop[:, None, None], null[None, None], state)
        return constrain(state, ("batch", "kv_length", "act_embed"))

    def render(self, scene_tokens: jax.Array | None, c2w: jax.Array, intrinsics: jax.Array, rng: jax.Array, *,
               latent_size: tuple[int, int] | None = None, flow: FlowMatching | None = None,
               num_steps: int | None = None, shift: float | None = None, method: str | None = None,
               cfg_scale: float | None = None, cfg_interval: tuple[float, float] | None = None,
               noise: jax.Array | None = None, return_trajectory: bool = False):
        """Sample target-view latents (B, M, h, w, C) for the cameras (B, P, ...) from the scene tokens alone.

        Integrates the velocity from noise (t = 1) to t = 0 with ``flow``'s sampler (default
        ``flow_objective()``: 25 Euler steps, no shift, no guidance), each setting overridable by its keyword
        (None: the flow's); a ``cfg_scale`` != 1 mixes in the null-token velocity (in ``cfg_interval``).
        latent_size (h, w) defaults to the config's input_size. Returns latents (or (latents, trajectory)).
        """
        c = self.config
        b = c2w.shape[0]
        p = c2w.shape[1]
        if c["wan_pose_padding"]:
            if p % 17:
                raise ValueError(f"SceneTokDecoder.render (Wan): cameras must come in chunks of 17, got {p}")
            m = p // 17 * 5
        else:
            if p % c["temporal_downsample"]:
                raise ValueError(f"SceneTokDecoder.render: {p} cameras is not a multiple of temporal_downsample "
                                 f"{c['temporal_downsample']}")
            m = p // c["temporal_downsample"]
        if latent_size is None:
            latent_size = (c["input_size"],) * 2
        shape = (b, m) + tuple(int(s) for s in latent_size) + (c["in_channels"],)
        if noise is None:
            noise = jax.random.normal(rng, shape, jnp.float32)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"SceneTokDecoder.render: noise must be {shape}, got {noise.shape}")

        def cond_fn(x, tb):
            return self(x, tb, c2w, intrinsics, scene_tokens)[0]

        def uncond_fn(x, tb):
            return self(x, tb, c2w, intrinsics, None)[0]

        return (flow or flow_objective()).sample(
            cond_fn, noise, uncond_fn=uncond_fn, num_steps=num_steps, method=method, shift=shift,
            cfg_scale=cfg_scale, cfg_interval=cfg_interval, return_trajectory=return_trajectory)


# ------------------------------------------------------------------------------------------------- both


def relative_to_reference(context_c2w: jax.Array, target_c2w: jax.Array | None = None, ref_index: int = 0):
    """Pose normalisation of the release: every pose expressed in the frame of context view ``ref_index``."""
    ref_inv = jnp.linalg.inv(context_c2w[:, ref_index:ref_index + 1])
    ctx = ref_inv @ context_c2w
    return ctx if target_c2w is None else (ctx, ref_inv @ target_c2w)


class SceneTok(nnx.Module):
    """Compressor + decoder. ``compressor`` / ``decoder`` dicts override the variant's values."""

    def __init__(self, *, variant: str = "tiny", compressor: Mapping[str, Any] | None = None,
                 decoder: Mapping[str, Any] | None = None, attn_impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(variant=variant, attn_impl=attn_impl, scan=scan, remat=remat, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)
        self.compressor = SceneTokCompressor(**kw, **dict(compressor or {}))
        dec = dict(decoder or {})
        dec.setdefault("token_dim", self.compressor.config["token_dim"])
        self.decoder = SceneTokDecoder(**kw, **dec)
        if self.decoder.config["token_dim"] != self.compressor.config["token_dim"]:
            raise ValueError(f"SceneTok: decoder token_dim {self.decoder.config['token_dim']} != compressor "
                             f"token_dim {self.compressor.config['token_dim']}")

    def encode(self, latents, c2w, intrinsics, **kwargs):
        return self.compressor(latents, c2w, intrinsics, **kwargs)

    def render(self, scene_tokens, c2w, intrinsics, rng, **kwargs):
        return self.decoder.render(scene_tokens, c2w, intrinsics, rng, **kwargs)

    def loss(self, batch: Mapping[str, jax.Array], rng: jax.Array, *, flow: FlowMatching | None = None,
             time_sampler="logit_normal", num_chunks: int = 1, null_prob: float = 0.0,
             kl_weight: float | None = None, weighting: str = "velocity") -> tuple[jax.Array, dict]:
        """Flow-matching velocity loss of the decoder on the target views + kl_weight x KL of the scene tokens.

        batch: context_latents (B, V, H, W, Cc), context_c2w, context_intrinsics, target_latents (B, M, h, w, C),
        target_c2w, target_intrinsics (P cameras). ``flow`` (a FlowMatching; without it one is made of
        ``time_sampler``, ``num_chunks``, ``null_prob`` and ``weighting``): one time t per chunk of M / num_chunks
        consecutive target views; the scene tokens replaced by the null token with probability ``cond_drop``
        (``null_prob``) per example; ``loss_weighting`` (``weighting``) 'velocity' (the release: the plain
        velocity MSE) or 'x0' (each view's velocity error times t^2, i.e. the clean-latent MSE |x0_hat - x0|^2 of
        an x-predicting decoder: the 1 / t^2 weight the velocity loss puts on nearly clean views no longer drowns
        the high-noise views, where the tokens alone must carry the view). kl_weight defaults to the compressor's.
        """
        if flow is None:
            flow = FlowMatching(time_sampler=time_sampler, num_chunks=num_chunks, cond_drop=null_prob,
                                loss_weighting=weighting)
        k_enc, k_t, k_eps, k_drop = jax.random.split(rng, 4)
        tokens, caux = self.compressor(batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"],
                                       rng=k_enc)
        x0 = jnp.asarray(batch["target_latents"], jnp.float32)
        t, eps, x_t = flow.draw(x0, k_t, k_eps, per_view=True)
        drop = flow.drop(k_drop, x0.shape[0]) if flow.cond_drop > 0 else None
        v, daux = self.decoder(x_t, t, batch["target_c2w"], batch["target_intrinsics"], tokens, drop=drop)
        fm, _ = flow.loss(v, x0, eps, t)
        kl = jnp.mean(caux["kl"])
        w = self.compressor.config["kl_weight"] if kl_weight is None else kl_weight
        loss = fm + w * kl
        return loss, dict(flow_loss=fm, kl=kl, t=t, v=v, tokens=tokens, mean=caux["mean"], logvar=caux["logvar"])


def num_params(variant: str = "re10k") -> dict[str, int]:
    """Parameter counts {'compressor', 'decoder'} of a variant without allocating it (incl. the null token)."""
    model = nnx.eval_shape(lambda: SceneTok(variant=variant, rngs=nnx.Rngs(0)))
    return {name: sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(getattr(model, name), nnx.Param)))
            for name in ("compressor", "decoder")}
