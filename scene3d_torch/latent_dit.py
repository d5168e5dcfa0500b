"""PyTorch port of ``scene3d.models.latent_dit.LatentDiT`` (inference; weights in the torch_port layout)."""
from __future__ import annotations

import torch
from torch import nn

from scene3d.specs.latent_dit import VARIANTS
from scene3d_torch import nn as tnn


class LatentDiT(nn.Module):
    """v, aux = LatentDiT(x_t (B, N, in_dim), t (B,) or scalar, labels=..., cond=..., cond_mask=...).

    Keyword arguments as the JAX class; rngs / dtype / param_dtype / scan / remat / attn_impl are accepted and
    ignored (cast the module with ``.to(dtype)``).
    """

    def __init__(self, *, in_dim: int, num_tokens: int, variant: str = "S", width: int | None = None,
                 depth: int | None = None, heads: int | None = None, mlp_ratio: float = 4.0,
                 num_classes: int = 0, cond_dim: int = 0, pos: str = "learned", grid=None,
                 qk_norm: bool | str = True, **_ignored):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"LatentDiT variant {variant!r}; known: {sorted(VARIANTS)}")
        v = VARIANTS[variant]
        width, depth, heads = width or v["width"], depth or v["depth"], heads or v["heads"]
        if pos not in ("learned", "rope2d", "none"):
            raise ValueError(f"LatentDiT pos {pos!r}: expected 'learned', 'rope2d' or 'none'")
        grid = None if grid is None else (int(grid[0]), int(grid[1]))
        if pos == "rope2d" and (grid is None or grid[0] * grid[1] != num_tokens):
            raise ValueError(f"LatentDiT pos='rope2d' needs grid (gh, gw) with gh*gw = num_tokens={num_tokens}, "
                             f"got {grid}")
        self.in_dim, self.num_tokens, self.width = in_dim, num_tokens, width
        self.num_classes, self.cond_dim, self.pos, self.grid = num_classes, cond_dim, pos, grid
        self.proj_in = tnn.linear(in_dim, width)
        if pos == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(num_tokens, width))
        self.t_embed = tnn.TimestepEmbedder(width)
        if num_classes:
            self.label_embed = nn.Embedding(num_classes + 1, width)  # index num_classes = null label
        self.blocks = tnn.Stack(lambda: tnn.DiTBlock(width, heads, width, mlp_ratio=mlp_ratio, qk_norm=qk_norm,
                                                     cross_attn=bool(cond_dim), context_dim=cond_dim or None),
                                depth)
        self.final = tnn.FinalLayer(width, in_dim, width)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t, *, labels=None, cond=None, cond_mask=None):
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.num_tokens, self.in_dim):
            raise ValueError(f"LatentDiT input must be (B, {self.num_tokens}, {self.in_dim}), got {tuple(x.shape)}")
        dtype = self.proj_in.weight.dtype
        h = self.proj_in(x.to(dtype))
        rope = None
        if self.pos == "learned":
            h = h + self.pos_emb.to(h.dtype)[None]
        elif self.pos == "rope2d":
            rope = tnn.make_rope(tnn.grid_positions_2d(*self.grid)[None].to(x.device), axial=True)
        b = x.shape[0]
        c = self.t_embed(torch.broadcast_to(torch.as_tensor(t, device=x.device), (b,)))
        if self.num_classes:
            if labels is None:
                labels = torch.full((b,), self.null_label, dtype=torch.long, device=x.device)
            c = c + self.label_embed(torch.as_tensor(labels, device=x.device).long())
        if self.cond_dim and cond is None:
            raise ValueError(f"LatentDiT was built with cond_dim={self.cond_dim}: pass cond (B, Lc, {self.cond_dim})")
        h = self.blocks(h, c, cond, rope=rope, context_mask=cond_mask)
        return self.final(h, c).float(), {"features": h}
