"""SceneTok in plain PyTorch: the Scene Perceiver compressor, the rectified-flow DiT decoder, and the stage-1
training loss, with the module tree of :mod:`scene3d.models.scenetok` (``state_dict`` keys = the torch_port layout
of the JAX model, ``scene3d.convert.torch_port``).

What it is for: the same architecture and weights as ours, trainable by autograd, so that our compiled JAX train
step can be timed and checked against PyTorch's (``benchmarks/vs_torch_scenetok.py``). The blocks are those of
:mod:`scene3d_torch.nn` (RMSNorm, SwiGLU, AdaLNZero, DiTBlock with the LightningDiT options, FinalLayer, Stack,
axial RoPE); this file adds the SceneTok assembly: ray maps, the per-token camera embedding, the two-stream
Perceiver block, the compressor head (posterior mean / logvar, reparameterised tokens) and the decoder (timestep +
camera condition, scene-token state or the learned null token, 3D RoPE, x- or v-prediction).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` by default (``attn_impl='sdpa'``:
PyTorch's fused CPU / GPU kernels, what a PyTorch user trains with; the release itself calls flash-attn) or the
materialised fp32 reference (``attn_impl='math'``), both in ``scene3d_torch.nn.attention`` (its ``sdpa`` switch,
set on every Attention of the tree by :func:`set_attention_impl`).

Training loss (:func:`train_loss`) = the velocity loss of the decoder on the target latents + kl_weight x KL of the
tokens, exactly as ``scene3d.models.scenetok.SceneTok.loss`` / ``scene3d.tasks.scenetok.ReleaseSceneTokTask.loss``
compute it, with every random draw passed in (``draws``: token noise, times, latent noise, null-token mask) so the
JAX and PyTorch sides can be fed identical values. Context latents (VA-VAE) and target latents (a video
autoencoder's, or the image compressor's) are batch inputs, as in the JAX step (which takes them through a
stop-gradient).

Layouts as in JAX: latents channels-last (B, V, H, W, C); OpenCV c2w (B, V, 4, 4); intrinsics normalised
(B, V, 4) = (fx/W, fy/H, cx/W, cy/H) or a normalised 3x3 K. This module never imports jax / flax; from scene3d only
the jax-free tables of ``scene3d.specs.scenetok``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from scene3d.specs.scenetok import (PREDICTIONS, TIMESTEP_INPUTS, VARIANTS, resolve,  # noqa: F401
                                    rope_split_3d)
from scene3d_torch import geometry
from scene3d_torch import nn as tnn

ATTN_IMPLS = ("sdpa", "math")


# ------------------------------------------------------------------------------------------------- attention


def set_attention_impl(module: nn.Module, impl: str) -> nn.Module:
    """Every ``scene3d_torch.nn.Attention`` under ``module`` computed by ``impl`` ('sdpa' | 'math'); in place."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"SceneTok: attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    for m in module.modules():
        if isinstance(m, tnn.Attention):
            if not hasattr(m, "sdpa"):
                raise ValueError("SceneTok: scene3d_torch.nn.Attention has no 'sdpa' switch")
            m.sdpa = impl == "sdpa"
    return module


# ------------------------------------------------------------------------------------------------- cameras


def as_intrinsics4(intrinsics: torch.Tensor, lead: tuple | None = None, name: str = "intrinsics") -> torch.Tensor:
    """(…, 4) normalised intrinsics from (…, 4) or a normalised (…, 3, 3) K; leading shape ``lead`` checked."""
    k = torch.as_tensor(intrinsics).float()
    is_k = tuple(k.shape[-2:]) == (3, 3)
    pre = tuple(k.shape[:-2]) if is_k else tuple(k.shape[:-1])
    if (not is_k and tuple(k.shape[-1:]) != (4,)) or (lead is not None and pre != tuple(lead)):
        want = "(..., 4)" if lead is None else str(tuple(lead) + (4,))
        raise ValueError(f"{name}: intrinsics must be {want} (fx/W, fy/H, cx/W, cy/H) or a normalised 3x3 K, "
                         f"got {tuple(k.shape)}")
    if is_k:
        return torch.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], -1)
    return k


