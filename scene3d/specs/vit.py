"""ViT towers (DINOv2, DINOv2 with registers, SigLIP2): families, image statistics, sizes, config."""
from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("dinov2", "dinov2_reg", "siglip2")

# Per-family normalisation of the HF image processors (BitImageProcessor for DINOv2: ImageNet statistics;
# Siglip2ImageProcessor: 0.5 / 0.5, i.e. [-1, 1]).
IMAGE_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "dinov2_reg": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# pos_grid: side of the learned position-embedding grid; native resolution = pos_grid * patch.
VARIANTS: dict[str, dict[str, Any]] = {
    # facebook/dinov2-{small,base,large}: patch 14, image 518 (37 x 37 positions), 4x MLP, exact GELU.
    "dinov2-S": dict(family="dinov2", dim=384, depth=12, num_heads=6, patch=14, pos_grid=37),
    "dinov2-B": dict(family="dinov2", dim=768, depth=12, num_heads=12, patch=14, pos_grid=37),
    "dinov2-L": dict(family="dinov2", dim=1024, depth=24, num_heads=16, patch=14, pos_grid=37),
    # facebook/dinov2-with-registers-{small,base,large}: the same plus 4 register tokens.
    "dinov2reg-S": dict(family="dinov2_reg", dim=384, depth=12, num_heads=6, patch=14, pos_grid=37,
                        num_registers=4),
    "dinov2reg-B": dict(family="dinov2_reg", dim=768, depth=12, num_heads=12, patch=14, pos_grid=37,
                        num_registers=4),
    "dinov2reg-L": dict(family="dinov2_reg", dim=1024, depth=24, num_heads=16, patch=14, pos_grid=37,
                        num_registers=4),
    # google/siglip2-*-patch16-naflex (and -256): 16 x 16 positions, tanh GELU, attention-pooling head.
    "siglip2-B": dict(family="siglip2", dim=768, depth=12, num_heads=12, patch=16, pos_grid=16, mlp_dim=3072),
    "siglip2-L": dict(family="siglip2", dim=1024, depth=24, num_heads=16, patch=16, pos_grid=16, mlp_dim=4096),
    "siglip2-So400m": dict(family="siglip2", dim=1152, depth=27, num_heads=16, patch=16, pos_grid=16,
                           mlp_dim=4304),
    # Tiny towers for tests (random weights).
    "tiny-dinov2": dict(family="dinov2", dim=64, depth=2, num_heads=4, patch=14, pos_grid=3),
    "tiny-dinov2reg": dict(family="dinov2_reg", dim=64, depth=2, num_heads=4, patch=14, pos_grid=3,
                           num_registers=4),
    "tiny-siglip2": dict(family="siglip2", dim=64, depth=2, num_heads=4, patch=16, pos_grid=4, mlp_dim=128),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Sizes of a tower. mlp_dim defaults to 4 * dim; act to exact GELU (DINOv2) or tanh GELU (SigLIP2)."""
    family: str
    dim: int
    depth: int
    num_heads: int
    patch: int
    pos_grid: int
    mlp_dim: int | None = None
    num_registers: int = 0
    use_head: bool | None = None  # SigLIP2 attention-pooling head (default True for siglip2)
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str | None = None
    layerscale_value: float = 1.0  # DINOv2 LayerScale init (checkpoints overwrite it)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ViTConfig.family: expected one of {FAMILIES}, got {self.family!r}")
        if self.family != "dinov2_reg" and self.num_registers:
            raise ValueError(f"ViTConfig.num_registers: only 'dinov2_reg' has registers, got {self.num_registers} "
                             f"for family {self.family!r}")
        if self.family == "dinov2_reg" and self.num_registers < 1:
            raise ValueError("ViTConfig.num_registers: family 'dinov2_reg' needs num_registers >= 1")
        if self.dim % self.num_heads:
            raise ValueError(f"ViTConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.use_head and self.family != "siglip2":
            raise ValueError(f"ViTConfig.use_head: only 'siglip2' has a pooling head, not {self.family!r}")
        object.__setattr__(self, "mlp_dim", int(self.mlp_dim or 4 * self.dim))
        object.__setattr__(self, "use_head", bool(self.family == "siglip2" if self.use_head is None
                                                  else self.use_head))
        object.__setattr__(self, "act", self.act or ("gelu_tanh" if self.family == "siglip2" else "gelu"))

    @property
    def native_size(self) -> int:
        return self.pos_grid * self.patch

    @property
    def num_prefix(self) -> int:
        """Tokens before the patches: cls + registers for DINOv2, none for SigLIP2."""
        return 0 if self.family == "siglip2" else 1 + self.num_registers


def vit_config(variant: str | None = None, **overrides) -> ViTConfig:
    """A :class:`ViTConfig` from a VARIANTS name and/or explicit fields (overrides win)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"ViT: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    fields = dict(VARIANTS[variant]) if variant else {}
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"ViT: unknown config fields {unknown}; expected some of {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(ViTConfig)
                     if f.default is dataclasses.MISSING and f.name not in fields)
    if missing:
        raise ValueError(f"ViT: missing config fields {missing} (pass a variant or set them)")
    return ViTConfig(**fields)
