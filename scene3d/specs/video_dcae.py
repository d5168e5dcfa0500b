"""Open-Sora v2 Video DC-AE sizes (jax-free): the released ``dc-ae-f32t4c128`` and a config-from-dict helper.

Every entry resolves to the kwargs of :class:`scene3d.models.video_dcae.VideoDCAE`. Block kinds per stage:
``"ResBlock"`` (x + RMSNorm(conv3(SiLU(conv3(x))))) or ``"EViTS5_GLU"`` (LiteMLA with a 5x5x5 multi-scale branch,
head dim 32, then GLUMBConv with expand 4). ``temporal`` marks the stages whose down/upsample also halves /
doubles T (stride-2 conv / nearest x2 in time, 3D (un)shuffle shortcut).
"""
from __future__ import annotations

from typing import Any, Mapping

BLOCK_KINDS = ("ResBlock", "EViTS5_GLU")

VARIANTS: dict[str, dict[str, Any]] = {
    # hpcai-tech/Open-Sora-v2-Video-DC-AE F32T4C128_AE.safetensors (dc_ae_f32("dc-ae-f32t4c128")); manifest:
    # ../shared/fixtures/videodc/manifest_dc-ae-f32t4c128.json (459,462,147 parameters).
    "dc-ae-f32t4c128": dict(
        in_channels=3,
        latent_channels=128,
        width_list=(128, 256, 512, 512, 1024, 1024),
        encoder_depth=(2, 2, 2, 3, 3, 3),
        decoder_depth=(3, 3, 3, 3, 3, 3),
        block_type=("ResBlock", "ResBlock", "ResBlock", "EViTS5_GLU", "EViTS5_GLU", "EViTS5_GLU"),
        temporal=(False, False, False, True, True, False),
        head_dim=32,
        expand_ratio=4,
        scale_kernel=5,
        attn_eps=1e-15,
        norm_eps=1e-5,
    ),
    # The released architecture at the widths of fixture a (CPU tests and runlocal training).
    "tiny": dict(
        in_channels=3,
        latent_channels=8,
        width_list=(8, 16, 32, 32, 64, 64),
        encoder_depth=(1, 1, 1, 2, 1, 1),
        decoder_depth=(1, 1, 1, 2, 1, 1),
        block_type=("ResBlock", "ResBlock", "ResBlock", "EViTS5_GLU", "EViTS5_GLU", "EViTS5_GLU"),
        temporal=(False, False, False, True, True, False),
        head_dim=16,
        expand_ratio=4,
        scale_kernel=5,
        attn_eps=1e-15,
        norm_eps=1e-5,
    ),
}

# Outside the model (SceneTok's video_dc.yaml): latents = encode(2 img - 1) * 0.493.
SCENETOK_SCALING_FACTOR = 0.493
SPATIAL_COMPRESSION = 32
TEMPORAL_COMPRESSION = 4
# Release tiling (VideoDCKwargsCfg): spatial 256 px, temporal 32 frames, overlap 0.25.
RELEASE_TILING = dict(spatial_tile_size=256, temporal_tile_size=32, tile_overlap_factor=0.25)


def config_from_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A fixture ``config.json`` (with ``dcae_config``) or a DCAEConfig dict -> VideoDCAE kwargs.

    Checks the choices this port implements (rms3d / silu, Conv downsample, InterpolateConv upsample, averaging /
    duplicating shortcuts, decoder out_norm rms3d + relu, no quant conv, single latent)."""
    if "dcae_config" in cfg:
        cfg = cfg["dcae_config"]
    enc, dec = cfg["encoder"], cfg["decoder"]
    if list(enc["width_list"]) != list(dec["width_list"]):
        raise ValueError("config_from_dict: encoder and decoder width_list differ (not supported)")
    if list(enc["block_type"]) != list(dec["block_type"]):
        raise ValueError("config_from_dict: encoder and decoder block_type differ (not supported)")
    expect = {"encoder.norm": (enc.get("norm"), "rms3d"), "encoder.act": (enc.get("act"), "silu"),
              "decoder.norm": (dec.get("norm"), "rms3d"), "decoder.act": (dec.get("act"), "silu"),
              "encoder.downsample_block_type": (enc.get("downsample_block_type"), "Conv"),
              "encoder.downsample_shortcut": (enc.get("downsample_shortcut"), "averaging"),
              "encoder.out_shortcut": (enc.get("out_shortcut"), "averaging"),
              "encoder.out_norm": (enc.get("out_norm"), None), "encoder.out_act": (enc.get("out_act"), None),
              "encoder.double_latent": (bool(enc.get("double_latent", False)), False),
              "decoder.upsample_block_type": (dec.get("upsample_block_type"), "InterpolateConv"),
              "decoder.upsample_shortcut": (dec.get("upsample_shortcut"), "duplicating"),
              "decoder.in_shortcut": (dec.get("in_shortcut"), "duplicating"),
              "decoder.out_norm": (dec.get("out_norm"), "rms3d"), "decoder.out_act": (dec.get("out_act"), "relu"),
              "use_quant_conv": (bool(cfg.get("use_quant_conv", False)), False)}
    bad = {k: v[0] for k, v in expect.items() if v[0] != v[1]}
    if bad:
        raise ValueError(f"config_from_dict: unsupported DC-AE options {bad}")
    for b in enc["block_type"]:
        if b not in BLOCK_KINDS:
            raise ValueError(f"config_from_dict: block type {b!r} not supported; known {BLOCK_KINDS}")
    if list(enc["temporal_downsample"]) != list(dec["temporal_upsample"]):
        raise ValueError("config_from_dict: temporal_downsample != temporal_upsample (not supported)")
    base = dict(VARIANTS["dc-ae-f32t4c128"])
    base.update(in_channels=int(cfg.get("in_channels", 3)), latent_channels=int(cfg["latent_channels"]),
                width_list=tuple(int(w) for w in enc["width_list"]),
                encoder_depth=tuple(int(d) for d in enc["depth_list"]),
                decoder_depth=tuple(int(d) for d in dec["depth_list"]),
                block_type=tuple(enc["block_type"]), temporal=tuple(bool(t) for t in enc["temporal_downsample"]))
    return base
