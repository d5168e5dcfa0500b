"""SceneTok.loss weighting='x0': the t^2-weighted velocity loss equals the clean-latent MSE |x0_hat - x0|^2 of an
x-predicting decoder (x0_hat recomputed from a separate decoder call), 'velocity' is the plain velocity MSE, and an
unknown weighting is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.models import scenetok as st


def _poses(rng, b, v):
    c2w = np.tile(np.eye(4), (b, v, 1, 1))
    c2w[..., :3, 3] = rng.normal(0, 0.3, (b, v, 3))
    return c2w.astype(np.float32)


def test_x0_weighting_is_the_clean_latent_mse():
    model = st.SceneTok(variant="tiny", decoder=dict(prediction="x", x_pred_t_min=1e-6), rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    batch = dict(context_latents=rng.normal(size=(2, 2, 8, 8, 4)), context_c2w=_poses(rng, 2, 2),
                 context_intrinsics=np.full((2, 2, 4), 0.5), target_latents=rng.normal(size=(2, 2, 4, 4, 4)),
                 target_c2w=_poses(rng, 2, 2), target_intrinsics=np.full((2, 2, 4), 0.5))
    batch = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
    key = jax.random.key(5)
    graphdef, state = nnx.split(model)

    @jax.jit
    def losses(state, batch, key):  # the same draws for both weightings; jitted: eager tracing is slow on CI
        m = nnx.merge(graphdef, state)
        kw = dict(time_sampler="uniform", num_chunks=2, null_prob=0.0, kl_weight=0.0)
        return m.loss(batch, key, weighting="x0", **kw), m.loss(batch, key, weighting="velocity", **kw)[0]

    @jax.jit
    def decode(state, x_t, t, batch, tokens):
        return nnx.merge(graphdef, state).decoder(x_t, t, batch["target_c2w"], batch["target_intrinsics"], tokens)[0]

    (loss_x0, aux), loss_v = losses(state, batch, key)
    t = np.asarray(aux["t"], np.float64)
    assert t.shape == (2, 2) and not np.allclose(t[:, 0], t[:, 1])  # one time per view chunk
    eps = jax.random.normal(jax.random.split(key, 4)[2], batch["target_latents"].shape, jnp.float32)
    x0 = np.asarray(batch["target_latents"], np.float64)
    tt = t[:, :, None, None, None]
    x_t = (1 - tt) * x0 + tt * np.asarray(eps, np.float64)
    v = np.asarray(decode(state, jnp.asarray(x_t, jnp.float32), jnp.asarray(t, jnp.float32), batch, aux["tokens"]),
                   np.float64)
    np.testing.assert_allclose(v, np.asarray(aux["v"]), rtol=1e-4, atol=1e-5)  # the same draws as the loss
    x0_hat = x_t - tt * v
    np.testing.assert_allclose(float(loss_x0), np.mean((x0_hat - x0) ** 2), rtol=1e-4)
    np.testing.assert_allclose(float(loss_v), np.mean((v - (np.asarray(eps) - x0)) ** 2), rtol=1e-4)
    assert float(loss_x0) < float(loss_v)  # t^2 <= 1
    with pytest.raises(ValueError, match="weighting must be one of"):
        model.loss(batch, key, weighting="snr")
