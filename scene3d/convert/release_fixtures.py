"""Tiny random-weight checkpoints in the release's file layouts (for tests, demos and the runlocal configs).

``write_tiny_release(folder, seed)`` writes what ``scene3d.release`` reads, at CPU sizes:

  scenetok.ckpt        Lightning-style {'state_dict': compressor.* + denoiser.* (+ an ignored extra key)}
  vavae.pt             {'state_dict': LDM AutoencoderKL keys} of a narrow f16 VA-VAE with 32 latent channels
  videodc.safetensors  the Video DC-AE 'tiny' variant (the released architecture at fixture widths)
  scenegen.ckpt        {'state_dict': scene_generator.*} generating the SceneTok's tokens
  *_config.json        our config format ({"variant": ..., overrides}) for each

and returns {name: path} plus the models themselves (``models``) for direct comparisons.
"""
from __future__ import annotations

import os

from flax import nnx

from scene3d.convert import engine
from scene3d.convert import image_vae as cv_image_vae
from scene3d.convert import scenegen as cv_scenegen
from scene3d.convert import scenetok as cv_scenetok
from scene3d.convert import video_dcae as cv_video_dcae
from scene3d.core import io

SCENETOK = {"variant": "tiny",
            "compressor": dict(in_channels=32, ray_kind="official", input_size=4),
            "decoder": dict(in_channels=8, temporal_downsample=4, ray_kind="official", input_size=2,
                            timestep_input="official", pose_embed_bf16=True)}
VAVAE = {"variant": "tiny", "ch": 32, "ch_mult": [1, 1, 1, 1, 1], "z_channels": 32, "embed_dim": 32,
         "num_groups": 32}
VIDEODC = {"variant": "tiny"}
SCENEGEN = {"variant": "tiny", "num_tokens": 8, "token_dim": 4, "latent_channels": 32, "token_scale": 0.1,
            "shift": 4.0}


def _torch_save(path, state_dict):
    import numpy as np
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    io.atomic_write(os.fspath(path), lambda tmp: torch.save({"state_dict": sd, "epoch": 0}, tmp))


def write_tiny_release(folder, seed: int = 0) -> dict:
    from scene3d.models.image_vae import ImageVAE
    from scene3d.models.scenegen import SceneGen
    from scene3d.models.scenetok import SceneTok
    from scene3d.models.scenetok_release import vavae_stats
    from scene3d.models.video_dcae import VideoDCAE

    os.makedirs(folder, exist_ok=True)
    rngs = nnx.Rngs(seed)
    st = SceneTok(variant="tiny", compressor=SCENETOK["compressor"], decoder=SCENETOK["decoder"], rngs=rngs)
    vae = ImageVAE(rngs=rngs, **vavae_stats(), **VAVAE)
    dc = VideoDCAE(rngs=rngs, **VIDEODC)
    sg_kw = dict(SCENEGEN)
    sg = SceneGen(sg_kw.pop("variant"), rngs=rngs, **sg_kw)
    paths = {k: os.path.join(folder, f) for k, f in (("scenetok", "scenetok.ckpt"), ("vavae", "vavae.pt"),
                                                      ("videodc", "videodc.safetensors"),
                                                      ("scenegen", "scenegen.ckpt"))}
    sd = cv_scenetok.export_official(st)
    sd["autoencoder.unused.weight"] = sd[next(iter(sd))][:1]  # a key the import ignores, as release ckpts have
    _torch_save(paths["scenetok"], sd)
    _torch_save(paths["vavae"], cv_image_vae.export_official(vae))
    engine.save_safetensors(paths["videodc"], cv_video_dcae.export_official(dc))
    _torch_save(paths["scenegen"], cv_scenegen.export_official(sg))
    for name, cfg in (("scenetok", SCENETOK), ("vavae", VAVAE), ("videodc", VIDEODC), ("scenegen", SCENEGEN)):
        paths[f"{name}_config"] = os.path.join(folder, f"{name}_config.json")
        io.write_json(paths[f"{name}_config"], cfg)
    paths["models"] = {"scenetok": st, "vavae": vae, "videodc": dc, "scenegen": sg}
    return paths
