"""The SceneTok release's evaluation figures: PSNR, SSIM and LPIPS-VGG of rendered target frames against their
ground truth, per frame, per scene and pooled.

What the release computes (its ``src/model/metrics.py``, called on every target frame of every evaluated scene,
frames flattened across scenes), and what this module does for frames (N, H, W, 3) in [0, 1]:

- PSNR: both images clipped to [0, 1]; MSE of each frame over all its pixels and channels; -10 log10(MSE).
- SSIM: scikit-image ``structural_similarity(gt, pred, win_size=11, gaussian_weights=True, data_range=1.0,
  channel_axis=0)`` per frame. ``use_sample_covariance`` is left at its default, True, so the local
  (co)variances are the sample ones (x 121 / 120): ``image.ssim(..., covariance='sample')``, equal to
  scikit-image to float32 rounding (see ``scene3d.metrics.image``). Not clipped (the release's decoded frames are
  clamped to [0, 1] already; ours come through ``image.to_unit``, which clips).
- LPIPS: ``lpips.LPIPS(net='vgg')`` with ``normalize=True`` (inputs in [0, 1] mapped to [-1, 1]), one frame at a
  time, the network cast to float16. Here: ``scene3d.metrics.lpips.LPIPS`` with ``net='vgg'`` loaded from the
  same weights (torchvision VGG16 ``features`` + the lpips v0.1 ``vgg.pth`` lin layers), in float32: expect
  differences of the order of float16 rounding (~1e-3) against the release's numbers.

The release's headline number of each metric is the mean over all scored frames of all scenes (``summarize``:
``psnr``, ...); the mean of the per-scene means (``psnr_scene_mean``, ...) equals it when every scene has the same
number of target frames, as in all the release's index files but one.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scene3d.metrics import image

NAMES = ("psnr", "ssim", "lpips")


def _psnr_ssim(pred, gt):
    p, g = pred.astype(jnp.float32), gt.astype(jnp.float32)
    return (image.psnr(jnp.clip(p, 0.0, 1.0), jnp.clip(g, 0.0, 1.0), data_range=1.0),
            image.ssim(p, g, data_range=1.0, window=11, sigma=1.5, covariance="sample"))


_psnr_ssim_jit = jax.jit(_psnr_ssim)


def _chunked(fn, pred, gt, chunk: int):
    """fn over frames in chunks of ``min(chunk, N)`` (the last one padded with copies of the last frame, so every
    call has one shape); returns fn's outputs (tuples of (N,) arrays) concatenated."""
    n = pred.shape[0]
    c = max(1, min(int(chunk), n))
    m = -(-n // c) * c
    idx = np.minimum(np.arange(m), n - 1)
    outs = [fn(pred[idx[i:i + c]], gt[idx[i:i + c]]) for i in range(0, m, c)]
    outs = [o if isinstance(o, tuple) else (o,) for o in outs]
    return tuple(np.concatenate([np.asarray(jax.device_get(o[k]), np.float64) for o in outs])[:n]
                 for k in range(len(outs[0])))


def frame_metrics(pred, gt, lpips=None, *, chunk: int = 16) -> dict[str, np.ndarray]:
    """Per-frame release metrics of frames ``pred`` vs ``gt`` (N, H, W, 3) in [0, 1] (module docstring):
    {'psnr': (N,), 'ssim': (N,)[, 'lpips': (N,)]} float64, LPIPS when ``lpips`` (a ``scene3d.metrics.lpips.LPIPS``;
    the release's is net='vgg') is given. Frames go through in chunks of ``chunk`` (memory: LPIPS-VGG at 256 px
    holds ~50 MiB of activations per frame)."""
    pred, gt = np.asarray(pred, np.float32), np.asarray(gt, np.float32)
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[-1] != 3 or pred.shape[0] < 1:
        raise ValueError(f"release metrics: expected frames (N, H, W, 3) of equal shape with N >= 1, got "
                         f"{pred.shape} and {gt.shape}")
    psnr, ssim = _chunked(_psnr_ssim_jit, pred, gt, chunk)
    out = {"psnr": psnr, "ssim": ssim}
    if lpips is not None:
        (out["lpips"],) = _chunked(lambda p, g: lpips(p * 2.0 - 1.0, g * 2.0 - 1.0), pred, gt, chunk)
    return out


def scene_metrics(pred, gt, lpips=None, *, chunk: int = 16) -> dict:
    """One scene's figures: {'frames': {name: [per-frame values]}, 'mean': {name: mean over its frames},
    'num_frames': N} (``frame_metrics``)."""
    per = frame_metrics(pred, gt, lpips, chunk=chunk)
    return {"frames": {k: v.tolist() for k, v in per.items()}, "mean": {k: float(np.mean(v)) for k, v in per.items()},
            "num_frames": int(len(per["psnr"]))}


def summarize(scenes: Mapping[str, Mapping]) -> dict[str, float]:
    """Figures over scenes ({key: ``scene_metrics`` output}): each metric's mean over all frames of all scenes
    pooled (the release's number; ``psnr``, ``ssim``, ``lpips``) and the mean of the per-scene means
    (``<name>_scene_mean``), plus ``num_scenes`` and ``num_frames``. A metric is summarized only when every scene
    has it."""
    scenes = list(scenes.values())
    if not scenes:
        raise ValueError("release metrics: no scenes to summarize")
    out: dict[str, float] = {}
    for name in NAMES:
        if all(name in s["frames"] for s in scenes):
            frames = np.concatenate([np.asarray(s["frames"][name], np.float64) for s in scenes])
            out[name] = float(np.mean(frames))
            out[f"{name}_scene_mean"] = float(np.mean([s["mean"][name] for s in scenes]))
    out["num_scenes"] = float(len(scenes))
    out["num_frames"] = float(sum(s["num_frames"] for s in scenes))
    return out


def describe_lpips(lpips, field: str = "config.metrics.lpips") -> str:
    """One line saying which LPIPS the figures hold, or why there is none (the release reports LPIPS-VGG)."""
    if lpips is None:
        return (f"LPIPS not computed: {field} is not set (the release reports LPIPS-VGG: set net='vgg' with "
                "backbone=<torchvision vgg16 state_dict> and lin=<lpips v0.1 vgg.pth>)")
    net = getattr(lpips, "net", "?")
    if getattr(lpips, "random_weights", False):
        return f"LPIPS-{net} with RANDOM weights: NOT LPIPS (tests only)"
    if net != "vgg":
        return f"LPIPS-{net}: NOT the release's LPIPS-VGG, not comparable with its numbers"
    return "LPIPS-VGG (float32; the release runs it in float16)"
