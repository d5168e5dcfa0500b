"""VA-VAE / LDM AutoencoderKL sizes."""
from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    # VA-VAE f16d32 (vavae-imagenet256-f16d32-dinov2): ddconfig ch 128, ch_mult [1,1,2,2,4], 2 res blocks,
    # attention at resolution 16 of 256 (the last level), z_channels = embed_dim = 32.
    "f16c32": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_levels=(4,), z_channels=32,
                   embed_dim=32, num_groups=32),
    # f16 like the release (attention only in the mid blocks), a few thousand times cheaper: trains on a CPU.
    "tiny": dict(ch=16, ch_mult=(1, 1, 2, 2, 2), num_res_blocks=1, attn_levels=(), z_channels=8, embed_dim=8,
                 num_groups=8),
}
