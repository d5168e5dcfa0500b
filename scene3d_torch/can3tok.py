"""Can3Tok in plain PyTorch: the 3DGS scene VAE of :mod:`scene3d.models.can3tok`, for training as well as inference.

Same module tree as the JAX model, so ``state_dict()`` keys are its torch_port layout
(``scene3d.convert.torch_port``): ``queries``, ``input_proj``, ``encoder_cross`` (a Perceiver read),
``encoder_blocks.layers.<i>``, ``ln_post``, ``pre_kl``, ``kl_mean``, ``kl_logvar``, ``post_kl``,
``decoder_blocks.layers.<i>``, ``head_in``, ``head_hidden.<i>``, ``head_out``. Sizes come from the shared table
``scene3d.specs.can3tok.VARIANTS`` plus keyword overrides, as in JAX.

Forward = encode (Fourier features [+ voxel anchors] -> input projection -> cross-attention from the canonical
queries -> self-attention blocks -> two-stage diagonal Gaussian posterior, its mode or a sample with given noise)
then decode (post_kl -> self-attention blocks -> MLP head -> N x gs_channels raw Gaussian channels).
:func:`loss` is the autoencode task's training objective (``scene3d.tasks.autoencode``: recon + beta * KL) given
the same batch rows and posterior noise, so a JAX and a torch train step can be compared on equal footing
(``benchmarks/vs_torch.py``).

Attention runs through ``F.scaled_dot_product_attention`` by default (``attention='sdpa'``: PyTorch's fused CPU
flash kernel, what a PyTorch user trains with, as the official release does); ``attention='einsum'`` materialises
the scores like ``scene3d_torch.nn.attention``. Both are fp32 and equal up to rounding. The queries start at
zero here: values come from a checkpoint (the JAX model's canonical voxel init is not repeated).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scene3d.specs.can3tok import CONFIG_KEYS, RECON_LOSSES, VARIANTS
from scene3d_torch import nn as tnn

ATTENTION = ("sdpa", "einsum")
# JAX-only constructor arguments (kernels, layer scanning, dtypes): accepted and ignored.
_JAX_ONLY = frozenset({"attn_impl", "scan", "remat", "dtype", "param_dtype", "rngs"})


def voxel_anchor(xyz: torch.Tensor, grid: int, extent: float) -> torch.Tensor:
    """Nearest voxel centre of each point on a ``grid``^3 lattice of cells over [-extent, extent]^3."""
    size = 2.0 * extent / grid
    idx = torch.clamp(torch.floor((xyz + extent) / size), 0, grid - 1)
    return (idx + 0.5) * size - extent


def diagonal_gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last axis, fp32."""
    mean, logvar = mean.float(), logvar.float()
    return torch.sum(0.5 * (mean.square() + torch.exp(logvar) - 1.0 - logvar), dim=-1)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """'mse' (mean over B x N x C), 'sse' (sum over N x C, mean over B), 'l2_batch' (||pred - target||_F / B)."""
    if kind not in RECON_LOSSES:
        raise ValueError(f"reconstruction_loss: unknown kind {kind!r} (known: {', '.join(RECON_LOSSES)})")
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"reconstruction_loss: pred and target must both be (B, N, C), got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    sq = (pred.float() - target.float()).square()
    if kind == "mse":
        return sq.mean()
    if kind == "sse":
        return sq.sum(dim=(1, 2)).mean()
    return torch.sqrt(sq.sum()) / pred.shape[0]


class HeadLayer(nn.Module):
    """relu(LayerNorm(Linear(x))): a hidden layer of the Gaussian MLP head."""

    def __init__(self, dim: int, *, eps: float):
        super().__init__()
        self.linear = tnn.linear(dim, dim)
        self.norm = tnn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return F.relu(self.norm(self.linear(x)))


