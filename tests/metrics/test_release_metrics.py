"""The SceneTok release's metrics: SSIM with sample covariance against an independent float64 reimplementation of
scikit-image's ``structural_similarity(win_size=11, gaussian_weights=True, data_range=1, channel_axis=...)``
(scipy's reflect-mode gaussian_filter over the whole image, truncate 3.5, then the 5-pixel border crop), the
default (population) SSIM unchanged, ``scene3d.metrics.release`` per frame / per scene / pooled, and LPIPS-VGG
loaded from files named as the lpips package and torchvision name them."""
import numpy as np
import pytest
from scipy import ndimage

from scene3d.metrics import image, release
from scene3d.metrics import lpips as lp


def skimage_ssim(x, y, data_range=1.0, sample=True):
    """scikit-image's Gaussian SSIM of (H, W, C) images, written out from its documented algorithm in float64:
    per channel, moments by ``gaussian_filter(sigma=1.5, truncate=3.5, mode='reflect')``, (co)variances scaled by
    NP / (NP - 1) with NP = 11 ** 2 when ``sample``, the map cropped by (11 - 1) // 2 pixels, then averaged; the
    channel means averaged."""
    out = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)

        def f(z):
            return ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")

        ux, uy = f(a), f(b)
        norm = 121.0 / 120.0 if sample else 1.0
        vx, vy, vxy = norm * (f(a * a) - ux * ux), norm * (f(b * b) - uy * uy), norm * (f(a * b) - ux * uy)
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        out.append(s[5:-5, 5:-5].mean())
    return float(np.mean(out))


def pairs(h, w, seed=0):
    """Three image pairs (3, h, w, 3) x 2 in [0, 1]: noise vs noise, a smooth image vs a noisy copy, vs a copy
    within 1e-3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    smooth = np.stack([0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy) for k in range(3)], -1)
    a = np.stack([rng.uniform(0, 1, (h, w, 3)), smooth, smooth])
    b = np.stack([rng.uniform(0, 1, (h, w, 3)), np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1),
                  np.clip(smooth + 1e-3 * rng.normal(size=smooth.shape), 0, 1)])
    return a.astype(np.float32), b.astype(np.float32)


def test_ssim_sample_covariance_matches_skimage_reference():
    worst = {"sample": 0.0, "population": 0.0}
    for h, w in ((32, 32), (24, 37), (48, 20)):
        x, y = pairs(h, w)
        for cov in worst:
            got = np.asarray(image.ssim(x, y, covariance=cov), np.float64)
            want = np.array([skimage_ssim(a, b, sample=cov == "sample") for a, b in zip(x, y)])
            worst[cov] = max(worst[cov], float(np.abs(got - want).max()))
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{h}x{w} {cov}")
    assert worst["sample"] < 1e-5 and worst["population"] < 1e-5
    # the two covariances differ (by ~1e-3 on the noisy copy): the option matters
    x, y = pairs(32, 32)
    assert abs(float(image.ssim(x[1], y[1], covariance="sample")) - float(image.ssim(x[1], y[1]))) > 1e-4
    with pytest.raises(ValueError, match="covariance"):
        image.ssim(x, y, covariance="unbiased")
    with pytest.raises(ValueError, match="3 x 3"):
        image.ssim(x[:, :2, :2], y[:, :2, :2], covariance="sample")


def test_release_frame_scene_and_pooled_figures():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 1, (5, 32, 32, 3)).astype(np.float32)
    pred = (gt + rng.normal(0, 0.2, gt.shape)).astype(np.float32)  # outside [0, 1] too: PSNR clips
    # Any LPIPS net takes the same path; random AlexNet weights keep this cheap (a VGG16 forward at opt level 0
    # costs ~1 s per frame on CPU). VGG's file loading: test_lpips_vgg_from_lpips_and_torchvision_files.
    metric = lp.LPIPS.random("alex", seed=0)
    per = release.frame_metrics(pred, gt, metric, chunk=2)  # chunks of 2, the last one padded
    clipped = np.clip(pred, 0, 1).astype(np.float64)
    np.testing.assert_allclose(per["psnr"], -10 * np.log10(((clipped - gt) ** 2).mean(axis=(1, 2, 3))), rtol=1e-5)
    np.testing.assert_allclose(per["ssim"], [skimage_ssim(p, g) for p, g in zip(pred, gt)], atol=1e-5)
    np.testing.assert_allclose(per["lpips"], np.asarray(metric(pred * 2 - 1, gt * 2 - 1)), rtol=1e-5)
    whole = release.frame_metrics(pred, gt)  # one chunk
    for k in whole:
        np.testing.assert_allclose(whole[k], per[k], rtol=1e-6)
    a = release.scene_metrics(pred[:2], gt[:2])
    b = release.scene_metrics(pred[2:], gt[2:])
    assert a["num_frames"] == 2 and set(a["frames"]) == {"psnr", "ssim"}
    s = release.summarize({"a": a, "b": b})
    assert s["psnr"] == pytest.approx(per["psnr"].mean())  # pooled over the 5 frames (the release's number)
    assert s["psnr_scene_mean"] == pytest.approx((per["psnr"][:2].mean() + per["psnr"][2:].mean()) / 2)
    assert s["num_scenes"] == 2 and s["num_frames"] == 5 and "lpips" not in s
    with pytest.raises(ValueError, match="frames"):
        release.frame_metrics(pred[0], gt[0])
    with pytest.raises(ValueError, match="no scenes"):
        release.summarize({})
    assert "not computed" in release.describe_lpips(None) and "RANDOM" in release.describe_lpips(metric)


def test_lpips_vgg_from_lpips_and_torchvision_files(tmp_path):
    """The release's LPIPS is lpips.LPIPS(net='vgg'): torchvision's vgg16 ``features`` plus the package's
    ``weights/v0.1/vgg.pth`` (``lin{l}.model.1.weight``). Both files load through ``from_config`` (net='vgg')
    into exactly their tensors (random weights; no forward pass needed)."""
    torch = pytest.importorskip("torch")
    from tests.metrics.test_lpips import torch_state_dicts
    sd, lin = torch_state_dicts("vgg", 3)
    torch.save(sd, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    metric = lp.from_config({"net": "vgg", "backbone": str(tmp_path / "vgg16.pth"), "lin": str(tmp_path / "vgg.pth")})
    assert metric.net == "vgg" and not metric.random_weights
    assert release.describe_lpips(metric).startswith("LPIPS-VGG")
    for i in lp.conv_shapes("vgg"):
        np.testing.assert_array_equal(np.asarray(metric.params["features"][str(i)]["kernel"]),
                                      np.transpose(sd[f"features.{i}.weight"].numpy(), (2, 3, 1, 0)))
        np.testing.assert_array_equal(np.asarray(metric.params["features"][str(i)]["bias"]),
                                      sd[f"features.{i}.bias"].numpy())
    for l, w in enumerate(metric.params["lin"]):
        np.testing.assert_array_equal(np.asarray(w), lin[f"lin{l}.model.1.weight"].numpy().reshape(-1))
