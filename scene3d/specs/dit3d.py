"""3DDiT sizes and condition modes."""
from __future__ import annotations

from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, depth=2, heads=4),
    "S": dict(dim=384, depth=12, heads=6),
    "B": dict(dim=768, depth=12, heads=12),
    "L": dict(dim=1024, depth=24, heads=16),
    "XL": dict(dim=1152, depth=28, heads=16),  # DiT-XL, the trunk of the RAE work's DiT^DH-XL
}
COND_MODES = ("cross", "in_context")
# Condition configurations a task samples per example (scene3d.tasks.dit3d).
CONDITIONS = ("uncond", "one_view", "views", "trajectory", "views_trajectory")
