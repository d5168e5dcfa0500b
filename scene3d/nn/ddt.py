"""A DDT-style wide head for a DiT trunk (the "DiT^DH" of the RAE work; DDT: decoupled diffusion transformer).

The trunk (a deep DiT of width ``trunk_dim``) reads the noisy tokens and every condition; the head is a shallow but
wide transformer (e.g. 2 blocks of width 2048 on a 1152-wide trunk) that re-reads the noisy tokens x_t and predicts
the output from them, conditioned token by token on the trunk's output z and on the time embedding c:

    s = z_in(norm(z)) + t_in(c)                 (B, L, width): one adaLN condition per token
    h = x_in(x_t)                               (B, L, width)
    h = DiTBlock_i(h, s)   for i < depth        (adaLN-Zero, per-token modulation, self-attention over the L tokens)
    out = FinalLayer(h, s)                      (B, L, out_dim)

``norm`` is a LayerNorm without affine (the trunk's residual stream has no fixed scale). The blocks and the final
layer start as DiT's do (adaLN-Zero, zero final linear): a fresh head outputs zeros, like a fresh DiT.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.nn.linear import dense
from scene3d.nn.norm import LayerNorm
from scene3d.nn.transformer import DiTBlock, FinalLayer, Stack


class DDTHead(nnx.Module):
    """Wide head: (x_t (B, L, in_dim), trunk output z (B, L, trunk_dim), time embedding c (B, trunk_dim)) ->
    (B, L, out_dim) (module docstring)."""

    def __init__(self, in_dim: int, trunk_dim: int, out_dim: int, *, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, qk_norm: bool | str = True, impl: str = "xla", scan: bool = True,
                 remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        width, depth, heads = int(width), int(depth), int(heads)
        if depth < 1 or width < 1 or heads < 1 or width % heads:
            raise ValueError(f"DDTHead: need depth >= 1 and a width divisible by heads, got depth={depth}, "
                             f"width={width}, heads={heads}")
        self.in_dim, self.trunk_dim, self.out_dim, self.width, self.depth = int(in_dim), int(trunk_dim), \
            int(out_dim), width, depth
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.x_in = dense(self.in_dim, width, ("latent", "embed"), rngs=rngs, **kw)
        self.z_norm = LayerNorm(self.trunk_dim, use_scale=False, use_bias=False, **kw)
        self.z_in = dense(self.trunk_dim, width, ("embed", "cond"), rngs=rngs, **kw)
        self.t_in = dense(self.trunk_dim, width, ("embed", "cond"), rngs=rngs, **kw)
        self.blocks = Stack(lambda r: DiTBlock(width, heads, width, mlp_ratio=mlp_ratio, qk_norm=qk_norm, impl=impl,
                                               rngs=r, **kw), depth, rngs=rngs, scan=scan, remat=remat)
        self.final = FinalLayer(width, self.out_dim, width, rngs=rngs, **kw)

    def condition(self, z: jax.Array, c: jax.Array) -> jax.Array:
        """The per-token adaLN condition s (B, L, width) from the trunk output z and the time embedding c."""
        if z.ndim != 3 or z.shape[-1] != self.trunk_dim:
            raise ValueError(f"DDTHead: trunk output must be (B, L, {self.trunk_dim}), got {tuple(z.shape)}")
        if c.ndim != 2 or c.shape != (z.shape[0], self.trunk_dim):
            raise ValueError(f"DDTHead: time embedding must be ({z.shape[0]}, {self.trunk_dim}), got {tuple(c.shape)}")
        return self.z_in(self.z_norm(z)) + self.t_in(c)[:, None]

    def __call__(self, x: jax.Array, z: jax.Array, c: jax.Array) -> jax.Array:
        if x.ndim != 3 or x.shape[-1] != self.in_dim or x.shape[:2] != z.shape[:2]:
            raise ValueError(f"DDTHead: x must be (B, L, {self.in_dim}) with the trunk output's (B, L) "
                             f"{tuple(z.shape[:2])}, got {tuple(x.shape)}")
        s = self.condition(z, c)
        h = self.blocks(self.x_in(x), s)
        return self.final(h, s)
