"""Shared helpers for the torch_port tests: tiny JAX models with every parameter perturbed (so adaLN-Zero and
the zero-initialised final layers are not the identity / zero and parity is meaningful)."""
import jax
import numpy as np
from flax import nnx

from scene3d.models.dit3d import DiT3D
from scene3d.models.latent_dit import LatentDiT

LATENT = {
    "learned_labels": dict(in_dim=6, num_tokens=8, variant="tiny", width=32, depth=2, heads=2, num_classes=5),
    "rope2d_cond": dict(in_dim=6, num_tokens=12, variant="tiny", width=32, depth=2, heads=2, cond_dim=16,
                        pos="rope2d", grid=(3, 4)),
}
DIT3D = {mode: dict(variant="tiny", num_tokens=8, latent_dim=6, view_dim=16, cond_mode=mode, ray_bands=2,
                    traj_grid=2, dim=32, depth=2, heads=2)
         for mode in ("cross", "in_context")}


def perturb(model, seed: int = 1, scale: float = 0.1):
    """Add N(0, scale^2) noise to every nnx.Param in place; returns the model."""
    params = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), params))
    return model


def latent_dit(name: str, *, seed: int = 0, **kw):
    return perturb(LatentDiT(**LATENT[name], rngs=nnx.Rngs(seed), **kw), seed + 1)


def dit3d(mode: str, *, seed: int = 0, **kw):
    return perturb(DiT3D(**DIT3D[mode], rngs=nnx.Rngs(seed), **kw), seed + 1)
