"""SceneTok evaluation pieces without training: the repeated-render uncertainty statistics against numpy, the
LPIPS config plumbing, and the heat-map colours of the uncertainty figure."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.metrics import lpips as lpips_lib
from scene3d.render import plots
from scene3d.tasks import scenetok as stok


def test_render_uncertainty_vs_numpy():
    rng = np.random.default_rng(0)
    b, m, h, w = 2, 3, 5, 4
    gt = rng.uniform(size=(b, m, h, w, 3)).astype(np.float32)
    samples = rng.uniform(size=(4, b, m, h, w, 3)).astype(np.float32)
    calls = []

    def render_more(n, key):
        calls.append(n)
        return jnp.asarray(samples[1:].reshape((n * b, m, h, w, 3)))  # row j * B + i = view set i

    out = jax.tree.map(float, stok.render_uncertainty(4, jnp.asarray(samples[0]), jnp.asarray(gt), render_more,
                                                      jax.random.key(0)))
    assert calls == [3]
    var = samples.var(axis=0)
    std_px = np.sqrt(var.mean(-1)).ravel()
    mean = samples.mean(0)
    err_px = np.abs(mean - gt).mean(-1).ravel()
    np.testing.assert_allclose(out["render_var"], var.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["render_std"], std_px.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["uncertainty_error_corr"], np.corrcoef(std_px, err_px)[0, 1], rtol=1e-4,
                               atol=1e-6)
    psnr = 10 * np.log10(1.0 / ((mean - gt) ** 2).mean(axis=(-3, -2, -1)))
    np.testing.assert_allclose(out["psnr_sample_mean"], psnr.mean(), rtol=1e-5)


def test_render_uncertainty_identical_samples_and_error_tracking():
    """Identical samples: zero variance. Samples spread exactly where the mean is wrong: correlation ~ 1."""
    gt = jnp.zeros((1, 1, 4, 4, 3))
    first = jnp.full((1, 1, 4, 4, 3), 0.5)
    same = stok.render_uncertainty(3, first, gt, lambda n, k: jnp.concatenate([first] * n), jax.random.key(0))
    assert float(same["render_var"]) == 0.0
    # left half: all samples at 0 (= gt); right half: samples 0.4 / 0.6 around a mean of 0.5 (wrong and uncertain)
    left = np.zeros((4, 2, 3), np.float32)
    a = np.concatenate([left, np.full((4, 2, 3), 0.4, np.float32)], axis=1)[None, None]
    c = np.concatenate([left, np.full((4, 2, 3), 0.6, np.float32)], axis=1)[None, None]
    out = stok.render_uncertainty(2, jnp.asarray(a), gt, lambda n, k: jnp.asarray(c), jax.random.key(0))
    assert float(out["uncertainty_error_corr"]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(float(out["render_var"]), 0.5 * 0.01, rtol=1e-5)


def test_build_lpips_from_config(tmp_path):
    assert lpips_lib.from_config(None) is None and lpips_lib.from_config({}) is None
    metric = lpips_lib.from_config(dict(net="alex", random=True, seed=1))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    d = np.asarray(metric(x, x[::-1]))
    assert d.shape == (2,) and np.all(d > 0) and float(metric(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="config.metrics.lpips"):
        lpips_lib.from_config(dict(net="alex", backbone=str(tmp_path / "alexnet.pth")))
    with pytest.raises(ValueError, match="nope.pth"):
        lpips_lib.from_config(dict(net="alex", file=str(tmp_path / "nope.pth")))


def test_heatmap_colours():
    v = np.array([[0.0, 0.5], [1.0, 2.0]])
    img = plots.heatmap(v, vmax=1.0)
    lut = plots.ramp(256)
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], lut[0])
    np.testing.assert_array_equal(img[1, 0], lut[255])
    np.testing.assert_array_equal(img[1, 1], lut[255])  # clipped at vmax
    np.testing.assert_array_equal(img[0, 1], lut[128])
    np.testing.assert_array_equal(plots.heatmap(np.zeros((2, 2))), np.broadcast_to(lut[0], (2, 2, 3)))
