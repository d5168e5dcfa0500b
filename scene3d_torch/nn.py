"""Plain-PyTorch mirrors of the ``scene3d.nn`` building blocks (inference only).

Attribute names equal those of the JAX modules, so ``state_dict()`` keys equal the "torch_port" layout of
``scene3d.convert.torch_port``: Linear ``weight`` (out, in) / ``bias``; norm ``weight`` (JAX ``scale``) /
``bias``; a :class:`Stack`'s layers are ``<path>.layers.<i>.<rest>``. Tensors are channels-last like the JAX
side: tokens (B, L, D), attention heads (B, L, H, D). Norm statistics, RoPE angles and the attention softmax
run in fp32 (as in scene3d.nn). This module never imports jax / flax / scene3d.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RopeFn = Callable[[torch.Tensor], torch.Tensor]

# ---------------------------------------------------------------------------------------------------------
# Activations, norms, MLPs

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` (weight (out, in)); the values come from a checkpoint."""
    return nn.Linear(in_features, out_features, bias=bias)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis, fp32 statistics (scene3d.nn.LayerNorm)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True, use_bias: bool | None = None, **_):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if use_scale else None
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias or use_bias is None else None  # bias by default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm: expected last axis {self.dim}, got input shape {tuple(x.shape)}")
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (+ bias) over the last axis, fp32 (scene3d.nn.RMSNorm)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True, use_bias: bool | None = None, **_):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if use_scale else None
        self.bias = nn.Parameter(torch.zeros(dim)) if use_bias else None  # no bias by default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: expected last axis {self.dim}, got input shape {tuple(x.shape)}")
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def make_norm(kind: str, dim: int, **kwargs) -> LayerNorm | RMSNorm:
    if kind not in NORMS:
        raise ValueError(f"make_norm: unknown norm {kind!r}; expected one of {sorted(NORMS)}")
    return NORMS[kind](dim, **kwargs)


