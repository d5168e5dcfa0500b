"""Distribution metrics on network features: the Fréchet distance (FID on Inception-v3 pool features, FVD on I3D
logits) and the kernel inception distance (KID), plus the frame preparation both networks get.

- Fréchet distance between Gaussians fitted to two feature sets (means mu, covariances S with the 1 / (n - 1)
  normalisation, as numpy's ``cov`` and pytorch-fid): ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).
  The trace of the matrix square root is computed without a general ``sqrtm``: S1 S2 is similar to the symmetric
  PSD matrix A = S1^{1/2} S2 S1^{1/2}, so tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A)) (eigenvalues clipped at 0),
  in float64. pytorch-fid's ``scipy.linalg.sqrtm`` route gives the same number (tests/metrics/test_fid.py) without
  its complex round-off and its failures on singular products (fewer samples than feature dimensions).
- KID (Binkowski et al. 2018, as torchmetrics / torch-fidelity compute it): the unbiased MMD^2 with the cubic
  polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over ``subsets`` random subsets of ``subset_size`` rows
  drawn without replacement from each set (seeded; ``subset_size`` is capped at the smaller set); mean and standard
  deviation over the subsets.
- Frame preparation (:func:`prepare_frames`): images in [-1, 1] -> clipped, rounded to 8 bits (what a PNG written
  and read back holds: the images FID tools are given), resized bilinearly (half-pixel centres, no antialiasing:
  torch's ``F.interpolate(mode='bilinear', align_corners=False)``, which pytorch-fid applies to every image) to the
  network's size (299 for Inception, 224 for I3D) and returned in [-1, 1], the range both networks take.

Who computes what: ``scene3d.evaluate`` collects the features of a split's generated / reconstructed frames and of
the real ones and reports rFID / rKID / rFVD (reconstructions of their own inputs: SceneTok, 3DRAE) or gFID / gKID /
gFVD (samples against the held-out views: SceneGen, 3DDiT).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_SIZE = 299
I3D_SIZE = 224


def prepare_frames(images, size: int, *, quantize: bool = True) -> jax.Array:
    """Images (..., H, W, 3) in [-1, 1] -> (..., size, size, 3) in [-1, 1]: clipped, rounded to 8 bits
    (``quantize``), resized bilinearly as torch's ``align_corners=False`` interpolation (module docstring)."""
    x = (jnp.clip(jnp.asarray(images, jnp.float32), -1.0, 1.0) + 1.0) * 0.5
    if quantize:
        x = jnp.round(x * 255.0) / 255.0
    if x.shape[-3:-1] != (size, size):
        x = jax.image.resize(x, x.shape[:-3] + (size, size, x.shape[-1]), "bilinear", antialias=False)
    return x * 2.0 - 1.0


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of features (n, d) in float64; n >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: expected features (n >= 2, d), got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) * 0.5)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1, s2) -> float:
    """tr((S1 S2)^{1/2}) of two symmetric PSD matrices (module docstring)."""
    r = _sqrt_psd(np.asarray(s1, np.float64))
    a = r @ np.asarray(s2, np.float64) @ r
    return float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((a + a.T) * 0.5), 0.0, None))))


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: mismatched statistics {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    d = float(np.sum(np.square(mu1 - mu2)) + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(d, 0.0)


def frechet_distance_of(features1, features2) -> float:
    """The Fréchet distance of two feature sets (n1, d), (n2, d)."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def polynomial_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples (m, d) with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = lambda k: np.sum(k) - np.trace(k)  # noqa: E731
    return float((off(kxx) + off(kyy)) / (m * (m - 1)) - 2.0 * np.sum(kxy) / (m * m))


def kid(features1, features2, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) over ``subsets`` subsets of the unbiased polynomial-kernel MMD^2 (module docstring)."""
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: expected features (n1, d) and (n2, d), got {x.shape} and {y.shape}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"kid: needs subsets >= 1 of >= 2 rows per set, got {subsets} of {m} "
                         f"(sets of {x.shape[0]} and {y.shape[0]})")
    rng = np.random.default_rng(seed)
    vals = [polynomial_mmd(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
            for _ in range(int(subsets))]
    return float(np.mean(vals)), float(np.std(vals))
