"""Loading the released SceneTok / SceneGen checkpoints and their frozen autoencoders from the user's files.

Nothing is downloaded: every piece comes from a path. The files, as released:

| flag          | file (release)                                         | read by                                   |
| ------------- | ------------------------------------------------------ | ----------------------------------------- |
| ``scenetok``  | ``va-videodc_re10k.ckpt`` / ``va-videodc_dl3dv.ckpt`` / ``va-wan_dl3dv.ckpt`` (Lightning: ``state_dict`` with ``compressor.*``, ``denoiser.*``) | :mod:`scene3d.convert.scenetok` |
| ``scenegen``  | ``scenegen_shift{1,4,12}_re10k.ckpt`` (``scene_generator.*``) | :mod:`scene3d.convert.scenegen`   |
| ``vavae``     | ``vavae-imagenet256-f16d32-dinov2.pt`` (LDM AutoencoderKL ``state_dict``) | :mod:`scene3d.convert.image_vae` |
| ``videodc``   | ``F32T4C128_AE.safetensors`` (Open-Sora v2 Video DC-AE) | :mod:`scene3d.convert.video_dcae`         |
| ``wan``       | ``Wan2.2_VAE.pth``                                      | :mod:`scene3d.convert.wan_vae`            |

The architecture is the released one unless a config says otherwise: ``*_config`` is a JSON file, either the
release's own description (a fixture ``config.json`` / manifest as in ../shared/fixtures, an LDM ``ddconfig`` for
the VA-VAE) or our keyword arguments ``{"variant": NAME, ...overrides}``. Without a config the SceneTok variant
is recognised from the checkpoint's tensor shapes (``re10k``, ``dl3dv``, ``dl3dv_wan``).
A missing file is a ``FileNotFoundError`` naming the flag and the file expected there.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from flax import nnx

from scene3d.convert import engine
from scene3d.convert import image_vae as cv_image_vae
from scene3d.convert import scenegen as cv_scenegen
from scene3d.convert import scenetok as cv_scenetok
from scene3d.convert import video_dcae as cv_video_dcae
from scene3d.models import scenetok_release as rel
from scene3d.models.image_vae import ImageVAE
from scene3d.models.scenegen import SceneGen
from scene3d.models.scenetok import SceneTok
from scene3d.models.video_dcae import VideoDCAE

EXPECTED = {
    "scenetok": "the SceneTok checkpoint (va-videodc_re10k.ckpt, va-videodc_dl3dv.ckpt or va-wan_dl3dv.ckpt)",
    "scenegen": "the SceneGen checkpoint (scenegen_shift{1,4,12}_re10k.ckpt)",
    "vavae": "the VA-VAE checkpoint (vavae-imagenet256-f16d32-dinov2.pt)",
    "videodc": "the Video DC-AE weights (F32T4C128_AE.safetensors of hpcai-tech/Open-Sora-v2-Video-DC-AE)",
    "wan": "the Wan 2.2 VAE weights (Wan2.2_VAE.pth of Wan-AI/Wan2.2-TI2V-5B)",
}
RELEASE_SCENETOK = ("re10k", "dl3dv", "dl3dv_wan")


def check_file(path, flag: str, what: str | None = None) -> str:
    """``path`` as a string, or FileNotFoundError naming ``--flag`` and what belongs there."""
    if path is None or not os.path.exists(os.fspath(path)):
        raise FileNotFoundError(f"--{flag}: {what or EXPECTED.get(flag, 'a file')} not found at {path!r}")
    return os.fspath(path)


def read_config(path, flag: str) -> dict | None:
    if path is None:
        return None
    path = check_file(path, flag, "a JSON config file")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--{flag} {path}: not a JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"--{flag} {path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _ours(cfg: Mapping[str, Any] | None) -> dict | None:
    """Our kwargs format {"variant": ..., ...} or None when ``cfg`` is a release description."""
    return dict(cfg) if cfg is not None and "variant" in cfg else None


def _state_dict(path, flag: str) -> dict:
    try:
        return engine.load_state_dict(check_file(path, flag))
    except (OSError, RuntimeError, EOFError) as e:  # torch.load / safetensors failures
        raise ValueError(f"--{flag} {path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------ SceneTok


def scenetok_kwargs(config: Mapping | None) -> dict:
    """SceneTok constructor kwargs (variant / compressor / decoder) of a config (None: decided by the weights)."""
    ours = _ours(config)
    if ours is not None:
        return dict(variant=ours.pop("variant"), compressor=ours.pop("compressor", {}),
                    decoder=ours.pop("decoder", {}), **ours)
    cfg = cv_scenetok.config_from_official(config)
    return dict(variant="tiny", compressor=cfg["compressor"], decoder=cfg["decoder"])


def recognise_scenetok(weights: Mapping[str, Any], path: str = "checkpoint") -> str:
    """The released SceneTok variant whose tensor shapes ``weights`` has."""
    found = {k: tuple(v.shape) for k, v in weights.items() if k.startswith(("compressor.", "denoiser."))}
    tried = []
    for v in RELEASE_SCENETOK:
        model = nnx.eval_shape(lambda v=v: SceneTok(variant=v, rngs=nnx.Rngs(0)))
        want = cv_scenetok.official_shapes(model)
        if all(found.get(k) == s for k, s in want.items()):
            return v
        tried.append(v)
    raise ValueError(f"{path}: the tensors match none of the released SceneTok configurations {tried}; give "
                     "--scenetok_config (the release's config.json or {\"variant\": ..., \"compressor\": {...}, "
                     "\"decoder\": {...}})")


def load_scenetok(path, config: Mapping | None = None, **model_kwargs) -> tuple[SceneTok, engine.Report]:
    """A SceneTok holding the compressor / denoiser weights of a release checkpoint (other keys, e.g. a bundled
    autoencoder or EMA copies, are ignored and listed in the report)."""
    weights = _state_dict(path, "scenetok")
    kwargs = (dict(variant=recognise_scenetok(weights, os.fspath(path)))
              if config is None else scenetok_kwargs(config))
    kwargs.update(model_kwargs)
    model, report = cv_scenetok.LAYOUT.build(lambda: SceneTok(rngs=nnx.Rngs(0), **kwargs), weights, prefix="")
    return model, report


# ------------------------------------------------------------------------------------------------ autoencoders


def load_vavae(path, config: Mapping | None = None, **model_kwargs) -> tuple[ImageVAE, engine.Report]:
    """The VA-VAE with the release's latent normalisation (``scenetok_release.vavae_stats``)."""
    weights = _state_dict(path, "vavae")
    stats = rel.vavae_stats()
    ours = _ours(config)
    if ours is not None:
        kwargs = dict(stats, **ours, **model_kwargs)
        return cv_image_vae.LAYOUT.build(lambda: ImageVAE(rngs=nnx.Rngs(0), **kwargs), weights, strict=False)
    if config is None:
        kwargs = dict(stats, **model_kwargs)
        return cv_image_vae.LAYOUT.build(lambda: ImageVAE("f16c32", rngs=nnx.Rngs(0), **kwargs), weights,
                                         strict=False)
    return cv_image_vae.model_from_official(config, weights, strict=False, **stats, **model_kwargs)


