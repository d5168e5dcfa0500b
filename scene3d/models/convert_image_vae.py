"""VA-VAE / LDM ``AutoencoderKL`` PyTorch state_dict <-> our :class:`~scene3d.models.image_vae.ImageVAE` NNX state.

Official keys (LDM/taming layout, as in the VA-VAE checkpoints' ``state_dict``): ``encoder.conv_in``,
``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``, ``encoder.down.{i}.attn.{j}.{norm,q,k,v,
proj_out}``, ``encoder.down.{i}.downsample.conv``, ``encoder.mid.{block_1,attn_1,block_2}``, ``encoder.norm_out``,
``encoder.conv_out``, ``quant_conv``, ``post_quant_conv`` and the mirrored ``decoder.*`` (``up.{i}.upsample.conv``).
Our module tree uses the same names except ``resample`` (= downsample / upsample), GroupNorm ``scale`` and the
attention blocks' ``mha`` (an ``nn.Attention`` with one head: q, k, v, out = proj_out).

Layouts: torch Conv2d weights (O, I, kh, kw) <-> our channels-last kernels (kh, kw, I, O); the attention 1x1 convs
(O, I, 1, 1) <-> our dense kernels (I, O). Training-only tensors of the released checkpoints (``loss.*`` - LPIPS and
discriminator -, the vision-foundation alignment ``foundation_model.*`` / ``linear_proj*``) are ignored and
listed in the report.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.models.convert_common import ImportReport, flatten, load_state_dict, set_path
from scene3d.models.image_vae import ImageVAE

TRAINING_ONLY_PREFIXES = ("loss.", "foundation_model.", "linear_proj")


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


def _to_official(arr, xp):
    if arr.ndim == 4:  # conv (kh, kw, I, O) -> (O, I, kh, kw)
        return xp.transpose(arr, (3, 2, 0, 1))
    if arr.ndim == 2:  # 1x1 conv as dense (I, O) -> (O, I, 1, 1)
        return xp.transpose(arr)[:, :, None, None]
    return arr


def _from_official(arr: np.ndarray, target_ndim: int) -> np.ndarray:
    if target_ndim == 4:
        return np.transpose(arr, (2, 3, 1, 0))
    if target_ndim == 2:
        return np.transpose(arr[:, :, 0, 0])
    return arr


def official_shapes(model: ImageVAE) -> dict[str, tuple[int, ...]]:
    """{official key: torch shape} for ``model``'s configuration (nothing allocated)."""
    flat = flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {_official_key(p): _torch_shape(a.shape) for p, a in flat.items()}


def _torch_shape(shape) -> tuple[int, ...]:
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:
        return (shape[1], shape[0], 1, 1)
    return tuple(shape)


def export_official(model: ImageVAE, state: nnx.State | None = None, *, prefix: str = "") -> dict[str, Any]:
    """Our parameters -> the official state_dict {key: numpy array}; an abstract model gives ShapeDtypeStructs."""
    state = nnx.state(model, nnx.Param) if state is None else state
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    out = {}
    for p, a in flatten(pure).items():
        if isinstance(a, jax.ShapeDtypeStruct):
            out[prefix + _official_key(p)] = jax.ShapeDtypeStruct(_torch_shape(a.shape), a.dtype)
        else:
            out[prefix + _official_key(p)] = np.ascontiguousarray(_to_official(np.asarray(a), np))
    return out


def _detect_prefix(keys) -> str:
    anchor = "encoder.conv_in.weight"
    for k in keys:
        if k.endswith(anchor):
            return k[:-len(anchor)]
    raise ValueError(f"no '{anchor}' key found: not an LDM/VA-VAE AutoencoderKL state_dict "
                     f"(first keys: {sorted(keys)[:5]})")


def official_to_state(model: ImageVAE, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                      strict: bool = True, name: str = "state_dict") -> tuple[nnx.State, ImportReport]:
    """Official state_dict -> (nnx.State of our Params, report). Missing keys or shape mismatches raise ValueError;
    training-only tensors are ignored; other unknown keys raise unless ``strict=False``."""
    keys = list(state_dict)
    prefix = _detect_prefix(keys) if prefix is None else prefix
    params = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(params)
    flat = flatten(pure)
    wanted = {_official_key(p): p for p in flat}
    missing = [prefix + k for k in wanted if prefix + k not in state_dict]
    if missing:
        raise ValueError(f"{name}: missing {len(missing)} keys for this ImageVAE configuration: "
                         + ", ".join(f"{k} (expected shape {_torch_shape(flat[wanted[k[len(prefix):]]].shape)})"
                                     for k in missing[:20]))
    ignored, unknown = {}, []
    for k in keys:
        rel = k[len(prefix):] if k.startswith(prefix) else None
        if rel in wanted:
            continue
        if rel is None:
            ignored[k] = f"outside the prefix {prefix!r}"
        elif rel.startswith(TRAINING_ONLY_PREFIXES):
            ignored[k] = "training-only (loss / alignment)"
        else:
            unknown.append(k)
    if unknown and strict:
        raise ValueError(f"{name}: {len(unknown)} keys this ImageVAE configuration does not use: {unknown[:20]} "
                         "(pass strict=False to ignore them)")
    ignored.update({k: "unexpected key (strict=False)" for k in unknown})
    new = {}
    for k, p in wanted.items():
        arr = np.asarray(state_dict[prefix + k], np.float32)
        target = flat[p]
        if arr.shape != _torch_shape(target.shape):
            raise ValueError(f"{name}: {prefix + k} has shape {arr.shape}, expected {_torch_shape(target.shape)}")
        new[p] = jnp.asarray(_from_official(arr, len(target.shape)), target.dtype)

    for p, v in new.items():
        set_path(pure, p, v)
    nnx.replace_by_pure_dict(params, pure)
    return params, ImportReport(prefix=prefix, consumed=sorted(prefix + k for k in wanted), ignored=ignored)


def load_official(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file, or a torch checkpoint (``.pt`` / ``.ckpt``, its ``state_dict`` entry) -> numpy dict."""
    return load_state_dict(path)


def import_official(model: ImageVAE, state_dict: Mapping[str, Any] | str | os.PathLike, **kwargs) -> ImportReport:
    """Load an official state_dict (dict or file) into ``model`` in place; returns the report."""
    name = "state_dict"
    if not isinstance(state_dict, Mapping):
        name, state_dict = os.fspath(state_dict), load_official(state_dict)
    params, report = official_to_state(model, state_dict, name=name, **kwargs)
    nnx.update(model, params)
    return report


def model_from_official(config: Mapping[str, Any], weights, *, strict: bool = True,
                        **model_kwargs) -> tuple[ImageVAE, ImportReport]:
    """Build an ImageVAE abstractly from an LDM config (see :func:`config_from_official`) and load ``weights``
    (dict or file). model_kwargs (latent_mean, latent_std, latent_scale, attn_impl, dtype ...) are passed on."""
    kwargs = dict(config_from_official(config), **model_kwargs)
    abstract = nnx.eval_shape(lambda: ImageVAE("f16c32", rngs=nnx.Rngs(0), **kwargs))
    name = "state_dict"
    if not isinstance(weights, Mapping):
        name, weights = os.fspath(weights), load_official(weights)
    params, report = official_to_state(abstract, weights, name=name, strict=strict)
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    return nnx.merge(graphdef, params, rest), report
