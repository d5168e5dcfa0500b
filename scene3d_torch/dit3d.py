"""PyTorch port of ``scene3d.models.dit3d.DiT3D`` (inference; weights in the torch_port layout).

``DiT3D(x_t (B, K, latent_dim), t (B,), cond) -> (v, {'cond_tokens', 'cond_mask'})`` with ``cond`` the same dict
of (torch) tensors as the JAX model: view_features (B, V, h, w, F), view_rays (B, V, h, w, 6), view_mask (B, V);
traj_c2w (B, T, 4, 4), traj_intrinsics (B, T, 4), traj_mask (B, T). With ``head_depth`` > 0 the output comes from
the DDT-style wide head (:class:`DDTHead`, scene3d.nn.ddt.DDTHead) instead of the final layer.
"""
from __future__ import annotations

import torch
from torch import nn

from scene3d.specs.dit3d import COND_MODES, VARIANTS
from scene3d_torch import nn as tnn
from scene3d_torch.geometry import plucker_map
from scene3d_torch.rae3d import RayEmbed


class DDTHead(nn.Module):
    """Wide head (scene3d.nn.ddt.DDTHead): s = z_in(norm(z)) + t_in(c) per token; h = x_in(x); DiT blocks on (h, s);
    final layer on (h, s)."""

    def __init__(self, in_dim: int, trunk_dim: int, out_dim: int, *, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, qk_norm: bool | str = True, **_):
        super().__init__()
        self.x_in = tnn.linear(in_dim, width)
        self.z_norm = tnn.LayerNorm(trunk_dim, use_scale=False, use_bias=False)
        self.z_in = tnn.linear(trunk_dim, width)
        self.t_in = tnn.linear(trunk_dim, width)
        self.blocks = tnn.Stack(lambda: tnn.DiTBlock(width, heads, width, mlp_ratio=mlp_ratio, qk_norm=qk_norm),
                                depth)
        self.final = tnn.FinalLayer(width, out_dim, width)

    def forward(self, x, z, c):
        s = self.z_in(self.z_norm(z)) + self.t_in(c)[:, None]
        return self.final(self.blocks(self.x_in(x), s), s)


