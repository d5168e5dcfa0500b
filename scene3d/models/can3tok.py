"""Can3Tok (ICCV 2025): a VAE from a 3D Gaussian Splatting scene (N Gaussians) to a fixed-size latent.

Encoder: Fourier features of the Gaussian centres [+ Fourier features of their nearest voxel-centre anchor]
++ the other raw channels -> linear input projection -> one Perceiver cross-attention from learnable canonical
queries (initialised from a regular voxel grid) -> ``encoder_depth`` self-attention blocks -> LayerNorm.

Canonical query init (``query_init``): 'release' is the public code's (N(0, 0.02^2), then dims [:3 * cells] of
EVERY row overwritten by ``query_grid_scale`` x the flattened ``query_grid`` lattice of linspace(-extent, extent)
points: all queries start with the same positions); 'per_query' gives each latent query its own voxel: query j
(row j + 1 behind the shape token) gets ``query_grid_scale`` x the centre of voxel j (raster order, x slowest) of
the ``query_grid`` cells over [-extent, extent]^3 in its first 3 dims, the shape token keeps its random init (our
reading of the paper's "canonical" voxel-initialised queries: one canonical position per query).
Bottleneck (the release's two-stage diagonal Gaussian): ``pre_kl`` maps each of the ``num_latents`` query
tokens to a token posterior (mean, logvar) of ``embed_dim`` channels; its sample, flattened, is projected to
the latent distribution N(mean, exp(logvar)) of ``latent_dim`` values; z is its sample.
Decoder: z viewed as (latent_dim / embed_dim) tokens of ``embed_dim`` -> ``post_kl`` linear ->
``decoder_depth`` self-attention blocks -> flatten -> MLP head (Linear, [Linear -> LayerNorm -> ReLU] x
(head_depth - 1), Linear) -> ``num_gaussians`` x ``gs_channels`` raw channels.

Input rows are (B, N, C_in): channels [input_offset, input_offset + 3) are xyz, the next ``point_feats`` are
the other raw Gaussian channels (``scene3d.geometry.gaussians`` order: f_dc, opacity, log-scale, rot wxyz,
[f_rest]). The release reads 18-channel rows (voxel centre, voxel id, then the 14 degree-0 channels):
input_offset=4, point_feats=11. The decoder outputs the packed raw channels (14 for degree 0).

``head_layout='release'`` reproduces the public code's attention (see ``scene3d.nn.Attention``); our own
training uses ``'correct'``. The importer of the official PyTorch checkpoints is
``scene3d.convert.can3tok``.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import constrain, param_init
from scene3d.nn.gaussian import diagonal_gaussian_kl, reparameterize
from scene3d.specs.can3tok import CONFIG_KEYS, VARIANTS


def voxel_anchor(xyz: jax.Array, grid: int, extent: float) -> jax.Array:
    """Nearest voxel centre of each point on a ``grid``^3 lattice of cells over [-extent, extent]^3."""
    size = 2.0 * extent / grid
    idx = jnp.clip(jnp.floor((xyz + extent) / size), 0, grid - 1)
    return (idx + 0.5) * size - extent


QUERY_INITS = ("release", "per_query")


def grid_dims(grid) -> tuple[int, int, int]:
    """``query_grid`` as cells per axis: an int g is (g, g, g); a sequence is (gx, gy, gz)."""
    dims = (int(grid),) * 3 if np.ndim(grid) == 0 else tuple(int(g) for g in grid)
    if len(dims) != 3:
        raise ValueError(f"Can3Tok: query_grid must be an int or 3 ints (gx, gy, gz), got {grid!r}")
    return dims


def voxel_grid_queries(num_queries: int, width: int, grid, extent: float, scale: float, key,
                       dtype=jnp.float32) -> jax.Array:
    """The release's canonical query init: N(0, 0.02^2) with dims [:3 cells] of every row set to ``scale`` x
    the flattened voxel-grid positions (linspace(-extent, extent, g) per axis, 'ij' order)."""
    q = 0.02 * jax.random.normal(key, (num_queries, width), dtype)
    dims = grid_dims(grid)
    if min(dims) <= 0:
        return q
    n = 3 * math.prod(dims)
    if n > width:
        raise ValueError(f"Can3Tok: query_grid={grid} writes {n} values per query, more than width={width}")
    axes = [np.linspace(-extent, extent, g) for g in dims]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1) * scale
    return q.at[:, :n].set(jnp.asarray(pos, dtype))


def voxel_centres(grid, extent: float) -> np.ndarray:
    """(cells, 3) float64 centres of the ``grid`` cells over [-extent, extent]^3 in raster order (x slowest)."""
    dims = np.asarray(grid_dims(grid))
    ijk = np.stack(np.meshgrid(*[np.arange(g) for g in dims], indexing="ij"), -1).reshape(-1, 3)
    return (ijk + 0.5) * (2.0 * extent / dims) - extent


def per_query_voxel_queries(num_queries: int, width: int, grid, extent: float, scale: float, key, *,
                            skip: int = 0, dtype=jnp.float32) -> jax.Array:
    """One canonical voxel per query: N(0, 0.02^2), then row ``skip + j`` gets ``scale`` x the centre of voxel j
    (``voxel_centres``) in its first 3 dims, for every j < num_queries - skip (rows before ``skip``, the shape
    token, stay random)."""
    q = 0.02 * jax.random.normal(key, (num_queries, width), dtype)
    n = num_queries - skip
    cells = math.prod(grid_dims(grid))
    if cells < n:
        raise ValueError(f"Can3Tok: query_init='per_query' needs a voxel per latent query: query_grid={grid} has "
                         f"{cells} cells for {n} queries")
    if width < 3:
        raise ValueError(f"Can3Tok: query_init='per_query' writes 3 values per query, more than width={width}")
    return q.at[skip:, :3].set(jnp.asarray(voxel_centres(grid, extent)[:n] * scale, dtype))


class HeadLayer(nnx.Module):
    """relu(LayerNorm(Linear(x))): a hidden layer of the Gaussian MLP head."""

    def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
        self.linear = nn.dense(dim, dim, (None, "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = nn.LayerNorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.linear(x)))


def _set_head_layout(module: nnx.Module, layout: str) -> nnx.Module:
    for _, m in nnx.iter_graph(module):
        if isinstance(m, nn.Attention):
            m.head_layout = layout
    return module


class Can3Tok(nnx.Module):
    """recon, aux = Can3Tok(...)(rows (B, N, C_in), rng=key): see the module docstring.

    Sizes come from ``VARIANTS[variant]``; any key of it can be overridden by keyword (``CONFIG_KEYS``).
    head_layout: 'correct' | 'release' (the public code's attention). attn_impl: the attention kernel.
    scan / remat: how the self-attention stacks run (``scene3d.nn.Stack``).
    """

    def __init__(self, *, variant: str = "tiny", head_layout: str = "correct", attn_impl: str = "xla",
                 scan: bool = True, remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, **overrides):
        if variant not in VARIANTS:
            raise ValueError(f"Can3Tok: unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        unknown = set(overrides) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"Can3Tok: unknown config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
        if head_layout not in ("correct", "release"):
            raise ValueError(f"Can3Tok: head_layout must be 'correct' or 'release', got {head_layout!r}")
        c = dict(VARIANTS[variant], **overrides)
        c = {k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()}
        if c["query_init"] not in QUERY_INITS:
            raise ValueError(f"Can3Tok: query_init must be one of {QUERY_INITS}, got {c['query_init']!r}")
        self._config_items = tuple(sorted(c.items()))  # hashable: graph definitions must hash
        self.variant, self.head_layout, self.dtype = variant, head_layout, dtype
        w, e, k = c["width"], c["embed_dim"], c["latent_dim"]
        if k % e:
            raise ValueError(f"Can3Tok: latent_dim {k} must be a multiple of embed_dim {e} (decoder tokens)")
        if c["head_depth"] < 1:
            raise ValueError(f"Can3Tok: head_depth must be >= 1, got {c['head_depth']}")
        self.num_queries = c["num_latents"] + int(c["shape_token"])
        self.decoder_tokens = k // e
        self.in_channels = c["input_offset"] + 3 + c["point_feats"]
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        fdim = nn.fourier_dim(3, c["num_bands"])
        in_dim = fdim * (1 + int(c["anchor_grid"] > 0)) + c["point_feats"]

        def qinit(key, shape, dt):
            if c["query_init"] == "per_query":
                return per_query_voxel_queries(shape[0], shape[1], c["query_grid"], c["query_grid_extent"],
                                               c["query_grid_scale"], key, skip=int(c["shape_token"]), dtype=dt)
            return voxel_grid_queries(shape[0], shape[1], c["query_grid"], c["query_grid_extent"],
                                      c["query_grid_scale"], key, dt)

        self.queries = nnx.Param(param_init(qinit, ("queries", "embed"))(rngs.params(), (self.num_queries, w),
                                                                          param_dtype))
        self.input_proj = nn.dense(in_dim, w, (None, "embed"), rngs=rngs, **kw)
        blk = dict(mlp_ratio=c["mlp_ratio"], mlp="gelu", norm="layer", norm_eps=c["norm_eps"],
                   qkv_bias=c["qkv_bias"], impl=attn_impl, **kw)
        self.encoder_cross = _set_head_layout(nn.PerceiverRead(w, c["heads"], rngs=rngs, **blk), head_layout)

        def stack(depth):
            if depth == 0:
                return None
            return nn.Stack(lambda r: _set_head_layout(nn.Block(w, c["heads"], rngs=r, **blk), head_layout),
                            depth, rngs=rngs, scan=scan, remat=remat)

        self.encoder_blocks = stack(c["encoder_depth"])
        self.ln_post = nn.LayerNorm(w, eps=c["norm_eps"], **kw) if c["use_ln_post"] else None
        self.pre_kl = nn.dense(w, 2 * e, ("embed", "latent"), rngs=rngs, **kw)
        # The two big bottleneck projections (num_latents * embed_dim -> latent_dim): sharded both ways.
        self.kl_mean = nn.dense(c["num_latents"] * e, k, ("embed", "mlp"), rngs=rngs, **kw)
        self.kl_logvar = nn.dense(c["num_latents"] * e, k, ("embed", "mlp"), rngs=rngs, **kw)
        self.post_kl = nn.dense(e, w, ("latent", "embed"), rngs=rngs, **kw)
        self.decoder_blocks = stack(c["decoder_depth"])
        hw = c["head_width"]
        self.head_in = nn.dense(self.decoder_tokens * w, hw, ("embed", "mlp"), rngs=rngs, **kw)
        self.head_hidden = nnx.List([HeadLayer(hw, eps=c["norm_eps"], rngs=rngs, **kw)
                                     for _ in range(c["head_depth"] - 1)])
        self.head_out = nn.dense(hw, c["num_gaussians"] * c["gs_channels"], ("mlp", "embed"), rngs=rngs, **kw)

    # ------------------------------------------------------------------------------------------ shapes

    @property
    def config(self) -> dict[str, Any]:
        """The resolved architecture values (a fresh dict; keys as in VARIANTS)."""
        return dict(self._config_items)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """z viewed as decoder tokens: (latent_dim // embed_dim, embed_dim)."""
        return self.decoder_tokens, self.config["embed_dim"]

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.config["num_gaussians"], self.config["gs_channels"]

    # ------------------------------------------------------------------------------------------ encoder

    def embed_inputs(self, rows: jax.Array) -> jax.Array:
        """rows (B, N, C_in) -> input-projected tokens (B, N, width)."""
        c = self.config
        if rows.ndim != 3 or rows.shape[-1] != self.in_channels:
            raise ValueError(f"Can3Tok: gaussians_rows must be (B, N, {self.in_channels}) = (B, N, input_offset "
                             f"{c['input_offset']} + xyz 3 + point_feats {c['point_feats']}), got {rows.shape}")
        o = c["input_offset"]
        xyz = rows[..., o:o + 3].astype(jnp.float32)
        parts = [nn.fourier_features(xyz, c["num_bands"], include_pi=c["include_pi"])]
        if c["anchor_grid"] > 0:
            anchor = voxel_anchor(xyz, c["anchor_grid"], c["anchor_extent"])
            parts.append(nn.fourier_features(anchor, c["num_bands"], include_pi=c["include_pi"]))
        parts.append(rows[..., o + 3:].astype(jnp.float32))
        h = self.input_proj(jnp.concatenate(parts, axis=-1).astype(self.dtype))
        return constrain(h, ("batch", "length", "act_embed"))

    def encode_tokens(self, rows: jax.Array) -> jax.Array:
        """rows -> encoder output tokens (B, num_queries, width) (after ln_post)."""
        h = self.embed_inputs(rows)
        q = jnp.broadcast_to(self.queries[...].astype(h.dtype), (h.shape[0],) + self.queries.shape)
        x = self.encoder_cross(h, q)
        if self.encoder_blocks is not None:
            x = self.encoder_blocks(x)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return x

    def encode(self, gaussians_rows: jax.Array, *, rng: jax.Array | None = None, sample_posterior: bool = True,
               eps_tokens: jax.Array | None = None, eps_latent: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """rows (B, N, C_in) -> (z (B, latent_dim), aux).

        With ``sample_posterior`` both Gaussians are sampled, with noise ``eps_tokens`` (B, num_latents,
        embed_dim) and ``eps_latent`` (B, latent_dim) or else drawn from ``rng``; without it, z is the mode.
        aux: mean, logvar (B, latent_dim); z; kl (B,) = KL(N(mean, exp(logvar)) || N(0, I)); token_mean,
        token_logvar, token_z (B, num_latents, embed_dim); shape_embed (B, width) [shape_token]; tokens.
        """
        c = self.config
        x = self.encode_tokens(gaussians_rows)
        aux: dict[str, Any] = {"tokens": x}
        if c["shape_token"]:
            aux["shape_embed"], x = x[:, 0], x[:, 1:]
        b, l, e = x.shape[0], c["num_latents"], c["embed_dim"]
        moments = self.pre_kl(x).astype(jnp.float32)
        tmean, tlogvar = moments[..., :e], jnp.clip(moments[..., e:], *c["logvar_range"])
        if sample_posterior:
            if eps_tokens is None or eps_latent is None:
                if rng is None:
                    raise ValueError("Can3Tok.encode: sample_posterior=True needs rng (a jax PRNG key) or both "
                                     "eps_tokens and eps_latent")
                k1, k2 = jax.random.split(rng)
                eps_tokens = jax.random.normal(k1, (b, l, e)) if eps_tokens is None else eps_tokens
                eps_latent = jax.random.normal(k2, (b, c["latent_dim"])) if eps_latent is None else eps_latent
            for name, eps, shape in (("eps_tokens", eps_tokens, (b, l, e)),
                                     ("eps_latent", eps_latent, (b, c["latent_dim"]))):
                if tuple(eps.shape) != shape:
                    raise ValueError(f"Can3Tok.encode: {name} must be {shape}, got {tuple(eps.shape)}")
            tz = reparameterize(tmean, tlogvar, eps_tokens)
        else:
            tz = tmean
        flat = tz.reshape(b, l * e).astype(self.dtype)
        mean = self.kl_mean(flat).astype(jnp.float32)
        logvar = self.kl_logvar(flat).astype(jnp.float32)
        z = reparameterize(mean, logvar, eps_latent) if sample_posterior else mean
        aux.update(token_mean=tmean, token_logvar=tlogvar, token_z=tz, mean=mean, logvar=logvar, z=z,
                   kl=diagonal_gaussian_kl(mean, logvar))
        return z, aux

    # ------------------------------------------------------------------------------------------ decoder

    def decode(self, z: jax.Array) -> tuple[jax.Array, dict]:
        """z (B, latent_dim) or (B, *latent_shape) -> (recon (B, num_gaussians, gs_channels) fp32, aux).

        aux: decoder_tokens (B, latent_dim // embed_dim, width), the self-attention output."""
        t, e = self.latent_shape
        if z.shape[1:] not in ((t * e,), (t, e)):
            raise ValueError(f"Can3Tok.decode: z must be (B, {t * e}) or (B, {t}, {e}), got {z.shape}")
        b = z.shape[0]
        h = self.post_kl(z.reshape(b, t, e).astype(self.dtype))
        if self.decoder_blocks is not None:
            h = self.decoder_blocks(h)
        tokens = h
        h = self.head_in(h.reshape(b, -1))
        for layer in self.head_hidden:
            h = layer(h)
        out = self.head_out(h).astype(jnp.float32)
        return out.reshape((b,) + self.output_shape), {"decoder_tokens": tokens}

    def __call__(self, gaussians_rows: jax.Array, *, rng: jax.Array | None = None, sample_posterior: bool = True,
                 eps_tokens: jax.Array | None = None, eps_latent: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """rows (B, N, C_in) -> (recon (B, num_gaussians, gs_channels), aux); aux as in encode + decode."""
        z, aux = self.encode(gaussians_rows, rng=rng, sample_posterior=sample_posterior, eps_tokens=eps_tokens,
                             eps_latent=eps_latent)
        recon, daux = self.decode(z)
        aux.update(daux)
        return recon, aux

    def target(self, gaussians_rows: jax.Array) -> jax.Array:
        """The reconstruction target in the rows: channels [input_offset, input_offset + gs_channels)."""
        o = self.config["input_offset"]
        return gaussians_rows[..., o:o + self.config["gs_channels"]]


def num_params(variant: str = "release", **overrides) -> int:
    """Parameter count of a variant without allocating it."""
    model = nnx.eval_shape(lambda: Can3Tok(variant=variant, rngs=nnx.Rngs(0), **overrides))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
