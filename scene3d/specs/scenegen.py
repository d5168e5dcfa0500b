"""SceneGen sizes."""
from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    # Released scenegen_shift{1,4,12}_re10k (1.26 B parameters): SceneTok re10k tokens 512 x 64, VA-VAE f16d32
    # latents of 256 x 256 images (16 x 16 x 32), Pluecker maps 128 x 128 with 8 x 8 patches.
    "re10k": dict(hidden=1536, depth=24, heads=24, num_tokens=512, token_dim=64, latent_channels=32,
                  latent_patch=1, camera_size=(128, 128), camera_patch=8, freq_dim=256),
    "tiny": dict(hidden=64, depth=2, heads=4, num_tokens=16, token_dim=8, latent_channels=8, latent_patch=1,
                 camera_size=(16, 16), camera_patch=4, freq_dim=64),
}
