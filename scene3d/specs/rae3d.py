"""3DRAE sizes (perceiver and decoder; the tower is a ``specs.vit`` variant) and its config."""
from __future__ import annotations

import dataclasses
from typing import Any

from scene3d.specs import vit

# Perceiver / decoder sizes. The tower is chosen separately (``encoder``: a vit.VARIANTS name) and so is K.
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, heads=4, read_layers=1, process_depth=1, latent_dim=32, dec_dim=64, dec_depth=2,
                 dec_heads=4, ray_bands=4),
    "S": dict(dim=384, heads=6, read_layers=2, process_depth=4, latent_dim=64, dec_dim=384, dec_depth=8,
              dec_heads=6, ray_bands=6),
    "B": dict(dim=768, heads=12, read_layers=2, process_depth=6, latent_dim=128, dec_dim=768, dec_depth=12,
              dec_heads=12, ray_bands=6),
    "L": dict(dim=1024, heads=16, read_layers=3, process_depth=8, latent_dim=128, dec_dim=1024, dec_depth=16,
              dec_heads=16, ray_bands=6),
}
POINT_MODES = (None, "depth", "xyz")


@dataclasses.dataclass(frozen=True)
class RAE3DConfig:
    """All sizes of a 3DRAE. ``dec_patch`` None = the tower's patch. ``view_chunk``: views per block of the read
    (and target views per block of the decoder)."""
    encoder: str = "tiny-dinov2"
    num_tokens: int = 256
    dim: int = 64
    heads: int = 4
    read_layers: int = 1
    process_depth: int = 1
    latent_dim: int = 32
    dec_dim: int = 64
    dec_depth: int = 2
    dec_heads: int = 4
    dec_patch: int | None = None
    ray_bands: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    token_norm: bool = True
    points: str | None = "depth"
    align: bool = False
    view_chunk: int = 4

    def __post_init__(self):
        if self.encoder not in vit.VARIANTS:
            raise ValueError(f"RAE3DConfig.encoder: unknown ViT variant {self.encoder!r}; expected one of "
                             f"{sorted(vit.VARIANTS)}")
        if self.points not in POINT_MODES:
            raise ValueError(f"RAE3DConfig.points: expected one of {POINT_MODES}, got {self.points!r}")
        for name in ("num_tokens", "dim", "heads", "read_layers", "latent_dim", "dec_dim", "dec_depth",
                     "dec_heads", "view_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RAE3DConfig.{name}: expected >= 1, got {getattr(self, name)}")
        patch = int(vit.VARIANTS[self.encoder]["patch"])
        dp = patch if self.dec_patch is None else int(self.dec_patch)
        object.__setattr__(self, "dec_patch", dp)
        if self.align and patch % dp:
            raise ValueError(f"RAE3DConfig: align=True needs dec_patch ({dp}) to divide the tower patch ({patch}) "
                             "so the predicted features pool onto the tower's grid")

    @property
    def patch(self) -> int:
        return int(vit.VARIANTS[self.encoder]["patch"])

    @property
    def feature_dim(self) -> int:
        return int(vit.VARIANTS[self.encoder]["dim"])

    @property
    def family(self) -> str:
        return vit.VARIANTS[self.encoder]["family"]


def rae3d_config(variant: str | None = None, **overrides) -> RAE3DConfig:
    """A :class:`RAE3DConfig` from a VARIANTS name and/or explicit fields (overrides win)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"RAE3D: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    fields = dict(VARIANTS[variant]) if variant else {}
    fields.update({k: v for k, v in overrides.items() if v is not None or k in ("points", "dec_patch")})
    known = {f.name for f in dataclasses.fields(RAE3DConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"RAE3D: unknown config fields {unknown}; expected some of {sorted(known)}")
    return RAE3DConfig(**fields)
