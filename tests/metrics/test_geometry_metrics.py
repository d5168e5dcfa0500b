"""scene3d.metrics.geometry against independent numpy / scipy references: masked medians, median-scale-aligned
depth AbsRel / delta < 1.25, exact Chamfer distance (scipy's k-d tree), valid-entry sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from scene3d.metrics import geometry


def _depth_reference(pred, gt, mask):
    """numpy: per image, s = median(gt) / median(pred) on valid pixels, then AbsRel and delta < 1.25."""
    out = {"absrel": [], "delta1": []}
    for p, g, m in zip(pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:]),
                       mask.reshape(-1, *mask.shape[-2:])):
        m = m & (g > 0)
        if not m.any():
            out["absrel"].append(np.nan)
            out["delta1"].append(np.nan)
            continue
        pv, gv = p[m].astype(np.float64), g[m].astype(np.float64)
        a = pv * (np.median(gv) / np.median(pv))
        out["absrel"].append(np.mean(np.abs(a - gv) / gv))
        out["delta1"].append(np.mean(np.maximum(a / gv, gv / a) < 1.25))
    return {k: np.asarray(v).reshape(pred.shape[:-2]) for k, v in out.items()}


def test_masked_median_matches_numpy_odd_even_and_empty():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 9)).astype(np.float32)
    mask = rng.uniform(size=(5, 9)) < 0.6
    mask[0] = False
    mask[1] = True                      # all 9: odd
    mask[2] = [True] * 4 + [False] * 5  # 4: even
    got = np.asarray(geometry.masked_median(x, mask))
    for i in range(5):
        want = np.median(x[i][mask[i]]) if mask[i].any() else np.nan
        np.testing.assert_allclose(got[i], want, rtol=1e-6, err_msg=f"row {i}")


def test_scale_aligned_depth_vs_numpy():
    rng = np.random.default_rng(1)
    shape = (2, 3, 7, 6)
    gt = rng.uniform(0.5, 4.0, shape).astype(np.float32)
    pred = (gt * rng.uniform(0.7, 1.5, shape) * 3.0).astype(np.float32)  # a wrong global scale and noise
    mask = rng.uniform(size=shape) < 0.7
    gt[0, 0, :2] = 0.0                 # zero ground truth is never valid even where the mask says so
    mask[1, 2] = False                 # an image without a valid pixel
    got = jax.tree.map(np.asarray, jax.jit(geometry.scale_aligned_depth)(pred, gt, mask))
    want = _depth_reference(pred, gt, mask)
    np.testing.assert_allclose(got["absrel"], want["absrel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["delta1"], want["delta1"], rtol=1e-6)
    assert np.isnan(got["absrel"][1, 2]) and not got["valid"][1, 2] and got["valid"].sum() == 5
    # invariant to the prediction's scale; exact (up to scale) predictions score AbsRel 0, delta1 1
    again = geometry.scale_aligned_depth(pred * 17.0, gt, mask)
    np.testing.assert_allclose(np.asarray(again["absrel"]), got["absrel"], rtol=1e-5)
    exact = geometry.scale_aligned_depth(gt * 0.25 + (gt == 0), gt, mask)
    np.testing.assert_allclose(np.asarray(exact["absrel"])[got["valid"]], 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(exact["delta1"])[got["valid"]], 1.0)
    with pytest.raises(ValueError, match="one shape"):
        geometry.scale_aligned_depth(pred, gt[..., :3], mask)


def _chamfer_reference(p, q):
    return 0.5 * (cKDTree(q).query(p)[0].mean() + cKDTree(p).query(q)[0].mean())


def test_chamfer_vs_scipy_kdtree_with_weights_and_chunks():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(3, 50, 3)).astype(np.float32)
    q = (rng.normal(size=(3, 37, 3)) * 1.3 + 0.2).astype(np.float32)
    wp = rng.uniform(size=(3, 50)) < 0.8
    wq = rng.uniform(size=(3, 37)) < 0.8
    wq[2] = False  # an empty cloud: NaN
    got = np.asarray(jax.jit(lambda *a: geometry.chamfer_distance(*a, chunk=16))(p, q, wp, wq))
    for i in range(2):
        np.testing.assert_allclose(got[i], _chamfer_reference(p[i][wp[i]], q[i][wq[i]]), rtol=1e-5)
    assert np.isnan(got[2])
    # unweighted, one chunk, symmetric, and zero for a cloud against itself
    full = np.asarray(geometry.chamfer_distance(p[0], q[0]))
    np.testing.assert_allclose(full, _chamfer_reference(p[0], q[0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(geometry.chamfer_distance(q[0], p[0])), full, rtol=1e-6)
    assert float(geometry.chamfer_distance(p[0], p[0])) == pytest.approx(0.0, abs=1e-3)


def test_sample_valid_takes_distinct_valid_entries():
    mask = np.zeros((2, 40), bool)
    mask[0, ::3] = True  # 14 valid
    mask[1, :5] = True   # 5 valid < n
    idx, taken = jax.tree.map(np.asarray, geometry.sample_valid(jax.random.key(0), jnp.asarray(mask), 8))
    assert idx.shape == (2, 8) and taken[0].all() and taken[1].sum() == 5
    assert len(set(idx[0])) == 8 and mask[0, idx[0]].all()
    assert sorted(idx[1][taken[1]]) == [0, 1, 2, 3, 4]


def test_views_sweep_counts_parse_like_the_command_line_and_config_json():
    """--views_sweep '2,4' and a run's config.json (an empty tuple is stored as []) both parse; bad counts raise."""
    from scene3d.evaluate import parse_counts
    assert parse_counts([]) == parse_counts(()) == parse_counts("") == parse_counts(None) == ()
    assert parse_counts("8, 2,4,4") == parse_counts([2, 8, 4]) == (2, 4, 8)
    for bad in ("0,2", "a", [-1]):
        with pytest.raises(ValueError, match="views_sweep"):
            parse_counts(bad)
