import numpy as np
import pytest

from scene3d.metrics import gaussians as gm


def test_metrics_against_explicit_loops():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(5, 7, 14)).astype(np.float32)
    target = pred + rng.normal(scale=[[[1.0]], [[10.0]], [[400.0]], [[0.1]], [[600.0]]], size=pred.shape).astype(np.float32)
    per = [np.sqrt(sum((float(pred[b, n, c]) - float(target[b, n, c])) ** 2 for n in range(7) for c in range(14)))
           for b in range(5)]
    np.testing.assert_allclose(np.asarray(gm.per_scene_l2(pred, target)), per, rtol=1e-5)
    whole = np.sqrt(sum(p ** 2 for p in per))
    np.testing.assert_allclose(float(gm.batch_l2(pred, target)), whole / 5, rtol=1e-5)
    # The batch figure is not the mean of per-scene norms (a public-code quirk we reproduce on purpose).
    assert abs(float(gm.batch_l2(pred, target)) - np.mean(per)) > 1.0
    expected_fail = np.mean([p > 1000 for p in per])
    assert 0 < expected_fail < 1
    assert float(gm.failure_rate(pred, target)) == pytest.approx(expected_fail)
    assert float(gm.failure_rate(pred, target, threshold=1e9)) == 0.0
    m = gm.gaussian_metrics(pred, target)
    assert float(m["l2_mean"]) == pytest.approx(np.mean(per), rel=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        gm.per_scene_l2(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


def test_batch_figure_over_a_split_from_per_scene_values():
    """Batches of 2 over 5 scenes (the last holds one): each batch's figure from the raw arrays, then averaged."""
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(5, 6, 14)), rng.normal(size=(5, 6, 14))
    per = np.asarray(gm.per_scene_l2(pred, target))
    want = np.mean([float(gm.batch_l2(pred[i:i + 2], target[i:i + 2])) for i in (0, 2, 4)])
    assert gm.batch_l2_from_scenes(per, 2) == pytest.approx(want, rel=1e-5)
    assert gm.batch_l2_from_scenes(per, 5) == pytest.approx(float(gm.batch_l2(pred, target)), rel=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        gm.batch_l2_from_scenes(per, 0)
