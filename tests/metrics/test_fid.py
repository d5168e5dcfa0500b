"""FID / KID: the Fréchet distance against scipy's sqrtm, KID against the explicit unbiased-MMD sums, the frame
resize against torch's interpolation, and the FID Inception-v3 in JAX against an independent PyTorch reference
(pytorch-fid's blocks on torchvision's Inception3 layout, tests/metrics/torch_feature_nets.py) built from the same
random weights, saved as the real file is (torch.save of the state_dict, fc and BatchNorm counters included)."""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from scene3d.convert import inception as convert_inception
from scene3d.metrics import fid
from tests.metrics import torch_feature_nets as ref_nets


def _pytorch_fid_distance(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm of the product, real part)."""
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(400, 12), (300, 64)])
def test_frechet_distance_matches_scipy_sqrtm(n, d):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = 0.7 * rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    mu1, s1 = np.mean(a, 0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, 0), np.cov(b, rowvar=False)
    want = _pytorch_fid_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-8)
    np.testing.assert_allclose(fid.frechet_distance_of(a, b), want, rtol=1e-8)
    assert fid.frechet_distance_of(a, a) < 1e-8 * want


def test_frechet_distance_with_fewer_samples_than_dimensions():
    """Rank-deficient covariances (n < d, the usual case for a small split's 2048-d features): the trace of the root
    still equals the sum of the square roots of the eigenvalues of S1 S2."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(25, 50)) + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    np.testing.assert_allclose(fid.trace_sqrt_product(s1, s2), np.sum(np.sqrt(np.clip(eig.real, 0, None))),
                               rtol=1e-6)
    got = fid.frechet_distance_of(a, b)
    assert np.isfinite(got) and got > 0


def _mmd_sums(x, y):
    """Unbiased MMD^2 written as the explicit sums over pairs (i != j within a set)."""
    m, d = x.shape
    k = lambda u, v: (np.dot(u, v) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_mmd_sums():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) * 1.3 + 0.2
    # subset_size >= the sets: every subset is the whole set (reordered), so the mean is the full-set MMD, std 0.
    mean, std = fid.kid(x, y, subsets=3, subset_size=1000)
    np.testing.assert_allclose(mean, _mmd_sums(x, y), rtol=1e-10)
    assert std < 1e-12
    # proper subsets: the same draws as the documented sampling (rows without replacement, x then y per subset).
    draw = np.random.default_rng(7)
    vals = []
    for _ in range(4):
        xi, yi = draw.choice(30, 10, replace=False), draw.choice(30, 10, replace=False)
        vals.append(_mmd_sums(x[xi], y[yi]))
    np.testing.assert_allclose(fid.kid(x, y, subsets=4, subset_size=10, seed=7), (np.mean(vals), np.std(vals)),
                               rtol=1e-10)


def test_prepare_frames_matches_torch_bilinear():
    """Clip, 8-bit rounding and torch's F.interpolate(bilinear, align_corners=False), up and down."""
    rng = np.random.default_rng(3)
    for h, w, size in ((32, 24, 299), (320, 300, 224)):
        x = rng.uniform(-1.2, 1.2, size=(2, h, w, 3)).astype(np.float32)
        unit = np.round(np.clip((x + 1) / 2, 0, 1) * 255) / 255
        want = F.interpolate(torch.from_numpy(unit).permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1).numpy() * 2 - 1
        np.testing.assert_allclose(np.asarray(fid.prepare_frames(x, size)), want, atol=2e-6)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    net = ref_nets.randomize(ref_nets.FIDInception3(), seed=0)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-random.pth"
    torch.save(net.state_dict(), path)  # as the real file: torchvision keys, fc, num_batches_tracked
    return net, path


@pytest.fixture(scope="module")
def loaded_inception(inception_file):
    return convert_inception.load(inception_file[1])


def test_fid_inception_matches_pytorch_reference(inception_file, loaded_inception):
    net, _ = inception_file
    ours, report = loaded_inception
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    x = np.random.default_rng(4).uniform(-1, 1, size=(2, 75, 83, 3)).astype(np.float32)  # the smallest valid size
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    from flax import nnx
    got = nnx.jit(lambda m, v: m(v))(ours, x)
    ref_nets.check_close(got, want)
    with pytest.raises(ValueError, match="H, W >= 75"):
        ours(np.zeros((1, 74, 80, 3), np.float32))


def test_inception_loader_reads_pytorch_fid_wrapper_keys_and_names_bad_files(inception_file, loaded_inception,
                                                                             tmp_path):
    net, _ = inception_file
    sd = ref_nets.numpy_state_dict(net)
    # pytorch-fid's InceptionV3([3]) holds the same modules as blocks.{i}.{j}
    blocks = {name: f"blocks.{i}.{j}" for i, names in enumerate(convert_inception.WRAPPER_BLOCKS)
              for j, name in enumerate(names)}
    wrapped = {blocks[k.split(".")[0]] + k[len(k.split(".")[0]):]: v for k, v in sd.items() if not k.startswith("fc.")}
    a, _ = loaded_inception
    b, _ = convert_inception.load(wrapped)
    np.testing.assert_array_equal(np.asarray(a.Mixed_7c.branch_pool.bn.var.value),
                                  np.asarray(b.Mixed_7c.branch_pool.bn.var.value))
    np.testing.assert_array_equal(np.asarray(a.Conv2d_1a_3x3.conv.kernel.value),
                                  np.asarray(b.Conv2d_1a_3x3.conv.kernel.value))
    bad = dict(sd)
    del bad["Mixed_6b.branch7x7_2.bn.running_var"]
    bad["Mixed_5b.branch_pool.conv.weight"] = bad["Mixed_5b.branch_pool.conv.weight"][:16]
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bad.items()}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*Mixed_6b\.branch7x7_2\.bn\.running_var.*"
                                         r"Mixed_5b\.branch_pool\.conv\.weight"):
        convert_inception.load(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="Conv2d_1a_3x3.conv.weight"):  # not an Inception file at all
        convert_inception.load({"features.0.weight": np.zeros((3, 3), np.float32)})
