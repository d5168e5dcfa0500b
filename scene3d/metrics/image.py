"""Image reconstruction metrics: PSNR and SSIM, batched over leading axes, jit-friendly.

Images are channels-last (..., H, W, C) floats on a known ``data_range`` (1.0 for [0, 1] images, 2.0 for
[-1, 1]). Both return one value per image (the leading axes).

- PSNR = 10 log10(data_range^2 / MSE), MSE over (H, W, C); identical images give +inf.
- SSIM (Wang et al. 2004, the common default): an 11 x 11 Gaussian window (sigma 1.5) per channel, 'valid'
  filtering (no padding), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = data_range, local (co)variances
  (``covariance``, below); the SSIM map is averaged over positions and channels. Images smaller than the window
  use a window of the image's smaller side (odd, sigma scaled with it).

SSIM ``covariance``:
- ``'population'`` (the default, what every task logs): biased local (co)variances, E[xy] - E[x]E[y];
- ``'sample'``: the same times NP / (NP - 1), NP = window**2 (121): what scikit-image's
  ``structural_similarity(..., win_size=11, gaussian_weights=True, data_range=L, channel_axis=...)`` computes,
  because its ``use_sample_covariance`` defaults to True even with Gaussian weights. The SceneTok release scores
  with exactly that call (sample covariance), so ``scene3d.metrics.release`` uses ``covariance='sample'``.
  scikit-image filters the whole image with scipy's reflect-mode ``gaussian_filter`` (sigma 1.5, truncate 3.5:
  radius 5, i.e. 11 taps) and then drops (win_size - 1) // 2 = 5 pixels at every border before averaging; every
  position it keeps has its whole window inside the image, so its value is this 'valid' filtering and the
  padding never enters. With the defaults (window 11, sigma 1.5) the two agree to float32 rounding
  (tests/metrics/test_release_metrics.py: < 1e-6 against a float64 scipy reimplementation). scikit-image refuses
  images smaller than the window; here they get the smaller window described above (NP = its size squared).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def to_unit(images) -> jnp.ndarray:
    """Images in [-1, 1] (the models' range) -> [0, 1] float32, clipped (the range the metrics take)."""
    return jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) * 0.5, 0.0, 1.0)


def _check_pair(a, b, name):
    if a.shape != b.shape or a.ndim < 3:
        raise ValueError(f"{name}: images must be (..., H, W, C) of equal shape, got {a.shape} and {b.shape}")


def psnr(a, b, data_range: float = 1.0):
    """(...,) PSNR in dB of images a, b (..., H, W, C)."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check_pair(a, b, "psnr")
    mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
    return 10.0 * jnp.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1D Gaussian (size,) centred on the middle tap."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x, w):
    """Separable 'valid' filtering of (N, H, W, C) with the 1D window w along H then W."""
    k = w.shape[0]
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    y = sum(w[i] * x[:, i:i + h] for i in range(k))
    return sum(w[i] * y[:, :, i:i + wd] for i in range(k))


COVARIANCES = ("population", "sample")


def ssim(a, b, data_range: float = 1.0, window: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, covariance: str = "population"):
    """(...,) mean SSIM of images a, b (..., H, W, C) (module docstring). ``covariance='sample'`` is
    scikit-image's ``structural_similarity(win_size=11, gaussian_weights=True)`` (the SceneTok release's SSIM);
    the default ``'population'`` keeps the biased local statistics every task has logged so far."""
    if covariance not in COVARIANCES:
        raise ValueError(f"ssim: covariance must be one of {COVARIANCES}, got {covariance!r}")
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    _check_pair(a, b, "ssim")
    lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
    size = min(int(window), h, w)
    size -= 1 - size % 2  # odd
    if covariance == "sample" and size < 3:
        raise ValueError(f"ssim: covariance='sample' needs a window of >= 3 x 3 pixels; images are {h} x {w}")
    g = jnp.asarray(gaussian_window(size, sigma * size / window))
    x, y = a.reshape((-1, h, w, c)), b.reshape((-1, h, w, c))
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    if covariance == "sample":  # unbiased: NP / (NP - 1) with NP the window's taps (scikit-image's cov_norm)
        norm = size * size / (size * size - 1.0)
        sxx, syy, sxy = sxx * norm, syy * norm, sxy * norm
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return jnp.mean(smap, axis=(1, 2, 3)).reshape(lead)
