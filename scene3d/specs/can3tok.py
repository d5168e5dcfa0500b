"""Can3Tok sizes: the release's architecture constants and the named variants.

``query_init`` picks how the learnable canonical queries start (``scene3d.models.can3tok``): 'release' (every row
gets the whole flattened ``query_grid`` lattice in its first 3 * cells dims, as the public code does) or
'per_query' (latent query j gets the centre of voxel j of the ``query_grid`` cells in its first 3 dims: one
canonical voxel position per query, our reading of the paper). ``query_grid`` is an int (a cube) or (gx, gy, gz).
"""
from __future__ import annotations

from typing import Any

# Release architecture constants shared by every variant unless overridden.
BASE: dict[str, Any] = dict(
    point_feats=11, input_offset=4, num_bands=8, include_pi=False, anchor_grid=0, anchor_extent=8.0,
    qkv_bias=False, use_ln_post=True, shape_token=True, mlp_ratio=4.0, norm_eps=1e-5, gs_channels=14,
    head_depth=3, query_init="release", query_grid=4, query_grid_extent=8.0, query_grid_scale=0.01,
    logvar_range=(-30.0, 20.0),
)

VARIANTS: dict[str, dict[str, Any]] = {
    # CPU-sized: runs forward + backward in well under a second.
    "tiny": dict(BASE, width=64, heads=4, encoder_depth=1, decoder_depth=1, num_latents=16, embed_dim=4,
                 latent_dim=64, num_gaussians=256, head_width=64, query_grid=2),
    # github.com/adobe-research/Can3Tok shapevae-256.yaml + the code's hard-coded sizes (1.08 B parameters).
    "release": dict(BASE, width=384, heads=12, encoder_depth=6, decoder_depth=12, num_latents=256, embed_dim=32,
                    latent_dim=16384, num_gaussians=40000, head_width=1024),
    # The paper's description: width 768, 12 heads, 8 / 16 blocks, 64x64x4 latent, voxel anchors on a 40^3 grid,
    # one canonical voxel position per query (8 x 8 x 4 cells = 256 queries). The extents here are the release's
    # [-8, 8]; configs/can3tok.py sets anchor_extent / query_grid_extent from the data's normalisation radius.
    "paper": dict(BASE, width=768, heads=12, encoder_depth=8, decoder_depth=16, num_latents=256, embed_dim=32,
                  latent_dim=16384, num_gaussians=40000, head_width=1024, anchor_grid=40, query_init="per_query",
                  query_grid=(8, 8, 4)),
    # The official small fixtures (../shared/fixtures/can3tok/{a,b}/config.json via config_from_official).
    "fixture_a": dict(BASE, width=192, heads=4, encoder_depth=1, decoder_depth=1, num_latents=16, embed_dim=8,
                      latent_dim=128, num_gaussians=1024, head_width=32),
    "fixture_b": dict(BASE, width=192, heads=6, encoder_depth=1, decoder_depth=1, num_latents=24, embed_dim=4,
                      latent_dim=96, num_gaussians=512, head_width=24, num_bands=6, include_pi=True,
                      qkv_bias=True),
}

CONFIG_KEYS = frozenset(VARIANTS["tiny"])

# Reconstruction losses over raw Gaussian channels (scene3d.losses.reconstruction, the port's loss).
RECON_LOSSES = ("mse", "sse", "l2_batch")
