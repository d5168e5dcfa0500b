"""A procedural image dataset that needs no download: coloured 2D shapes on textured backgrounds.

Each example is a deterministic function of (seed, index): one of ``SHAPES`` (the class label) drawn at a random
position, size, rotation and colour over a two-colour gradient background, anti-aliased by 4x supersampling.
It is the image task the trainer is proven on before the scene datasets land, and a handy sanity dataset.

Example dict: ``image`` float32 (H, W, 3) in [-1, 1], ``label`` int32 (class id).
"""
from __future__ import annotations

import numpy as np

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the shape's local frame (u, v in roughly [-1, 1])."""
    if kind == "disc":
        return u * u + v * v <= 1.0
    if kind == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if kind == "triangle":
        return (v <= 0.7) & (v >= 1.6 * np.abs(u) - 0.9)
    if kind == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.4)
    if kind == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")


def make_example(index: int, *, size: int = 32, seed: int = 0, supersample: int = 4) -> dict:
    """The example at ``index``: identical for identical (index, size, seed)."""
    if size < 4:
        raise ValueError(f"image size must be >= 4, got {size}")
    rng = np.random.default_rng([seed, int(index)])
    label = int(rng.integers(len(SHAPES)))
    s = size * supersample
    yy, xx = np.meshgrid((np.arange(s) + 0.5) / s, (np.arange(s) + 0.5) / s, indexing="ij")
    # Background: gradient between two muted colours along a random direction.
    c0, c1 = rng.uniform(0.0, 0.5, 3), rng.uniform(0.0, 0.5, 3)
    ang = rng.uniform(0, 2 * np.pi)
    g = np.clip((np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = (1 - g) * c0 + g * c1
    # Shape: random centre, radius, rotation, bright colour.
    r = rng.uniform(0.18, 0.35)
    cx, cy = rng.uniform(r, 1 - r, 2)
    th = rng.uniform(0, 2 * np.pi)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    u = np.cos(th) * dx + np.sin(th) * dy
    v = -np.sin(th) * dx + np.cos(th) * dy
    mask = _shape_mask(SHAPES[label], u, v)[..., None]
    colour = rng.uniform(0.5, 1.0, 3)
    img = np.where(mask, colour, img)
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return {"image": (img * 2.0 - 1.0).astype(np.float32), "label": np.int32(label)}


class ShapesSource:
    """grain-compatible random-access source (``__len__`` / ``__getitem__``)."""

    def __init__(self, num_examples: int, *, size: int = 32, seed: int = 0):
        self.num_examples, self.size, self.seed = int(num_examples), int(size), int(seed)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return make_example(index, size=self.size, seed=self.seed)
