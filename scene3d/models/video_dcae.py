"""Open-Sora v2 Video DC-AE (``dc-ae-f32t4c128``: 32x spatial, 4x temporal, 128 latent channels) in NNX.

Channels-last video: ``encode(x (B, T, H, W, 3) in [-1, 1]) -> latents (B, T/4, H/32, W/32, C_lat)`` (raw model
latents: SceneTok multiplies by 0.493 outside), ``decode`` inverts (one latent frame decodes to ONE frame).
A deterministic conv autoencoder: 3D convs with symmetric zero padding (non-causal), parameter-free pixel-(un)shuffle
shortcuts around every resampling (channel orders c*4 + dy*2 + dx and c*8 + dt*4 + dy*2 + dx as the release),
ResBlocks in the first three stages and EfficientViT blocks (ReLU linear attention over all T*H*W positions with a
5x5x5 multi-scale branch, then GLUMBConv) in the last three, RMSNorm over channels with weight and bias.

The module tree mirrors the official state_dict names (``encoder.stages.{i}.op_list.{j}.main.conv1.conv``,
``...context_module.main.{qkv,aggreg.0.{0,1},proj}``, ``...local_module.main.{inverted_conv,depth_conv,
point_conv}``), so the importer (``scene3d.convert.video_dcae``) is a rename of ``kernel`` / ``scale`` to ``weight``
plus the torch <-> channels-last conv layout. ``encode`` / ``decode`` tile as the release (spatial 256 px, temporal
32 frames, overlap 0.25 by default; in-place blending order reproduced); ``tiled=False`` is the plain path.
Every ``__call__`` accepts ``capture``: a dict filled with named intermediates (official hook names) for parity.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.core.config import check_keys
from scene3d.core.sharding import param_init
from scene3d.specs.video_dcae import VARIANTS

_DN = ("NDHWC", "DHWIO", "NDHWC")


def _put(capture, name, value):
    if capture is not None:
        capture[name] = value


class Conv3d(nnx.Module):
    """torch Conv3d with ``padding = k // 2`` zeros on both sides of T, H, W; kernel (kt, kh, kw, cin/groups, cout)."""

    def __init__(self, cin: int, cout: int, k: int, *, stride: Sequence[int] = (1, 1, 1), groups: int = 1,
                 bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if cin % groups or cout % groups:
            raise ValueError(f"Conv3d: {cin} -> {cout} channels not divisible by groups={groups}")
        self.k, self.stride, self.groups, self.dtype = int(k), tuple(int(s) for s in stride), int(groups), dtype
        names = (None, None, None, "conv_in", "conv_out")
        self.kernel = nnx.Param(param_init(nnx.initializers.lecun_normal(), names)(
            rngs.params(), (k, k, k, cin // groups, cout), param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), names[-1:])(
            rngs.params(), (cout,), param_dtype)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.k == 1 and self.groups > 1 and self.stride == (1, 1, 1):
            # Grouped 1x1x1 conv as an einsum: XLA's SPMD partitioner (jax 0.10.2, CPU) returns WRONG numbers for
            # conv_general_dilated with feature_group_count=6 and the input channels sharded 2 ways (the 2-head
            # LiteMLA aggregation with qkv's output on 'tensor'); see WIP_issue14.md.
            g = self.groups
            kern = self.kernel[...].astype(self.dtype)[0, 0, 0]                  # (cin/g, cout)
            kern = kern.reshape(kern.shape[0], g, kern.shape[1] // g)           # (cin/g, g, cout/g)
            xg = x.astype(self.dtype).reshape(x.shape[:-1] + (g, x.shape[-1] // g))
            y = jnp.einsum("...gi,igo->...go", xg, kern, precision=jax.lax.Precision.HIGHEST)
            y = y.reshape(x.shape[:-1] + (-1,))
            return y + self.bias[...].astype(self.dtype) if self.bias is not None else y
        p = self.k // 2
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride,
                                         [(p, p)] * 3, dimension_numbers=_DN, feature_group_count=self.groups,
                                         precision=jax.lax.Precision.HIGHEST)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm3d(nnx.Module):
    """y = x / sqrt(mean_c(x^2) + eps) * scale + bias over the channel (last) axis; statistics in fp32."""

    def __init__(self, c: int, *, eps: float = 1e-5, dtype=jnp.float32, param_dtype=jnp.float32):
        self.eps, self.dtype = float(eps), dtype
        self.scale = nnx.Param(param_init(nnx.initializers.ones_init(), ("norm",))(jax.random.key(0), (c,),
                                                                                  param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), ("norm",))(jax.random.key(0), (c,),
                                                                                  param_dtype))

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class ConvLayer(nnx.Module):
    """Official ``ops.ConvLayer``: conv -> optional norm -> optional act (``conv``, ``norm`` children)."""

    def __init__(self, cin, cout, k, *, stride=(1, 1, 1), groups=1, bias=True, norm=False, act=None, eps=1e-5,
                 dtype, param_dtype, rngs):
        self.conv = Conv3d(cin, cout, k, stride=stride, groups=groups, bias=bias, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
        self.norm = RMSNorm3d(cout, eps=eps, dtype=dtype, param_dtype=param_dtype) if norm else None
        self.act = act

    def __call__(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act == "silu":
            x = jax.nn.silu(x)
        elif self.act == "relu":
            x = jax.nn.relu(x)
        return x


# ------------------------------------------------------------------------------------------- shortcuts


def pixel_unshuffle(x: jax.Array, temporal: bool) -> jax.Array:
    """(B, T, H, W, C) -> (B, T[/2], H/2, W/2, C*4 | C*8), channel c*4 + dy*2 + dx (c*8 + dt*4 + dy*2 + dx)."""
    b, t, h, w, c = x.shape
    if temporal:
        x = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, t // 2, h // 2, w // 2, c * 8)
    x = x.reshape(b, t, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 6, 3, 5)
    return x.reshape(b, t, h // 2, w // 2, c * 4)


def pixel_shuffle(x: jax.Array, temporal: bool) -> jax.Array:
    """The inverse of :func:`pixel_unshuffle`."""
    b, t, h, w, c = x.shape
    if temporal:
        co = c // 8
        x = x.reshape(b, t, h, w, co, 2, 2, 2).transpose(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, t * 2, h * 2, w * 2, co)
    co = c // 4
    x = x.reshape(b, t, h, w, co, 2, 2).transpose(0, 1, 2, 5, 3, 6, 4)
    return x.reshape(b, t, h * 2, w * 2, co)


def channel_group_mean(x: jax.Array, cout: int) -> jax.Array:
    c = x.shape[-1]
    if c % cout:
        raise ValueError(f"channel_group_mean: {c} channels not divisible into {cout} groups")
    return jnp.mean(x.reshape(x.shape[:-1] + (cout, c // cout)), axis=-1)


def channel_repeat(x: jax.Array, cout: int) -> jax.Array:
    c = x.shape[-1]
    if cout % c:
        raise ValueError(f"channel_repeat: {cout} not a multiple of {c}")
    return jnp.repeat(x, cout // c, axis=-1)


# ------------------------------------------------------------------------------------------- blocks


class ResBlock(nnx.Module):
    def __init__(self, c, *, eps, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = ConvLayer(c, c, 3, bias=True, act="silu", **kw)
        self.conv2 = ConvLayer(c, c, 3, bias=False, norm=True, eps=eps, **kw)

    def __call__(self, x):
        return self.conv2(self.conv1(x))


class Residual(nnx.Module):
    """x + main(x) (official ``ResidualBlock(main, IdentityLayer)``)."""

    def __init__(self, main):
        self.main = main

    def __call__(self, x, capture=None, name=""):
        y = self.main(x, capture, name + ".main") if isinstance(self.main, (LiteMLA,)) else self.main(x)
        _put(capture, name + ".main", y)
        return x + y


class LiteMLA(nnx.Module):
    """ReLU linear attention over all T*H*W positions with one multi-scale (5x5x5 depthwise + grouped 1x1x1) branch."""

    def __init__(self, c, *, head_dim=32, scale_kernel=5, attn_eps=1e-15, eps=1e-5, dtype, param_dtype, rngs):
        if c % head_dim:
            raise ValueError(f"LiteMLA: {c} channels not a multiple of head dim {head_dim}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads, self.head_dim, self.attn_eps, self.dtype = c // head_dim, head_dim, float(attn_eps), dtype
        total = self.heads * head_dim
        self.qkv = ConvLayer(c, 3 * total, 1, bias=False, **kw)
        self.aggreg = nnx.List([nnx.List([
            Conv3d(3 * total, 3 * total, scale_kernel, groups=3 * total, bias=False, **kw),
            Conv3d(3 * total, 3 * total, 1, groups=3 * self.heads, bias=False, **kw)])])
        self.proj = ConvLayer(2 * total, c, 1, bias=False, norm=True, eps=eps, **kw)

    def __call__(self, x, capture=None, name=""):
        qkv = self.qkv(x)
        _put(capture, name + ".qkv", qkv)
        multi = [qkv]
        for i, (dw, pw) in enumerate(self.aggreg):
            a = pw(dw(qkv))
            _put(capture, name + f".aggreg.{i}", a)
            multi.append(a)
        m = jnp.concatenate(multi, axis=-1)
        b, t, h, w, cm = m.shape
        d = self.head_dim
        m = m.reshape(b, t * h * w, cm // (3 * d), 3 * d).astype(jnp.float32)
        q, k, v = jax.nn.relu(m[..., :d]), jax.nn.relu(m[..., d:2 * d]), m[..., 2 * d:]
        hp = jax.lax.Precision.HIGHEST
        vk = jnp.einsum("bnhd,bnhe->bhde", v, k, precision=hp)           # (B, heads, d, d)
        ksum = jnp.sum(k, axis=1)                                          # (B, heads, d): the ones-row of v'
        num = jnp.einsum("bhde,bnhe->bnhd", vk, q, precision=hp)
        den = jnp.einsum("bhe,bnhe->bnh", ksum, q, precision=hp)[..., None]
        o = (num / (den + self.attn_eps)).astype(self.dtype).reshape(b, t, h, w, -1)
        _put(capture, name + ".proj.__input__", o)
        return self.proj(o)


class GLUMBConv(nnx.Module):
    def __init__(self, c, *, expand_ratio=4, eps=1e-5, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        mid = c * expand_ratio
        self.inverted_conv = ConvLayer(c, 2 * mid, 1, bias=True, act="silu", **kw)
        self.depth_conv = ConvLayer(2 * mid, 2 * mid, 3, groups=2 * mid, bias=True, **kw)
        self.point_conv = ConvLayer(mid, c, 1, bias=False, norm=True, eps=eps, **kw)

    def __call__(self, x, capture=None, name=""):
        h = self.depth_conv(self.inverted_conv(x))
        a, g = jnp.split(h, 2, axis=-1)
        h = a * jax.nn.silu(g)
        _put(capture, name + ".point_conv.__input__", h)
        return self.point_conv(h)


class EfficientViTBlock(nnx.Module):
    def __init__(self, c, *, head_dim, scale_kernel, expand_ratio, attn_eps, eps, dtype, param_dtype, rngs):
        kw = dict(eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.context_module = Residual(LiteMLA(c, head_dim=head_dim, scale_kernel=scale_kernel, attn_eps=attn_eps,
                                               **kw))
        self.local_module = Residual(GLUMBConv(c, expand_ratio=expand_ratio, **kw))

    def __call__(self, x, capture=None, name=""):
        x = self.context_module(x, capture, name + ".context_module")
        _put(capture, name + ".context_module", x)
        lm = self.local_module
        y = lm.main(x, capture, name + ".local_module.main")
        _put(capture, name + ".local_module.main", y)
        x = x + y
        _put(capture, name + ".local_module", x)
        return x


class ResidualResBlock(nnx.Module):
    """``ResidualBlock(ResBlock, Identity)``: x + main(x)."""

    def __init__(self, c, *, eps, dtype, param_dtype, rngs):
        self.main = ResBlock(c, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, capture=None, name=""):
        return x + self.main(x)


class DownBlock(nnx.Module):
    """Conv k3 stride (1|2, 2, 2) + pixel-unshuffle channel-averaging shortcut."""

    def __init__(self, cin, cout, temporal, *, dtype, param_dtype, rngs):
        self.cout, self.temporal = cout, bool(temporal)
        self.main = ConvLayer(cin, cout, 3, stride=(2 if temporal else 1, 2, 2), bias=True, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, capture=None, name=""):
        m = self.main(x)
        s = channel_group_mean(pixel_unshuffle(x, self.temporal and x.shape[1] != 1), self.cout)
        _put(capture, name + ".main", m)
        _put(capture, name + ".shortcut", s)
        return m + s


class InterpolateConv(nnx.Module):
    def __init__(self, cin, cout, *, dtype, param_dtype, rngs):
        self.conv = ConvLayer(cin, cout, 3, bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, temporal):
        if temporal:
            x = jnp.repeat(x, 2, axis=1)
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3))


class UpBlock(nnx.Module):
    """Nearest x2 (H, W[, T]) + conv k3, plus the channel-duplicating pixel-shuffle shortcut."""

    def __init__(self, cin, cout, temporal, *, dtype, param_dtype, rngs):
        self.cout, self.temporal = cout, bool(temporal)
        self.main = InterpolateConv(cin, cout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, capture=None, name=""):
        temporal = self.temporal and x.shape[1] != 1
        m = self.main(x, temporal)
        s = pixel_shuffle(channel_repeat(x, self.cout * (8 if temporal else 4)), temporal)
        _put(capture, name + ".main", m)
        _put(capture, name + ".shortcut", s)
        return m + s


class Stage(nnx.Module):
    def __init__(self, ops: list):
        self.op_list = nnx.List(ops)

    def __call__(self, x, capture=None, name=""):
        for j, op in enumerate(self.op_list):
            x = op(x, capture, f"{name}.op_list.{j}")
            _put(capture, f"{name}.op_list.{j}", x)
        return x


def _blocks(kind, c, depth, hp, kw):
    if kind == "ResBlock":
        return [ResidualResBlock(c, eps=hp["norm_eps"], **kw) for _ in range(depth)]
    if kind == "EViTS5_GLU":
        return [EfficientViTBlock(c, head_dim=hp["head_dim"], scale_kernel=hp["scale_kernel"],
                                  expand_ratio=hp["expand_ratio"], attn_eps=hp["attn_eps"], eps=hp["norm_eps"], **kw)
                for _ in range(depth)]
    raise ValueError(f"VideoDCAE: unknown block type {kind!r}")


class _Seq(nnx.Module):
    """Holds ``op_list`` (official ``OpSequential``)."""

    def __init__(self, ops):
        self.op_list = nnx.List(ops)


class _Act(nnx.Module):
    def __init__(self, act):
        self.act = act

    def __call__(self, x):
        return jax.nn.relu(x) if self.act == "relu" else jax.nn.silu(x)


class ProjectOut(nnx.Module):
    """Encoder output: conv w5 -> C_lat (``main.op_list.0``) + channel-group-mean shortcut."""

    def __init__(self, cin, cout, *, dtype, param_dtype, rngs):
        self.cout = cout
        self.main = _Seq([ConvLayer(cin, cout, 3, bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)])

    def __call__(self, x, capture=None, name=""):
        m = self.main.op_list[0](x)
        s = channel_group_mean(x, self.cout)
        _put(capture, name + ".main", m)
        _put(capture, name + ".shortcut", s)
        return m + s


class ProjectIn(nnx.Module):
    """Decoder input: conv C_lat -> w5 (``main``) + channel-repeat shortcut."""

    def __init__(self, cin, cout, *, dtype, param_dtype, rngs):
        self.cout = cout
        self.main = ConvLayer(cin, cout, 3, bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, capture=None, name=""):
        m = self.main(x)
        s = channel_repeat(x, self.cout)
        _put(capture, name + ".main", m)
        _put(capture, name + ".shortcut", s)
        return m + s


class Encoder(nnx.Module):
    def __init__(self, hp, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        w = hp["width_list"]
        self.project_in = ConvLayer(hp["in_channels"], w[0], 3, bias=True, **kw)
        stages = []
        for i, (c, d) in enumerate(zip(w, hp["encoder_depth"])):
            ops = _blocks(hp["block_type"][i], c, d, hp, kw)
            if i < len(w) - 1:
                ops.append(DownBlock(c, w[i + 1], hp["temporal"][i], **kw))
            stages.append(Stage(ops))
        self.stages = nnx.List(stages)
        self.project_out = ProjectOut(w[-1], hp["latent_channels"], **kw)

    def __call__(self, x, capture=None, name="encoder"):
        x = self.project_in(x)
        _put(capture, name + ".project_in", x)
        for i, st in enumerate(self.stages):
            x = st(x, capture, f"{name}.stages.{i}")
            _put(capture, f"{name}.stages.{i}", x)
        return self.project_out(x, capture, name + ".project_out")


class Decoder(nnx.Module):
    def __init__(self, hp, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        w = hp["width_list"]
        self.project_in = ProjectIn(hp["latent_channels"], w[-1], **kw)
        stages = []
        for i, (c, d) in enumerate(zip(w, hp["decoder_depth"])):
            ops = [UpBlock(w[i + 1], c, hp["temporal"][i], **kw)] if i < len(w) - 1 else []
            stages.append(Stage(ops + _blocks(hp["block_type"][i], c, d, hp, kw)))
        self.stages = nnx.List(stages)
        self.project_out = _Seq([RMSNorm3d(w[0], eps=hp["norm_eps"], dtype=dtype, param_dtype=param_dtype),
                                 _Act("relu"),
                                 ConvLayer(w[0], hp["in_channels"], 3, bias=True, **kw)])

    def __call__(self, z, capture=None, name="decoder"):
        x = self.project_in(z, capture, name + ".project_in")
        _put(capture, name + ".project_in", x)
        for i in reversed(range(len(self.stages))):
            x = self.stages[i](x, capture, f"{name}.stages.{i}")
            _put(capture, f"{name}.stages.{i}", x)
        for op in self.project_out.op_list:
            x = op(x)
        return x


class VideoDCAE(nnx.Module):
    """Video DC-AE. ``encode`` (B, T, H, W, 3) -> (B, T/4, H/32, W/32, C_lat) (T in {1, 2} or a multiple of 4;
    H, W multiples of 32); ``decode`` inverts (t == 1 -> one frame). kwargs override ``VARIANTS[variant]``
    (see :func:`scene3d.specs.video_dcae.config_from_dict` for fixture / release configs)."""

    def __init__(self, variant: str = "dc-ae-f32t4c128", *, use_spatial_tiling: bool = True,
                 use_temporal_tiling: bool = True, spatial_tile_size: int = 256, temporal_tile_size: int = 32,
                 tile_overlap_factor: float = 0.25, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 **overrides: Any):
        if variant not in VARIANTS:
            raise ValueError(f"VideoDCAE variant {variant!r}; known: {sorted(VARIANTS)}")
        hp = dict(VARIANTS[variant])
        check_keys(overrides, hp, "VideoDCAE options")
        hp.update(overrides)
        n = len(hp["width_list"])
        for k in ("encoder_depth", "decoder_depth", "block_type", "temporal"):
            if len(hp[k]) != n:
                raise ValueError(f"VideoDCAE: {k} has {len(hp[k])} entries for {n} stages")
        self.config = hp
        self.latent_channels = int(hp["latent_channels"])
        self.spatial_compression = 2 ** (n - 1)
        self.temporal_compression = 2 ** sum(bool(t) for t in hp["temporal"][:-1])
        if spatial_tile_size % self.spatial_compression or temporal_tile_size % self.temporal_compression:
            raise ValueError(f"VideoDCAE: tile sizes {spatial_tile_size} px / {temporal_tile_size} frames must be "
                             f"multiples of {self.spatial_compression} / {self.temporal_compression}")
        self.use_spatial_tiling, self.use_temporal_tiling = bool(use_spatial_tiling), bool(use_temporal_tiling)
        self.spatial_tile_size, self.temporal_tile_size = int(spatial_tile_size), int(temporal_tile_size)
        self.tile_overlap_factor = float(tile_overlap_factor)
        self.encoder = Encoder(hp, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.decoder = Decoder(hp, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    # ------------------------------------------------------------------ plain (untiled) paths

    def _encode(self, x, capture=None):
        return self.encoder(x, capture)

    def _decode(self, z, capture=None):
        return self.decoder(z, capture)

    # ------------------------------------------------------------------ the release's tiling (DCAE.encode / decode)

    def _tiles_2d(self, x, fn, tile, stride, blend, keep):
        """Tiles over (H, W) (axes 2, 3) in the release's order, blended with the ALREADY-blended neighbours (the
        release blends in place), cropped to ``keep`` and concatenated."""
        rows = [[fn(x[:, :, i:i + tile, j:j + tile]) for j in range(0, x.shape[3], stride)]
                for i in range(0, x.shape[2], stride)]
        out_rows = []
        for i, row in enumerate(rows):
            parts = []
            for j in range(len(row)):
                t = row[j]
                if i > 0:
                    t = _blend(rows[i - 1][j], t, blend, 2)
                if j > 0:
                    t = _blend(row[j - 1], t, blend, 3)
                row[j] = t  # in place, as the release: later neighbours read the blended tile
                parts.append(t[:, :, :keep, :keep])
            out_rows.append(jnp.concatenate(parts, axis=3))
        return jnp.concatenate(out_rows, axis=2)

    def _tiles_t(self, x, fn, tile, stride, blend, keep):
        row = [fn(x[:, i:i + tile]) for i in range(0, x.shape[1], stride)]
        parts = []
        for i in range(len(row)):
            t = row[i]
            if i > 0:
                t = _blend(row[i - 1], t, blend, 1)
            row[i] = t
            parts.append(t[:, :keep])
        return jnp.concatenate(parts, axis=1)

    def _spatial_tiled_encode(self, x):
        s, f = self.spatial_tile_size, self.tile_overlap_factor
        sl = s // self.spatial_compression
        e = int(sl * f)
        return self._tiles_2d(x, self._encode, s, int(s * (1 - f)), e, sl - e)

    def _temporal_tiled_encode(self, x):
        tt, f, s = self.temporal_tile_size, self.tile_overlap_factor, self.spatial_tile_size
        tl = tt // self.temporal_compression
        e = int(tl * f)

        def enc(tile):
            if self.use_spatial_tiling and (tile.shape[2] > s or tile.shape[3] > s):
                return self._spatial_tiled_encode(tile)
            return self._encode(tile)

        return self._tiles_t(x, enc, tt, int(tt * (1 - f)), e, tl - e)

    def _spatial_tiled_decode(self, z):
        s, f = self.spatial_tile_size, self.tile_overlap_factor
        sl = s // self.spatial_compression
        e = int(s * f)
        return self._tiles_2d(z, self._decode, sl, int(sl * (1 - f)), e, s - e)

    def _temporal_tiled_decode(self, z):
        tt, f = self.temporal_tile_size, self.tile_overlap_factor
        sl = self.spatial_tile_size // self.spatial_compression
        tl = tt // self.temporal_compression
        e = int(tt * f)

        def dec(tile):
            if self.use_spatial_tiling and (tile.shape[2] > sl or tile.shape[3] > sl):
                return self._spatial_tiled_decode(tile)
            return self._decode(tile)

        return self._tiles_t(z, dec, tl, int(tl * (1 - f)), e, tt - e)

    # ------------------------------------------------------------------ public API

    def encode(self, x: jax.Array, capture: dict | None = None, *, tiled: bool = True) -> jax.Array:
        """(B, T, H, W, 3) in [-1, 1] -> raw latents (B, T/4, H/32, W/32, C_lat). With ``tiled`` (default) the
        release's dispatch: temporal tiles when T > temporal_tile_size, else spatial tiles when H or W >
        spatial_tile_size, else the plain path (the only one that fills ``capture``). float32 whatever ``dtype``."""
        f, ft = self.spatial_compression, self.temporal_compression
        if (x.ndim != 5 or x.shape[-1] != self.config["in_channels"] or x.shape[2] % f or x.shape[3] % f
                or (x.shape[1] > 2 and x.shape[1] % ft)):
            raise ValueError(f"VideoDCAE.encode: x must be (B, T, H, W, {self.config['in_channels']}) with H, W "
                             f"multiples of {f} and T in {{1, 2}} or a multiple of {ft}, got {x.shape}")
        if tiled and self.use_temporal_tiling and x.shape[1] > self.temporal_tile_size:
            return self._temporal_tiled_encode(x).astype(jnp.float32)
        s = self.spatial_tile_size
        if tiled and self.use_spatial_tiling and (x.shape[2] > s or x.shape[3] > s):
            return self._spatial_tiled_encode(x).astype(jnp.float32)
        return self._encode(x, capture).astype(jnp.float32)

    def decode(self, z: jax.Array, capture: dict | None = None, *, tiled: bool = True) -> jax.Array:
        """Raw latents (B, t, h, w, C_lat) -> frames (B, 4t (1 if t == 1), 32h, 32w, 3), tiled as the release."""
        if z.ndim != 5 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"VideoDCAE.decode: z must be (B, t, h, w, {self.latent_channels}), got {z.shape}")
        if tiled and self.use_temporal_tiling and z.shape[1] > self.temporal_tile_size // self.temporal_compression:
            return self._temporal_tiled_decode(z).astype(jnp.float32)
        sl = self.spatial_tile_size // self.spatial_compression
        if tiled and self.use_spatial_tiling and (z.shape[2] > sl or z.shape[3] > sl):
            return self._spatial_tiled_decode(z).astype(jnp.float32)
        return self._decode(z, capture).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x))


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """The release's blend_{t,v,h}: b[k] = a[-E + k] * (1 - k/E) + b[k] * (k/E) for k < E, E = min(len a, len b,
    extent), along ``axis``; returns the new b (the caller stores it back, as the release blends in place)."""
    e = min(a.shape[axis], b.shape[axis], extent)
    if e <= 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = e
    w = (jnp.arange(e, dtype=jnp.float32) / e).reshape(shape).astype(b.dtype)
    a_tail = jax.lax.slice_in_dim(a, a.shape[axis] - e, a.shape[axis], axis=axis)
    b_head = jax.lax.slice_in_dim(b, 0, e, axis=axis)
    head = a_tail * (1 - w) + b_head * w
    return jnp.concatenate([head, jax.lax.slice_in_dim(b, e, b.shape[axis], axis=axis)], axis=axis)
