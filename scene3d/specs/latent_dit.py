"""LatentDiT sizes."""
from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, depth=2, heads=1),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "XL": dict(width=1152, depth=28, heads=16),
}
