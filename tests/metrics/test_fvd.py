"""FVD's network: the Kinetics I3D in JAX against an independent PyTorch reference written after pytorch-i3d's
InceptionI3d (tests/metrics/torch_feature_nets.py), same random weights saved as that repository's state_dict (here
with DataParallel's 'module.' prefix), at the smallest input its head accepts (9 frames of 193 x 193)."""
import numpy as np
import pytest
import torch
from flax import nnx

from scene3d.convert import i3d as convert_i3d
from tests.metrics import torch_feature_nets as ref_nets


def test_i3d_matches_pytorch_i3d_reference(tmp_path):
    net = ref_nets.randomize(ref_nets.InceptionI3d(), seed=1)
    path = tmp_path / "rgb_imagenet-random.pt"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    ours, report = convert_i3d.load(path)
    assert report.prefix == "module." and not report.ignored
    x = np.random.default_rng(5).uniform(-1, 1, size=(1, 9, 193, 201, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        logits, pool = net(xt).numpy(), net.extract_features(xt).numpy()
    got = nnx.jit(lambda m, v: m(v))(ours, x)
    # pytorch-i3d returns per-time logits (N, 400, T'); FVD's feature is their time mean
    ref_nets.check_close(got["logits"], logits.mean(-1))
    ref_nets.check_close(got["pool"], pool.reshape(1, 1024, -1).mean(-1))
    with pytest.raises(ValueError, match="T >= 9"):
        ours(np.zeros((1, 8, 224, 224, 3), np.float32))


def test_i3d_loader_names_missing_and_misshapen_keys():
    net = ref_nets.InceptionI3d()
    sd = ref_nets.numpy_state_dict(net)
    del sd["Mixed_4e.b2b.conv3d.weight"]
    sd["logits.conv3d.weight"] = sd["logits.conv3d.weight"][:10]  # a 10-class head is not the Kinetics-400 I3D
    with pytest.raises(ValueError, match=r"Mixed_4e\.b2b\.conv3d\.weight.*logits\.conv3d\.weight"):
        convert_i3d.load(sd)
