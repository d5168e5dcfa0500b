"""SceneGen: a flow-matching DiT over SceneTok scene tokens, conditioned on images and camera anchors.

The official SceneGen (SceneTok's ``LightningDiT`` scene generator, keys ``scene_generator.*``), in NNX:

- state: noisy scene tokens x_t (B, K, d) (compressor tokens times ``token_scale``) -> Linear(d -> D) + a learned
  per-token position embedding (K, D).
- condition tokens y: each conditioning view's image latents (B, V, h, w, C) -> PatchEmbed (``latent_patch``) ->
  n tokens + its camera embedding; views with ``cond_mask`` False become a learned ``null_tokens``; then one token per
  anchor camera (the scene-extent cameras). Camera embedding: a per-pixel Pluecker map [d, o x d] on a
  ``camera_size`` grid -> PatchEmbed (``camera_patch``) + 2D sin-cos table (diffusers layout, centre-cropped);
  anchors average it over the patch grid. The release casts both to bfloat16 (``camera_dtype``).
- timestep: DiT sinusoid of ``max(1000 t - 1, 0)`` -> MLP -> c (B, D).
- blocks (no RoPE): x += g1 * SelfAttn(mod(RMSNorm(x))); x += CrossAttn(x, y) (no norm on x); x += g2 *
  SwiGLU(mod(RMSNorm(x))); q/k RMS-normed per head. Final: Linear(mod(RMSNorm(x))) -> v (B, K, d).

Flow matching follows the library convention (x_t = (1 - t) x0 + t eps, v = eps - x0). ``sample`` integrates with
``scene3d.diffusion`` samplers (time shift ``shift``) and classifier-free guidance over the scene condition
(the unconditional branch masks every conditioning view; anchors stay). Cameras: OpenCV c2w (..., 4, 4),
intrinsics normalised by image size, (..., 4) = (fx/W, fy/H, cx/W, cy/H) or the (..., 3, 3) normalised matrix.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import constrain, param_init
from scene3d.diffusion import guidance
from scene3d.diffusion.objective import FlowMatching
from scene3d.geometry import rays
from scene3d.geometry.cameras import as_intrinsics4
from scene3d.specs.scenegen import VARIANTS


class Buffer(nnx.Variable):
    """A fixed (non-trained) array of the model, e.g. a sin-cos table; checkpointed, never optimised."""


def sincos_table(dim: int, grid: int, base_size: int, xp=jnp) -> Any:
    """diffusers ``get_2d_sincos_pos_embed(dim, grid, base_size)`` as a (grid, grid, dim) table [row, col].

    Positions arange(grid) * base_size / grid; the first dim/2 channels encode the column, the rest the row; each
    half is [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sincos_table: dim must be divisible by 4, got {dim}")
    pos = xp.arange(grid, dtype=xp.float32) / (grid / base_size)
    omega = 1.0 / 10000 ** (xp.arange(dim // 4, dtype=xp.float32) / (dim / 4))
    ang = pos[:, None] * omega  # (grid, dim/4)
    emb = xp.concatenate([xp.sin(ang), xp.cos(ang)], axis=-1)  # (grid, dim/2)
    col = xp.broadcast_to(emb[None, :, :], (grid, grid, dim // 2))
    row = xp.broadcast_to(emb[:, None, :], (grid, grid, dim // 2))
    return xp.concatenate([col, row], axis=-1)


def camera_rays(c2w: jax.Array, intrinsics: jax.Array, size: Sequence[int]) -> jax.Array:
    """Per-pixel Pluecker features [d, o x d] (..., H, W, 6) with unit world directions d (release order)."""
    h, w = int(size[0]), int(size[1])
    o, d = rays.ray_map(c2w, as_intrinsics4(intrinsics, name="SceneGen intrinsics"), h, w)
    p = rays.plucker(o, d, normalise=False)  # (o x d, d)
    return jnp.concatenate([p[..., 3:], p[..., :3]], axis=-1)


class CameraEmbed(nnx.Module):
    """Pluecker map (..., H, W, 6) -> patch tokens (..., n, D) + centre crop of a (M, M, D) sin-cos table
    (diffusers PatchEmbed with ``pos_embed_max_size = M = max(camera_size)``)."""

    def __init__(self, dim: int, camera_size: Sequence[int], patch: int, *, dtype, param_dtype, rngs):
        self.camera_size, self.patch = (int(camera_size[0]), int(camera_size[1])), int(patch)
        if self.camera_size[0] % patch or self.camera_size[1] % patch:
            raise ValueError(f"SceneGen: camera_size {self.camera_size} must be divisible by camera_patch {patch}")
        self.grid = (self.camera_size[0] // patch, self.camera_size[1] // patch)
        m = max(self.camera_size)
        self.patch_embed = nn.PatchEmbed(6, dim, patch, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        table = param_init(lambda key, shape, dt: sincos_table(dim, m, self.grid[0]).astype(dt),
                           (None, None, "embed"))(jax.random.key(0), (m, m, dim), param_dtype)
        self.pos_table = Buffer(table)

    def __call__(self, c2w: jax.Array, intrinsics: jax.Array) -> jax.Array:
        feats = camera_rays(c2w, intrinsics, self.camera_size)
        tokens = self.patch_embed(feats)
        m = self.pos_table.shape[0]
        top, left = (m - self.grid[0]) // 2, (m - self.grid[1]) // 2
        pos = self.pos_table[top:top + self.grid[0], left:left + self.grid[1]]
        return tokens + pos.reshape(-1, pos.shape[-1]).astype(tokens.dtype)


class SceneGen(nnx.Module):
    """v, aux = SceneGen(...)(x_t, t, cond_latents, anchor_c2w, anchor_intrinsics, cond_c2w, cond_intrinsics).

    Args (defaults from ``VARIANTS[variant]``): hidden, depth, heads, mlp_ratio (SwiGLU hidden
    int(2/3 * int(hidden * mlp_ratio))), num_tokens K, token_dim d, latent_channels C and latent_patch of the
    conditioning latents, camera_size (H, W) of the Pluecker maps and camera_patch (the camera patch grid must equal
    the latent token grid), freq_dim (timestep sinusoid width). token_scale: tokens are multiplied by it before
    diffusion (``sample`` divides it out). shift: sampling time shift. camera_dtype: the release rounds the camera
    embeddings to bfloat16 ('float32' keeps them). camera_dropout: training-time probability of zeroing a
    sample's camera embeddings. max_cond_views: null views used when ``cond_latents`` is None.
    """

    def __init__(self, variant: str = "tiny", *, hidden: int | None = None, depth: int | None = None,
                 heads: int | None = None, mlp_ratio: float = 4.0, num_tokens: int | None = None,
                 token_dim: int | None = None, latent_channels: int | None = None, latent_patch: int | None = None,
                 camera_size: Sequence[int] | None = None, camera_patch: int | None = None,
                 freq_dim: int | None = None, token_scale: float = 0.1, shift: float = 4.0,
                 camera_dtype: str = "bfloat16", camera_dropout: float = 0.1, max_cond_views: int = 3,
                 attn_impl: str = "xla", scan: bool = True, remat: str = "none", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if variant not in VARIANTS:
            raise ValueError(f"SceneGen variant {variant!r}; known: {sorted(VARIANTS)}")
        v = dict(VARIANTS[variant])
        for k, val in dict(hidden=hidden, depth=depth, heads=heads, num_tokens=num_tokens, token_dim=token_dim,
                           latent_channels=latent_channels, latent_patch=latent_patch, camera_size=camera_size,
                           camera_patch=camera_patch, freq_dim=freq_dim).items():
            if val is not None:
                v[k] = val
        if camera_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"SceneGen: camera_dtype must be 'bfloat16' or 'float32', got {camera_dtype!r}")
        if not 0.0 <= camera_dropout <= 1.0:
            raise ValueError(f"SceneGen: camera_dropout must be in [0, 1], got {camera_dropout}")
        D = int(v["hidden"])
        self.hidden, self.num_tokens, self.token_dim = D, int(v["num_tokens"]), int(v["token_dim"])
        self.latent_channels, self.latent_patch = int(v["latent_channels"]), int(v["latent_patch"])
        self.token_scale, self.shift, self.camera_dtype = float(token_scale), float(shift), camera_dtype
        self.camera_dropout, self.max_cond_views, self.dtype = float(camera_dropout), int(max_cond_views), dtype
        self.mlp_hidden = int(2 / 3 * int(D * mlp_ratio))
        self.config = dict(v, mlp_ratio=mlp_ratio, token_scale=token_scale, shift=shift)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        cam = dict(camera_size=v["camera_size"], patch=v["camera_patch"], rngs=rngs, **kw)
        self.pose_embed = CameraEmbed(D, **cam)
        self.anchor_pose_embed = CameraEmbed(D, **cam)
        self.camera_grid = self.pose_embed.grid
        self.pos_embed = nnx.Param(param_init(nnx.initializers.normal(0.02), ("length", "embed"))(
            rngs.params(), (self.num_tokens, D), param_dtype))
        self.null_tokens = nnx.Param(param_init(nnx.initializers.zeros_init(), ("embed",))(
            rngs.params(), (D,), param_dtype))
        self.x_embedder = nn.dense(self.token_dim, D, ("latent", "embed"), rngs=rngs, **kw)
        self.c_embedder = nn.PatchEmbed(self.latent_channels, D, self.latent_patch, rngs=rngs, **kw)
        self.t_embedder = nn.TimestepEmbedder(D, freq_dim=int(v["freq_dim"]), t_scale=1.0, rngs=rngs, **kw)
        heads_, mh = int(v["heads"]), self.mlp_hidden
        blk = dict(nn.LIGHTNING_DIT, mlp_dim=mh, impl=attn_impl, **kw)
        self.blocks = nn.Stack(lambda r: nn.DiTBlock(D, heads_, rngs=r, **blk), int(v["depth"]), rngs=rngs, scan=scan,
                               remat=remat)
        self.final_norm = nn.RMSNorm(D, eps=1e-6, **kw)
        self.final_adaln = nn.AdaLNZero(D, D, 2, rngs=rngs, **kw)
        self.final_linear = nn.dense(D, self.token_dim, ("embed", "latent"), zero_init=True, rngs=rngs, **kw)

    # ------------------------------------------------------------------------------------------ conditioning

    def _round_camera(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.bfloat16).astype(x.dtype) if self.camera_dtype == "bfloat16" else x

    def _camera_drop(self, emb: jax.Array, rng) -> jax.Array:
        keep = ~jax.random.bernoulli(rng, self.camera_dropout, emb.shape[:1])
        return emb * keep.reshape((-1,) + (1,) * (emb.ndim - 1)).astype(emb.dtype)

    def condition_tokens(self, cond_latents, anchor_c2w, anchor_intrinsics, cond_c2w=None, cond_intrinsics=None,
                         cond_mask=None, *, rng=None) -> tuple[jax.Array, dict]:
        """Context y (B, V * n + Va, D) for the cross-attention, and intermediates. ``rng`` enables camera
        dropout (training)."""
        if anchor_c2w.ndim != 4 or anchor_c2w.shape[-2:] != (4, 4):
            raise ValueError(f"SceneGen: anchor_c2w must be (B, Va, 4, 4), got {anchor_c2w.shape}")
        b = anchor_c2w.shape[0]
        r_pose = r_anchor = None
        if rng is not None and self.camera_dropout > 0:
            r_pose, r_anchor = jax.random.split(rng)
        anchor = self.anchor_pose_embed(anchor_c2w, anchor_intrinsics)  # (B, Va, n, D)
        if r_anchor is not None:
            anchor = self._camera_drop(anchor, r_anchor)
        anchor_tokens = self._round_camera(jnp.mean(anchor, axis=-2))
        n = self.camera_grid[0] * self.camera_grid[1]
        if cond_latents is None:
            views = jnp.broadcast_to(self.null_tokens[...].astype(anchor.dtype), (b, self.max_cond_views * n,
                                                                                  self.hidden))
            aux = dict(anchor_pose_embed=anchor, anchor_tokens=anchor_tokens)
            return jnp.concatenate([views, anchor_tokens.astype(views.dtype)], axis=1), aux
        p = self.latent_patch
        if (cond_latents.ndim != 5 or cond_latents.shape[0] != b or cond_latents.shape[-1] != self.latent_channels
                or cond_latents.shape[2] % p or cond_latents.shape[3] % p
                or (cond_latents.shape[2] // p, cond_latents.shape[3] // p) != self.camera_grid):
            raise ValueError(f"SceneGen: cond_latents must be ({b}, V, h, w, {self.latent_channels}) with a "
                             f"{self.latent_patch}-patch grid equal to the camera grid {self.camera_grid} (h, w = "
                             f"{self.camera_grid[0] * p}, {self.camera_grid[1] * p}), got {cond_latents.shape}")
        nv = cond_latents.shape[1]
        if cond_c2w is None or cond_intrinsics is None:
            raise ValueError("SceneGen: cond_latents need their cameras cond_c2w (B, V, 4, 4) and cond_intrinsics")
        if cond_c2w.shape != (b, nv, 4, 4):
            raise ValueError(f"SceneGen: cond_c2w must be ({b}, {nv}, 4, 4), got {cond_c2w.shape}")
        pose = self.pose_embed(cond_c2w, cond_intrinsics)  # (B, V, n, D)
        if r_pose is not None:
            pose = self._camera_drop(pose, r_pose)
        y = self.c_embedder(constrain(cond_latents, ("batch", "views", "height", "width", "channels")))
        c_embed = y
        y = y + self._round_camera(pose)
        if cond_mask is not None:
            cond_mask = jnp.asarray(cond_mask)
            if cond_mask.shape != (b, nv):
                raise ValueError(f"SceneGen: cond_mask must be ({b}, {nv}) bool, got {cond_mask.shape}")
            y = jnp.where(cond_mask[..., None, None], y, self.null_tokens[...].astype(y.dtype))
        y = y.reshape(b, nv * n, self.hidden)
        aux = dict(pose_embed=pose, anchor_pose_embed=anchor, anchor_tokens=anchor_tokens, c_embed=c_embed)
        return jnp.concatenate([y, anchor_tokens.astype(y.dtype)], axis=1), aux

    # ------------------------------------------------------------------------------------------ network

    def __call__(self, x_t: jax.Array, t: jax.Array, cond_latents: jax.Array | None, anchor_c2w: jax.Array,
                 anchor_intrinsics: jax.Array, cond_c2w: jax.Array | None = None,
                 cond_intrinsics: jax.Array | None = None, *, cond_mask: jax.Array | None = None,
                 rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Velocity v (B, K, d) for scaled tokens x_t at times t (B,) in [0, 1] (t = 1 noise).

        cond_latents (B, V, h, w, C) normalised image latents or None (unconditional); anchor_c2w (B, Va, 4, 4),
        anchor_intrinsics (B, Va, 4 | 3x3); cond_c2w / cond_intrinsics the conditioning views' cameras;
        cond_mask (B, V) bool, False = that view replaced by the null condition; rng: camera dropout (training).
        """
        if x_t.ndim != 3 or x_t.shape[1:] != (self.num_tokens, self.token_dim):
            raise ValueError(f"SceneGen: x_t must be (B, {self.num_tokens}, {self.token_dim}), got {x_t.shape}")
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 0:
            t = jnp.full((x_t.shape[0],), t)
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"SceneGen: t must be a scalar or ({x_t.shape[0]},), got {t.shape}")
        y, aux = self.condition_tokens(cond_latents, anchor_c2w, anchor_intrinsics, cond_c2w, cond_intrinsics,
                                       cond_mask, rng=rng)
        x_embed = self.x_embedder(x_t)
        x = x_embed + self.pos_embed[...].astype(x_embed.dtype)
        c = self.t_embedder(jnp.maximum(1000.0 * t - 1.0, 0.0))
        x = self.blocks(nn.constrain_tokens(x, "act_embed"), c, y.astype(x.dtype))
        shift, scale = self.final_adaln(c)
        v = self.final_linear(nn.modulate(self.final_norm(x), shift, scale))
        aux.update(x_embed=x_embed, t_embed=c, context=y, hidden=x)
        return v, aux

    # ------------------------------------------------------------------------------------------ helpers

    def scale_tokens(self, tokens: jax.Array) -> jax.Array:
        """Compressor tokens -> diffusion space (times ``token_scale``)."""
        return tokens * self.token_scale

    def unscale_tokens(self, x: jax.Array) -> jax.Array:
        return x / self.token_scale

    def sample(self, rng: jax.Array, cond_latents: jax.Array | None, anchor_c2w: jax.Array,
               anchor_intrinsics: jax.Array, cond_c2w: jax.Array | None = None,
               cond_intrinsics: jax.Array | None = None, *, cond_mask: jax.Array | None = None,
               flow: FlowMatching | None = None, num_steps: int | None = None, method: str | None = None,
               shift: float | None = None, cfg_scale: float | None = None,
               cfg_interval: tuple[float, float] | None = None, noise: jax.Array | None = None) -> jax.Array:
        """Generate scene tokens (B, K, d) in the compressor's units (``token_scale`` divided out).

        Integrates from noise (``rng`` or ``noise``) at t = 1 to 0 with ``flow``'s sampler (default: 50 Euler
        steps on the grid of the model's shift, no guidance), each setting overridable by its keyword (None: the
        flow's). A guidance scale other than 1 applies classifier-free guidance against the same call with every
        conditioning view masked (anchors kept), within the guidance interval.
        """
        flow = flow or FlowMatching(sample_steps=50, sample_shift=self.shift)
        b = anchor_c2w.shape[0]
        if noise is None:
            noise = jax.random.normal(rng, (b, self.num_tokens, self.token_dim), jnp.float32)
        cams = (anchor_c2w, anchor_intrinsics, cond_c2w, cond_intrinsics)

        def velocity(mask):
            return lambda x, t: self(x, t, cond_latents, *cams, cond_mask=mask)[0]

        uncond_fn = None
        if flow.uses_guidance(cfg_scale):
            if cond_latents is None:
                raise ValueError("SceneGen.sample: cfg_scale needs cond_latents (the condition to guide with)")
            uncond_fn = velocity(jnp.zeros(cond_latents.shape[:2], bool))
        x0 = flow.sample(velocity(cond_mask), noise, uncond_fn=uncond_fn, num_steps=num_steps, method=method,
                         shift=shift, cfg_scale=cfg_scale, cfg_interval=cfg_interval)
        return self.unscale_tokens(x0)


def random_cond_mask(rng: jax.Array, batch: int, views: int, *, p_view: float = 0.5,
                     p_uncond: float = 0.1) -> jax.Array:
    """Training condition mask (B, V) as in the release: each view kept with probability 1 - p_view, view 0
    always, then whole examples dropped (the null scene condition, for CFG) with probability ``p_uncond``."""
    r1, r2 = jax.random.split(rng)
    mask = jax.random.uniform(r1, (batch, views)) >= p_view
    mask = mask.at[:, 0].set(True)
    return mask & ~guidance.drop_mask(r2, batch, p_uncond)[:, None]


def num_params(model: SceneGen) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
