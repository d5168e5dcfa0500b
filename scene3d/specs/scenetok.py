"""SceneTok sizes: compressor and decoder defaults of the release and the named variants, and the jax-free rules
shared by ``scene3d.models.scenetok`` and its PyTorch port ``scene3d_torch.scenetok`` (config resolution, the 3D
RoPE channel split)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

RAY_KINDS = ("official", "plucker", "origin_direction")
TIMESTEP_INPUTS = ("official", "scaled")
PREDICTIONS = ("v", "x")  # the decoder outputs the velocity or the clean latent x0
TORCH_RMS_EPS = float(np.finfo(np.float32).eps)  # torch.nn.RMSNorm(eps=None) in float32

COMPRESSOR_BASE: dict[str, Any] = dict(
    input_size=16, mlp_ratio=4.0, norm_eps=TORCH_RMS_EPS, logvar_range=(-30.0, 20.0), kl_weight=0.0,
    ray_kind="official", query_init_std=5.0, rope_theta=10000.0)
DECODER_BASE: dict[str, Any] = dict(
    input_size=8, mlp_ratio=4.0, norm_eps=1e-6, freq_dim=256, temporal_downsample=4, num_target_split=1,
    force_incorrect=False, wan_pose_padding=False, pose_embed_bf16=True, timestep_input="official", ray_kind="official",
    rope_theta=10000.0, prediction="v", x_pred_t_min=0.05)


def _variant(compressor: dict, decoder: dict) -> dict[str, dict[str, Any]]:
    decoder = dict(decoder, token_dim=compressor["token_dim"])
    return dict(compressor=dict(COMPRESSOR_BASE, **compressor), decoder=dict(DECODER_BASE, **decoder))


VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # CPU-sized, our conventions (Pluecker rays, one camera per latent view, 1000 t timestep input).
    "tiny": _variant(
        dict(in_channels=4, width=32, depth=2, heads=2, patch=2, num_tokens=8, token_dim=4, ray_patch=2,
             ray_kind="plucker", kl_weight=1e-4, query_init_std=1.0, input_size=8),
        dict(in_channels=4, width=32, depth=2, heads=2, patch=1, ray_patch=2, freq_dim=32, temporal_downsample=1,
             input_size=4,
             ray_kind="plucker", pose_embed_bf16=False, timestep_input="scaled")),
    # Released checkpoints (github.com/mohammadasim98/scenetok): va-videodc_re10k.ckpt (802 M parameters).
    "re10k": _variant(
        dict(in_channels=32, width=768, depth=12, heads=12, patch=2, num_tokens=512, token_dim=64, ray_patch=16,
             kl_weight=1e-10),
        dict(in_channels=128, width=1024, depth=24, heads=16, patch=1, ray_patch=16)),
    # va-videodc_dl3dv.ckpt
    "dl3dv": _variant(
        dict(in_channels=32, width=768, depth=12, heads=12, patch=2, num_tokens=1024, token_dim=64, ray_patch=16),
        dict(in_channels=128, width=1024, depth=24, heads=16, patch=1, ray_patch=16)),
    # va-wan_dl3dv.ckpt: Wan2.2 target latents (48 channels, 16 x 16), release quirks on.
    "dl3dv_wan": _variant(
        dict(in_channels=32, width=768, depth=12, heads=12, patch=2, num_tokens=1024, token_dim=64, ray_patch=16),
        dict(in_channels=48, width=1024, depth=24, heads=16, patch=1, ray_patch=8, num_target_split=2, input_size=16,
             force_incorrect=True, wan_pose_padding=True)),
    # The official small fixtures (../shared/fixtures/scenetok/{a,b}/config.json via config_from_official).
    "fixture_a": _variant(
        dict(in_channels=8, width=64, depth=2, heads=4, patch=2, num_tokens=16, token_dim=8, ray_patch=4,
             kl_weight=1e-10, input_size=8),
        dict(in_channels=8, width=64, depth=2, heads=4, patch=1, ray_patch=4, freq_dim=32, input_size=4)),
    "fixture_b": _variant(
        dict(in_channels=12, width=96, depth=2, heads=3, patch=2, num_tokens=24, token_dim=12, ray_patch=8,
             input_size=8),
        dict(in_channels=6, width=96, depth=2, heads=3, patch=1, ray_patch=4, freq_dim=64, num_target_split=2,
             input_size=4,
             force_incorrect=True, wan_pose_padding=True)),
}

COMPRESSOR_KEYS = frozenset(VARIANTS["tiny"]["compressor"])
DECODER_KEYS = frozenset(VARIANTS["tiny"]["decoder"])


def resolve(kind: str, variant: str, overrides: Mapping[str, Any], keys: frozenset | None = None) -> dict[str, Any]:
    """The ``kind`` ('compressor' | 'decoder') config of ``variant`` with ``overrides`` applied (lists -> tuples);
    ValueError for an unknown variant / key, a bad ray_kind or a width not divisible by the heads."""
    keys = (COMPRESSOR_KEYS if kind == "compressor" else DECODER_KEYS) if keys is None else keys
    if variant not in VARIANTS:
        raise ValueError(f"SceneTok {kind}: unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    unknown = set(overrides) - keys
    if unknown:
        raise ValueError(f"SceneTok {kind}: unknown config keys {sorted(unknown)}; known: {sorted(keys)}")
    c = dict(VARIANTS[variant][kind], **overrides)
    c = {k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()}
    if c["ray_kind"] not in RAY_KINDS:
        raise ValueError(f"SceneTok {kind}: ray_kind must be one of {RAY_KINDS}, got {c['ray_kind']!r}")
    if c["width"] % c["heads"]:
        raise ValueError(f"SceneTok {kind}: width {c['width']} is not divisible by heads {c['heads']}")
    return c


def rope_split_3d(head_dim: int) -> tuple[int, int, int]:
    """Channels per (view, row, col) axis of the release's 3D RoPE: d = head_dim / 2 pair counts split
    d%3 == 0 -> (d/3,)*3; 1 -> (d/3+1, d/3, d/3); 2 -> (d/3, d/3+1, d/3+1); twice that many channels each."""
    if head_dim % 2:
        raise ValueError(f"3D RoPE: head_dim must be even, got {head_dim}")
    d = head_dim // 2
    q, r = divmod(d, 3)
    counts = {0: (q, q, q), 1: (q + 1, q, q), 2: (q, q + 1, q + 1)}[r]
    return tuple(2 * c for c in counts)