def _autoencoder_kwargs(config: Mapping | None, load_config) -> dict:
    """Constructor kwargs of a target autoencoder: ours as given, the release's description through its importer's
    ``load_config``, none (the released variant) without a config."""
    ours = _ours(config)
    if ours is not None:
        return ours
    return {} if config is None else dict(load_config(config))


def load_videodc(path, config: Mapping | None = None, **model_kwargs) -> tuple[VideoDCAE, engine.Report]:
    weights = _state_dict(path, "videodc")
    kwargs = dict(_autoencoder_kwargs(config, cv_video_dcae.load_config), **model_kwargs)
    return cv_video_dcae.LAYOUT.build(lambda: VideoDCAE(rngs=nnx.Rngs(0), **kwargs), weights)


def load_wan(path, config: Mapping | None = None, **model_kwargs):
    from scene3d.convert import wan_vae as cv_wan  # noqa: PLC0415  (heavy; only for Wan targets)
    from scene3d.models.wan_vae import WanVAE  # noqa: PLC0415

    weights = _state_dict(path, "wan")
    kwargs = dict(_autoencoder_kwargs(config, cv_wan.load_config), **model_kwargs)
    return cv_wan.LAYOUT.build(lambda: WanVAE(rngs=nnx.Rngs(0), **kwargs), weights)


def load_scenegen(path, config: Mapping | None = None, **model_kwargs) -> tuple[SceneGen, engine.Report]:
    weights = cv_scenegen.load_official(check_file(path, "scenegen"))
    ours = _ours(config)
    if ours is not None:
        kwargs = dict(ours, **model_kwargs)
        variant = kwargs.pop("variant")
        return cv_scenegen.LAYOUT.build(lambda: SceneGen(variant, rngs=nnx.Rngs(0), **kwargs), weights,
                                        strict=False)
    if config is not None:
        return cv_scenegen.model_from_official(config, weights, strict=False, **model_kwargs)
    return cv_scenegen.LAYOUT.build(lambda: SceneGen("re10k", rngs=nnx.Rngs(0), **model_kwargs), weights,
                                    strict=False)


def load_pipeline(*, scenetok, vavae, videodc=None, wan=None, scenetok_config=None, vavae_config=None,
                  target_config=None, dtype=None) -> tuple[rel.ReleaseSceneTok, dict[str, engine.Report]]:
    """The release's SceneTok pipeline from the user's files (exactly one of ``videodc`` / ``wan``)."""
    if (videodc is None) == (wan is None):
        raise ValueError("give exactly one target autoencoder: --videodc=F32T4C128_AE.safetensors or "
                         "--wan=Wan2.2_VAE.pth")
    kw = {} if dtype is None else {"dtype": dtype}
    for flag, p in (("scenetok", scenetok), ("vavae", vavae), ("videodc", videodc), ("wan", wan)):
        if p is not None or flag in ("scenetok", "vavae"):
            check_file(p, flag)
    st, r_st = load_scenetok(scenetok, scenetok_config, **kw)
    vae, r_vae = load_vavae(vavae, vavae_config)
    if videodc is not None:
        target, r_t = load_videodc(videodc, target_config, **kw)
        kind = "videodc"
    else:
        target, r_t = load_wan(wan, target_config, **kw)
        kind = "wan"
    reports = {"scenetok": r_st, "vavae": r_vae, kind: r_t}
    return rel.ReleaseSceneTok(st, vae, target, kind), reports

