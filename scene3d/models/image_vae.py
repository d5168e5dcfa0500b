"""Image compressors: the VA-VAE convolutional autoencoder (LDM AutoencoderKL layout) and plain patchified pixels.

Both map images (B, H, W, 3) in [-1, 1] to a latent grid (B, H / f, W / f, C) and back, with one API:
``encode(images, rng=None) -> latents``, ``decode(latents) -> images``, ``latent_channels``, ``downsample``.

:class:`ImageVAE` follows the LDM/taming ``AutoencoderKL`` used by VA-VAE (LightningDiT's tokenizer): conv_in,
``len(ch_mult)`` resolution levels of ``num_res_blocks`` ResnetBlocks (GroupNorm + swish + 3x3 convs, 1x1
``nin_shortcut`` when the width changes), single-head spatial self-attention at the levels in ``attn_levels``,
stride-2 downsampling (pad right/bottom by one, 3x3 conv), a mid block (res, attn, res), GroupNorm + swish + conv_out
to ``2 * z_channels`` (mean | logvar), ``quant_conv`` / ``post_quant_conv`` (1x1) and the mirrored decoder
(``num_res_blocks + 1`` blocks per level, nearest x2 upsampling + 3x3 conv). Channels-last throughout.

Latents are normalised per channel: ``(z - latent_mean) / latent_std * latent_scale`` (statistics and scale from the
config; identity by default). ``f16c32`` is VA-VAE's f16d32 size; ``tiny`` trains from scratch on a CPU.
:class:`PixelLatent` uses the patchified pixels themselves as the latent (no parameters).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import constrain, param_init
from scene3d.nn.gaussian import reparameterize
from scene3d.specs.image_vae import VARIANTS


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, padding: Any = "SAME", dtype, param_dtype, rngs):
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=padding, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=param_init(nnx.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                    bias_init=param_init(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm over the channel (last) axis: groups of contiguous channels, stats in fp32."""

    def __init__(self, channels: int, num_groups: int = 32, *, eps: float = 1e-6, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        if channels % num_groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by num_groups={num_groups}")
        self.channels, self.num_groups, self.eps, self.dtype = channels, num_groups, eps, dtype
        self.scale = nnx.Param(param_init(nnx.initializers.ones_init(), ("norm",))(jax.random.key(0), (channels,),
                                                                                  param_dtype))
        self.bias = nnx.Param(param_init(nnx.initializers.zeros_init(), ("norm",))(jax.random.key(0), (channels,),
                                                                                  param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.channels:
            raise ValueError(f"GroupNorm: expected (..., {self.channels}) channels-last input, got {x.shape}")
        xf = x.astype(jnp.float32)
        g = xf.reshape(x.shape[:-1] + (self.num_groups, self.channels // self.num_groups))
        axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
        mean = jnp.mean(g, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class ResnetBlock(nnx.Module):
    """x' = shortcut(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))."""

    def __init__(self, cin: int, cout: int, *, num_groups: int, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.norm1 = GroupNorm(cin, num_groups, **kw)
        self.conv1 = _conv(cin, cout, 3, rngs=rngs, **kw)
        self.norm2 = GroupNorm(cout, num_groups, **kw)
        self.conv2 = _conv(cout, cout, 3, rngs=rngs, **kw)
        self.nin_shortcut = _conv(cin, cout, 1, rngs=rngs, **kw) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H * W positions (1x1 q, k, v, proj_out), residual."""

    def __init__(self, c: int, *, num_groups: int, attn_impl: str = "xla", dtype, param_dtype, rngs):
        self.norm = GroupNorm(c, num_groups, dtype=dtype, param_dtype=param_dtype)
        self.mha = nn.Attention(c, 1, qkv_bias=True, impl=attn_impl, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        return x + self.mha(self.norm(x).reshape(b, h * w, c)).reshape(b, h, w, c)


class Downsample(nnx.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv (LDM)."""

    def __init__(self, c: int, *, dtype, param_dtype, rngs):
        self.conv = _conv(c, c, 3, stride=2, padding=((0, 1), (0, 1)), dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, c: int, *, dtype, param_dtype, rngs):
        self.conv = _conv(c, c, 3, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class Level(nnx.Module):
    """One resolution level: res blocks (each followed by attention where enabled), then resampling."""

    def __init__(self, blocks: list, attns: list, resample):
        self.block = nnx.List(blocks)
        self.attn = nnx.List(attns)
        self.resample = resample

    def __call__(self, x):
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return self.resample(x) if self.resample is not None else x


class Mid(nnx.Module):
    def __init__(self, c, *, num_groups, attn_impl, dtype, param_dtype, rngs):
        kw = dict(num_groups=num_groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.block_1 = ResnetBlock(c, c, **kw)
        self.attn_1 = AttnBlock(c, attn_impl=attn_impl, **kw)
        self.block_2 = ResnetBlock(c, c, **kw)

    def __call__(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nnx.Module):
    def __init__(self, *, in_channels, ch, ch_mult, num_res_blocks, attn_levels, z_channels, num_groups, attn_impl,
                 dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        bkw = dict(num_groups=num_groups, **kw)
        self.conv_in = _conv(in_channels, ch, 3, **kw)
        levels, cin = [], ch
        for i, m in enumerate(ch_mult):
            cout = ch * m
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, **bkw))
                cin = cout
                if i in attn_levels:
                    attns.append(AttnBlock(cin, attn_impl=attn_impl, **bkw))
            down = Downsample(cin, **kw) if i != len(ch_mult) - 1 else None
            levels.append(Level(blocks, attns, down))
        self.down = nnx.List(levels)
        self.mid = Mid(cin, attn_impl=attn_impl, **bkw)
        self.norm_out = GroupNorm(cin, num_groups, dtype=dtype, param_dtype=param_dtype)
        self.conv_out = _conv(cin, 2 * z_channels, 3, **kw)

    def __call__(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class Decoder(nnx.Module):
    def __init__(self, *, out_channels, ch, ch_mult, num_res_blocks, attn_levels, z_channels, num_groups,
                 attn_impl, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        bkw = dict(num_groups=num_groups, **kw)
        cin = ch * ch_mult[-1]
        self.conv_in = _conv(z_channels, cin, 3, **kw)
        self.mid = Mid(cin, attn_impl=attn_impl, **bkw)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            cout = ch * ch_mult[i]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, **bkw))
                cin = cout
                if i in attn_levels:
                    attns.append(AttnBlock(cin, attn_impl=attn_impl, **bkw))
            levels[i] = Level(blocks, attns, Upsample(cin, **kw) if i != 0 else None)
        self.up = nnx.List(levels)
        self.norm_out = GroupNorm(cin, num_groups, dtype=dtype, param_dtype=param_dtype)
        self.conv_out = _conv(cin, out_channels, 3, **kw)

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


def _stats(values, n: int, default: float, name: str) -> tuple[float, ...]:
    if values is None:
        return (float(default),) * n
    arr = np.asarray(values, np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"ImageVAE: {name} must have {n} entries (one per latent channel), got shape "
                         f"{np.shape(values)}")
    return tuple(float(v) for v in arr)


class ImageVAE(nnx.Module):
    """VA-VAE / LDM AutoencoderKL. ``encode`` (B, H, W, in_channels) in [-1, 1] -> normalised latents
    (B, H / 2^(L-1), W / 2^(L-1), embed_dim); ``decode`` inverts; ``__call__`` -> (reconstruction, aux).

    Args (defaults from ``VARIANTS[variant]``): ch, ch_mult, num_res_blocks, attn_levels (level indices with
    attention), z_channels, embed_dim (latent channels), num_groups (GroupNorm). latent_mean / latent_std
    (per-channel statistics, sequences of embed_dim floats) and latent_scale: latents = (z - mean) / std * scale.
    """

    def __init__(self, variant: str = "tiny", *, in_channels: int = 3, out_channels: int = 3, ch: int | None = None,
                 ch_mult: Sequence[int] | None = None, num_res_blocks: int | None = None,
                 attn_levels: Sequence[int] | None = None, z_channels: int | None = None,
                 embed_dim: int | None = None, num_groups: int | None = None, latent_mean=None, latent_std=None,
                 latent_scale: float = 1.0, attn_impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if variant not in VARIANTS:
            raise ValueError(f"ImageVAE variant {variant!r}; known: {sorted(VARIANTS)}")
        v = dict(VARIANTS[variant])
        for k, val in dict(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_levels=attn_levels,
                           z_channels=z_channels, embed_dim=embed_dim, num_groups=num_groups).items():
            if val is not None:
                v[k] = val
        v["ch_mult"], v["attn_levels"] = tuple(int(m) for m in v["ch_mult"]), tuple(int(a) for a in v["attn_levels"])
        bad = [a for a in v["attn_levels"] if not 0 <= a < len(v["ch_mult"])]
        if bad:
            raise ValueError(f"ImageVAE: attn_levels {bad} outside the {len(v['ch_mult'])} levels")
        self.config = dict(v, in_channels=in_channels, out_channels=out_channels)
        self.latent_channels = int(v["embed_dim"])
        self.downsample = 2 ** (len(v["ch_mult"]) - 1)
        self.in_channels = in_channels
        self.latent_mean = _stats(latent_mean, self.latent_channels, 0.0, "latent_mean")
        self.latent_std = _stats(latent_std, self.latent_channels, 1.0, "latent_std")
        if min(self.latent_std) <= 0:
            raise ValueError(f"ImageVAE: latent_std must be positive, got {self.latent_std}")
        self.latent_scale = float(latent_scale)
        common = dict(ch=v["ch"], ch_mult=v["ch_mult"], num_res_blocks=v["num_res_blocks"],
                      attn_levels=v["attn_levels"], z_channels=v["z_channels"], num_groups=v["num_groups"],
                      attn_impl=attn_impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.encoder = Encoder(in_channels=in_channels, **common)
        self.quant_conv = _conv(2 * v["z_channels"], 2 * v["embed_dim"], 1, **kw)
        self.post_quant_conv = _conv(v["embed_dim"], v["z_channels"], 1, **kw)
        self.decoder = Decoder(out_channels=out_channels, **common)

    def _check_images(self, x):
        f = self.downsample
        if x.ndim != 4 or x.shape[-1] != self.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"ImageVAE: images must be (B, H, W, {self.in_channels}) with H, W divisible by {f}, "
                             f"got {x.shape}")

    def moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Raw posterior (mean, logvar), each (B, H/f, W/f, embed_dim); logvar clipped to [-30, 20]."""
        self._check_images(images)
        images = constrain(images, ("batch", "height", "width", "channels"))
        m = self.quant_conv(self.encoder(images))
        mean, logvar = jnp.split(m, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def normalize(self, z: jax.Array) -> jax.Array:
        mean, std = jnp.asarray(self.latent_mean, z.dtype), jnp.asarray(self.latent_std, z.dtype)
        return (z - mean) / std * self.latent_scale

    def denormalize(self, latents: jax.Array) -> jax.Array:
        mean, std = jnp.asarray(self.latent_mean, latents.dtype), jnp.asarray(self.latent_std, latents.dtype)
        return latents / self.latent_scale * std + mean

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Normalised latents of the posterior mean, or of a posterior sample when ``rng`` is given."""
        mean, logvar = self.moments(images)
        z = mean if rng is None else reparameterize(mean, logvar, jax.random.normal(rng, mean.shape, mean.dtype))
        return self.normalize(z)

    def decode(self, latents: jax.Array) -> jax.Array:
        """Normalised latents (B, h, w, embed_dim) -> images (B, h*f, w*f, out_channels)."""
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(f"ImageVAE.decode: latents must be (B, h, w, {self.latent_channels}), got {latents.shape}")
        return self.decoder(self.post_quant_conv(self.denormalize(latents)))

    def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """Autoencode: (reconstruction, {'latents', 'mean', 'logvar'}); samples the posterior when ``rng``."""
        mean, logvar = self.moments(images)
        z = mean if rng is None else reparameterize(mean, logvar, jax.random.normal(rng, mean.shape, mean.dtype))
        latents = self.normalize(z)
        return self.decode(latents), dict(latents=latents, mean=mean, logvar=logvar)


class PixelLatent(nnx.Module):
    """Patchified pixels as the latent: (B, H, W, C) -> (B, H/p, W/p, p*p*C), features ordered (py, px, c)."""

    def __init__(self, patch: int = 16, in_channels: int = 3, *, scale: float = 1.0, rngs: nnx.Rngs | None = None):
        if patch < 1:
            raise ValueError(f"PixelLatent: patch must be >= 1, got {patch}")
        self.patch, self.in_channels, self.scale = int(patch), int(in_channels), float(scale)
        self.latent_channels = self.patch * self.patch * self.in_channels
        self.downsample = self.patch

    def encode(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        p = self.patch
        if images.ndim != 4 or images.shape[-1] != self.in_channels or images.shape[1] % p or images.shape[2] % p:
            raise ValueError(f"PixelLatent: images must be (B, H, W, {self.in_channels}) with H, W divisible by {p}, "
                             f"got {images.shape}")
        b, h, w, _ = images.shape
        tokens = nn.patchify(images, p)  # (B, (H/p)(W/p), p*p*C)
        return tokens.reshape(b, h // p, w // p, self.latent_channels) * self.scale

    def decode(self, latents: jax.Array) -> jax.Array:
        if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(f"PixelLatent.decode: latents must be (B, h, w, {self.latent_channels}), got "
                             f"{latents.shape}")
        b, gh, gw, c = latents.shape
        p = self.patch
        return nn.unpatchify((latents / self.scale).reshape(b, gh * gw, c), p, (gh * p, gw * p))

    def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
        latents = self.encode(images)
        return self.decode(latents), dict(latents=latents)


def get_image_compressor(config: Mapping[str, Any] | None, *, rngs: nnx.Rngs | None = None):
    """Build an image compressor from a config mapping (dict or ConfigDict).

    ``{'kind': 'vavae', 'variant': 'f16c32' | 'tiny', ...ImageVAE kwargs}`` or ``{'kind': 'pixels', 'patch': 16,
    'scale': 1.0}``. ``None`` means pixels with patch 16. A VA-VAE needs ``rngs`` (or build it under
    ``nnx.eval_shape`` and import weights with ``scene3d.convert.image_vae``).
    """
    cfg = {} if config is None else dict(config.items() if hasattr(config, "items") else config)
    kind = cfg.pop("kind", "pixels")
    if kind == "pixels":
        unknown = set(cfg) - {"patch", "in_channels", "scale"}
        if unknown:
            raise ValueError(f"get_image_compressor(kind='pixels'): unknown keys {sorted(unknown)}; "
                             "known: patch, in_channels, scale")
        return PixelLatent(**cfg)
    if kind == "vavae":
        return ImageVAE(rngs=rngs if rngs is not None else nnx.Rngs(0), **cfg)
    raise ValueError(f"get_image_compressor: kind must be 'vavae' or 'pixels', got {kind!r}")
