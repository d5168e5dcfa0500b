"""Transformer blocks (pre-norm Block, DiT's adaLN-Zero DiTBlock and FinalLayer) and scanned/remat Stacks."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.sharding import param_init
from scene3d.nn.adaln import AdaLNZero, modulate
from scene3d.nn.attention import Attention, RopeFn
from scene3d.nn.linear import constrain_tokens, dense
from scene3d.nn.mlp import make_mlp
from scene3d.nn.norm import make_norm
from scene3d.nn.options import choose


class Block(nnx.Module):
    """Pre-norm transformer block: x += attn(norm(x)); [x += cross(norm(x), context)]; x += mlp(norm(x)).

    mlp: 'gelu_tanh' | 'gelu' | 'silu' | 'relu' (Mlp) or 'swiglu'; norm: 'layer' | 'rms'.
    mlp_dim: hidden width of the MLP (default ``int(dim * mlp_ratio)``). layer_scale: if set, each residual
    branch is multiplied by a learned per-channel vector initialised to this value (CaiT/DINOv2 LayerScale,
    parameters ``ls1``, ``ls2``).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, mlp: str = "gelu_tanh",
                 norm: str = "layer", norm_eps: float = 1e-6, qk_norm: bool | str = False, qkv_bias: bool = True,
                 cross_attn: bool = False, context_dim: int | None = None, impl: str = "xla",
                 mlp_dim: int | None = None, layer_scale: float | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        akw = dict(qk_norm=qk_norm, qkv_bias=qkv_bias, impl=impl, norm_eps=norm_eps, rngs=rngs, **kw)
        self.norm1 = make_norm(norm, dim, eps=norm_eps, **kw)
        self.attn = Attention(dim, num_heads, **akw)
        if cross_attn:
            self.norm_cross = make_norm(norm, dim, eps=norm_eps, **kw)
            self.cross = Attention(dim, num_heads, kv_dim=context_dim or dim, **akw)
        else:
            self.norm_cross = self.cross = None
        self.norm2 = make_norm(norm, dim, eps=norm_eps, **kw)
        self.mlp = make_mlp(mlp, dim, int(mlp_dim) if mlp_dim else int(dim * mlp_ratio), rngs=rngs, **kw)
        if layer_scale is not None:
            init = param_init(nnx.initializers.constant(layer_scale), ("norm",))
            self.ls1 = nnx.Param(init(jax.random.key(0), (dim,), param_dtype))
            self.ls2 = nnx.Param(init(jax.random.key(0), (dim,), param_dtype))
        else:
            self.ls1 = self.ls2 = None

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, rope: RopeFn | None = None,
                 mask=None, kv_lengths=None, context_mask=None, context_lengths=None) -> jax.Array:
        """x (B, L, dim); context (B, Lc, context_dim) for cross-attention; rope applies to self-attn q and k;
        mask/kv_lengths mask self-attention keys, context_mask/context_lengths the cross-attention keys."""
        a = self.attn(self.norm1(x), q_rope=rope, mask=mask, kv_lengths=kv_lengths)
        x = x + (a if self.ls1 is None else a * self.ls1[...].astype(a.dtype))
        if self.cross is not None:
            if context is None:
                raise ValueError("Block: built with cross_attn=True, call it with context (B, Lc, context_dim)")
            x = x + self.cross(self.norm_cross(x), context, mask=context_mask, kv_lengths=context_lengths)
        m = self.mlp(self.norm2(x))
        x = x + (m if self.ls2 is None else m * self.ls2[...].astype(m.dtype))
        return constrain_tokens(x, "act_embed")


CROSS_ROPE = ("none", "q", "k", "qk")
# DiTBlock options of the LightningDiT blocks of the SceneTok / SceneGen releases: RMSNorm with a learned scale,
# qk RMS-norm, SwiGLU with biases, and an un-normed cross-attention with a plainly initialised output.
LIGHTNING_DIT = dict(norm="rms", norm_affine=True, qk_norm="rms", mlp="swiglu", mlp_bias=True, cross_attn=True,
                     cross_norm=False, cross_zero_init=False)


