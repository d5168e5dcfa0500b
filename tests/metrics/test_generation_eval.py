"""scene3d.evaluate's FID / KID / FVD plumbing (FeatureMetrics): frames in, per-frame and per-clip features pooled
over the split, figures equal to scene3d.metrics.fid on the same features. Stub networks stand in for the Inception
/ I3D (their parity is tests/metrics/test_fid.py and test_fvd.py), so the full-size resize stays cheap."""
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scene3d import evaluate
from scene3d.metrics import fid


class StubInception(nnx.Module):
    """Per-image features: the mean colour and its square, per quadrant (24-d)."""

    def __call__(self, x):
        n, h, w, _ = x.shape
        h, w = h // 2 * 2, w // 2 * 2
        q = x[:, :h, :w].reshape(n, 2, h // 2, 2, w // 2, 3).mean(axis=(2, 4)).reshape(n, -1)
        return jnp.concatenate([q, q ** 2], -1)


class StubI3D(nnx.Module):
    """Per-clip 'logits': per-frame mean colours, frame by frame (T * 3)."""

    def __call__(self, x):
        return {"logits": x.mean(axis=(2, 3)).reshape(x.shape[0], -1)}


def _metrics(**kw):
    m = evaluate.FeatureMetrics(None, None, chunk=3, **kw)
    m.inception, m.i3d = StubInception(), StubI3D()
    return m


def test_feature_metrics_pool_frames_and_clips_over_batches():
    rng = np.random.default_rng(0)
    fake = rng.uniform(-1, 1, size=(5, 2, 12, 10, 3)).astype(np.float32)
    real = np.clip(fake * 0.5 + rng.normal(size=fake.shape) * 0.2, -1, 1).astype(np.float32)
    m = _metrics(kid_subsets=5, kid_subset_size=4, fvd_frames=10)
    m.add(fake[:3], real[:3])
    m.add(fake[3:], real[3:])
    m.add(fake[:0], real[:0])  # an all-padding batch adds nothing
    got = m.figures("g")

    def inception(x):
        return np.asarray(StubInception()(fid.prepare_frames(x.reshape((-1,) + x.shape[2:]), fid.INCEPTION_SIZE)))

    def i3d(x):  # 2 views held for 5 frames each
        clip = np.repeat(x, 5, axis=1)
        return np.asarray(StubI3D()(fid.prepare_frames(clip, fid.I3D_SIZE))["logits"])

    f, r = inception(fake), inception(real)
    np.testing.assert_allclose(got["gfid"], fid.frechet_distance_of(f, r), rtol=1e-5)
    np.testing.assert_allclose((got["gkid"], got["gkid_std"]), fid.kid(f, r, subsets=5, subset_size=4), rtol=1e-5)
    np.testing.assert_allclose(got["gfvd"], fid.frechet_distance_of(i3d(fake), i3d(real)), rtol=1e-5)
    line = m.describe("g")
    assert "10 generated vs 10 real frames" in line and "5 generated vs 5 real clips" in line
    assert "2 views resampled to 10 frames" in line


def test_not_configured_and_frames_of_tasks():
    config = ml_collections.ConfigDict({"task": "scenetok", "metrics": {"inception_weights": "", "i3d_weights": ""}})
    assert evaluate.FeatureMetrics.from_config(config) is None
    assert "not computed" in evaluate.NOT_CONFIGURED and "inception_weights" in evaluate.NOT_CONFIGURED

    class Recon:
        metric_kind = "r"

        def metric_frames(self, model, batch, rng):
            return {}

    class Gaussians:  # e.g. Can3Tok: no frames
        pass

    assert evaluate.metric_frames_fn(Recon())[1] == "r"
    fn, reason = evaluate.metric_frames_fn(Gaussians())
    assert fn is None and "metric_frames" in reason