class Mlp(nn.Module):
    """fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *, act: str = "gelu_tanh",
                 use_bias: bool = True, **_):
        super().__init__()
        get_activation(act)
        self.act = act
        self.fc1 = linear(dim, hidden_dim, use_bias)
        self.fc2 = linear(hidden_dim, out_dim or dim, use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(get_activation(self.act)(self.fc1(x)))


class SwiGLU(nn.Module):
    """w_down(silu(w_gate(x)) * w_up(x))."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *, use_bias: bool = False, **_):
        super().__init__()
        self.w_gate = linear(dim, hidden_dim, use_bias)
        self.w_up = linear(dim, hidden_dim, use_bias)
        self.w_down = linear(hidden_dim, out_dim or dim, use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


def make_mlp(kind: str, dim: int, hidden_dim: int, **kwargs) -> Mlp | SwiGLU:
    """'gelu_tanh' | 'gelu' | 'silu' | 'relu' -> Mlp; 'swiglu' -> SwiGLU."""
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim, **kwargs)
    return Mlp(dim, hidden_dim, act=kind, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# RoPE (scene3d.nn.rope)


def rope_frequencies(dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """theta^(-2i/dim), i < dim/2, fp32."""
    if dim % 2:
        raise ValueError(f"rope_frequencies: rotary dim must be even, got {dim}")
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def _positions_bl(positions, x: torch.Tensor, extra: tuple = ()) -> torch.Tensor:
    p = torch.as_tensor(positions, device=x.device)
    b, length = x.shape[0], x.shape[1]
    lead = p.ndim - len(extra)
    if tuple(p.shape[lead:]) != tuple(extra) or lead not in (1, 2):
        raise ValueError(f"rope: positions must be (L,)+{extra} or (B, L)+{extra} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(p.shape)}")
    if lead == 1:
        p = p[None]
    if p.shape[1] != length or p.shape[0] not in (1, b):
        raise ValueError(f"rope: positions {tuple(p.shape)} do not match x (B={b}, L={length})")
    return p.float()


def _rotate(x: torch.Tensor, angles: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate x (B, L, H, d) by angles (B|1, L, d/2)."""
    cos, sin = torch.cos(angles)[:, :, None, :], torch.sin(angles)[:, :, None, :]
    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        y = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(xf.shape)
    else:
        half = x.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        y = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return y.to(x.dtype)


def apply_rope_1d(x: torch.Tensor, positions, theta: float = 10000.0, *, interleaved: bool = False):
    """RoPE over the whole head dim; x (B, L, H, D), positions (L,) or (B, L)."""
    if x.ndim != 4:
        raise ValueError(f"apply_rope_1d: x must be (B, L, H, D), got {tuple(x.shape)}")
    p = _positions_bl(positions, x)
    return _rotate(x, p[..., None] * rope_frequencies(x.shape[-1], theta, x.device), interleaved)


def default_split(head_dim: int, n_axes: int) -> tuple[int, ...]:
    if head_dim % (2 * n_axes):
        raise ValueError(f"rope: head_dim {head_dim} cannot be split equally into {n_axes} even parts; pass "
                         f"split=(...) with even parts summing to {head_dim}")
    return (head_dim // n_axes,) * n_axes


def apply_rope_nd(x: torch.Tensor, positions, theta: float = 10000.0, split: Sequence[int] | None = None, *,
                  interleaved: bool = False) -> torch.Tensor:
    """Axial RoPE: head dim split into len(split) even chunks, chunk i rotated by position axis i."""
    if x.ndim != 4:
        raise ValueError(f"apply_rope_nd: x must be (B, L, H, D), got {tuple(x.shape)}")
    pos = torch.as_tensor(positions, device=x.device)
    if pos.ndim not in (2, 3):
        raise ValueError(f"apply_rope_nd: positions must be (L, n_axes) or (B, L, n_axes), got {tuple(pos.shape)}")
    n_axes, d = pos.shape[-1], x.shape[-1]
    split = default_split(d, n_axes) if split is None else tuple(int(s) for s in split)
    if len(split) != n_axes or sum(split) != d or any(s % 2 for s in split):
        raise ValueError(f"apply_rope_nd: split {split} must have {n_axes} even parts summing to head_dim {d}")
    p = _positions_bl(pos, x, extra=(n_axes,))
    out, start = [], 0
    for i, s in enumerate(split):
        angles = p[..., i, None] * rope_frequencies(s, theta, x.device)
        out.append(_rotate(x[..., start:start + s], angles, interleaved))
        start += s
    return torch.cat(out, -1)


def grid_positions_2d(height: int, width: int) -> torch.Tensor:
    """(height * width, 2) int32 (row, col), row-major."""
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return torch.from_numpy(np.stack([ii.ravel(), jj.ravel()], -1).astype(np.int32))


def grid_positions_3d(t: int, height: int, width: int) -> torch.Tensor:
    """(t * height * width, 3) int32 (t, row, col), t-major then row-major."""
    tt, ii, jj = np.meshgrid(np.arange(t), np.arange(height), np.arange(width), indexing="ij")
    return torch.from_numpy(np.stack([tt.ravel(), ii.ravel(), jj.ravel()], -1).astype(np.int32))


def make_rope(positions, theta: float = 10000.0, split: Sequence[int] | None = None, *,
              axial: bool | None = None, interleaved: bool = False) -> RopeFn:
    """x -> rotated x for Attention's q_rope / k_rope (axial=None infers from rank: 1 -> 1D, 3 -> axial)."""
    pos = torch.as_tensor(positions)
    if axial is None:
        if pos.ndim == 2:
            raise ValueError(f"make_rope: positions of shape {tuple(pos.shape)} could be (B, L) or (L, n_axes); "
                             "pass axial=")
        axial = pos.ndim == 3
    if axial:
        return lambda x: apply_rope_nd(x, pos, theta, split, interleaved=interleaved)
    return lambda x: apply_rope_1d(x, pos, theta, interleaved=interleaved)


# ---------------------------------------------------------------------------------------------------------
# Attention


def combined_mask(mask, kv_lengths, lk: int, device=None) -> torch.Tensor | None:
    """Boolean rank-4 mask broadcastable to (B, H, Lq, Lk) from ``mask`` and ``kv_lengths`` (True = attend)."""
    if mask is not None:
        mask = torch.as_tensor(mask, device=device).bool()
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if kv_lengths is not None:
        keep = torch.arange(lk, device=device)[None, :] < torch.as_tensor(kv_lengths, device=device)[:, None]
        keep = keep[:, None, None, :]
        mask = keep if mask is None else mask & keep
    return mask


def attention(q, k, v, *, mask=None, kv_lengths=None, scale: float | None = None, sdpa: bool = False) -> torch.Tensor:
    """softmax(q k^T scale) v, q (B, Lq, H, D), k/v (B, Lk, Hk, D) (grouped kv heads), fp32 softmax.

    mask: bool broadcastable to (B, H, Lq, Lk), True = attend; rows with no key give zeros (scene3d.kernels).
    sdpa: unmasked calls go through ``F.scaled_dot_product_attention`` in fp32 (PyTorch's fused CPU / GPU kernels,
    no materialised scores; equal up to float rounding), e.g. for training-speed comparisons.
    """
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    if h % hk:
        raise ValueError(f"attention: query heads {h} must be a multiple of kv heads {hk}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if hk != h:
        k, v = k.repeat_interleave(h // hk, dim=2), v.repeat_interleave(h // hk, dim=2)
    if sdpa and mask is None and kv_lengths is None:
        out = F.scaled_dot_product_attention(q.float().transpose(1, 2), k.float().transpose(1, 2),
                                             v.float().transpose(1, 2), scale=scale)
        return out.transpose(1, 2).to(q.dtype)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    m = combined_mask(mask, kv_lengths, lk, q.device)
    if m is not None:
        logits = logits.masked_fill(~m, torch.finfo(torch.float32).min)
    p = torch.softmax(logits, dim=-1)
    if m is not None:
        p = torch.where(m.any(-1, keepdim=True), p, torch.zeros((), dtype=p.dtype, device=p.device))
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.float())
    return out.to(q.dtype)


class Attention(nn.Module):
    """Multi-head attention (scene3d.nn.Attention): q from x; k, v from context (cross) or x (self)."""

    def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None, head_dim: int | None = None,
                 num_kv_heads: int | None = None, out_dim: int | None = None, qk_norm: bool | str = False,
                 qkv_bias: bool = True, out_bias: bool = True, norm_eps: float = 1e-6,
                 head_layout: str = "correct", **_):
        super().__init__()
        if head_layout not in ("correct", "release"):
            raise ValueError(f"Attention: head_layout must be 'correct' or 'release', got {head_layout!r}")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}; pass head_dim")
            head_dim = dim // num_heads
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"Attention: num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
        self.head_layout = head_layout
        self.sdpa = False  # set True for F.scaled_dot_product_attention on unmasked calls (see attention)
        self.dim, self.kv_dim = dim, dim if kv_dim is None else kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q = linear(dim, num_heads * head_dim, qkv_bias)
        self.k = linear(self.kv_dim, num_kv_heads * head_dim, qkv_bias)
        self.v = linear(self.kv_dim, num_kv_heads * head_dim, qkv_bias)
        self.out = linear(num_heads * head_dim, out_dim or dim, out_bias)
        if qk_norm is True:
            qk_norm = "rms"
        if qk_norm not in (False, None, "rms", "layer"):
            raise ValueError(f"Attention: qk_norm must be False, True, 'rms' or 'layer', got {qk_norm!r}")
        cls = {"rms": RMSNorm, "layer": LayerNorm}.get(qk_norm) if qk_norm else None
        self.q_norm = cls(head_dim, eps=norm_eps) if cls else None
        self.k_norm = cls(head_dim, eps=norm_eps) if cls else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, q_rope: RopeFn | None = None,
                k_rope: RopeFn | None = None, mask=None, kv_lengths=None) -> torch.Tensor:
        """x (B, Lq, dim), context (B, Lk, kv_dim) or None -> (B, Lq, out_dim)."""
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention: x must be (B, L, {self.dim}), got {tuple(x.shape)}")
        if context is None:
            if self.kv_dim != self.dim:
                raise ValueError(f"Attention: built with kv_dim={self.kv_dim} != dim={self.dim}; pass context")
            context = x
            k_rope = q_rope if k_rope is None else k_rope
        elif context.ndim != 3 or context.shape[-1] != self.kv_dim or context.shape[0] != x.shape[0]:
            raise ValueError(f"Attention: context must be ({x.shape[0]}, Lk, {self.kv_dim}), got "
                             f"{tuple(context.shape)}")
        b, lq, _ = x.shape
        lk = context.shape[1]
        q = self.q(x).reshape(b, lq, self.num_heads, self.head_dim)
        k = self.k(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        v = self.v(context).reshape(b, lk, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if q_rope is not None:
            q = q_rope(q)
        if k_rope is not None:
            k = k_rope(k)
        o = attention(q, k, v, mask=mask, kv_lengths=kv_lengths, sdpa=self.sdpa)
        if self.head_layout == "release":
            o = o.transpose(1, 2).contiguous()  # (B, H, Lq, D) memory read as (B, Lq, H * D)
        return self.out(o.reshape(b, lq, self.num_heads * self.head_dim))


# ---------------------------------------------------------------------------------------------------------
# Embeddings


def fourier_dim(in_dim: int, num_bands: int, include_input: bool = True) -> int:
    return in_dim * (2 * num_bands + int(include_input))


def fourier_features(x: torch.Tensor, num_bands: int, include_input: bool = True, include_pi: bool = False,
                     logspace: bool = True) -> torch.Tensor:
    """[x, sin(x_i f_j), cos(x_i f_j)], i-major, fp32 (scene3d.nn.fourier_features)."""
    x = torch.as_tensor(x).float()
    if logspace:
        freqs = 2.0 ** torch.arange(num_bands, dtype=torch.float32, device=x.device)
    else:
        freqs = torch.linspace(1.0, 2.0 ** (num_bands - 1), num_bands, dtype=torch.float32, device=x.device)
    if include_pi:
        freqs = freqs * math.pi
    emb = (x[..., None] * freqs).reshape(x.shape[:-1] + (x.shape[-1] * num_bands,))
    return torch.cat(([x] if include_input else []) + [torch.sin(emb), torch.cos(emb)], -1)


def _pair(p) -> tuple[int, int]:
    return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))


def patchify(x: torch.Tensor, patch) -> torch.Tensor:
    """(..., H, W, C) -> (..., (H/ph)(W/pw), ph * pw * C), features (py, px, c)."""
    ph, pw = _pair(patch)
    *lead, h, w, c = x.shape
    if h % ph or w % pw:
        raise ValueError(f"patchify: image size (H, W) = {(h, w)} must be divisible by the patch {(ph, pw)}")
    gh, gw = h // ph, w // pw
    x = x.reshape(*lead, gh, ph, gw, pw, c)
    n = len(lead)
    x = torch.movedim(x, n + 2, n + 1)
    return x.reshape(*lead, gh * gw, ph * pw * c)


def unpatchify(tokens: torch.Tensor, patch, size) -> torch.Tensor:
    """Inverse of :func:`patchify` for image ``size`` (H, W)."""
    ph, pw = _pair(patch)
    h, w = int(size[0]), int(size[1])
    gh, gw = h // ph, w // pw
    *lead, n, f = tokens.shape
    if h % ph or w % pw or n != gh * gw or f % (ph * pw):
        raise ValueError(f"unpatchify: tokens must be (..., {gh * gw}, {ph}*{pw}*C) for image {(h, w)}, got "
                         f"{tuple(tokens.shape)}")
    x = tokens.reshape(*lead, gh, gw, ph, pw, f // (ph * pw))
    k = len(lead)
    x = torch.movedim(x, k + 2, k + 1)
    return x.reshape(*lead, h, w, f // (ph * pw))


class PatchEmbed(nn.Module):
    """patchify + linear (scene3d.nn.PatchEmbed); ``proj.weight`` (dim, ph * pw * C), columns (py, px, c)."""

    def __init__(self, in_channels: int, dim: int, patch, *, use_bias: bool = True, **_):
        super().__init__()
        self.in_channels, self.dim, self.patch = in_channels, dim, _pair(patch)
        self.proj = linear(self.patch[0] * self.patch[1] * in_channels, dim, use_bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch[0], width // self.patch[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"PatchEmbed: expected (..., H, W, {self.in_channels}) input, got {tuple(x.shape)}")
        return self.proj(patchify(x, self.patch))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f), sin(t f)], f_i = max_period^(-i / (dim/2)); (B,) -> (B, dim) fp32."""
    t = torch.as_tensor(t).float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], -1)
    return emb


class TimestepEmbedder(nn.Module):
    """t -> fc2(silu(fc1(timestep_embedding(t * t_scale))))."""

    def __init__(self, dim: int, *, freq_dim: int = 256, t_scale: float = 1000.0, max_period: float = 10000.0,
                 **_):
        super().__init__()
        self.freq_dim, self.t_scale, self.max_period = freq_dim, t_scale, max_period
        self.fc1 = linear(freq_dim, dim)
        self.fc2 = linear(dim, dim)

    def forward(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.fc1.weight.device)
        if t.ndim > 1:
            raise ValueError(f"TimestepEmbedder: t must be a scalar or (B,), got shape {tuple(t.shape)}")
        emb = timestep_embedding(torch.atleast_1d(t).float() * self.t_scale, self.freq_dim, self.max_period)
        return self.fc2(F.silu(self.fc1(emb.to(self.fc1.weight.dtype))))


# ---------------------------------------------------------------------------------------------------------
# adaLN, blocks


def _expand(c: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    if c.ndim > x.ndim or c.shape[0] != x.shape[0] or c.shape[-1] != x.shape[-1]:
        raise ValueError(f"modulate: {name} must be per-sample (B, D) or per-token (B, ..., D) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(c.shape)}")
    if c.ndim < x.ndim:
        c = c.reshape(c.shape[:1] + (1,) * (x.ndim - c.ndim) + c.shape[1:])
    return c


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift (per-sample (B, D) or per-token)."""
    return x * (1 + _expand(scale, x, "scale")) + _expand(shift, x, "shift")


class AdaLNZero(nn.Module):
    """Linear(silu(c)) split into ``num_chunks`` tensors of width ``dim``."""

    def __init__(self, cond_dim: int, dim: int, num_chunks: int, **_):
        super().__init__()
        self.cond_dim, self.dim, self.num_chunks = cond_dim, dim, num_chunks
        self.proj = linear(cond_dim, num_chunks * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if c.shape[-1] != self.cond_dim:
            raise ValueError(f"AdaLNZero: condition must have last axis {self.cond_dim}, got {tuple(c.shape)}")
        return tuple(torch.chunk(self.proj(F.silu(c)), self.num_chunks, dim=-1))


class Block(nn.Module):
    """Pre-norm block (scene3d.nn.Block): attn, [cross], mlp; optional LayerScale ``ls1`` / ``ls2``."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, mlp: str = "gelu_tanh",
                 norm: str = "layer", norm_eps: float = 1e-6, qk_norm: bool | str = False, qkv_bias: bool = True,
                 cross_attn: bool = False, context_dim: int | None = None, mlp_dim: int | None = None,
                 layer_scale: float | None = None, **_):
        super().__init__()
        akw = dict(qk_norm=qk_norm, qkv_bias=qkv_bias, norm_eps=norm_eps)
        self.norm1 = make_norm(norm, dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, **akw)
        if cross_attn:
            self.norm_cross = make_norm(norm, dim, eps=norm_eps)
            self.cross = Attention(dim, num_heads, kv_dim=context_dim or dim, **akw)
        else:
            self.norm_cross = self.cross = None
        self.norm2 = make_norm(norm, dim, eps=norm_eps)
        self.mlp = make_mlp(mlp, dim, int(mlp_dim) if mlp_dim else int(dim * mlp_ratio))
        if layer_scale is not None:
            self.ls1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.ls2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.ls1 = self.ls2 = None

    def forward(self, x, context=None, *, rope: RopeFn | None = None, mask=None, kv_lengths=None,
                context_mask=None, context_lengths=None):
        a = self.attn(self.norm1(x), q_rope=rope, mask=mask, kv_lengths=kv_lengths)
        x = x + (a if self.ls1 is None else a * self.ls1.to(a.dtype))
        if self.cross is not None:
            if context is None:
                raise ValueError("Block: built with cross_attn=True, call it with context (B, Lc, context_dim)")
            x = x + self.cross(self.norm_cross(x), context, mask=context_mask, kv_lengths=context_lengths)
        m = self.mlp(self.norm2(x))
        return x + (m if self.ls2 is None else m * self.ls2.to(m.dtype))


def _modulated_norm(norm: str, dim: int, affine: bool, eps: float) -> LayerNorm | RMSNorm:
    """The norm in front of an adaLN modulation: without learned scale / bias unless ``affine``."""
    return make_norm(norm, dim, eps=eps) if affine else make_norm(norm, dim, eps=eps, use_scale=False, use_bias=False)


class DiTBlock(nn.Module):
    """adaLN-Zero DiT block (scene3d.nn.DiTBlock): norm kind / affine, MLP kind / width / bias, optional
    cross-attention (normed or not) with RoPE on its queries ('q'), keys ('k') or both."""

    def __init__(self, dim: int, num_heads: int, cond_dim: int | None = None, *, mlp_ratio: float = 4.0,
                 mlp: str = "gelu_tanh", mlp_dim: int | None = None, mlp_bias: bool | None = None,
                 norm: str = "layer", norm_affine: bool = False, norm_eps: float = 1e-6,
                 qk_norm: bool | str = False, qkv_bias: bool = True, cross_attn: bool = False,
                 context_dim: int | None = None, cross_norm: bool = True, cross_rope: str = "none", **_):
        super().__init__()
        if cross_rope not in ("none", "q", "k", "qk"):
            raise ValueError(f"DiTBlock: cross_rope must be 'none', 'q', 'k' or 'qk', got {cross_rope!r}")
        if cross_rope != "none" and not cross_attn:
            raise ValueError(f"DiTBlock: cross_rope={cross_rope!r} needs cross_attn=True")
        self.cross_rope = cross_rope
        akw = dict(qk_norm=qk_norm, qkv_bias=qkv_bias, norm_eps=norm_eps)
        self.norm1 = _modulated_norm(norm, dim, norm_affine, norm_eps)
        self.attn = Attention(dim, num_heads, **akw)
        if cross_attn:
            self.norm_cross = make_norm(norm, dim, eps=norm_eps) if cross_norm else None
            self.cross = Attention(dim, num_heads, kv_dim=context_dim or dim, **akw)
        else:
            self.norm_cross = self.cross = None
        self.norm2 = _modulated_norm(norm, dim, norm_affine, norm_eps)
        mkw = {} if mlp_bias is None else dict(use_bias=mlp_bias)
        self.mlp = make_mlp(mlp, dim, int(mlp_dim) if mlp_dim else int(dim * mlp_ratio), **mkw)
        self.adaln = AdaLNZero(cond_dim or dim, dim, 6)

    def forward(self, x, c, context=None, *, rope: RopeFn | None = None, context_rope: RopeFn | None = None,
                mask=None, kv_lengths=None, context_mask=None, context_lengths=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(c)
        if c.ndim == 2:
            gate1, gate2 = gate1[:, None], gate2[:, None]
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), q_rope=rope, mask=mask,
                                  kv_lengths=kv_lengths)
        if self.cross is not None:
            if context is None:
                raise ValueError("DiTBlock: built with cross_attn=True, call it with context (B, Lc, context_dim)")
            if "k" in self.cross_rope and context_rope is None:
                raise ValueError(f"DiTBlock: built with cross_rope={self.cross_rope!r}, call it with context_rope")
            h = x if self.norm_cross is None else self.norm_cross(x)
            x = x + self.cross(h, context, q_rope=rope if "q" in self.cross_rope else None,
                               k_rope=context_rope if "k" in self.cross_rope else None, mask=context_mask,
                               kv_lengths=context_lengths)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """linear(modulate(norm(x), shift, scale)) (scene3d.nn.FinalLayer); norm kind / affine as in DiTBlock."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None, *, norm: str = "layer",
                 norm_affine: bool = False, norm_eps: float = 1e-6, **_):
        super().__init__()
        self.norm = _modulated_norm(norm, dim, norm_affine, norm_eps)
        self.adaln = AdaLNZero(cond_dim or dim, dim, 2)
        self.linear = linear(dim, out_dim)

    def forward(self, x, c):
        shift, scale = self.adaln(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class Stack(nn.Module):
    """``num_layers`` layers run in order (scene3d.nn.Stack); ``layers`` is an ``nn.ModuleList``.

    ``make_layer()`` builds one layer (no arguments). ``stack(x, *args, **kwargs)`` calls each layer with the
    same extra arguments.
    """

    def __init__(self, make_layer: Callable[[], nn.Module], num_layers: int, **_):
        super().__init__()
        self.num_layers = int(num_layers)
        self.layers = nn.ModuleList([make_layer() for _ in range(self.num_layers)])

    def forward(self, x, *args, **kwargs):
        for layer in self.layers:
            x = layer(x, *args, **kwargs)
        return x


class PerceiverRead(nn.Module):
    """latents += cross(norm(latents), norm(inputs)); latents += mlp(norm(latents)) (scene3d.nn.PerceiverRead)."""

    def __init__(self, dim: int, num_heads: int, *, input_dim: int | None = None, num_latents: int | None = None,
                 mlp_ratio: float = 4.0, mlp: str = "gelu_tanh", norm: str = "layer", norm_eps: float = 1e-6,
                 qk_norm: bool | str = False, qkv_bias: bool = True, **_):
        super().__init__()
        self.dim, self.input_dim = dim, input_dim or dim
        self.latents = None if num_latents is None else nn.Parameter(torch.zeros(num_latents, dim))
        self.norm_latents = make_norm(norm, dim, eps=norm_eps)
        self.norm_inputs = make_norm(norm, self.input_dim, eps=norm_eps)
        self.cross = Attention(dim, num_heads, kv_dim=self.input_dim, qk_norm=qk_norm, qkv_bias=qkv_bias,
                               norm_eps=norm_eps)
        self.norm_mlp = make_norm(norm, dim, eps=norm_eps)
        self.mlp = make_mlp(mlp, dim, int(dim * mlp_ratio))

    def forward(self, inputs, latents=None, *, mask=None, kv_lengths=None, q_rope=None, k_rope=None):
        """inputs (B, Lin, input_dim); latents (B, K, dim) or None (learned) -> (B, K, dim)."""
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"PerceiverRead: inputs must be (B, L, {self.input_dim}), got {tuple(inputs.shape)}")
        b = inputs.shape[0]
        if latents is None:
            if self.latents is None:
                raise ValueError("PerceiverRead: pass latents (B, K, dim) or build with num_latents=K")
            latents = self.latents.to(inputs.dtype)[None].expand(b, *self.latents.shape)
        if mask is not None and torch.as_tensor(mask).ndim == 2:
            mask = torch.as_tensor(mask, device=inputs.device)
            if tuple(mask.shape) != tuple(inputs.shape[:2]):
                raise ValueError(f"PerceiverRead: key mask must be (B, Lin) = {tuple(inputs.shape[:2])}, got "
                                 f"{tuple(mask.shape)}")
            mask = mask[:, None, None, :]
        x = latents + self.cross(self.norm_latents(latents), self.norm_inputs(inputs), q_rope=q_rope,
                                 k_rope=k_rope, mask=mask, kv_lengths=kv_lengths)
        return x + self.mlp(self.norm_mlp(x))


class PerceiverProcess(nn.Module):
    """``depth`` self-attention :class:`Block` s over the latents (``blocks`` is a :class:`Stack`)."""

    def __init__(self, dim: int, num_heads: int, depth: int, **block_kwargs):
        super().__init__()
        for k in ("scan", "remat", "rngs"):
            block_kwargs.pop(k, None)
        self.blocks = Stack(lambda: Block(dim, num_heads, **block_kwargs), depth)

    def forward(self, latents, *, rope=None, mask=None):
        return self.blocks(latents, rope=rope, mask=mask)