def _modulated_norm(norm: str, dim: int, affine: bool, **kwargs):
    """The norm in front of an adaLN modulation: without learned scale / bias unless ``affine``."""
    return make_norm(norm, dim, **(kwargs if affine else dict(kwargs, use_scale=False, use_bias=False)))


class DiTBlock(nnx.Module):
    """DiT block with adaLN-Zero conditioning on ``c`` (B, cond_dim) or per-token (B, L, cond_dim).

    x += g1 * attn(modulate(norm1(x), s1, b1)); [x += cross(norm_cross(x), context)]; x += g2 * mlp(modulate(
    norm2(x), s2, b2)); (s1, b1, g1, s2, b2, g2) = adaln(c). The adaLN projection is zero-initialised.

    Options: norm 'layer' | 'rms' (all norms of the block); norm_affine: norm1 / norm2 learn a scale (and, for
    'layer', a bias); mlp: a :func:`scene3d.nn.mlp.make_mlp` kind ('gelu_tanh', ..., 'swiglu'), hidden width
    ``mlp_dim`` (default ``int(dim * mlp_ratio)``), mlp_bias (default: the MLP's own); cross_attn: a cross-attention
    sub-block to ``context`` (B, Lc, context_dim), after ``norm_cross`` (affine) unless cross_norm=False, its output
    projection zero-initialised (a fresh block is the identity) unless cross_zero_init=False; RoPE: the call's
    ``rope`` rotates self-attention q and k; cross_rope 'q' rotates the cross-attention queries by ``rope``, 'k'
    its keys by the call's ``context_rope``, 'qk' both, 'none' neither.
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int | None = None, *, mlp_ratio: float = 4.0,
                 mlp: str = "gelu_tanh", mlp_dim: int | None = None, mlp_bias: bool | None = None,
                 norm: str = "layer", norm_affine: bool = False, norm_eps: float = 1e-6,
                 qk_norm: bool | str = False, qkv_bias: bool = True, cross_attn: bool = False,
                 context_dim: int | None = None, cross_norm: bool = True, cross_zero_init: bool = True,
                 cross_rope: str = "none", impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if cross_rope not in CROSS_ROPE:
            raise ValueError(f"DiTBlock: cross_rope must be one of {CROSS_ROPE}, got {cross_rope!r}")
        if cross_rope != "none" and not cross_attn:
            raise ValueError(f"DiTBlock: cross_rope={cross_rope!r} needs cross_attn=True")
        self.cross_rope = cross_rope
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        akw = dict(qk_norm=qk_norm, qkv_bias=qkv_bias, impl=impl, norm_eps=norm_eps, rngs=rngs, **kw)
        self.norm1 = _modulated_norm(norm, dim, norm_affine, eps=norm_eps, **kw)
        self.attn = Attention(dim, num_heads, **akw)
        if cross_attn:
            self.norm_cross = make_norm(norm, dim, eps=norm_eps, **kw) if cross_norm else None
            self.cross = Attention(dim, num_heads, kv_dim=context_dim or dim, zero_init_out=cross_zero_init, **akw)
        else:
            self.norm_cross = self.cross = None
        self.norm2 = _modulated_norm(norm, dim, norm_affine, eps=norm_eps, **kw)
        mkw = kw if mlp_bias is None else dict(kw, use_bias=mlp_bias)
        self.mlp = make_mlp(mlp, dim, int(mlp_dim) if mlp_dim else int(dim * mlp_ratio), rngs=rngs, **mkw)
        self.adaln = AdaLNZero(cond_dim or dim, dim, 6, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None = None, *,
                 rope: RopeFn | None = None, context_rope: RopeFn | None = None, mask=None, kv_lengths=None,
                 context_mask=None, context_lengths=None) -> jax.Array:
        """x (B, L, dim), c (B, cond_dim) or (B, L, cond_dim); rope / context_rope: (B, L, H, d) -> same for x's
        and context's tokens; mask / kv_lengths and context_mask / context_lengths as in :class:`Block`."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)
        if c.ndim == 2:
            gate1, gate2 = gate1[:, None], gate2[:, None]
        h = modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.attn(h, q_rope=rope, mask=mask, kv_lengths=kv_lengths)
        if self.cross is not None:
            if context is None:
                raise ValueError("DiTBlock: built with cross_attn=True, call it with context (B, Lc, context_dim)")
            if "k" in self.cross_rope and context_rope is None:
                raise ValueError(f"DiTBlock: built with cross_rope={self.cross_rope!r}, call it with context_rope")
            h = x if self.norm_cross is None else self.norm_cross(x)
            x = x + self.cross(h, context, q_rope=rope if "q" in self.cross_rope else None,
                               k_rope=context_rope if "k" in self.cross_rope else None, mask=context_mask,
                               kv_lengths=context_lengths)
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return constrain_tokens(x, "act_embed")


