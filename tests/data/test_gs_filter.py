"""kNN region growing: exact size, seed kept, connectivity (independent brute-force kNN graph), closed forms."""
import numpy as np
import pytest

from scene3d.data.gs_filter import crop_gaussians, knn_region_grow
from scene3d.geometry.gaussians import Gaussians


def brute_knn(xyz, k):
    """Independent kNN graph: for each point its k nearest other points (ties by index)."""
    d = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def reachable(nbrs, start, allowed):
    """Nodes reachable from `start` along kNN edges that stay inside `allowed` (boolean)."""
    seen = np.zeros(len(nbrs), bool)
    seen[start] = True
    stack = list(start)
    while stack:
        u = stack.pop()
        for v in nbrs[u]:
            if allowed[v] and not seen[v]:
                seen[v] = True
                stack.append(v)
    return seen


@pytest.fixture(scope="module")
def two_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(250, 3))
    b = rng.normal(size=(150, 3)) * 0.5 + np.array([40.0, 0, 0])
    return np.concatenate([a, b])


@pytest.mark.parametrize("n", [1, 37, 120, 250])
@pytest.mark.parametrize("k", [4, 10])  # cluster A is 250 points
def test_size_seed_connected_and_cluster(two_clusters, n, k):
    xyz = two_clusters
    mask = np.zeros(len(xyz), bool)
    mask[[3, 17]] = True
    for seed in (mask, np.array([0.2, -0.1, 0.3]), None):
        if seed is mask and n < 2:
            continue
        idx = knn_region_grow(xyz, n, seed=seed, k=k)
        assert idx.shape == (n,) and idx.dtype == np.int64 and len(np.unique(idx)) == n
        assert (idx < 250).all()  # never leaves the seeded cluster (n <= its size)
        if seed is mask:
            assert set(np.flatnonzero(mask)) <= set(idx.tolist())
            start = np.flatnonzero(mask)
        else:
            point = xyz.mean(0) if seed is None else seed
            nearest = int(np.argmin(((xyz - point) ** 2).sum(-1)))
            assert idx[0] == nearest
            start = [nearest]
        sel = np.zeros(len(xyz), bool)
        sel[idx] = True
        nbrs = brute_knn(xyz, k)
        # Directed kNN graphs can leave a few outliers unreachable; then (only for n = 250 here) the grower
        # bridges and the selection need not be connected. Otherwise it is connected to the seed.
        if reachable(nbrs, start, np.ones(len(xyz), bool)).sum() >= n:
            assert reachable(nbrs, start, sel)[idx].all()
        else:
            assert n == 250
        np.testing.assert_array_equal(knn_region_grow(xyz, n, seed=seed, k=k), idx)  # deterministic


def test_line_closed_form():
    """Evenly spaced points on a line, k=2: rings grow symmetrically; the last ring is trimmed by index."""
    xyz = np.c_[np.arange(100.0), np.zeros(100), np.zeros(100)]
    seed = np.array([50.0, 0, 0])
    assert sorted(knn_region_grow(xyz, 11, seed=seed, k=2)) == list(range(45, 56))
    assert sorted(knn_region_grow(xyz, 10, seed=seed, k=2)) == list(range(45, 55))
    assert knn_region_grow(xyz, 5, seed=np.array([-3.0, 0, 0]), k=2).tolist() == [0, 1, 2, 3, 4]


def test_bridges_when_component_exhausted(two_clusters):
    xyz = two_clusters
    k = 8
    idx = knn_region_grow(xyz, 260, seed=np.array([0.0, 0, 0]), k=k)
    assert len(np.unique(idx)) == 260
    assert set(range(250)) <= set(idx.tolist()) and (idx[250:] >= 250).all()  # all of A before any of B
    # The bridge goes to the B point nearest to cluster A.
    d = np.sqrt(((xyz[250:, None] - xyz[None, :250]) ** 2).sum(-1)).min(1)
    assert idx[250] == 250 + int(np.argmin(d))


def test_pad_policy():
    xyz = np.random.default_rng(1).normal(size=(7, 3))
    with pytest.raises(ValueError, match="fewer than n = 10"):
        knn_region_grow(xyz, 10)
    idx = knn_region_grow(xyz, 17, pad=True, k=3)
    assert idx.shape == (17,)
    assert sorted(idx[:7]) == list(range(7))
    np.testing.assert_array_equal(idx[7:14], idx[:7])
    np.testing.assert_array_equal(idx[14:], idx[:3])


def test_bad_inputs():
    xyz = np.random.default_rng(2).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"xyz: expected shape \(M, 3\)"):
        knn_region_grow(xyz[:, :2], 5)
    with pytest.raises(ValueError, match="seed mask selects 6 Gaussians, more than n = 5"):
        knn_region_grow(xyz, 5, seed=np.arange(20) < 6)
    with pytest.raises(ValueError, match="selects no Gaussian"):
        knn_region_grow(xyz, 5, seed=np.zeros(20, bool))
    with pytest.raises(ValueError, match=r"seed mask: expected shape \(20,\)"):
        knn_region_grow(xyz, 5, seed=np.zeros(19, bool))
    with pytest.raises(ValueError, match="seed: expected"):
        knn_region_grow(xyz, 5, seed=np.zeros(2))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        knn_region_grow(xyz, 0)
    with pytest.raises(ValueError, match="non-finite"):
        knn_region_grow(np.full((3, 3), np.nan), 2)


def test_crop_gaussians_and_fox(request):
    rng = np.random.default_rng(3)
    g = Gaussians(xyz=rng.normal(size=(30, 3)), f_dc=rng.normal(size=(30, 3)), opacity=rng.normal(size=30),
                  scale=rng.normal(size=(30, 3)), rot=rng.normal(size=(30, 4)), f_rest=rng.normal(size=(30, 3, 3)))
    h = crop_gaussians(g, 12, k=4)
    idx = knn_region_grow(g.xyz, 12, k=4)
    np.testing.assert_array_equal(h.f_rest, g.f_rest[idx])
    np.testing.assert_array_equal(h.opacity, g.opacity[idx])
    shared = request.getfixturevalue("shared_dir")
    fox = shared / "data" / "fox_3dgs" / "fox.ply"
    if not fox.is_file():
        pytest.skip(f"{fox} not found")
    from scene3d.data.splat_io import read_ply
    f = read_ply(fox)
    idx = knn_region_grow(f.xyz, 4096)
    assert len(np.unique(idx)) == 4096
    # Grown around the centre: the kept Gaussians lie closer to the mean than the scene does on average.
    d = np.linalg.norm(f.xyz - f.xyz.mean(0), axis=-1)
    assert d[idx].mean() < d.mean()