class DiT3D(nn.Module):
    """Velocity model over 3DRAE scene tokens (scene3d.models.dit3d.DiT3D); same keyword arguments, with
    rngs / dtype / param_dtype / scan / remat / impl accepted and ignored."""

    def __init__(self, variant: str = "tiny", *, num_tokens: int, latent_dim: int, view_dim: int,
                 cond_mode: str = "cross", ray_bands: int = 4, traj_grid: int = 4, mlp_ratio: float = 4.0,
                 qk_norm: bool | str = True, head_depth: int = 0, head_width: int | None = None,
                 head_heads: int | None = None, impl: str = "xla", scan: bool = True, remat: str = "none",
                 dtype=None, param_dtype=None, rngs=None, **overrides):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"DiT3D: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if cond_mode not in COND_MODES:
            raise ValueError(f"DiT3D: cond_mode must be one of {COND_MODES}, got {cond_mode!r}")
        sizes = dict(VARIANTS[variant])
        unknown = set(overrides) - set(sizes)
        if unknown:
            raise ValueError(f"DiT3D: unknown size overrides {sorted(unknown)}; expected some of {sorted(sizes)}")
        sizes.update({k: int(v) for k, v in overrides.items() if v is not None})
        d = sizes["dim"]
        self.dim, self.num_tokens, self.latent_dim, self.view_dim = d, int(num_tokens), int(latent_dim), int(view_dim)
        self.cond_mode, self.traj_grid = cond_mode, int(traj_grid)
        self.x_in = tnn.linear(self.latent_dim, d)
        self.pos = nn.Parameter(torch.zeros(self.num_tokens, d))
        self.t_embed = tnn.TimestepEmbedder(d)
        self.view_norm = tnn.LayerNorm(self.view_dim)
        self.view_proj = tnn.linear(self.view_dim, d)
        self.view_ray = RayEmbed(d, ray_bands)
        self.cam_mlp = tnn.Mlp(self.traj_grid ** 2 * 6, d, d, act="silu")
        self.type_embed = nn.Parameter(torch.zeros(3, d))  # rows: null token, view type, trajectory type
        self.cond_norm = tnn.LayerNorm(d)
        cross = cond_mode == "cross"
        self.blocks = tnn.Stack(lambda: tnn.DiTBlock(d, sizes["heads"], d, mlp_ratio=mlp_ratio, qk_norm=qk_norm,
                                                     cross_attn=cross, context_dim=d if cross else None),
                                sizes["depth"])
        if head_depth:
            width = int(head_width or d)
            self.final = None
            self.head = DDTHead(self.latent_dim, d, self.latent_dim, width=width, depth=int(head_depth),
                                heads=int(head_heads or max(1, width // 128)), mlp_ratio=mlp_ratio, qk_norm=qk_norm)
        else:
            self.final = tnn.FinalLayer(d, self.latent_dim, d)
            self.head = None

    @property
    def _dtype(self):
        return self.x_in.weight.dtype

    def view_tokens(self, features, rays, view_mask):
        """features (B, V, h, w, F), rays (B, V, h, w, 6), view_mask (B, V) -> tokens (B, V*h*w, dim), mask."""
        if features.ndim != 5 or features.shape[-1] != self.view_dim:
            raise ValueError(f"DiT3D: view_features must be (B, V, h, w, {self.view_dim}), got "
                             f"{tuple(features.shape)}")
        if tuple(rays.shape) != tuple(features.shape[:4]) + (6,):
            raise ValueError(f"DiT3D: view_rays must be {tuple(features.shape[:4]) + (6,)}, got {tuple(rays.shape)}")
        b, v, h, w = features.shape[:4]
        view_mask = torch.as_tensor(view_mask, device=features.device).bool()
        if tuple(view_mask.shape) != (b, v):
            raise ValueError(f"DiT3D: view_mask must be ({b}, {v}), got {tuple(view_mask.shape)}")
        t = self.view_proj(self.view_norm(features.to(self._dtype))) + self.view_ray(rays)
        t = t + self.type_embed[1].to(t.dtype)
        t = torch.where(view_mask[:, :, None, None, None], t, torch.zeros((), dtype=t.dtype, device=t.device))
        return t.reshape(b, v * h * w, self.dim), view_mask.repeat_interleave(h * w, dim=1)

    def camera_tokens(self, c2w, intrinsics, traj_mask):
        """c2w (B, T, 4, 4), intrinsics (B, T, 4), traj_mask (B, T) -> tokens (B, T, dim), mask."""
        b, t = c2w.shape[:2]
        if tuple(c2w.shape) != (b, t, 4, 4) or tuple(intrinsics.shape) != (b, t, 4):
            raise ValueError(f"DiT3D: traj_c2w must be (B, T, 4, 4) and traj_intrinsics (B, T, 4), got "
                             f"{tuple(c2w.shape)} and {tuple(intrinsics.shape)}")
        valid = torch.as_tensor(traj_mask, device=c2w.device).bool()
        if tuple(valid.shape) != (b, t):
            raise ValueError(f"DiT3D: traj_mask must be ({b}, {t}), got {tuple(valid.shape)}")
        g = self.traj_grid
        eye = torch.eye(4, dtype=torch.float32, device=c2w.device)
        c2w = torch.where(valid[..., None, None], c2w.float(), eye)
        default = torch.tensor([1.0, 1.0, 0.5, 0.5], device=c2w.device)
        intr = torch.where(valid[..., None], intrinsics.float(), default)
        r = plucker_map(c2w, intr, g, g).reshape(b, t, g * g * 6)
        tok = self.cam_mlp(r.to(self._dtype)) + self.type_embed[2].to(self._dtype)
        return torch.where(valid[..., None], tok, torch.zeros((), dtype=tok.dtype, device=tok.device)), valid

    def condition(self, cond: dict | None, batch_size: int):
        """Condition tokens (B, L, dim) and key mask (B, L) (None = no condition: the null token only)."""
        cond = cond or {}
        dev = self.pos.device
        null = self.type_embed[0].to(self._dtype)
        toks = [torch.broadcast_to(null, (batch_size, 1, self.dim))]
        masks = [torch.ones((batch_size, 1), dtype=torch.bool, device=dev)]
        if cond.get("view_features") is not None:
            vm = cond.get("view_mask")
            vm = torch.ones(cond["view_features"].shape[:2], dtype=torch.bool, device=dev) if vm is None else vm
            t, m = self.view_tokens(cond["view_features"], cond["view_rays"], vm)
            toks.append(t)
            masks.append(m)
        if cond.get("traj_c2w") is not None:
            tm = cond.get("traj_mask")
            tm = torch.ones(cond["traj_c2w"].shape[:2], dtype=torch.bool, device=dev) if tm is None else tm
            t, m = self.camera_tokens(cond["traj_c2w"], cond["traj_intrinsics"], tm)
            toks.append(t)
            masks.append(m)
        return self.cond_norm(torch.cat(toks, 1)), torch.cat(masks, 1)

    def forward(self, x: torch.Tensor, t, cond: dict | None = None):
        """x (B, K, latent_dim) at time t (B,) -> (velocity (B, K, latent_dim), aux {'cond_tokens', 'cond_mask'})."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.num_tokens, self.latent_dim):
            raise ValueError(f"DiT3D: x must be (B, {self.num_tokens}, {self.latent_dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        h = self.x_in(x.to(self._dtype)) + self.pos.to(self._dtype)[None]
        c = self.t_embed(torch.broadcast_to(torch.as_tensor(t, dtype=torch.float32, device=x.device), (b,)))
        ctx, cmask = self.condition(cond, b)
        if self.cond_mode == "cross":
            h = self.blocks(h, c, ctx, context_mask=cmask[:, None, None, :])
        else:
            seq = torch.cat([h, ctx.to(h.dtype)], 1)
            keys = torch.cat([torch.ones((b, self.num_tokens), dtype=torch.bool, device=x.device), cmask], 1)
            h = self.blocks(seq, c, mask=keys[:, None, None, :])[:, :self.num_tokens]
        v = self.final(h, c) if self.head is None else self.head(x.to(self._dtype), h, c)
        return v.float(), {"cond_tokens": ctx, "cond_mask": cmask}