class FinalLayer(nnx.Module):
    """DiT final layer: linear(modulate(norm(x), shift, scale)) with adaLN and linear zero-initialised.

    c (B, cond_dim) or per-token (B, L, cond_dim); norm 'layer' | 'rms', norm_affine as in :class:`DiTBlock`.
    """

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None, *, norm: str = "layer",
                 norm_affine: bool = False, norm_eps: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm = _modulated_norm(norm, dim, norm_affine, eps=norm_eps, **kw)
        self.adaln = AdaLNZero(cond_dim or dim, dim, 2, rngs=rngs, **kw)
        self.linear = dense(dim, out_dim, ("embed", None), zero_init=True, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift, scale = self.adaln(c)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------
# Stacks


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def remat_policy(name: str):
    """Map a policy name to a ``jax.checkpoint_policies`` entry ('none' -> None = no rematerialisation)."""
    return choose(REMAT_POLICIES, name, "remat policy")


class Stack(nnx.Module):
    """``num_layers`` identical layers with stacked parameters (leading 'layers' axis).

    ``make_layer(rngs) -> nnx.Module`` builds one layer; each layer gets its own split of ``rngs``. The stack
    runs with ``nnx.scan`` (scan=True, one compiled layer) or a python loop over slices of the same stacked
    parameters (scan=False), optionally rematerialised with a named policy (see REMAT_POLICIES). Layers must be
    stateless apart from their parameters (no dropout rng, no batch statistics).
    ``stack(x, *args, **kwargs)`` calls ``layer(x, *args, **kwargs)`` for each layer; args are shared by all.
    """

    def __init__(self, make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, *, rngs: nnx.Rngs,
                 scan: bool = True, remat: str = "none"):
        remat_policy(remat)  # validate
        self.num_layers, self.scan, self.remat = num_layers, scan, remat

        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def create(r):
            return make_layer(r)

        self.layers = create(rngs)

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        # Purely functional over the split state (jax.lax.scan / jax.checkpoint rather than nnx.scan / nnx.remat):
        # the stack then works inside any outer trace, e.g. a sampler's lax.scan closing over the model.
        graphdef, state = nnx.split(self.layers)

        def apply(layer_state, h):
            return nnx.merge(graphdef, layer_state)(h, *args, **kwargs)

        if self.remat != "none":
            apply = jax.checkpoint(apply, policy=remat_policy(self.remat), prevent_cse=not self.scan)

        if self.scan:
            def body(h, layer_state):
                return apply(layer_state, h), None

            x, _ = jax.lax.scan(body, x, state)
            return x

        for i in range(self.num_layers):
            x = apply(jax.tree.map(lambda a: a[i], state), x)
        return x
