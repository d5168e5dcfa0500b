"""Trivial predictors a reconstruction must beat, fitted on training examples (host-side numpy, then constants).

``LinearBaselines.fit(train)`` on training examples (M, *shape) gives two predictors of a held-out example x:

- the *mean example* (``mean``): predict the average training example whatever the input (for Can3Tok, the mean
  scene: row i of the prediction is the mean of row i over the training crops);
- *PCA-k* (``pca``): project x onto the k leading principal components of the training examples,
  ``mean + ((x - mean) V^T) V``, the best linear code of k floats for the training set, so a tokenizer with k latent
  floats that does not beat it has learned nothing a linear map would not.

Both are computed in float64 on the host (SVD of the centred M x D matrix, or of its M x M Gram matrix when D is
large) and applied in JAX (``predict_mean`` / ``predict_pca``) so they run inside a compiled evaluation.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import scipy.linalg


@dataclasses.dataclass(frozen=True)
class LinearBaselines:
    """Mean example (``mean``, shape of one example) and PCA basis ``components`` (k, D) of flattened examples."""

    mean: np.ndarray
    components: np.ndarray
    num_examples: int

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, examples, k: int) -> "LinearBaselines":
        """Fit on (M, *shape) training examples; k is capped at M - 1 (the rank of M centred examples)."""
        x = np.asarray(examples, np.float64)
        if x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"LinearBaselines.fit: need at least 2 examples (M, ...), got shape {x.shape}")
        if k < 1:
            raise ValueError(f"LinearBaselines.fit: k must be >= 1, got {k}")
        m = x.shape[0]
        flat = x.reshape(m, -1)
        mu = flat.mean(0)
        c = flat - mu
        k = min(int(k), m - 1)
        if c.shape[1] > m:  # Gram trick: eigenvectors of C C^T (M x M) give the right singular vectors
            # Only the top k eigenpairs (LAPACK's subset driver): seconds instead of a minute at M = 4096.
            w, u = scipy.linalg.eigh(c @ c.T, subset_by_index=[m - k, m - 1])
            order = np.argsort(w)[::-1]
            s = np.sqrt(np.maximum(w[order], 0.0))
            keep = s > s[0] * 1e-10 if s.size and s[0] > 0 else np.zeros_like(s, bool)
            v = (u[:, order[keep]].T @ c) / s[keep][:, None]
        else:
            v = np.linalg.svd(c, full_matrices=False)[2][:k]
        return cls(mean=mu.reshape(x.shape[1:]).astype(np.float32), components=v.astype(np.float32),
                   num_examples=m)

    def predict_mean(self, x):
        """The mean example broadcast to x's batch (B, *shape)."""
        return jnp.broadcast_to(jnp.asarray(self.mean, jnp.float32), x.shape)

    def predict_pca(self, x):
        """PCA-k reconstruction of x (B, *shape): mean + ((x - mean) V^T) V."""
        b = x.shape[0]
        mu = jnp.asarray(self.mean, jnp.float32).reshape(1, -1)
        v = jnp.asarray(self.components, jnp.float32)
        c = x.reshape(b, -1).astype(jnp.float32) - mu
        return ((c @ v.T) @ v + mu).reshape(x.shape)
