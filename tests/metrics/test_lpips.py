"""LPIPS in JAX vs an independent torch reference (torch.nn.functional on torchvision-layout state_dicts)."""
import logging

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scene3d.metrics import lpips as lp

# torchvision `features` written out independently of the module: (kind, out, kernel, stride, pad).
TV_ALEX = [("conv", 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
           ("conv", 384, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",),
           ("pool", 3, 2)]
TV_VGG16 = []
for _w, _n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
    TV_VGG16 += [("conv", _w, 3, 1, 1), ("relu",)] * _n + [("pool", 2, 2)]
# lpips slices: features index ranges; the tap is the slice's last layer.
SLICES = {"alex": [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)],
          "vgg": [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]}
TV = {"alex": TV_ALEX, "vgg": TV_VGG16}
SHAPE = (3, 64, 48, 3)  # one alex input shape for all tests: one compilation


def torch_state_dicts(net, seed):
    """Random torchvision-style backbone state_dict (with classifier junk) and lpips-style lin state_dict."""
    g = torch.Generator().manual_seed(seed)
    sd, cin, chans = {}, 3, []
    for i, layer in enumerate(TV[net]):
        if layer[0] == "conv":
            _, o, k = layer[:3]
            sd[f"features.{i}.weight"] = torch.randn(o, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
            sd[f"features.{i}.bias"] = 0.1 * torch.randn(o, generator=g)
            cin = o
        if any(i == b - 1 for _, b in SLICES[net]):
            chans.append(cin)
    sd["classifier.1.weight"] = torch.randn(10, 7, generator=g)  # ignored by the loader
    lin = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 2.0 / c for l, c in enumerate(chans)}
    return sd, lin


def torch_lpips(sd, lin, net, x, y, per_layer=False):
    """lpips v0.1 forward on NCHW torch tensors in [-1, 1] using only torch.nn.functional."""
    shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    scale = torch.tensor([.458, .448, .450])[None, :, None, None]
    taps = [b - 1 for _, b in SLICES[net]]

    def feats(h):
        h, out = (h - shift) / scale, []
        for i, layer in enumerate(TV[net]):
            if i > taps[-1]:
                break
            if layer[0] == "conv":
                h = F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], stride=layer[3],
                             padding=layer[4])
            elif layer[0] == "relu":
                h = F.relu(h)
            else:
                h = F.max_pool2d(h, layer[1], layer[2])
            if i in taps:
                out.append(h)
        return out

    def norm(f):
        return f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + 1e-10)

    res = []
    for l, (f0, f1) in enumerate(zip(feats(x), feats(y))):
        d = (norm(f0) - norm(f1)) ** 2
        res.append(F.conv2d(d, lin[f"lin{l}.model.1.weight"]).mean([2, 3], keepdim=True))
    val = sum(res[1:], res[0])[:, 0, 0, 0]
    return (val, torch.stack([r[:, 0, 0, 0] for r in res], -1)) if per_layer else val


def to_numpy(sd):
    return {k: v.numpy() for k, v in sd.items()}


def images(shape, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))


@pytest.fixture(scope="module")
def alex():
    sd, lin = torch_state_dicts("alex", 0)
    return sd, lin, lp.LPIPS.from_state_dict(to_numpy(sd), to_numpy(lin), net="alex")


@pytest.mark.parametrize("net,shape", [("alex", (3, 64, 48, 3)), ("vgg", (2, 32, 40, 3))])
def test_parity_with_torch_reference(net, shape, alex):
    if net == "alex":
        sd, lin, metric = alex
    else:
        sd, lin = torch_state_dicts("vgg", 1)
        metric = lp.LPIPS.from_state_dict(to_numpy(sd), to_numpy(lin), net="vgg")
    x = images(shape, 2)
    y = np.clip(x + 0.3 * images(shape, 3), -1, 1)
    with torch.no_grad():
        want, want_layers = torch_lpips(sd, lin, net, nchw(x), nchw(y), per_layer=True)
    got_layers = np.asarray(metric.layers(x, y))
    got = np.asarray(metric(x, y))
    assert got.shape == (shape[0],) and got_layers.shape == (shape[0], 5)
    assert np.all(want.numpy() > 1e-3)  # a non-trivial distance
    np.testing.assert_allclose(got_layers, want_layers.numpy(), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-6)


def test_metric_properties(alex):
    metric = alex[2]
    x, y = images(SHAPE, 4), images(SHAPE, 5)
    dxy, dyx = np.asarray(metric(x, y)), np.asarray(metric(y, x))
    np.testing.assert_allclose(dxy, dyx, rtol=1e-5)
    assert np.all(dxy > 0)
    np.testing.assert_allclose(np.asarray(metric(x, x)), 0.0, atol=1e-7)
    # Per-pair: a pair's distance does not depend on the rest of the batch; leading axes are kept.
    perm = np.array([2, 0, 1])
    np.testing.assert_allclose(np.asarray(metric(x[perm], y[perm])), dxy[perm], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metric(x[None], y[None])), dxy[None], rtol=1e-5)
    # Grows with the noise level (averaged over the batch).
    noise = images(SHAPE, 6)
    means = [float(np.mean(np.asarray(metric(x, np.clip(x + s * noise, -1, 1))))) for s in (0.02, 0.1, 0.3, 1.0)]
    assert all(a < b for a, b in zip(means, means[1:])), means
    # The per-tap terms are non-negative and sum to the distance.
    layers = np.asarray(metric.layers(x, y))
    assert np.all(layers >= 0)
    np.testing.assert_allclose(layers.sum(-1), dxy, rtol=1e-5)


