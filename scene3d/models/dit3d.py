"""3DDiT: flow matching over the K scene tokens of a 3DRAE, conditioned on 0..n posed views and / or a camera
trajectory.

``DiT3D(x_t (B, K, latent_dim), t (B,), cond) -> (v, aux)`` predicts the velocity v = eps - x0 (DESIGN.md's
convention). The K tokens get a learned per-slot embedding (they come from K learned queries, so a slot is an
identity, not a position); the time embedding drives adaLN-Zero in every :class:`scene3d.nn.DiTBlock`.

Conditions are tokens (``condition``), each type with its own learned type embedding, plus one learned null token
that is always present (so a scene with no condition still has a key to attend to):

- views: the frozen tower's patch features of each conditioning view (B, V, h, w, F), normalised and projected,
  plus the embedding of each patch's Pluecker ray (B, V, h, w, 6); ``view_mask`` (B, V) selects the views present;
- trajectory: one token per camera (B, T): an MLP of the Pluecker rays of a ``traj_grid`` x ``traj_grid`` grid
  of pixels (a full description of pose and intrinsics); ``traj_mask`` (B, T).

A missing or fully masked type is the "unconditional" value of that type: classifier-free guidance drops
conditions by masking them (per type, per example), and the unconditional model masks them all. ``cond_mode``:
'cross' (condition tokens enter every block through cross-attention) or 'in_context' (they are appended to the
sequence; self-attention with a key mask; only the K scene tokens are read out).

Output: DiT's :class:`scene3d.nn.FinalLayer` on the trunk, or (``head_depth`` > 0) a DDT-style wide head
(:class:`scene3d.nn.ddt.DDTHead`, the "DiT^DH" of the RAE work): ``head_depth`` blocks of width ``head_width``
(``head_heads`` heads, default width / 128) that re-read x_t, conditioned per token on the trunk's output and the time
embedding. The trunk is then read out only through the head (:meth:`DiT3D.trunk` gives its output).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d import nn
from scene3d.core.config import check_keys
from scene3d.core.sharding import param_init
from scene3d.geometry import rays as rays_lib
from scene3d.models.rae3d import RayEmbed
from scene3d.nn.ddt import DDTHead
from scene3d.specs.dit3d import COND_MODES, CONDITIONS, VARIANTS  # noqa: F401  (public names)


class DiT3D(nnx.Module):
    """Velocity model over scene tokens (module docstring)."""

    def __init__(self, variant: str = "tiny", *, num_tokens: int, latent_dim: int, view_dim: int,
                 cond_mode: str = "cross", ray_bands: int = 4, traj_grid: int = 4, mlp_ratio: float = 4.0,
                 qk_norm: bool = True, head_depth: int = 0, head_width: int | None = None,
                 head_heads: int | None = None, impl: str = "xla", scan: bool = True, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs, **overrides):
        if variant not in VARIANTS:
            raise ValueError(f"DiT3D: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if cond_mode not in COND_MODES:
            raise ValueError(f"DiT3D: cond_mode must be one of {COND_MODES}, got {cond_mode!r}")
        sizes = dict(VARIANTS[variant])
        check_keys(overrides, sizes, "DiT3D size overrides")
        sizes.update({k: int(v) for k, v in overrides.items() if v is not None})
        d = sizes["dim"]
        head_depth = int(head_depth or 0)
        if head_depth < 0:
            raise ValueError(f"DiT3D: head_depth must be >= 0 (0: no wide head), got {head_depth}")
        head_width = int(head_width or d)
        head_heads = int(head_heads or max(1, head_width // 128))
        head = dict(head_depth=head_depth, head_width=head_width, head_heads=head_heads) if head_depth else {}
        # Constructor kwargs with sizes resolved, as hashable (key, value) pairs (convert.torch_port.model_spec);
        # the head's only when there is one (the PyTorch port has no wide head).
        self.spec_kwargs = tuple(dict(
            variant=variant, num_tokens=int(num_tokens), latent_dim=int(latent_dim), view_dim=int(view_dim),
            cond_mode=cond_mode, ray_bands=int(ray_bands), traj_grid=int(traj_grid), mlp_ratio=float(mlp_ratio),
            qk_norm=qk_norm, **head, **{k: int(v) for k, v in sizes.items()}).items())
        self.dim, self.num_tokens, self.latent_dim, self.view_dim = d, int(num_tokens), int(latent_dim), int(view_dim)
        self.cond_mode, self.traj_grid, self.dtype = cond_mode, int(traj_grid), dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        init = nnx.initializers.normal(0.02)
        self.x_in = nn.dense(self.latent_dim, d, ("latent", "embed"), rngs=rngs, **kw)
        self.pos = nnx.Param(param_init(init, ("queries", "embed"))(rngs.params(), (self.num_tokens, d), param_dtype))
        self.t_embed = nn.TimestepEmbedder(d, rngs=rngs, **kw)
        self.view_norm = nn.LayerNorm(self.view_dim, **kw)
        self.view_proj = nn.dense(self.view_dim, d, (None, "embed"), rngs=rngs, **kw)
        self.view_ray = RayEmbed(d, ray_bands, rngs=rngs, **kw)
        self.cam_mlp = nn.Mlp(self.traj_grid ** 2 * 6, d, d, act="silu", rngs=rngs, **kw)
        # rows: null token, view type, trajectory type
        self.type_embed = nnx.Param(param_init(init, (None, "embed"))(rngs.params(), (3, d), param_dtype))
        self.cond_norm = nn.LayerNorm(d, **kw)
        cross = cond_mode == "cross"
        self.blocks = nn.Stack(lambda r: nn.DiTBlock(d, sizes["heads"], d, mlp_ratio=mlp_ratio, qk_norm=qk_norm,
                                                     cross_attn=cross, context_dim=d if cross else None, impl=impl,
                                                     rngs=r, **kw),
                               sizes["depth"], rngs=rngs, scan=scan, remat=remat)
        if head_depth:
            self.final = None
            self.head = DDTHead(self.latent_dim, d, self.latent_dim, width=head_width, depth=head_depth,
                                heads=head_heads, mlp_ratio=mlp_ratio, qk_norm=qk_norm, impl=impl, scan=scan,
                                remat=remat, rngs=rngs, **kw)
        else:
            self.final = nn.FinalLayer(d, self.latent_dim, d, rngs=rngs, **kw)
            self.head = None

    # -- conditions --------------------------------------------------------------------------------------------
    def view_tokens(self, features, rays, view_mask):
        """features (B, V, h, w, F), rays (B, V, h, w, 6), view_mask (B, V) -> tokens (B, V*h*w, dim), mask."""
        if features.ndim != 5 or features.shape[-1] != self.view_dim:
            raise ValueError(f"DiT3D: view_features must be (B, V, h, w, {self.view_dim}), got {features.shape}")
        if tuple(rays.shape) != tuple(features.shape[:4]) + (6,):
            raise ValueError(f"DiT3D: view_rays must be {tuple(features.shape[:4]) + (6,)}, got {rays.shape}")
        b, v, h, w = features.shape[:4]
        if tuple(view_mask.shape) != (b, v):
            raise ValueError(f"DiT3D: view_mask must be ({b}, {v}), got {tuple(view_mask.shape)}")
        t = self.view_proj(self.view_norm(features.astype(self.dtype))) + self.view_ray(rays)
        t = t + self.type_embed[1].astype(t.dtype)
        t = jnp.where(view_mask[:, :, None, None, None], t, 0.0)
        return t.reshape(b, v * h * w, self.dim), jnp.repeat(view_mask.astype(bool), h * w, axis=1)

    def camera_tokens(self, c2w, intrinsics, traj_mask):
        """c2w (B, T, 4, 4), intrinsics (B, T, 4), traj_mask (B, T) -> tokens (B, T, dim), mask."""
        b, t = c2w.shape[:2]
        if tuple(c2w.shape) != (b, t, 4, 4) or tuple(intrinsics.shape) != (b, t, 4):
            raise ValueError(f"DiT3D: traj_c2w must be (B, T, 4, 4) and traj_intrinsics (B, T, 4), got "
                             f"{tuple(c2w.shape)} and {tuple(intrinsics.shape)}")
        if tuple(traj_mask.shape) != (b, t):
            raise ValueError(f"DiT3D: traj_mask must be ({b}, {t}), got {tuple(traj_mask.shape)}")
        g = self.traj_grid
        valid = traj_mask.astype(bool)
        c2w = jnp.where(valid[..., None, None], c2w.astype(jnp.float32), jnp.eye(4, dtype=jnp.float32))
        intr = jnp.where(valid[..., None], intrinsics.astype(jnp.float32), jnp.asarray([1.0, 1.0, 0.5, 0.5]))
        r = rays_lib.plucker_map(c2w, intr, g, g).reshape(b, t, g * g * 6)
        tok = self.cam_mlp(r.astype(self.dtype)) + self.type_embed[2].astype(self.dtype)
        return jnp.where(valid[..., None], tok, 0.0), valid

    def condition(self, cond: dict | None, batch_size: int):
        """Condition tokens (B, L, dim) and key mask (B, L) from ``cond`` (module docstring; None = no condition)."""
        cond = cond or {}
        null = self.type_embed[0].astype(self.dtype)
        toks = [jnp.broadcast_to(null, (batch_size, 1, self.dim))]
        masks = [jnp.ones((batch_size, 1), bool)]
        for main, other, mask, embed in (("view_features", "view_rays", "view_mask", self.view_tokens),
                                         ("traj_c2w", "traj_intrinsics", "traj_mask", self.camera_tokens)):
            if cond.get(main) is not None:
                keep = cond.get(mask)
                keep = jnp.ones(cond[main].shape[:2], bool) if keep is None else keep
                t, m = embed(cond[main], cond[other], keep)
                toks.append(t)
                masks.append(m)
        return self.cond_norm(jnp.concatenate(toks, 1)), jnp.concatenate(masks, 1)

    # -- forward -----------------------------------------------------------------------------------------------
    def trunk(self, x: jax.Array, t: jax.Array, cond: dict | None = None):
        """The DiT trunk: (h (B, K, dim) after the blocks, time embedding c (B, dim), condition tokens, their mask)."""
        if x.ndim != 3 or x.shape[1:] != (self.num_tokens, self.latent_dim):
            raise ValueError(f"DiT3D: x must be (B, {self.num_tokens}, {self.latent_dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        h = self.x_in(x.astype(self.dtype)) + self.pos[...].astype(self.dtype)[None]
        c = self.t_embed(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,)))
        ctx, cmask = self.condition(cond, b)
        if self.cond_mode == "cross":
            h = self.blocks(h, c, ctx, context_mask=cmask[:, None, None, :])
        else:
            seq = jnp.concatenate([h, ctx.astype(h.dtype)], 1)
            keys = jnp.concatenate([jnp.ones((b, self.num_tokens), bool), cmask], 1)
            h = self.blocks(seq, c, mask=keys[:, None, None, :])[:, :self.num_tokens]
        return h, c, ctx, cmask

    def __call__(self, x: jax.Array, t: jax.Array, cond: dict | None = None) -> tuple[jax.Array, dict]:
        """x (B, K, latent_dim) at time t (B,) -> (velocity (B, K, latent_dim), aux {'cond_tokens', 'cond_mask'})."""
        h, c, ctx, cmask = self.trunk(x, t, cond)
        if self.head is not None:
            v = self.head(x.astype(self.dtype), h, c)
        else:
            v = self.final(h, c)
        return v.astype(jnp.float32), {"cond_tokens": ctx, "cond_mask": cmask}
