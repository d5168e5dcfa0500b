"""WanVAE (Wan 2.2 VAE as SceneTok's va-wan model uses it) vs the official fixtures in ../shared/fixtures/wan_vae
(skipped when absent): encode / decode outputs and every hooked intermediate of fixtures a and b, SceneTok's pipeline
(grouped decode), the one-image edge case, the export round trip, a sharded run, and the released configuration's
key set against the manifest (eval_shape, nothing allocated).

Measured on CPU (max abs error / max |ref|; the tolerance REL is 1e-4): fixture a: latent 8.6e-7, mu_raw 7.5e-7,
logvar_unused 8.1e-7, decoded 2.1e-6, intermediates <= 2.1e-6 (decoder.head.2), pipeline.latents 8.6e-7,
pipeline.images 1.6e-6; fixture b: latent 5.2e-7, mu_raw 7.5e-7, logvar_unused 7.3e-7, decoded 2.1e-6, intermediates
<= 9.3e-7, edge.latent 4.0e-7, edge.decoded 1.8e-6, pipeline.images (grouped) 1.6e-6. Sharded on the (2, 2, 2) mesh
vs unsharded: ~1.5e-6. bfloat16 compute: edge.decoded 3.6e-2, decoded 2.5e-2 (checked at 1e-1).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.convert import wan_vae as cv
from scene3d.models.wan_vae import WanVAE, avg_down, dup_up, patchify, unpatchify
from scene3d.specs.wan_vae import LATENT_MEAN, LATENT_STD, VARIANTS, config_from_dict

REL = 1e-4  # of each tensor's max |value|


def _fixture(shared_dir, name):
    d = shared_dir / "fixtures" / "wan_vae" / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


def _cl(a, axis=1):  # channel axis -> last: (B, C, T, H, W) -> (B, T, H, W, C); axis=2 for (B, V, C, H, W)
    return jnp.asarray(np.moveaxis(np.asarray(a), axis, -1))


def _err(got, ref, axis=1):
    got = np.moveaxis(np.asarray(got, np.float32), -1, axis)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max()) / float(np.abs(ref).max())


def _check(name, got, ref, axis=1, rel=REL):
    e = _err(got, ref, axis)
    assert e <= rel, f"{name}: max abs err {e:.3e} of max |ref| (tolerance {rel:.0e})"


def _encode_capture(m, x):
    cap = {}
    cap["latent"] = m.encode(x, cap)
    return cap


def _decode_capture(m, z):
    cap = {}
    cap["decoded"] = m.decode(z, cap)
    return cap


def _load(d):
    from safetensors.numpy import load_file
    return load_file(d / "inputs.safetensors"), load_file(d / "outputs.safetensors")


@pytest.fixture(scope="module")
def fixture_a(shared_dir):
    d = _fixture(shared_dir, "a")
    model, report = cv.model_from_official(d / "config.json", d / "weights.safetensors")
    inputs, outputs = _load(d)
    cap = {**nnx.jit(_encode_capture)(model, _cl(inputs["x"])), **nnx.jit(_decode_capture)(model, _cl(inputs["z"]))}
    return dict(dir=d, model=model, report=report, inputs=inputs, outputs=outputs, cap=cap)


@pytest.fixture(scope="module")
def fixture_b(shared_dir):
    d = _fixture(shared_dir, "b")
    model, report = cv.model_from_official(d / "config.json", d / "weights.safetensors")
    inputs, outputs = _load(d)
    cap = {**nnx.jit(_encode_capture)(model, _cl(inputs["x"])), **nnx.jit(_decode_capture)(model, _cl(inputs["z"]))}
    return dict(dir=d, model=model, report=report, inputs=inputs, outputs=outputs, cap=cap)


def test_fixture_a_import_consumes_every_key_and_exports_back(fixture_a):
    from safetensors.numpy import load_file
    d, model, report = fixture_a["dir"], fixture_a["model"], fixture_a["report"]
    sd = load_file(d / "weights.safetensors")
    assert sorted(report.consumed) == sorted(sd)
    assert not report.ignored and not report.initialised
    assert sum(int(np.prod(v.shape)) for v in sd.values()) == json.load(open(d / "config.json"))["num_parameters"]
    back = cv.export_official(model)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def _check_all(fx, skip=("pipeline.", "edge.")):
    checked = 0
    for key, ref in fx["outputs"].items():
        if key.startswith(skip):
            continue
        name = key.removeprefix("intermediate.")
        assert name in fx["cap"], f"no intermediate {name}"
        _check(key, fx["cap"][name], ref)
        checked += 1
    return checked


def test_fixture_a_encode_decode_and_intermediates(fixture_a):
    """T = 13 -> 4 latents -> 13 frames; latent, mu_raw, logvar_unused, decoded and all 25 hooked intermediates
    (each level, the temporal down / upsample paths and their AvgDown3D / DupUp3D shortcuts)."""
    assert _check_all(fixture_a) == 28


def test_fixture_a_scenetok_pipeline(fixture_a):
    model, inputs, outputs = fixture_a["model"], fixture_a["inputs"], fixture_a["outputs"]
    images = _cl(inputs["pipeline.images"], 2)  # (B, V, H, W, 3) in [0, 1]
    latents = nnx.jit(lambda m, v: m.scenetok_encode(v))(model, images)
    _check("pipeline.latents", latents, outputs["pipeline.latents"], axis=2)  # release layout (B, V, C, h, w)
    pix = nnx.jit(lambda m, v: m.scenetok_decode(v))(model, latents)  # 4 latents: one group -> 13 frames
    _check("pipeline.images", pix, outputs["pipeline.images"], axis=2)


def test_fixture_b_batch_nonsquare_dropped_frames(fixture_b):
    """B = 2, T = 11 (frames 9, 10 dropped by encode), 48 x 80; num_res_blocks 1 (resample at index 1)."""
    assert fixture_b["model"].frames_used(11) == 9
    assert _check_all(fixture_b) == 24


def test_fixture_b_edge_one_image(fixture_b):
    """One image -> one latent -> one frame."""
    model, inputs, outputs = fixture_b["model"], fixture_b["inputs"], fixture_b["outputs"]
    lat = nnx.jit(lambda m, v: m.encode(v))(model, _cl(inputs["edge.x"]))
    _check("edge.latent", lat, outputs["edge.latent"])
    dec = nnx.jit(lambda m, v: m.decode(v))(model, _cl(inputs["edge.z"]))
    _check("edge.decoded", dec, outputs["edge.decoded"])


def test_fixture_b_scenetok_grouped_decode(fixture_b):
    """10 latents -> two groups of 5 decoded independently -> 2 x 17 = 34 frames in [0, 1]."""
    model, inputs, outputs = fixture_b["model"], fixture_b["inputs"], fixture_b["outputs"]
    pix = nnx.jit(lambda m, v: m.scenetok_decode(v))(model, _cl(inputs["pipeline.latents"], 2))
    assert pix.shape == (1, 34, 32, 32, 3)
    _check("pipeline.images", pix, outputs["pipeline.images"], axis=2)


def test_released_config_matches_manifest(shared_dir):
    p = shared_dir / "fixtures" / "wan_vae" / "manifest_wan2.2.json"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    man = json.load(open(p))
    assert config_from_dict(man) == dict(VARIANTS["wan2.2"])
    assert list(man["latent_mean"]) == list(LATENT_MEAN) and list(man["latent_std"]) == list(LATENT_STD)
    abstract = nnx.eval_shape(lambda: WanVAE("wan2.2", rngs=nnx.Rngs(0)))
    shapes = cv.official_shapes(abstract)
    want = {k: tuple(s) for k, s, _ in man["state_dict"]}
    assert len(want) == man["num_keys"] == 196
    assert set(shapes) == set(want), (sorted(set(want) - set(shapes))[:5], sorted(set(shapes) - set(want))[:5])
    assert {k: tuple(v) for k, v in shapes.items()} == want
    assert sum(int(np.prod(s)) for s in shapes.values()) == man["total_parameters"] == 704_688_668
    assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("encoder.")) == man["encoder_parameters"]
    assert sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("decoder.")) == man["decoder_parameters"]


def test_fixture_configs_resolve(shared_dir):
    cfg = json.load(open(_fixture(shared_dir, "a") / "config.json"))
    assert config_from_dict(cfg["release_WanVAE_kwargs"]) == dict(VARIANTS["wan2.2"])
    kw = config_from_dict(cfg)
    assert (kw["dim"], kw["dec_dim"], kw["num_res_blocks"]) == (5, 8, 2)
    b = config_from_dict(json.load(open(_fixture(shared_dir, "b") / "config.json")))
    assert b == dict(VARIANTS["tiny"])


def test_layout_helpers_channel_orders():
    """patchify channel c*4 + r*2 + q (r = column offset); avg_down of dup_up is the identity (channels equal)."""
    x = jnp.arange(1 * 2 * 4 * 6 * 3, dtype=jnp.float32).reshape(1, 2, 4, 6, 3)
    y = patchify(x)
    np.testing.assert_array_equal(unpatchify(y), x)
    c, r, q = 2, 1, 0
    np.testing.assert_array_equal(y[0, 1, 1, 2, c * 4 + r * 2 + q], x[0, 1, 2 + q, 4 + r, c])
    z = jax.random.normal(jax.random.key(0), (1, 3, 2, 2, 4))
    up = dup_up(z, 4, 2, 2)                     # 3 frames -> 6 - 1 = 5 (first chunk drops ft - 1 = 1)
    assert up.shape == (1, 5, 4, 4, 4)
    # AvgDown3D pads ONE zero frame in front of an odd sequence: frame 0's shortcut is mean([0, x0]).
    a = avg_down(up, 4, 2, 2)
    np.testing.assert_allclose(a[:, 1:], z[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(a[:, 0], z[:, 0] / 2, rtol=1e-6)


def test_fixture_a_sharded(fixture_a):
    """Parameters placed by their logical names on a (data, fsdp, tensor) = (2, 2, 2) mesh of the fake CPU devices
    (conv output channels on 'tensor'), batch of 4 on data x fsdp: the unsharded numbers (and the fixture's)."""
    from scene3d.core import sharding as sh
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    d, inputs, outputs, cap = fixture_a["dir"], fixture_a["inputs"], fixture_a["outputs"], fixture_a["cap"]
    mesh = sh.make_mesh((2, 2, 2))
    kwargs = cv.load_config(d / "config.json")
    # (sh.create_sharded_model would compile a random init first: ~13 s on 2 CPU cores; the imported weights are
    # placed directly with the shardings it would use)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: WanVAE(rngs=nnx.Rngs(0), **kwargs)))
    model = nnx.merge(graphdef, jax.device_put(nnx.state(fixture_a["model"]), sh.state_shardings(abstract, mesh)))
    assert model.decoder.upsamples[0].upsamples[3].time_conv.kernel[...].sharding.spec[-1] == "tensor"
    # the model is causal: the first 5 frames -> the first 2 latents, the first 2 latents -> the first 5 frames
    # (a shorter clip keeps the 8-device CPU run cheap; references are prefixes of the full-clip results)
    with sh.use_mesh(mesh):
        x = jax.device_put(jnp.concatenate([_cl(inputs["x"])[:, :5]] * 4), sh.batch_sharding(5, mesh))
        lat = nnx.jit(lambda m, v: m.encode(v))(model, x)
        z = jax.device_put(jnp.concatenate([_cl(inputs["z"])[:, :2]] * 4), sh.batch_sharding(5, mesh))
        dec = nnx.jit(lambda m, v: m.decode(v))(model, z)
    assert lat.sharding.spec[0] == ("data", "fsdp") and lat.shape == (4, 2, 4, 4, 48) and dec.shape[1] == 5
    for i in range(4):
        for name, got, n in (("latent", lat, 2), ("decoded", dec, 5)):
            ref = np.asarray(cap[name])[:, :n]
            assert float(np.abs(np.asarray(got[i:i + 1]) - ref).max()) <= 1e-5 * float(np.abs(ref).max()), name
            _check(name, got[i:i + 1], outputs[name][:, :, :n])


def test_fixture_b_bfloat16_compute(fixture_b):
    """dtype=bfloat16 (SceneTok decodes under bf16 autocast on GPU): parameters stay fp32, the output is close."""
    d, inputs, outputs = fixture_b["dir"], fixture_b["inputs"], fixture_b["outputs"]
    model, _ = cv.model_from_official(d / "config.json", d / "weights.safetensors", dtype=jnp.bfloat16)
    assert model.decoder.conv1.kernel[...].dtype == jnp.float32
    dec = nnx.jit(lambda m, v: m.decode(v))(model, _cl(inputs["edge.z"]))
    assert dec.dtype == jnp.float32
    assert _err(dec, outputs["edge.decoded"]) < 1e-1


def test_value_errors(fixture_b):
    model = fixture_b["model"]
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(jnp.zeros((1, 5, 40, 48, 3)))
    with pytest.raises(ValueError, match="WanVAE.encode"):
        model.encode(jnp.zeros((1, 5, 48, 48, 4)))
    with pytest.raises(ValueError, match="WanVAE.encode"):
        model.encode(jnp.zeros((5, 48, 48, 3)))
    with pytest.raises(ValueError, match="WanVAE.decode"):
        model.decode(jnp.zeros((1, 2, 3, 3, 16)))
    with pytest.raises(ValueError, match="equal groups"):
        model.scenetok_decode(jnp.zeros((1, 7, 2, 2, 48)))
    with pytest.raises(ValueError, match="scenetok_decode"):
        model.scenetok_decode(jnp.zeros((1, 6, 2, 2, 8)))
    with pytest.raises(ValueError, match="variant"):
        WanVAE("wan2.1", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown keys"):
        nnx.eval_shape(lambda: WanVAE("tiny", rngs=nnx.Rngs(0), dims=3))
    with pytest.raises(ValueError, match="temporal_downsample"):
        nnx.eval_shape(lambda: WanVAE("tiny", rngs=nnx.Rngs(0), temporal_downsample=(True, True)))
    with pytest.raises(ValueError, match="attn_scales"):
        config_from_dict(dict(VARIANTS["tiny"], attn_scales=[1]))
    # an official file of another size: every mismatching key named in one error
    sd = cv.export_official(model)
    sd["encoder.conv1.weight"] = sd["encoder.conv1.weight"][:2]
    del sd["conv2.bias"]
    with pytest.raises(ValueError, match=r"conv2\.bias.*encoder\.conv1\.weight"):
        cv.import_official(nnx.eval_shape(lambda: WanVAE("tiny", rngs=nnx.Rngs(0))), sd)
