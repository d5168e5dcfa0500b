"""VA-VAE / LDM ``AutoencoderKL`` PyTorch state_dict <-> our :class:`~scene3d.models.image_vae.ImageVAE` (the table,
and ``config_from_official``).

Official keys (LDM/taming layout, as in the VA-VAE checkpoints' ``state_dict``): ``encoder.conv_in``,
``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``, ``encoder.down.{i}.attn.{j}.{norm,q,k,v,
proj_out}``, ``encoder.down.{i}.downsample.conv``, ``encoder.mid.{block_1,attn_1,block_2}``, ``encoder.norm_out``,
``encoder.conv_out``, ``quant_conv``, ``post_quant_conv`` and the mirrored ``decoder.*`` (``up.{i}.upsample.conv``).
Our module tree uses the same names except ``resample`` (= downsample / upsample), GroupNorm ``scale`` and the
attention blocks' ``mha`` (an ``nn.Attention`` with one head: q, k, v, out = proj_out), so the table is derived
from our variable paths: torch Conv2d weights (O, I, kh, kw) <-> our channels-last kernels (kh, kw, I, O); the
attention 1x1 convs (O, I, 1, 1) <-> our dense kernels (I, O). Training-only tensors of the released checkpoints
(``loss.*`` - LPIPS and discriminator -, the vision-foundation alignment ``foundation_model.*`` / ``linear_proj*``)
are ignored and listed in the report.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.models.image_vae import ImageVAE

TRAINING_ONLY = "training-only (loss / alignment)"


def config_from_official(ddconfig: Mapping[str, Any], embed_dim: int | None = None) -> dict[str, Any]:
    """LDM ``ddconfig`` (+ ``embed_dim``) -> ImageVAE kwargs. Accepts the full model config
    (``{'embed_dim': .., 'ddconfig': {..}}``) too."""
    if "ddconfig" in ddconfig:
        embed_dim = ddconfig.get("embed_dim", embed_dim)
        ddconfig = ddconfig["ddconfig"]
    if not ddconfig.get("double_z", True):
        raise ValueError("config_from_official: only double_z=True (KL autoencoder) is supported")
    ch_mult = tuple(int(m) for m in ddconfig["ch_mult"])
    res = int(ddconfig.get("resolution", 256))
    attn_res = {int(r) for r in ddconfig.get("attn_resolutions", ())}
    z = int(ddconfig["z_channels"])
    return dict(ch=int(ddconfig["ch"]), ch_mult=ch_mult, num_res_blocks=int(ddconfig["num_res_blocks"]),
                attn_levels=tuple(i for i in range(len(ch_mult)) if res // 2 ** i in attn_res), z_channels=z,
                embed_dim=int(embed_dim if embed_dim is not None else z), in_channels=int(ddconfig["in_channels"]),
                out_channels=int(ddconfig["out_ch"]), num_groups=32)


def _official_key(path: tuple) -> str:
    parts = []
    for i, p in enumerate(path):
        if p == "mha":  # our nn.Attention inside AttnBlock: q, k, v, out -> q, k, v, proj_out
            continue
        if p == "resample":
            p = "downsample" if path[0] == "encoder" else "upsample"
        elif p in ("kernel", "scale"):
            p = "weight"
        elif p == "out" and path[i - 1] == "mha":
            p = "proj_out"
        parts.append(str(p))
    return ".".join(parts)


class ImageVAELayout(engine.Layout):
    what = "ImageVAE"
    anchor = "encoder.conv_in.weight"
    anchor_required = True
    ignore = {p: TRAINING_ONLY for p in ("loss.", "foundation_model.", "linear_proj")}

    def table(self, model: ImageVAE) -> list[engine.Entry]:
        kinds = {4: engine.CONV, 2: engine.CONV1X1}
        return [engine.entry(_official_key(p), p, kinds.get(len(a.shape), engine.COPY))
                for p, a in self.flat(model).items()]


LAYOUT = ImageVAELayout()


def official_shapes(model: ImageVAE) -> dict[str, tuple[int, ...]]:
    """{official key: torch shape} for ``model``'s configuration (nothing allocated)."""
    return LAYOUT.shapes(model)


def export_official(model: ImageVAE, state: nnx.State | Mapping | None = None, *, prefix: str = "") -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy array}; an abstract model gives ShapeDtypeStructs."""
    return LAYOUT.export(model, state, prefix=prefix)


def official_to_state(model: ImageVAE, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, engine.Report]:
    """Official state_dict -> (nnx.State of our Params, report); training-only tensors are ignored, other unknown
    keys raise unless ``strict=False``."""
    return LAYOUT.to_state(model, state_dict, prefix=prefix, strict=strict, name=name)


load_official = engine.load_state_dict


def import_official(model: ImageVAE, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> engine.Report:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    return LAYOUT.import_into(model, state_dict, **kwargs)


def model_from_official(config: Mapping[str, Any], weights, *, strict: bool = True,
                        **model_kwargs) -> tuple[ImageVAE, engine.Report]:
    """An ImageVAE built abstractly from an LDM config (see :func:`config_from_official`), holding ``weights``
    (dict or file). model_kwargs (latent_mean, latent_std, latent_scale, attn_impl, dtype ...) are passed on."""
    kwargs = dict(config_from_official(config), **model_kwargs)
    return LAYOUT.build(lambda: ImageVAE("f16c32", rngs=nnx.Rngs(0), **kwargs), weights, strict=strict)
