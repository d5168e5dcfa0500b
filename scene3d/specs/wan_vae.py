"""Wan 2.2 VAE sizes (jax-free): the released configuration as SceneTok builds it, a tiny one for tests, the 48
released latent statistics and a config-from-dict helper.

Every entry resolves to the kwargs of :class:`scene3d.models.wan_vae.WanVAE`: encoder base width ``dim`` (level widths
``dim * [1] + dim_mult``), decoder base width ``dec_dim`` (level widths ``dec_dim * [dim_mult[-1]] +
reversed(dim_mult)``), ``z_dim`` latent channels, ``num_res_blocks`` residual blocks per encoder level (one more per
decoder level), ``temporal_downsample`` per resampling level (the decoder uses it reversed), and the latent
statistics the model normalises with inside ``encode`` / ``decode``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

# Wan2_2_VAE.scale of the release (the 48 per-channel means and standard deviations of the raw latents).
LATENT_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
LATENT_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

VARIANTS: dict[str, dict[str, Any]] = {
    # Wan-AI/Wan2.2-TI2V-5B Wan2.2_VAE.pth as SceneTok's AutoencoderWan builds it (Wan2_2_VAE(vae_pth=None): dim 160,
    # dec_dim the class default 256); manifest: ../shared/fixtures/wan_vae/manifest_wan2.2.json (704,688,668 params).
    "wan2.2": dict(
        dim=160,
        dec_dim=256,
        z_dim=48,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        temporal_downsample=(False, True, True),
        latent_mean=LATENT_MEAN,
        latent_std=LATENT_STD,
    ),
    # The released layout at CPU-test widths (fixture b's sizes).
    "tiny": dict(
        dim=4,
        dec_dim=6,
        z_dim=48,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=1,
        temporal_downsample=(False, True, True),
        latent_mean=LATENT_MEAN,
        latent_std=LATENT_STD,
    ),
}

PATCH_SIZE = 2           # patchify 2x2 before the encoder (12 channels), unpatchify after the decoder
IN_CHANNELS = 3
CACHE_T = 2              # the release's causal-conv cache length (a whole-sequence conv pads 2 zero frames)

# Outside the model (SceneTok's config/model/autoencoders/target/wan.yaml and src/model/diffusion.py):
# latents = encode(2 img - 1) * 1.0; the decode cuts V latents into ceil(V / 5) groups decoded independently.
SCENETOK_SCALING_FACTOR = 1.0
SCENETOK_GROUP_SIZE = 5


def derived(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder / decoder level widths and the compression factors of a kwargs dict."""
    mult = list(hp["dim_mult"])
    return dict(encoder_dims=[hp["dim"] * u for u in [1] + mult],
                decoder_dims=[hp["dec_dim"] * u for u in [mult[-1]] + mult[::-1]],
                spatial_compression=PATCH_SIZE * 2 ** (len(mult) - 1),
                temporal_compression=2 ** sum(bool(t) for t in hp["temporal_downsample"]))


def config_from_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A fixture ``config.json`` (``small_WanVAE_kwargs`` + ``latent_stats``), the manifest (``WanVAE_kwargs`` +
    ``latent_mean`` / ``latent_std``) or a plain WanVAE_ kwargs dict -> WanVAE kwargs.

    Checks what this port implements: no attention outside the middle blocks (``attn_scales == []``), dropout 0,
    decoder temporal pattern = the encoder's reversed; ``dec_dim`` defaults to the class default 256."""
    kw = cfg.get("small_WanVAE_kwargs") or cfg.get("WanVAE_kwargs") or cfg
    if list(kw.get("attn_scales", [])):
        raise ValueError(f"config_from_dict: attn_scales {kw['attn_scales']} not supported (the release uses [])")
    if float(kw.get("dropout", 0.0)) != 0.0:
        raise ValueError(f"config_from_dict: dropout {kw['dropout']} not supported (inference port, dropout 0)")
    down = tuple(bool(t) for t in kw.get("temperal_downsample", kw.get("temporal_downsample", ())))
    up = kw.get("temperal_upsample")
    if up is not None and tuple(bool(t) for t in up) != down[::-1]:
        raise ValueError(f"config_from_dict: temperal_upsample {list(up)} is not temperal_downsample reversed")
    dec_dim = kw.get("dec_dim", 256)
    dec_dim = 256 if isinstance(dec_dim, str) else int(dec_dim)  # the fixtures write "256 (WanVAE_ default, ...)"
    stats = cfg.get("latent_stats", {})
    mean = stats.get("mean", cfg.get("latent_mean", LATENT_MEAN))
    std = stats.get("std", cfg.get("latent_std", LATENT_STD))
    out = dict(dim=int(kw["dim"]), dec_dim=dec_dim, z_dim=int(kw["z_dim"]),
               dim_mult=tuple(int(m) for m in kw.get("dim_mult", (1, 2, 4, 4))),
               num_res_blocks=int(kw.get("num_res_blocks", 2)), temporal_downsample=down,
               latent_mean=tuple(float(m) for m in mean), latent_std=tuple(float(s) for s in std))
    if len(out["latent_mean"]) != out["z_dim"] or len(out["latent_std"]) != out["z_dim"]:
        raise ValueError(f"config_from_dict: {len(out['latent_mean'])} means / {len(out['latent_std'])} stds for "
                         f"z_dim {out['z_dim']}")
    if any(not math.isfinite(s) or s <= 0 for s in out["latent_std"]):
        raise ValueError("config_from_dict: latent stds must be positive")
    return out
