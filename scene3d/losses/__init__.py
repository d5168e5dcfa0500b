"""scene3d.losses: training losses (they never import models).

reconstruction: mse / sse / l2_batch over raw Gaussian channels, per channel-group MSE.
kl: diagonal-Gaussian KL to N(0, I), the annealed KL weight.
"""
from scene3d.losses.kl import diagonal_gaussian_kl, kl_loss, kl_weight
from scene3d.losses.reconstruction import (RECON_LOSSES, channel_group_mse, l2_batch, mse, reconstruction_loss,
                                           sse)

__all__ = ["diagonal_gaussian_kl", "kl_loss", "kl_weight", "RECON_LOSSES", "channel_group_mse", "l2_batch", "mse",
           "reconstruction_loss", "sse"]