def test_jit_with_metric_as_argument(alex):
    metric = alex[2]
    x, y = images(SHAPE, 7), images(SHAPE, 8)
    leaves = jax.tree.leaves(metric)
    assert len(leaves) == 2 * 5 + 5  # five convs (kernel, bias) + five lin vectors
    f = jax.jit(lambda m, a, b: m(a, b))
    np.testing.assert_allclose(np.asarray(f(metric, x, y)), np.asarray(metric(x, y)), rtol=1e-5)


def test_random_weights_warn_and_are_seeded(caplog):
    with caplog.at_level(logging.WARNING):
        m0 = lp.LPIPS.random("alex", seed=3)
    assert "NOT LPIPS" in caplog.text and m0.random_weights
    m1 = lp.LPIPS.random("alex", seed=3)
    for a, b in zip(jax.tree.leaves(m0), jax.tree.leaves(m1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(np.all(np.asarray(w) >= 0) for w in m0.params["lin"])
    assert lp.tap_channels("alex") == (64, 192, 384, 256, 256)
    assert lp.tap_channels("vgg") == (64, 128, 256, 512, 512)


def test_bad_inputs(alex):
    metric = alex[2]
    with pytest.raises(ValueError, match="too small"):
        metric(images((1, 24, 24, 3), 0), images((1, 24, 24, 3), 1))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 3\)"):
        metric(images((1, 64, 64, 3), 0), images((1, 64, 48, 3), 1))
    with pytest.raises(ValueError, match="nothing downloads"):
        lp.LPIPS("alex")
    with pytest.raises(ValueError, match="unknown net"):
        lp.LPIPS.random("squeeze")


def combined_state_dict(sd, lin, net):
    """The lpips.LPIPS module's own state_dict names: net.slice{s}.{i}.*, lin{l}.*, lins.{l}.*, scaling_layer."""
    out = {"scaling_layer.shift": torch.tensor([-.030, -.088, -.188]).reshape(1, 3, 1, 1),
           "scaling_layer.scale": torch.tensor([.458, .448, .450]).reshape(1, 3, 1, 1)}
    for s, (a, b) in enumerate(SLICES[net]):
        for i in range(a, b):
            for p in ("weight", "bias"):
                if f"features.{i}.{p}" in sd:
                    out[f"net.slice{s + 1}.{i}.{p}"] = sd[f"features.{i}.{p}"]
    for k, v in lin.items():
        out[k] = v
        out[k.replace("lin", "lins.", 1)] = v
    return out


def test_load_from_files(tmp_path, alex):
    from safetensors.torch import save_file
    sd, lin, metric = alex
    x, y = images(SHAPE, 9), images(SHAPE, 10)
    want = np.asarray(metric(x, y))
    torch.save(sd, tmp_path / "alexnet.pth")
    torch.save(lin, tmp_path / "alex_lin.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "alexnet.safetensors"))
    torch.save(combined_state_dict(sd, lin, "alex"), tmp_path / "lpips_alex.pth")
    torch.save({"state_dict": combined_state_dict(sd, lin, "alex")}, tmp_path / "ckpt.pt")
    for m in (lp.LPIPS.from_files(tmp_path / "alexnet.pth", tmp_path / "alex_lin.pth"),
              lp.LPIPS.from_files(str(tmp_path / "alexnet.safetensors"), str(tmp_path / "alex_lin.pth"), net="alex"),
              lp.LPIPS.from_files(tmp_path / "lpips_alex.pth"),
              lp.LPIPS.from_files(tmp_path / "ckpt.pt")):
        assert not m.random_weights
        np.testing.assert_allclose(np.asarray(m(x, y)), want, rtol=1e-6)


def test_bad_files(tmp_path, alex):
    sd, lin, _ = alex
    lin_path = tmp_path / "lin.pth"
    torch.save(lin, lin_path)
    bad = dict(sd)
    bad["features.3.weight"] = bad["features.3.weight"][:, :32]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*features\.3\.weight.*\(192, 64, 5, 5\)"):
        lp.LPIPS.from_files(tmp_path / "bad.pth", lin_path)
    missing = {k: v for k, v in sd.items() if k != "features.10.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*features\.10\.bias.*\(256,\)"):
        lp.LPIPS.from_files(tmp_path / "missing.pth", lin_path)
    torch.save(sd, tmp_path / "alex.pth")
    with pytest.raises(ValueError, match=r"alex\.pth.*features\.0\.weight.*\(64, 3, 3, 3\)"):
        lp.LPIPS.from_files(tmp_path / "alex.pth", lin_path, net="vgg")
    with pytest.raises(ValueError, match=r"alex\.pth.*lin0\.model\.1\.weight.*\(1, 64, 1, 1\)"):
        lp.LPIPS.from_files(tmp_path / "alex.pth")  # no lin weights in a backbone-only file
    neg = dict(lin)
    neg["lin2.model.1.weight"] = -neg["lin2.model.1.weight"]
    torch.save(neg, tmp_path / "neg.pth")
    with pytest.raises(ValueError, match=r"neg\.pth.*lin layer 2.*non-negative"):
        lp.LPIPS.from_files(tmp_path / "alex.pth", tmp_path / "neg.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        lp.LPIPS.from_files(tmp_path / "junk.pth", lin_path)
    with pytest.raises(ValueError, match="not found"):
        lp.LPIPS.from_files(tmp_path / "nope.pth", lin_path)
