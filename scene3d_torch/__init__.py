"""scene3d_torch: a plain-PyTorch port of scene3d's inference paths (no jax / flax imports; from scene3d only the
jax-free architecture tables of ``scene3d.specs``, shared with the JAX models).

Weights come from ``scene3d.convert.torch_port`` ("torch_port" layout: the state_dict keys of these
modules). ``build(spec)`` rebuilds a model from its spec ``{"class": ..., "kwargs": {...}}``; ``load(path)`` reads
``FILE.safetensors`` plus the sidecar spec ``FILE.json`` and loads the weights strictly.
"""
from __future__ import annotations

import importlib
import json
import os

import torch

# spec["class"] -> (module, class name); modules are imported lazily.
MODELS: dict[str, tuple[str, str]] = {
    "LatentDiT": ("scene3d_torch.latent_dit", "LatentDiT"),
    "DiT3D": ("scene3d_torch.dit3d", "DiT3D"),
    "RAE3D": ("scene3d_torch.rae3d", "RAE3D"),
    "ViT": ("scene3d_torch.vit", "ViT"),
    "Can3Tok": ("scene3d_torch.can3tok", "Can3Tok"),
    "SceneTok": ("scene3d_torch.scenetok", "SceneTok"),
}


def build(spec: dict) -> torch.nn.Module:
    """A model (random values) from ``{"class": name, "kwargs": {...}}`` (``scene3d.convert.torch_port.model_spec``)."""
    if not isinstance(spec, dict) or "class" not in spec:
        raise ValueError(f"build: spec must be a dict with 'class' and 'kwargs', got {spec!r}")
    name = spec["class"]
    if name not in MODELS:
        raise ValueError(f"build: spec['class'] = {name!r}; known: {sorted(MODELS)}")
    module, cls = MODELS[name]
    return getattr(importlib.import_module(module), cls)(**dict(spec.get("kwargs") or {}))


def _paths(path: str) -> tuple[str, str]:
    base = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    base = base[:-len(".json")] if base.endswith(".json") else base
    return base + ".safetensors", base + ".json"


def load(path: str, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``FILE.safetensors`` (torch_port weights) + ``FILE.json`` -> model in eval mode (strict load).

    The sidecar is the spec ``{"class", "kwargs"}`` or a dict holding it under ``"spec"``. ``path`` may name
    either file or their common stem.
    """
    from safetensors.torch import load_file
    st, js = _paths(os.fspath(path))
    for p in (st, js):
        if not os.path.exists(p):
            raise ValueError(f"load: {p} not found (need both {st} and its spec {js})")
    with open(js) as f:
        spec = json.load(f)
    if isinstance(spec, dict) and isinstance(spec.get("spec"), dict):
        spec = spec["spec"]  # the scene3d.export sidecar: the spec nested beside class / step / params / ...
    model = build(spec)
    model.load_state_dict(load_file(st, device=str(device)), strict=True)
    return model.to(device).eval()


__all__ = ["MODELS", "build", "load"]
