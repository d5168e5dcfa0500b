"""scene3d.nn: shared NNX building blocks (attention, rope, embeddings, mlp, norms, adaLN, blocks, perceiver)."""
from scene3d.nn.adaln import AdaLNZero, modulate
from scene3d.nn.attention import Attention, blockwise_attention, merge_partial
from scene3d.nn.embed import (PatchEmbed, TimestepEmbedder, fourier_dim, fourier_features, patchify,
                              timestep_embedding, unpatchify)
from scene3d.nn.linear import constrain_tokens, dense
from scene3d.nn.mlp import Mlp, SwiGLU, make_mlp
from scene3d.nn.norm import LayerNorm, RMSNorm, make_norm
from scene3d.nn.perceiver import PerceiverProcess, PerceiverRead
from scene3d.nn.rope import (apply_rope_1d, apply_rope_nd, grid_positions_2d, grid_positions_3d, make_rope,
                             rope_frequencies)
from scene3d.nn.transformer import (LIGHTNING_DIT, REMAT_POLICIES, Block, DiTBlock, FinalLayer, Stack,
                                    remat_policy)

__all__ = [
    "AdaLNZero", "Attention", "Block", "DiTBlock", "FinalLayer", "LIGHTNING_DIT", "LayerNorm", "Mlp", "PatchEmbed",
    "PerceiverProcess", "PerceiverRead", "REMAT_POLICIES", "RMSNorm", "Stack", "SwiGLU", "TimestepEmbedder",
    "apply_rope_1d", "apply_rope_nd", "blockwise_attention", "constrain_tokens", "dense", "fourier_dim",
    "fourier_features", "grid_positions_2d", "grid_positions_3d", "make_mlp", "make_norm", "make_rope",
    "merge_partial", "modulate", "patchify", "remat_policy", "rope_frequencies", "timestep_embedding",
    "unpatchify",
]