def official_ray_map(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The release's per-pixel ray map (…, H, W, 6) = [d, o], d = R K^-1 [u, v, 1] / (|.| + 1e-6)."""
    pix = geometry.pixel_centers(height, width, device=c2w.device)
    d = geometry.camera_directions(pix, intrinsics, height, width, normalise=False)
    d = d / (torch.linalg.norm(d, dim=-1, keepdim=True) + 1e-6)
    d = torch.sum(c2w[..., None, None, :3, :3] * d[..., None, :], -1)
    o = torch.broadcast_to(c2w[..., None, None, :3, 3], d.shape)
    return torch.cat([d, o], -1)


def ray_features(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int, kind: str) -> torch.Tensor:
    """Per-pixel 6-channel ray map (…, H, W, 6): official [d, o], origin_direction [o, d], plucker [o x d, d]."""
    if kind == "official":
        return official_ray_map(c2w, intrinsics, height, width)
    if kind == "plucker":
        return geometry.plucker_map(c2w, intrinsics, height, width)
    o, d = geometry.ray_map(c2w, intrinsics, height, width)
    return torch.cat([o, d], -1)


def wan_pad_frames(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Every 17-frame chunk [f0, f1..f16] along ``axis`` -> [f0, 0, 0, 0, f1..f16] (Wan pose padding)."""
    n = x.shape[axis]
    if n % 17:
        raise ValueError(f"wan_pose_padding: the number of target cameras must be a multiple of 17, got {n}")
    x = torch.movedim(x, axis, 0)
    x = x.reshape((n // 17, 17) + tuple(x.shape[1:]))
    zeros = x.new_zeros((n // 17, 3) + tuple(x.shape[2:]))
    x = torch.cat([x[:, :1], zeros, x[:, 1:]], 1).reshape((n // 17 * 20,) + tuple(x.shape[2:]))
    return torch.movedim(x, 0, axis)


class RayEmbed(nn.Module):
    """Bias-free linear map of each token's (frames x patch^2 x 6) ray-map patch: rays (B, V, T, H, W, 6) ->
    (B, V, n, dim); features (frame, row, col, channel), or (row, col, frame, channel) with ``force_incorrect``."""

    def __init__(self, frames: int, patch: int, dim: int, *, force_incorrect: bool = False):
        super().__init__()
        self.frames, self.patch, self.force_incorrect = frames, patch, force_incorrect
        self.proj = tnn.linear(frames * patch * patch * 6, dim, bias=False)

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        b, v, t = rays.shape[:3]
        if t != self.frames or rays.shape[-1] != 6:
            raise ValueError(f"RayEmbed: rays must be (B, V, {self.frames}, H, W, 6), got {tuple(rays.shape)}")
        if self.force_incorrect:
            stacked = torch.movedim(rays, 2, -2).reshape(tuple(rays.shape[:2]) + tuple(rays.shape[3:5]) + (t * 6,))
            feats = tnn.patchify(stacked, self.patch)
        else:
            feats = torch.movedim(tnn.patchify(rays, self.patch), 2, 3)  # (B, V, n, T, p*p*6)
            feats = feats.reshape(tuple(feats.shape[:3]) + (-1,))
        return self.proj(feats.to(self.proj.weight.dtype))


# ------------------------------------------------------------------------------------------------- rope


def rope_2d(views: int, gh: int, gw: int, theta: float, head_dim: int, device=None) -> tnn.RopeFn:
    """The compressor's 2D RoPE: (row, col) restarting in every view, half the head dim per axis, interleaved."""
    pos = tnn.grid_positions_2d(gh, gw).repeat(views, 1).to(device)
    return tnn.make_rope(pos, theta, (head_dim // 2,) * 2, axial=True, interleaved=True)


def rope_3d(views: int, gh: int, gw: int, groups: int, theta: float, head_dim: int, device=None) -> tnn.RopeFn:
    """The decoder's 3D RoPE: (view, row, col), the view index restarting in each of ``groups`` groups."""
    if views % groups:
        raise ValueError(f"3D RoPE: {views} target views cannot be cut into num_target_split={groups} groups")
    pos = tnn.grid_positions_3d(views // groups, gh, gw).repeat(groups, 1).to(device)
    return tnn.make_rope(pos, theta, rope_split_3d(head_dim), axial=True, interleaved=True)


# ------------------------------------------------------------------------------------------------- compressor


class PerceiverBlock(nn.Module):
    """Scene Perceiver block over (scene x, image y), per-image-token adaLN from the camera embedding c
    (scene3d.models.scenetok.PerceiverBlock); ``last`` drops the image-stream MLP."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, norm_eps: float, last: bool = False):
        super().__init__()
        hidden = int(2 / 3 * mlp_ratio * dim)
        self.norm1 = tnn.RMSNorm(dim, eps=norm_eps)
        self.attn1 = tnn.Attention(dim, num_heads)
        self.norm2 = tnn.RMSNorm(dim, eps=norm_eps)
        self.attn2 = tnn.Attention(dim, num_heads)
        self.attn3 = tnn.Attention(dim, num_heads)
        if last:
            self.norm3 = self.mlp1 = None
        else:
            self.norm3 = tnn.RMSNorm(dim, eps=norm_eps)
            self.mlp1 = tnn.SwiGLU(dim, hidden, use_bias=True)
        self.norm4 = tnn.RMSNorm(dim, eps=norm_eps)
        self.mlp2 = tnn.SwiGLU(dim, hidden, use_bias=True)
        self.adaln = tnn.AdaLNZero(dim, dim, 6)

    def forward(self, carry, c, *, rope):
        x, y = carry
        sh1, sc1, g1, sh2, sc2, g2 = self.adaln(c)
        y = y + g1 * self.attn1(tnn.modulate(self.norm1(y), sh1, sc1), q_rope=rope)
        x = x + self.attn2(self.norm2(x))
        x = x + self.attn3(x, y, k_rope=rope)
        if self.mlp1 is not None:
            y = y + g2 * self.mlp1(tnn.modulate(self.norm3(y), sh2, sc2))
        x = x + self.mlp2(self.norm4(x))
        return x, y


class SceneTokCompressor(nn.Module):
    """tokens, aux = SceneTokCompressor(...)(latents (B, V, H, W, C), c2w, intrinsics, eps=... | sample=False).

    Keywords as the JAX class (variant + COMPRESSOR_KEYS overrides); attn_impl 'sdpa' | 'math'; scan / remat /
    dtype / param_dtype / rngs accepted and ignored. aux: mean, logvar, std (B, K, d), kl (B,), scene_features.
    """

    def __init__(self, *, variant: str = "tiny", attn_impl: str = "sdpa", scan=None, remat=None, dtype=None,
                 param_dtype=None, rngs=None, **overrides):
        super().__init__()
        c = resolve("compressor", variant, overrides)
        if c["depth"] < 1:
            raise ValueError(f"SceneTokCompressor: depth must be >= 1, got {c['depth']}")
        self.config, self.variant = c, variant
        w = c["width"]
        self.head_dim = w // c["heads"]
        if self.head_dim % 4:
            raise ValueError(f"SceneTokCompressor: 2D RoPE needs head_dim % 4 == 0, got {self.head_dim}")
        self.image_embed = tnn.PatchEmbed(c["in_channels"], w, c["patch"])
        self.ray_embed = RayEmbed(1, c["ray_patch"], w)
        self.scene_queries = nn.Parameter(torch.zeros(c["num_tokens"], w))
        blk = dict(mlp_ratio=c["mlp_ratio"], norm_eps=c["norm_eps"])
        self.blocks = (tnn.Stack(lambda: PerceiverBlock(w, c["heads"], **blk), c["depth"] - 1)
                       if c["depth"] > 1 else None)
        self.last_block = PerceiverBlock(w, c["heads"], last=True, **blk)
        self.out_proj = tnn.linear(w, 2 * c["token_dim"])
        set_attention_impl(self, attn_impl)

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.config["num_tokens"], self.config["token_dim"]

    def embed(self, latents, c2w, intrinsics):
        """-> (image tokens y (B, V*n, D), camera embedding c (B, V*n, D), token grid (gh, gw))."""
        c = self.config
        if latents.ndim != 5 or latents.shape[-1] != c["in_channels"]:
            raise ValueError(f"SceneTokCompressor: latents must be channels-last (B, V, H, W, {c['in_channels']}), "
                             f"got {tuple(latents.shape)}")
        b, v, h, w, _ = latents.shape
        if h % c["patch"] or w % c["patch"]:
            raise ValueError(f"SceneTokCompressor: latent size {(h, w)} is not divisible by the patch {c['patch']}")
        if tuple(c2w.shape) != (b, v, 4, 4):
            raise ValueError(f"SceneTokCompressor: c2w must be ({b}, {v}, 4, 4) camera-to-world, got "
                             f"{tuple(c2w.shape)}")
        k4 = as_intrinsics4(intrinsics, (b, v), "SceneTokCompressor")
        gh, gw = h // c["patch"], w // c["patch"]
        y = self.image_embed(latents.to(self.out_proj.weight.dtype)).reshape(b, v * gh * gw, -1)
        rp = c["ray_patch"]
        rays = ray_features(c2w.float(), k4, gh * rp, gw * rp, c["ray_kind"])
        cam = self.ray_embed(rays[:, :, None]).reshape(b, v * gh * gw, -1)
        return y, cam, (gh, gw)

    def forward(self, latents, c2w, intrinsics, *, eps: torch.Tensor | None = None, sample: bool = True):
        """With ``sample`` the tokens are mean + std * eps (eps (B, K, d), drawn here if None), else the mean."""
        c = self.config
        y, cam, (gh, gw) = self.embed(latents, c2w, intrinsics)
        b, v = latents.shape[:2]
        rope = rope_2d(v, gh, gw, c["rope_theta"], self.head_dim, y.device)
        x = self.scene_queries.to(y.dtype)[None].expand(b, *self.scene_queries.shape)
        carry = (x, y)
        if self.blocks is not None:
            carry = self.blocks(carry, cam, rope=rope)
        x, _ = self.last_block(carry, cam, rope=rope)
        moments = self.out_proj(x).float()
        d = c["token_dim"]
        mean, logvar = moments[..., :d], moments[..., d:].clamp(*c["logvar_range"])
        std = torch.exp(0.5 * logvar)
        if sample:
            if eps is None:
                eps = torch.randn_like(mean)
            if tuple(eps.shape) != tuple(mean.shape):
                raise ValueError(f"SceneTokCompressor: eps must be {tuple(mean.shape)}, got {tuple(eps.shape)}")
            tokens = mean + std * eps.to(mean.dtype)
        else:
            tokens = mean
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
        aux = dict(mean=mean, logvar=logvar, std=std, kl=kl.sum(dim=(1, 2)), moments=moments, image_tokens=y,
                   pose_embed=cam, scene_features=x)
        return tokens, aux


# ------------------------------------------------------------------------------------------------- decoder


class SceneTokDecoder(nn.Module):
    """v, aux = SceneTokDecoder(...)(x_t (B, M, h, w, C), t (B, M) | (B,) | scalar, c2w (B, P, 4, 4), intrinsics,
    scene_tokens (B, K, d) | None, drop=(B,) bool). Keywords as the JAX class (DECODER_KEYS overrides)."""

    def __init__(self, *, variant: str = "tiny", attn_impl: str = "sdpa", scan=None, remat=None, dtype=None,
                 param_dtype=None, rngs=None, **overrides):
        super().__init__()
        c = resolve("decoder", variant, overrides)
        if c["timestep_input"] not in TIMESTEP_INPUTS:
            raise ValueError(f"SceneTokDecoder: timestep_input must be one of {TIMESTEP_INPUTS}, "
                             f"got {c['timestep_input']!r}")
        if c["prediction"] not in PREDICTIONS:
            raise ValueError(f"SceneTokDecoder: prediction must be one of {PREDICTIONS}, got {c['prediction']!r}")
        if c["wan_pose_padding"] and c["temporal_downsample"] != 4:
            raise ValueError("SceneTokDecoder: wan_pose_padding needs temporal_downsample=4 (17 frames -> 5 x 4)")
        self.config, self.variant = c, variant
        w, p = c["width"], c["patch"]
        self.head_dim = w // c["heads"]
        self.x_embed = tnn.PatchEmbed(c["in_channels"], w, p)
        self.t_embed = tnn.TimestepEmbedder(w, freq_dim=c["freq_dim"], t_scale=1.0)
        self.ray_embed = RayEmbed(c["temporal_downsample"], c["ray_patch"], w, force_incorrect=c["force_incorrect"])
        self.cond_proj = tnn.linear(c["token_dim"], w)
        self.null_token = nn.Parameter(torch.zeros(w))
        # scene3d.nn.LIGHTNING_DIT: RMS norms with a learned scale, qk RMS-norm, SwiGLU with biases, a cross-attention
        # without a norm in front, RoPE on its queries.
        blk = dict(norm="rms", norm_affine=True, qk_norm="rms", mlp="swiglu", mlp_bias=True, cross_attn=True,
                   cross_norm=False, cross_rope="q", mlp_dim=int(2 / 3 * c["mlp_ratio"] * w), norm_eps=c["norm_eps"])
        self.blocks = tnn.Stack(lambda: tnn.DiTBlock(w, c["heads"], **blk), c["depth"])
        self.final = tnn.FinalLayer(w, p * p * c["in_channels"], norm="rms", norm_affine=True, norm_eps=c["norm_eps"])
        set_attention_impl(self, attn_impl)

    def num_cameras(self, num_views: int) -> int:
        c = self.config
        if c["wan_pose_padding"]:
            if num_views % 5:
                raise ValueError(f"SceneTokDecoder (Wan): the number of latent views must be a multiple of 5, "
                                 f"got {num_views}")
            return num_views // 5 * 17
        return num_views * c["temporal_downsample"]

    def timestep_input(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float() * 1000.0
        return torch.clamp(t - 1.0, min=0.0) if self.config["timestep_input"] == "official" else t

    def camera_embed(self, c2w, intrinsics, num_views: int, grid: tuple[int, int]) -> torch.Tensor:
        """Target cameras (B, P, 4, 4) + intrinsics -> per-token camera embedding (B, M, n, D)."""
        c = self.config
        b = c2w.shape[0]
        p = self.num_cameras(num_views)
        if tuple(c2w.shape) != (b, p, 4, 4):
            raise ValueError(f"SceneTokDecoder: c2w must be ({b}, {p}, 4, 4) for {num_views} latent views, got "
                             f"{tuple(c2w.shape)}")
        k4 = as_intrinsics4(intrinsics, (b, p), "SceneTokDecoder")
        rp = c["ray_patch"]
        rays = ray_features(c2w.float(), k4, grid[0] * rp, grid[1] * rp, c["ray_kind"])
        if c["wan_pose_padding"]:
            rays = wan_pad_frames(rays, axis=1)
        rays = rays.reshape((b, num_views, c["temporal_downsample"]) + tuple(rays.shape[2:]))
        return self.ray_embed(rays)

    def scene_state(self, scene_tokens, batch: int, drop=None) -> torch.Tensor:
        """Scene tokens (B, K, d) -> cross-attention state (B, K, D); the null token where ``drop`` (or if None)."""
        null = self.null_token
        if scene_tokens is None:
            return null.expand(batch, 1, null.shape[0])
        if scene_tokens.ndim != 3 or scene_tokens.shape[0] != batch or scene_tokens.shape[-1] != self.config[
                "token_dim"]:
            raise ValueError(f"SceneTokDecoder: scene_tokens must be ({batch}, K, {self.config['token_dim']}), got "
                             f"{tuple(scene_tokens.shape)}")
        state = self.cond_proj(scene_tokens.to(null.dtype))
        if drop is not None:
            drop = torch.as_tensor(drop, device=state.device).bool()
            if tuple(drop.shape) != (batch,):
                raise ValueError(f"SceneTokDecoder: drop must be ({batch},) bool, got {tuple(drop.shape)}")
            state = torch.where(drop[:, None, None], null[None, None], state)
        return state

    def forward(self, x_t, t, c2w, intrinsics, scene_tokens, *, drop=None):
        c = self.config
        if x_t.ndim != 5 or x_t.shape[-1] != c["in_channels"]:
            raise ValueError(f"SceneTokDecoder: x_t must be channels-last (B, M, h, w, {c['in_channels']}), "
                             f"got {tuple(x_t.shape)}")
        b, m, h, w, _ = x_t.shape
        p = c["patch"]
        if h % p or w % p:
            raise ValueError(f"SceneTokDecoder: latent size {(h, w)} is not divisible by the patch {p}")
        gh, gw = h // p, w // p
        n = gh * gw
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0 or tuple(t.shape) == (b,):
            t = torch.broadcast_to(t.reshape(-1, 1) if t.ndim else t, (b, m))
        if tuple(t.shape) != (b, m):
            raise ValueError(f"SceneTokDecoder: t must be ({b}, {m}), ({b},) or a scalar, got {tuple(t.shape)}")
        dtype = self.null_token.dtype
        x = self.x_embed(x_t.to(dtype)).reshape(b, m * n, -1)
        pemb = self.camera_embed(c2w, intrinsics, m, (gh, gw))
        if c["pose_embed_bf16"]:
            pemb = pemb.to(torch.bfloat16)
        temb = self.t_embed(self.timestep_input(t).reshape(-1)).reshape(b, m, 1, -1)
        cond = (temb + pemb.to(temb.dtype)).reshape(b, m * n, -1)
        state = self.scene_state(scene_tokens, b, drop)
        rope = rope_3d(m, gh, gw, c["num_target_split"], c["rope_theta"], self.head_dim, x.device)
        feats = self.blocks(x, cond, state, rope=rope)
        out = self.final(feats, cond).float()
        v = tnn.unpatchify(out.reshape(b, m, n, -1), p, (h, w))
        if c["prediction"] == "x":  # v = (x_t - x0) / max(t, t_min)
            v = (x_t.float() - v) / torch.clamp(t, min=c["x_pred_t_min"])[..., None, None, None]
        return v, dict(state=state, pose_embed=pemb.reshape(b, m * n, -1), cond=cond, features=feats)


# ------------------------------------------------------------------------------------------------- both


class SceneTok(nn.Module):
    """Compressor + decoder (scene3d.models.scenetok.SceneTok); ``compressor`` / ``decoder`` override the variant."""

    def __init__(self, *, variant: str = "tiny", compressor: Mapping[str, Any] | None = None,
                 decoder: Mapping[str, Any] | None = None, attn_impl: str = "sdpa", scan=None, remat=None,
                 dtype=None, param_dtype=None, rngs=None):
        super().__init__()
        self.compressor = SceneTokCompressor(variant=variant, attn_impl=attn_impl, **dict(compressor or {}))
        dec = dict(decoder or {})
        dec.setdefault("token_dim", self.compressor.config["token_dim"])
        self.decoder = SceneTokDecoder(variant=variant, attn_impl=attn_impl, **dec)
        if self.decoder.config["token_dim"] != self.compressor.config["token_dim"]:
            raise ValueError(f"SceneTok: decoder token_dim {self.decoder.config['token_dim']} != compressor "
                             f"token_dim {self.compressor.config['token_dim']}")

    def encode(self, latents, c2w, intrinsics, **kwargs):
        return self.compressor(latents, c2w, intrinsics, **kwargs)


BATCH_KEYS = ("context_latents", "context_c2w", "context_intrinsics", "target_latents", "target_c2w",
              "target_intrinsics")
LOSS_WEIGHTINGS = ("velocity", "x0")


def train_loss(model: SceneTok, batch: Mapping[str, torch.Tensor], draws: Mapping[str, torch.Tensor], *,
               kl_weight: float | None = None, loss_weighting: str = "velocity", latent_scale: float = 1.0,
               return_aux: bool = False):
    """SceneTok stage-1 loss with explicit randomness: flow-matching velocity loss + kl_weight x mean KL.

    batch: BATCH_KEYS (context latents (B, V, H, W, Cc) and their cameras; target latents (B, M, h, w, C) and
    their P cameras). draws: ``token_eps`` (B, K, d) (the posterior sample of the tokens), ``t`` (B, M) (one time per
    target latent; chunking / shared times are the draw's business), ``eps`` (B, M, h, w, C), optional ``drop``
    (B,) bool (null scene token). x0 = target_latents x ``latent_scale``; x_t = (1 - t) x0 + t eps; loss =
    mean((v - (eps - x0))^2 [x t^2 for 'x0' weighting]) + kl_weight x mean_b KL_b (kl_weight None: the
    compressor's). ``scene3d.models.scenetok.SceneTok.loss`` / ``ReleaseSceneTokTask.loss`` on the JAX side.
    """
    missing = [k for k in BATCH_KEYS if k not in batch] + [k for k in ("token_eps", "t", "eps") if k not in draws]
    if missing:
        raise ValueError(f"train_loss: missing {missing} (batch has {sorted(batch)}, draws {sorted(draws)})")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"train_loss: loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    tokens, caux = model.compressor(batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"],
                                    eps=draws["token_eps"])
    x0 = batch["target_latents"].float() * latent_scale
    t, eps = draws["t"].float(), draws["eps"].float()
    if tuple(eps.shape) != tuple(x0.shape) or tuple(t.shape) != tuple(x0.shape[:2]):
        raise ValueError(f"train_loss: eps must be {tuple(x0.shape)} and t {tuple(x0.shape[:2])}, got "
                         f"{tuple(eps.shape)} and {tuple(t.shape)}")
    tt = t[..., None, None, None]
    x_t = (1 - tt) * x0 + tt * eps
    v, _ = model.decoder(x_t, t, batch["target_c2w"], batch["target_intrinsics"], tokens, drop=draws.get("drop"))
    err = (v - (eps - x0)).square()
    if loss_weighting == "x0":
        err = err * tt.square()
    fm = err.mean()
    kl = caux["kl"].mean()
    w = model.compressor.config["kl_weight"] if kl_weight is None else kl_weight
    loss = fm + w * kl
    if return_aux:
        return loss, dict(flow_loss=fm, kl=kl, v=v, tokens=tokens, mean=caux["mean"], logvar=caux["logvar"])
    return loss


__all__ = ["SceneTok", "SceneTokCompressor", "SceneTokDecoder", "PerceiverBlock", "RayEmbed",
           "set_attention_impl", "train_loss", "official_ray_map", "ray_features", "wan_pad_frames"]