class Can3Tok(nn.Module):
    """recon, aux = Can3Tok(...)(rows (B, N, C_in), eps_tokens=..., eps_latent=...): see the module docstring.

    Keyword arguments as the JAX class (``variant``, ``head_layout`` and any ``VARIANTS`` key); the JAX-only ones
    (attn_impl, scan, remat, dtype, param_dtype) are accepted and ignored. ``attention``: 'sdpa' | 'einsum'.
    """

    def __init__(self, *, variant: str = "tiny", head_layout: str = "correct", attention: str = "sdpa", **overrides):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Can3Tok: unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        unknown = set(overrides) - CONFIG_KEYS - _JAX_ONLY
        if unknown:
            raise ValueError(f"Can3Tok: unknown config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
        if head_layout not in ("correct", "release"):
            raise ValueError(f"Can3Tok: head_layout must be 'correct' or 'release', got {head_layout!r}")
        if attention not in ATTENTION:
            raise ValueError(f"Can3Tok: attention must be one of {ATTENTION}, got {attention!r}")
        c = dict(VARIANTS[variant], **{k: v for k, v in overrides.items() if k in CONFIG_KEYS})
        c = {k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()}
        self.config = c
        self.variant, self.head_layout, self.attention = variant, head_layout, attention
        w, e, k = c["width"], c["embed_dim"], c["latent_dim"]
        if k % e:
            raise ValueError(f"Can3Tok: latent_dim {k} must be a multiple of embed_dim {e} (decoder tokens)")
        if c["head_depth"] < 1:
            raise ValueError(f"Can3Tok: head_depth must be >= 1, got {c['head_depth']}")
        self.num_queries = c["num_latents"] + int(c["shape_token"])
        self.decoder_tokens = k // e
        self.in_channels = c["input_offset"] + 3 + c["point_feats"]
        fdim = tnn.fourier_dim(3, c["num_bands"])
        in_dim = fdim * (1 + int(c["anchor_grid"] > 0)) + c["point_feats"]
        blk = dict(mlp_ratio=c["mlp_ratio"], mlp="gelu", norm="layer", norm_eps=c["norm_eps"], qkv_bias=c["qkv_bias"])

        self.queries = nn.Parameter(torch.zeros(self.num_queries, w))
        self.input_proj = tnn.linear(in_dim, w)
        self.encoder_cross = tnn.PerceiverRead(w, c["heads"], **blk)
        stack = lambda depth: tnn.Stack(lambda: tnn.Block(w, c["heads"], **blk), depth) if depth else None
        self.encoder_blocks = stack(c["encoder_depth"])
        self.ln_post = tnn.LayerNorm(w, eps=c["norm_eps"]) if c["use_ln_post"] else None
        self.pre_kl = tnn.linear(w, 2 * e)
        self.kl_mean = tnn.linear(c["num_latents"] * e, k)
        self.kl_logvar = tnn.linear(c["num_latents"] * e, k)
        self.post_kl = tnn.linear(e, w)
        self.decoder_blocks = stack(c["decoder_depth"])
        hw = c["head_width"]
        self.head_in = tnn.linear(self.decoder_tokens * w, hw)
        self.head_hidden = nn.ModuleList([HeadLayer(hw, eps=c["norm_eps"]) for _ in range(c["head_depth"] - 1)])
        self.head_out = tnn.linear(hw, c["num_gaussians"] * c["gs_channels"])
        for m in self.modules():
            if isinstance(m, tnn.Attention):
                m.head_layout, m.sdpa = head_layout, attention == "sdpa"

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.decoder_tokens, self.config["embed_dim"]

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.config["num_gaussians"], self.config["gs_channels"]

    # ------------------------------------------------------------------------------------------ encoder

    def embed_inputs(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (B, N, C_in) -> input-projected tokens (B, N, width)."""
        c = self.config
        if rows.ndim != 3 or rows.shape[-1] != self.in_channels:
            raise ValueError(f"Can3Tok: gaussians_rows must be (B, N, {self.in_channels}) = (B, N, input_offset "
                             f"{c['input_offset']} + xyz 3 + point_feats {c['point_feats']}), got {tuple(rows.shape)}")
        o = c["input_offset"]
        xyz = rows[..., o:o + 3].float()
        parts = [tnn.fourier_features(xyz, c["num_bands"], include_pi=c["include_pi"])]
        if c["anchor_grid"] > 0:
            anchor = voxel_anchor(xyz, c["anchor_grid"], c["anchor_extent"])
            parts.append(tnn.fourier_features(anchor, c["num_bands"], include_pi=c["include_pi"]))
        parts.append(rows[..., o + 3:].float())
        return self.input_proj(torch.cat(parts, dim=-1).to(self.input_proj.weight.dtype))

    def encode_tokens(self, rows: torch.Tensor) -> torch.Tensor:
        """rows -> encoder output tokens (B, num_queries, width) (after ln_post)."""
        h = self.embed_inputs(rows)
        q = self.queries.to(h.dtype)[None].expand(h.shape[0], *self.queries.shape)
        x = self.encoder_cross(h, q)
        if self.encoder_blocks is not None:
            x = self.encoder_blocks(x)
        if self.ln_post is not None:
            x = self.ln_post(x)
        return x

    def encode(self, gaussians_rows: torch.Tensor, *, sample_posterior: bool = True,
               eps_tokens: torch.Tensor | None = None, eps_latent: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """rows (B, N, C_in) -> (z (B, latent_dim), aux) as the JAX ``encode``: with ``sample_posterior`` both
        Gaussians are sampled with ``eps_tokens`` (B, num_latents, embed_dim) and ``eps_latent`` (B, latent_dim),
        or else with standard normal draws from ``generator``; without it z is the mode. aux: tokens,
        [shape_embed], token_mean, token_logvar, token_z, mean, logvar, z, kl (B,)."""
        c = self.config
        x = self.encode_tokens(gaussians_rows)
        aux: dict = {"tokens": x}
        if c["shape_token"]:
            aux["shape_embed"], x = x[:, 0], x[:, 1:]
        b, n, e = x.shape[0], c["num_latents"], c["embed_dim"]
        moments = self.pre_kl(x).float()
        tmean, tlogvar = moments[..., :e], torch.clamp(moments[..., e:], *c["logvar_range"])
        if sample_posterior:
            for name, shape in (("eps_tokens", (b, n, e)), ("eps_latent", (b, c["latent_dim"]))):
                eps = {"eps_tokens": eps_tokens, "eps_latent": eps_latent}[name]
                if eps is not None and tuple(eps.shape) != shape:
                    raise ValueError(f"Can3Tok.encode: {name} must be {shape}, got {tuple(eps.shape)}")
            if eps_tokens is None:
                eps_tokens = torch.randn((b, n, e), generator=generator, device=x.device)
            if eps_latent is None:
                eps_latent = torch.randn((b, c["latent_dim"]), generator=generator, device=x.device)
            tz = tmean + torch.exp(0.5 * tlogvar) * eps_tokens.float()
        else:
            tz = tmean
        flat = tz.reshape(b, n * e).to(self.kl_mean.weight.dtype)
        mean, logvar = self.kl_mean(flat).float(), self.kl_logvar(flat).float()
        z = mean + torch.exp(0.5 * logvar) * eps_latent.float() if sample_posterior else mean
        aux.update(token_mean=tmean, token_logvar=tlogvar, token_z=tz, mean=mean, logvar=logvar, z=z,
                   kl=diagonal_gaussian_kl(mean, logvar))
        return z, aux

    # ------------------------------------------------------------------------------------------ decoder

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """z (B, latent_dim) or (B, *latent_shape) -> (recon (B, num_gaussians, gs_channels) fp32, aux)."""
        t, e = self.latent_shape
        if tuple(z.shape[1:]) not in ((t * e,), (t, e)):
            raise ValueError(f"Can3Tok.decode: z must be (B, {t * e}) or (B, {t}, {e}), got {tuple(z.shape)}")
        b = z.shape[0]
        h = self.post_kl(z.reshape(b, t, e).to(self.post_kl.weight.dtype))
        if self.decoder_blocks is not None:
            h = self.decoder_blocks(h)
        tokens = h
        h = self.head_in(h.reshape(b, -1))
        for layer in self.head_hidden:
            h = layer(h)
        out = self.head_out(h).float()
        return out.reshape((b,) + self.output_shape), {"decoder_tokens": tokens}

    def forward(self, gaussians_rows: torch.Tensor, *, sample_posterior: bool = True,
                eps_tokens: torch.Tensor | None = None, eps_latent: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """rows (B, N, C_in) -> (recon (B, num_gaussians, gs_channels), aux); aux as in encode + decode."""
        z, aux = self.encode(gaussians_rows, sample_posterior=sample_posterior, eps_tokens=eps_tokens,
                             eps_latent=eps_latent, generator=generator)
        recon, daux = self.decode(z)
        aux.update(daux)
        return recon, aux

    def target(self, gaussians_rows: torch.Tensor) -> torch.Tensor:
        """The reconstruction target in the rows: channels [input_offset, input_offset + gs_channels)."""
        o = self.config["input_offset"]
        return gaussians_rows[..., o:o + self.config["gs_channels"]]


def loss(model: Can3Tok, rows: torch.Tensor, *, eps_tokens: torch.Tensor, eps_latent: torch.Tensor,
         recon: str = "mse", beta: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """The autoencode task's objective on a batch of rows with the given posterior noise (already scaled by the
    task's posterior warm-up): recon(pred, target) + beta * mean over the batch of the latent KL. ``beta`` is the
    weight at this step (the task's ``kl_weight(step, ...)``). Returns (total, {'recon', 'kl'})."""
    pred, aux = model(rows, sample_posterior=True, eps_tokens=eps_tokens, eps_latent=eps_latent)
    r = reconstruction_loss(pred, model.target(rows).float(), recon)
    kl = aux["kl"].mean()
    return r + float(beta) * kl, {"recon": r, "kl": kl}


__all__ = ["Can3Tok", "HeadLayer", "RECON_LOSSES", "diagonal_gaussian_kl", "loss", "reconstruction_loss",
           "voxel_anchor"]
