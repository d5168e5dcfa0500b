"""Wan 2.2 VAE official state_dict (``Wan2.2_VAE.pth`` = WanVAE_.state_dict(), loaded by SceneTok's AutoencoderWan
strict and without prefix) <-> our :class:`~scene3d.models.wan_vae.WanVAE`.

Our module tree mirrors the official names, so the table is derived from our variable paths with ``kernel`` ->
``weight`` and ``gamma`` kept:

- CausalConv3d weights (O, I, kt, kh, kw) and the resamplers' Conv2d weights (O, I, kh, kw) <-> our channels-last
  kernels (kt, kh, kw, I, O) / (kh, kw, I, O) (the engine's CONV kind, any rank);
- the attention's 1x1 Conv2d weights (O, I, 1, 1) <-> our dense kernels (I, O) (CONV1X1);
- RMS_norm gammas (C, 1, 1, 1) (the attention's images=True norm: (C, 1, 1)) <-> our (C,);
- biases copy. No buffers (the latent statistics are constants of the wrapper, not in the file): 196 keys at full
  size.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.models.wan_vae import WanVAE
from scene3d.specs.wan_vae import config_from_dict

GAMMA_VIDEO = engine.reshape(lambda s: s + (1, 1, 1), "gamma_c111")   # RMS_norm(images=False)
GAMMA_IMAGE = engine.reshape(lambda s: s + (1, 1), "gamma_c11")       # RMS_norm(images=True), the attention's


def _official_key(path: tuple) -> str:
    return ".".join("weight" if p == "kernel" else str(p) for p in path)


def _kind(path: tuple, ndim: int) -> engine.Kind:
    if path[-1] == "gamma":
        return GAMMA_IMAGE if len(path) >= 2 and path[-2] == "norm" else GAMMA_VIDEO
    if path[-1] == "kernel":
        return engine.CONV1X1 if ndim == 2 else engine.CONV
    return engine.COPY


class WanVAELayout(engine.Layout):
    what = "WanVAE"
    anchor = "encoder.conv1.weight"
    anchor_required = True

    def table(self, model) -> list[engine.Entry]:
        return [engine.entry(_official_key(p), p, _kind(p, len(a.shape))) for p, a in self.flat(model).items()]


LAYOUT = WanVAELayout()


def official_shapes(model) -> dict[str, tuple[int, ...]]:
    """{official key: torch shape} for ``model``'s configuration (nothing allocated with an abstract model)."""
    return LAYOUT.shapes(model)


def export_official(model, state=None, *, prefix: str = "") -> dict[str, Any]:
    """Our variables -> the release's state_dict ({key: float32 numpy array})."""
    return LAYOUT.export(model, state, prefix=prefix)


def official_to_state(model, state_dict: Mapping[str, Any], **kwargs):
    return LAYOUT.to_state(model, state_dict, **kwargs)


def import_official(model: WanVAE, state_dict, **kwargs) -> engine.Report:
    """Load an official state_dict (mapping or file: safetensors, ``Wan2.2_VAE.pth``) into ``model`` in place."""
    return LAYOUT.import_into(model, state_dict, **kwargs)


def load_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A fixture config.json path / dict, the manifest, or WanVAE_ kwargs -> WanVAE kwargs."""
    if not isinstance(config, Mapping):
        with open(config) as f:
            config = json.load(f)
    return config_from_dict(config)


def model_from_official(config, weights, *, strict: bool = True, **model_kwargs) -> tuple[WanVAE, engine.Report]:
    """A WanVAE built abstractly from ``config`` (see :func:`load_config`) holding ``weights`` (dict or file)."""
    kwargs = dict(load_config(config), **model_kwargs)
    return LAYOUT.build(lambda: WanVAE(rngs=nnx.Rngs(0), **kwargs), weights, strict=strict)
