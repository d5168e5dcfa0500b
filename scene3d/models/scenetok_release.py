"""SceneTok as the release runs it: VA-VAE context latents, video-autoencoder target latents, sliding-window renders.

The released checkpoints (github.com/mohammadasim98/scenetok: va-videodc_re10k, va-videodc_dl3dv, va-wan_dl3dv)
pair the SceneTok compressor / decoder with two frozen autoencoders:

- context: VA-VAE f16d32 (an LDM AutoencoderKL, :class:`~scene3d.models.image_vae.ImageVAE`); the release encodes
  ``2 img - 1``, draws a POSTERIOR SAMPLE (its latent precompute scripts call ``latent_dist.sample()``) and
  normalises ``(z - mean) / std`` with the 32 statistics hard-coded in its ``src/model/diffusion.py``
  (:data:`VAVAE_LATENT_MEAN` / :data:`VAVAE_LATENT_STD`; the va.yaml scaling factor is unused);
- target: the Open-Sora v2 Video DC-AE (``videodc``: ``encode(2 x - 1) * 0.493``, 4 frames per latent, 32x spatial)
  or the Wan 2.2 VAE (``wan``: scaling 1, causal, 17 frames per group of 5 latents, 16x spatial, groups decoded
  independently). Decoded frames are ``x / 2 + 0.5`` clamped to [0, 1].

Cameras (``release_cameras``): OpenCV camera-to-world, every pose relative to one context camera (the release
tests with the middle one, ``V // 2``) and NOT rescaled; intrinsics normalised by the image size (fx/W, fy/H,
cx/W, cy/H). The DL3DV focal-length quirk of the released DL3DV checkpoints (docs/KNOWN_BUGS.md of the release:
fx, fy multiplied by store_w / 256, store_h / 256 with the 3840 x 2160 store size, on every view for
va-videodc_dl3dv and on the context views only for va-wan_dl3dv) is the ``focal_quirk`` option: 'none' (RE10K,
and any model trained here), 'all' or 'context'.

Rendering (``render_latents``): target latents are sampled by the SceneTok decoder from the scene tokens alone with
the release's ``full_sequence`` sliding window (``scene3d.diffusion.windows``): ``window`` latents per call
(8 in the release's evaluation), after the first window the first ``clean`` of them (4) already clean; 25 Euler
steps per latent by default, with the optional time shift of the ``shifted`` checkpoints. Scene tokens are sampled
from the compressor's posterior as the release does (``encode(..., rng)``; ``rng=None`` gives the mean).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.diffusion import windows
from scene3d.geometry.cameras import as_intrinsics4
from scene3d.models import scenetok as scenetok_lib

# VA-VAE latent statistics as hard-coded by the release (src/model/diffusion.py: latent_mean / latent_std).
VAVAE_LATENT_MEAN = (
    0.5985, -0.4992, 0.6440, -0.0971, -1.1910, -1.4332, 0.4685, 0.6259, 0.6320, -0.4897, -0.7445, 1.1596, 0.8456,
    0.5008, 0.2293, 0.4754, -0.4379, 0.8317, -0.0751, 0.3063, 0.4665, -0.0914, -0.8271, 0.0781, 1.4151, 1.3792,
    0.2696, -0.7573, 0.2813, -0.3092, 0.0779, 0.3497)
VAVAE_LATENT_STD = (
    3.8461, 4.2699, 3.5768, 3.5911, 3.6231, 3.4810, 3.3075, 3.5093, 3.5541, 3.6067, 3.7058, 3.6314, 3.6295, 3.6205,
    3.2590, 3.1868, 3.8258, 3.5999, 3.2966, 3.2261, 3.2192, 3.1055, 3.5805, 4.3569, 3.3085, 3.2076, 4.5150, 3.4870,
    3.0416, 3.4869, 4.4310, 4.0881)

TARGETS = ("videodc", "wan")
FOCAL_QUIRKS = ("none", "all", "context")
DL3DV_STORE_SIZE = (3840, 2160)  # (W, H) of the DL3DV frames whose intrinsics the quirk rescales
VIDEODC_SCALING = 0.493
WAN_GROUP = 5          # Wan latents decoded together (17 frames)
WAN_GROUP_FRAMES = 17


def vavae_stats() -> dict[str, Any]:
    """ImageVAE keyword arguments that normalise latents as the release does."""
    return dict(latent_mean=VAVAE_LATENT_MEAN, latent_std=VAVAE_LATENT_STD, latent_scale=1.0)


def focal_quirk(intrinsics: jax.Array, store_size=DL3DV_STORE_SIZE) -> jax.Array:
    """The DL3DV focal-length bug of the released DL3DV checkpoints: normalised (fx, fy) times (store_w / 256,
    store_h / 256). intrinsics (..., 4) normalised (fx/W, fy/H, cx/W, cy/H)."""
    sw, sh = (float(s) / 256.0 for s in store_size)
    scale = jnp.asarray([sw, sh, 1.0, 1.0], jnp.float32)
    return jnp.asarray(intrinsics, jnp.float32) * scale


def release_cameras(context_c2w, context_intrinsics, target_c2w=None, target_intrinsics=None, *,
                    ref_index: int | None = None, quirk: str = "none", store_size=DL3DV_STORE_SIZE) -> dict:
    """The release's camera preprocessing: poses relative to context camera ``ref_index`` (default V // 2, as its
    test step), no rescaling, intrinsics (B, V, 4) normalised, the DL3DV focal quirk when asked.
    Returns {'context_c2w', 'context_intrinsics', 'target_c2w', 'target_intrinsics', 'ref_c2w'}."""
    if quirk not in FOCAL_QUIRKS:
        raise ValueError(f"release_cameras: focal quirk must be one of {FOCAL_QUIRKS}, got {quirk!r}")
    ctx = jnp.asarray(context_c2w, jnp.float32)
    if ctx.ndim != 4 or ctx.shape[-2:] != (4, 4):
        raise ValueError(f"release_cameras: context_c2w must be (B, V, 4, 4), got {ctx.shape}")
    b, v = ctx.shape[:2]
    ref = v // 2 if ref_index is None else int(ref_index)
    if not 0 <= ref < v:
        raise ValueError(f"release_cameras: reference context view {ref} out of range for {v} context views")
    k_ctx = as_intrinsics4(jnp.asarray(context_intrinsics, jnp.float32), (b, v), "release_cameras (context)")
    out = {"ref_c2w": ctx[:, ref]}
    if quirk in ("all", "context"):
        k_ctx = focal_quirk(k_ctx, store_size)
    if target_c2w is None:
        out.update(context_c2w=scenetok_lib.relative_to_reference(ctx, None, ref), context_intrinsics=k_ctx)
        return out
    tgt = jnp.asarray(target_c2w, jnp.float32)
    if tgt.ndim != 4 or tgt.shape[0] != b or tgt.shape[-2:] != (4, 4):
        raise ValueError(f"release_cameras: target_c2w must be ({b}, P, 4, 4), got {tgt.shape}")
    k_tgt = as_intrinsics4(jnp.asarray(target_intrinsics, jnp.float32), tgt.shape[:2], "release_cameras (target)")
    if quirk == "all":
        k_tgt = focal_quirk(k_tgt, store_size)
    c, t = scenetok_lib.relative_to_reference(ctx, tgt, ref)
    out.update(context_c2w=c, context_intrinsics=k_ctx, target_c2w=t, target_intrinsics=k_tgt)
    return out


class ReleaseSceneTok(nnx.Module):
    """SceneTok with the release's frozen autoencoders: ``scenetok`` (:class:`~scene3d.models.scenetok.SceneTok`),
    ``vavae`` (an ImageVAE built with :func:`vavae_stats`) and ``target`` (a VideoDCAE for ``target_kind``
    'videodc', a WanVAE for 'wan')."""

    def __init__(self, scenetok, vavae, target, target_kind: str):
        if target_kind not in TARGETS:
            raise ValueError(f"ReleaseSceneTok: target_kind must be one of {TARGETS}, got {target_kind!r}")
        self.scenetok, self.vavae, self.target = scenetok, vavae, target
        self.target_kind = target_kind
        dec = scenetok.decoder.config
        if int(dec["in_channels"]) != int(target.latent_channels):
            raise ValueError(f"ReleaseSceneTok: the decoder renders {dec['in_channels']}-channel latents, the "
                             f"{target_kind} autoencoder has {target.latent_channels}")
        if int(scenetok.compressor.config["in_channels"]) != int(vavae.latent_channels):
            raise ValueError(f"ReleaseSceneTok: the compressor reads {scenetok.compressor.config['in_channels']}-"
                             f"channel latents, the VA-VAE gives {vavae.latent_channels}")
        if (target_kind == "wan") != bool(dec["wan_pose_padding"]):
            raise ValueError(f"ReleaseSceneTok: a {target_kind} target needs a decoder with wan_pose_padding="
                             f"{target_kind == 'wan'}")

    # ------------------------------------------------------------------ sizes

    @property
    def spatial_compression(self) -> int:
        return int(self.target.spatial_compression)

    def num_latents(self, num_frames: int) -> int:
        """Target latents for a trajectory of ``num_frames`` cameras (trailing frames dropped, as the release)."""
        if self.target_kind == "wan":
            return num_frames // WAN_GROUP_FRAMES * WAN_GROUP
        return num_frames // int(self.scenetok.decoder.config["temporal_downsample"])

    def num_frames(self, num_latents: int) -> int:
        """Cameras / decoded frames of ``num_latents`` target latents."""
        if self.target_kind == "wan":
            return num_latents // WAN_GROUP * WAN_GROUP_FRAMES
        return num_latents * int(self.scenetok.decoder.config["temporal_downsample"])

    # ------------------------------------------------------------------ autoencoders

    def context_latents(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Context views (B, V, H, W, 3) in [0, 1] -> normalised VA-VAE latents (B, V, H/16, W/16, 32); a posterior
        sample with ``rng`` (the release), the mean without."""
        b, v = images.shape[:2]
        x = 2.0 * jnp.asarray(images, jnp.float32).reshape((b * v,) + images.shape[2:]) - 1.0
        lat = self.vavae.encode(x, rng)
        return lat.reshape((b, v) + lat.shape[1:])

    def target_latents(self, frames: jax.Array) -> jax.Array:
        """Target frames (B, T, H, W, 3) in [0, 1] -> scaled target latents (B, t, h, w, C), as the release's
        precompute scripts (Video DC-AE: T a multiple of 4, x 0.493; Wan: groups of 17 frames -> 5 latents)."""
        x = 2.0 * jnp.asarray(frames, jnp.float32) - 1.0
        if self.target_kind == "videodc":
            return self.target.encode(x) * VIDEODC_SCALING
        b, t = x.shape[:2]
        if t % WAN_GROUP_FRAMES:
            raise ValueError(f"ReleaseSceneTok.target_latents (wan): frames must come in groups of "
                             f"{WAN_GROUP_FRAMES}, got {t}")
        g = t // WAN_GROUP_FRAMES
        lat = self.target.encode(x.reshape((b * g, WAN_GROUP_FRAMES) + x.shape[2:]))
        return lat.reshape((b, g * lat.shape[1]) + lat.shape[2:])

    def frames(self, latents: jax.Array) -> jax.Array:
        """Target latents (B, t, h, w, C) -> frames (B, T, H, W, 3) in [0, 1] (Video DC-AE: t == 1 gives 1 frame,
        else 4 t; Wan: every group of 5 latents decoded on its own -> 17 frames)."""
        z = jnp.asarray(latents, jnp.float32)
        if self.target_kind == "wan":
            if z.shape[1] % WAN_GROUP:
                raise ValueError(f"ReleaseSceneTok.frames (wan): latents must come in groups of {WAN_GROUP}, "
                                 f"got {z.shape[1]}")
            return self.target.scenetok_decode(z, group_size=WAN_GROUP).astype(jnp.float32)
        x = self.target.decode(z / VIDEODC_SCALING)
        return jnp.clip(x.astype(jnp.float32) / 2.0 + 0.5, 0.0, 1.0)

    # ------------------------------------------------------------------ SceneTok

    def encode(self, images, c2w, intrinsics, rng: jax.Array | None = None) -> jax.Array:
        """Context views (B, V, H, W, 3) in [0, 1] with release-frame cameras -> scene tokens (B, K, d): a posterior
        sample with ``rng`` (the release; the VA-VAE latents are posterior samples too), the mean without."""
        r_vae = r_tok = None
        if rng is not None:
            r_vae, r_tok = jax.random.split(rng)
        lat = self.context_latents(images, r_vae)
        tokens, _ = self.scenetok.encode(lat, c2w, intrinsics, rng=r_tok, sample=rng is not None)
        return tokens.astype(jnp.float32)

    def camera_window(self, start, window: int):
        """(first camera, cameras) of a window of ``window`` latents starting at latent ``start`` (traced)."""
        if self.target_kind == "wan":
            return start // WAN_GROUP * WAN_GROUP_FRAMES, window // WAN_GROUP * WAN_GROUP_FRAMES
        td = int(self.scenetok.decoder.config["temporal_downsample"])
        return start * td, window * td

    def render_latents(self, tokens, c2w, intrinsics, rng, *, latent_size: tuple[int, int], num_steps: int = 25,
                       window: int = 8, clean: int = 4, shift: float = 1.0, cfg_scale: float = 1.0,
                       noise: jax.Array | None = None) -> jax.Array:
        """Sample the target latents (B, t, h, w, C) of cameras (B, P, 4, 4) / (B, P, 4) (release frame) from the
        scene tokens with the release's sliding window. P is cut to whole latents (``num_latents``)."""
        dec = self.scenetok.decoder
        c2w = jnp.asarray(c2w, jnp.float32)
        b, p = c2w.shape[:2]
        k4 = as_intrinsics4(jnp.asarray(intrinsics, jnp.float32), (b, p), "ReleaseSceneTok.render_latents")
        m = self.num_latents(p)
        if m < 1:
            need = WAN_GROUP_FRAMES if self.target_kind == "wan" else dec.config["temporal_downsample"]
            raise ValueError(f"ReleaseSceneTok.render_latents: {p} cameras is less than one latent ({need} cameras)")
        used = self.num_frames(m)
        c2w, k4 = c2w[:, :used], k4[:, :used]
        if self.target_kind == "wan" and m > window and (window % WAN_GROUP or (window - clean) % WAN_GROUP):
            raise ValueError(f"ReleaseSceneTok.render_latents (wan): window {window} and window - clean "
                             f"{window - clean} must be multiples of {WAN_GROUP} (whole 17-frame chunks)")
        plan = windows.schedule(m, num_steps, window, clean, shift)
        shape = (b, m) + tuple(int(s) for s in latent_size) + (int(dec.config["in_channels"]),)
        if noise is None:
            noise = jax.random.normal(rng, shape, jnp.float32)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"ReleaseSceneTok.render_latents: noise must be {shape}, got {noise.shape}")
        _, count = self.camera_window(0, plan.window)

        def velocity(xw, tw, start):
            c0, _ = self.camera_window(start, plan.window)
            cw = jax.lax.dynamic_slice_in_dim(c2w, c0, count, axis=1)
            kw = jax.lax.dynamic_slice_in_dim(k4, c0, count, axis=1)
            v = dec(xw, tw, cw, kw, tokens)[0]
            if cfg_scale != 1.0:
                vu = dec(xw, tw, cw, kw, None)[0]
                v = vu + cfg_scale * (v - vu)
            return v

        return windows.sample(velocity, noise, plan)

    def latent_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        f = self.spatial_compression
        h, w = (int(s) for s in image_size)
        if h % f or w % f:
            raise ValueError(f"ReleaseSceneTok: image size {(h, w)} is not a multiple of the {self.target_kind} "
                             f"autoencoder's {f}x compression")
        return h // f, w // f

    def render(self, tokens, c2w, intrinsics, rng, *, image_size: tuple[int, int], **kwargs) -> dict:
        """Frames (B, T, H, W, 3) in [0, 1] and their latents for release-frame cameras (see ``render_latents``)."""
        lat = self.render_latents(tokens, c2w, intrinsics, rng, latent_size=self.latent_size(image_size), **kwargs)
        return {"images": self.frames(lat), "latents": lat}

