"""LatentDiT: a diffusion transformer over a set of latent tokens (B, N, C).

Used as the flow-matching generator over any tokenizer's latents (patchified images, Can3Tok latents, scene
tokens). Conditioning: the timestep (adaLN-Zero), an optional class label (learned embedding with a null class for
classifier-free guidance) and optional condition tokens (cross-attention in every block). Token positions: learned
embeddings, 2D axial RoPE over a (gh, gw) grid, or none (a set).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import constrain, param_init
from scene3d.specs.latent_dit import VARIANTS


class LatentDiT(nnx.Module):
    """v = LatentDiT(x_t, t, labels=..., cond=...): velocity for x_t (B, N, in_dim)."""

    def __init__(self, *, in_dim: int, num_tokens: int, variant: str = "S", width: int | None = None,
                 depth: int | None = None, heads: int | None = None, mlp_ratio: float = 4.0,
                 num_classes: int = 0, cond_dim: int = 0, pos: str = "learned", grid: tuple[int, int] | None = None,
                 qk_norm: bool = True, attn_impl: str = "xla", scan: bool = True, remat: str = "none",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if variant not in VARIANTS:
            raise ValueError(f"LatentDiT variant {variant!r}; known: {sorted(VARIANTS)}")
        v = dict(VARIANTS[variant])
        width, depth, heads = width or v["width"], depth or v["depth"], heads or v["heads"]
        if pos not in ("learned", "rope2d", "none"):
            raise ValueError(f"LatentDiT pos {pos!r}: expected 'learned', 'rope2d' or 'none'")
        if pos == "rope2d" and (grid is None or grid[0] * grid[1] != num_tokens):
            raise ValueError(f"LatentDiT pos='rope2d' needs grid (gh, gw) with gh*gw = num_tokens={num_tokens}, got {grid}")
        # Constructor kwargs with sizes resolved, as hashable (key, value) pairs (convert.torch_port.model_spec).
        self.spec_kwargs = tuple(dict(
            in_dim=int(in_dim), num_tokens=int(num_tokens), variant=variant, width=int(width), depth=int(depth),
            heads=int(heads), mlp_ratio=float(mlp_ratio), num_classes=int(num_classes), cond_dim=int(cond_dim),
            pos=pos, grid=None if grid is None else (int(grid[0]), int(grid[1])), qk_norm=qk_norm).items())
        self.in_dim, self.num_tokens, self.width = in_dim, num_tokens, width
        self.num_classes, self.cond_dim, self.pos, self.grid = num_classes, cond_dim, pos, grid
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.proj_in = nn.dense(in_dim, width, ("latent", "embed"), rngs=rngs, **kw)
        if pos == "learned":
            self.pos_emb = nnx.Param(param_init(nnx.initializers.normal(0.02), ("length", "embed"))(
                rngs.params(), (num_tokens, width), param_dtype))
        self.t_embed = nn.TimestepEmbedder(width, rngs=rngs, **kw)
        if num_classes:
            # Index num_classes is the null label (classifier-free guidance).
            self.label_embed = nnx.Embed(num_classes + 1, width, embedding_init=param_init(
                nnx.initializers.normal(0.02), ("vocab", "embed")), rngs=rngs, **kw)
        self.blocks = nn.Stack(
            lambda r: nn.DiTBlock(width, heads, width, mlp_ratio=mlp_ratio, qk_norm=qk_norm, impl=attn_impl,
                                  cross_attn=bool(cond_dim), context_dim=cond_dim or None, rngs=r, **kw),
            depth, rngs=rngs, scan=scan, remat=remat)
        self.final = nn.FinalLayer(width, in_dim, width, rngs=rngs, **kw)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x: jax.Array, t: jax.Array, *, labels: jax.Array | None = None,
                 cond: jax.Array | None = None, cond_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
        if x.ndim != 3 or x.shape[1:] != (self.num_tokens, self.in_dim):
            raise ValueError(f"LatentDiT input must be (B, {self.num_tokens}, {self.in_dim}), got {x.shape}")
        h = self.proj_in(x.astype(self.dtype))
        rope = None
        if self.pos == "learned":
            h = h + self.pos_emb.get_value().astype(h.dtype)[None]
        elif self.pos == "rope2d":
            rope = nn.make_rope(nn.grid_positions_2d(*self.grid)[None], axial=True)
        h = constrain(h, ("batch", "length", "act_embed"))
        c = self.t_embed(jnp.broadcast_to(t, (x.shape[0],)))
        if self.num_classes:
            if labels is None:
                labels = jnp.full((x.shape[0],), self.null_label, jnp.int32)
            c = c + self.label_embed(labels)
        if self.cond_dim and cond is None:
            raise ValueError(f"LatentDiT was built with cond_dim={self.cond_dim}: pass cond (B, Lc, {self.cond_dim})")
        h = self.blocks(h, c, cond, rope=rope, context_mask=cond_mask)
        out = self.final(h, c).astype(jnp.float32)
        return out, {"features": h}
