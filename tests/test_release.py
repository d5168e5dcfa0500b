"""The release's SceneTok / SceneGen pipeline: sliding-window schedule and sampler against independent references,
the release's camera preprocessing, and ``python -m scene3d.release`` end to end on tiny random-weight checkpoints
saved in the release's file layouts (Lightning .ckpt, .pt state_dict, safetensors)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from scene3d import release
from scene3d.diffusion import windows
from scene3d.models import scenetok_release as rel


# ------------------------------------------------------------------------------------------------ the schedule


def _release_full_sequence(horizon, steps, concurrency, clean):
    """The release's full_sequence scheduling matrix and window masks, transcribed list by list."""
    shift = concurrency - clean
    mats, masks = [], [[i < concurrency for i in range(horizon)]]
    m = masks[-1]
    pos = 0
    x = [steps] * horizon
    mats.append(list(x))
    while sum(x) != 0:
        for i in range(horizon):
            if x[i] != 0 and (i - pos) < concurrency:
                x[i] -= 1
        if sum(x[pos:pos + concurrency]) == 0:
            pos += shift
            if pos < horizon - concurrency:
                m = [pos <= i < pos + concurrency for i in range(horizon)]
            else:
                m = [i >= horizon - concurrency for i in range(horizon)]
        mats.append(list(x))
        masks.append(m)
    return np.asarray(mats, np.float32) / steps, np.asarray(masks, bool)


@pytest.mark.parametrize("horizon,steps,window,clean", [(8, 25, 8, 4), (10, 3, 8, 4), (13, 4, 8, 4), (3, 5, 8, 4),
                                                        (20, 2, 5, 0), (9, 3, 4, 3)])
def test_schedule_matches_the_release(horizon, steps, window, clean):
    times, masks = _release_full_sequence(horizon, steps, window, clean)
    plan = windows.schedule(horizon, steps, window, clean)
    np.testing.assert_array_equal(plan.times, times)
    assert plan.window == min(window, horizon)
    got = np.zeros_like(masks)
    for s, start in enumerate(plan.starts):
        got[s, start:start + plan.window] = True
    np.testing.assert_array_equal(got, masks)


def test_schedule_shift_and_validation():
    plain = windows.schedule(10, 4, 8, 4)
    shifted = windows.schedule(10, 4, 8, 4, shift=3.0)
    np.testing.assert_allclose(shifted.times, 3 * plain.times / (1 + 2 * plain.times), rtol=1e-6)
    for bad in (dict(clean=8), dict(clean=-1), dict(shift=0.0)):
        with pytest.raises(ValueError, match="sliding window"):
            windows.schedule(10, 4, 8, **{"clean": 4, **bad})


def test_windowed_sampler_equals_a_python_loop():
    """x += (t_next - t) v over the window at each global step, v depending on the window's content, its times and
    its position (as the decoder depends on its cameras)."""
    plan = windows.schedule(11, 3, 4, 2, shift=2.0)
    noise = jax.random.normal(jax.random.key(0), (2, 11, 3))

    def vel(xw, tw, start):
        return jnp.tanh(xw + jnp.sum(xw, axis=1, keepdims=True)) * (1 + tw[..., None]) + 0.1 * start

    got = np.asarray(windows.sample(vel, noise, plan))
    x = np.asarray(noise, np.float64)
    for s in range(plan.num_steps):
        a, w = int(plan.starts[s]), plan.window
        xw, tw = x[:, a:a + w], plan.times[s, a:a + w]
        v = np.tanh(xw + xw.sum(1, keepdims=True)) * (1 + tw[None, :, None]) + 0.1 * a
        x[:, a:a + w] = xw + (plan.times[s + 1, a:a + w] - tw)[None, :, None] * v
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).all()


# ------------------------------------------------------------------------------------------------ cameras


def test_release_cameras_relative_to_the_middle_view_and_the_focal_quirk():
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4, dtype=np.float32), (1, 5, 1, 1))
    c2w[0, :, :3, 3] = rng.normal(size=(5, 3))
    tgt = np.tile(np.eye(4, dtype=np.float32), (1, 3, 1, 1))
    tgt[0, :, :3, 3] = rng.normal(size=(3, 3))
    k = np.tile(np.asarray([0.8, 0.9, 0.5, 0.5], np.float32), (1, 5, 1))
    out = rel.release_cameras(c2w, k, tgt, k[:, :3], quirk="context")
    ref = np.linalg.inv(c2w[0, 2])
    np.testing.assert_allclose(out["context_c2w"][0], ref @ c2w[0], atol=1e-6)
    np.testing.assert_allclose(out["target_c2w"][0], ref @ tgt[0], atol=1e-6)
    np.testing.assert_allclose(out["context_intrinsics"][0, 0], [0.8 * 15, 0.9 * 2160 / 256, 0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out["target_intrinsics"][0, 0], [0.8, 0.9, 0.5, 0.5])
    with pytest.raises(ValueError, match="focal quirk"):
        rel.release_cameras(c2w, k, quirk="dl3dv")
    with pytest.raises(ValueError, match="out of range"):
        rel.release_cameras(c2w, k, ref_index=5)


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    from scene3d.convert.release_fixtures import write_tiny_release
    return write_tiny_release(tmp_path_factory.mktemp("release"), seed=0)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """A transforms.json capture: 20 PNG frames (96 x 72) of a camera sliding sideways, OpenGL poses."""
    d = tmp_path_factory.mktemp("capture")
    (d / "images").mkdir()
    frames = []
    for i in range(20):
        y, x = np.mgrid[0:72, 0:96]
        img = np.stack([(x * 2 + i * 5) % 256, (y * 3) % 256, np.full_like(x, 100 + i)], -1).astype(np.uint8)
        Image.fromarray(img).save(d / "images" / f"f{i:03d}.png")
        m = np.eye(4)
        m[:3, 3] = [0.05 * i, 0.0, 0.02 * i]
        frames.append({"file_path": f"images/f{i:03d}.png", "transform_matrix": m.tolist()})
    (d / "transforms.json").write_text(json.dumps({"fl_x": 80.0, "fl_y": 80.0, "cx": 48.0, "cy": 36.0, "w": 96,
                                                   "h": 72, "frames": frames}))
    return d


def _flags(t):
    return [f"--scenetok={t['scenetok']}", f"--vavae={t['vavae']}", f"--videodc={t['videodc']}",
            f"--scenetok_config={t['scenetok_config']}", f"--vavae_config={t['vavae_config']}",
            f"--target_config={t['videodc_config']}", "--size=64", "--steps=3"]


@pytest.fixture(scope="module")
def rendered(tiny_release, capture, tmp_path_factory):
    out = tmp_path_factory.mktemp("render_out")
    result = release.main(["render", *_flags(tiny_release), f"--input={capture}", f"--out={out}",
                           "--context=2,9,16", "--targets=0:18", "--window=2", "--clean=1",
                           "--format=gif,mp4,frames", "--seed=3"])
    return out, result


def test_render_writes_every_output(rendered):
    out, result = rendered
    # 18 target cameras -> 4 Video DC-AE latents (trailing 2 dropped, as the release) -> 16 frames.
    assert result["frames"] == 16 and result["latents"] == [4, 2, 2, 8]
    assert len(list((out / "frames").glob("frame_*.png"))) == 16
    for f in ("render.gif", "render.mp4", "context.png", "compare.png", "strip.png", "tokens.npz", "result.json"):
        assert (out / f).is_file(), f
    with Image.open(out / "render.gif") as g:
        assert g.n_frames == 16 and g.size == (64, 64)
    saved = json.loads((out / "result.json").read_text())
    assert saved["context"] == [2, 9, 16] and saved["ref"] == 1
    assert len(saved["metrics"]["per_frame"]) == 16
    assert saved["checkpoints"]["scenetok"]["ignored"] == ["autoencoder.unused.weight"]


def test_render_pixels_equal_a_direct_call_of_the_modules(rendered, tiny_release, capture):
    """The command's frames = ReleaseSceneTok built from the in-memory models, on the cameras computed here from
    transforms.json (OpenGL -> OpenCV, relative to the middle context frame, not rescaled)."""
    out, _ = rendered
    m = tiny_release["models"]
    model = rel.ReleaseSceneTok(m["scenetok"], m["vavae"], m["videodc"], "videodc")
    meta = json.loads((capture / "transforms.json").read_text())
    gl = np.asarray([f["transform_matrix"] for f in meta["frames"]], np.float64) @ np.diag([1.0, -1, -1, 1])
    ref = np.linalg.inv(gl[9])
    saved = np.load(out / "tokens.npz")
    np.testing.assert_allclose(saved["context_c2w"], ref @ gl[[2, 9, 16]], atol=1e-5)
    np.testing.assert_allclose(saved["target_c2w"], ref @ gl[:18], atol=1e-5)
    # 96 x 72 resized to cover 64 x 64 (85 x 64, whole pixels), then 10 columns cropped on the left:
    # fx = 80 / 96 * 85 / 64, cx = (48 / 96 * 85 - 10) / 64; rows unchanged in proportion.
    np.testing.assert_allclose(saved["target_intrinsics"][0],
                               [80 / 96 * 85 / 64, 80 / 72, (0.5 * 85 - 10) / 64, 0.5], rtol=1e-5)
    ctx = release.views(release.read_capture(capture), [2, 9, 16], 64)
    key = jax.random.key(3)
    tokens = nnx.jit(lambda m, i, c, k, r: m.encode(i, c, k, r))(
        model, jnp.asarray(ctx["images"])[None], jnp.asarray(saved["context_c2w"])[None],
        jnp.asarray(saved["context_intrinsics"])[None], key)
    np.testing.assert_allclose(saved["tokens"], np.asarray(tokens[0]), rtol=1e-4, atol=1e-5)
    frames = nnx.jit(lambda m, t, c, k, r: m.render(t, c, k, r, image_size=(64, 64), num_steps=3, window=2, clean=1))(
        model, tokens, jnp.asarray(saved["target_c2w"])[None], jnp.asarray(saved["target_intrinsics"])[None],
        jax.random.fold_in(key, 1))["images"]
    written = np.stack([np.asarray(Image.open(out / "frames" / f"frame_{i:05d}.png")) for i in range(16)])
    np.testing.assert_allclose(written, np.rint(np.asarray(frames[0]) * 255), atol=1)


def test_generate_from_one_image(tiny_release, capture, tmp_path):
    t = tiny_release
    out = tmp_path / "gen"
    result = release.main(["generate", *_flags(t), f"--scenegen={t['scenegen']}",
                           f"--scenegen_config={t['scenegen_config']}", f"--image={capture / 'images' / 'f000.png'}",
                           f"--out={out}", "--scenegen_steps=3", "--frames=9", "--format=gif"])
    assert result["frames"] == 8 and result["latents"] == [2, 2, 2, 8]  # 9 orbit cameras -> 2 latents
    assert result["settings"]["scene_shift"] == 4.0
    saved = np.load(out / "tokens.npz")
    assert saved["tokens"].shape == (8, 4) and np.isfinite(saved["tokens"]).all()
    np.testing.assert_allclose(saved["anchor_c2w"], np.eye(4)[None], atol=1e-6)  # the conditioning camera
    with Image.open(out / "render.gif") as g:
        assert g.n_frames == 8


def test_missing_files_name_the_flag(tiny_release, capture, tmp_path, capsys):
    flags = [f if not f.startswith("--vavae=") else f"--vavae={tmp_path / 'nope.pt'}" for f in _flags(tiny_release)]
    with pytest.raises(SystemExit) as e:
        release.main(["render", *flags, f"--input={capture}", f"--out={tmp_path / 'o'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--vavae" in err and "vavae-imagenet256-f16d32-dinov2.pt" in err and "nope.pt" in err
    with pytest.raises(SystemExit):
        release.main(["render", *_flags(tiny_release), f"--input={tmp_path / 'no_capture'}",
                      f"--out={tmp_path / 'o'}"])
    assert "--input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_wan_target_windows_take_whole_17_frame_chunks(tmp_path):
    """Wan: 34 cameras -> 10 latents; windows of 5 latents with none clean are two independent chunks, so the
    windowed render equals the decoder's own sampler on cameras 0-16 and 17-33 with the same noise. The Wan VAE
    loads from a raw .pth state_dict (the release's file); its grouped decode is WanVAE.scenetok_decode (tested on
    the official pipeline fixture in tests/models/test_wan_vae.py)."""
    import torch
    from scene3d.convert import release as loaders
    from scene3d.convert import wan_vae as cv_wan
    from scene3d.models.image_vae import ImageVAE
    from scene3d.models.scenetok import SceneTok
    from scene3d.models.wan_vae import WanVAE

    r = nnx.Rngs(1)
    st = SceneTok(variant="tiny", compressor=dict(in_channels=32), rngs=r,
                  decoder=dict(in_channels=48, temporal_downsample=4, wan_pose_padding=True, input_size=2,
                               ray_kind="official", timestep_input="official"))
    wan = WanVAE("tiny", rngs=r)
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in cv_wan.export_official(wan).items()}, path)
    loaded, report = loaders.load_wan(path, {"variant": "tiny"})
    assert not report.ignored
    vae = ImageVAE("tiny", z_channels=32, embed_dim=32, rngs=r, **rel.vavae_stats())
    model = rel.ReleaseSceneTok(st, vae, loaded, "wan")
    assert model.num_latents(34) == 10 and model.num_latents(33) == 5 and model.num_frames(10) == 34
    key = jax.random.key(0)
    tokens = jax.random.normal(key, (1, 8, 4))
    c2w = jnp.tile(jnp.eye(4), (1, 34, 1, 1)).at[:, :, 0, 3].set(jnp.linspace(0, 1, 34)[None])
    k4 = jnp.tile(jnp.asarray([1.0, 1.0, 0.5, 0.5]), (1, 34, 1))
    noise = jax.random.normal(jax.random.key(1), (1, 10, 2, 2, 48))
    got = nnx.jit(lambda m, t, c, k, n: m.render_latents(t, c, k, None, latent_size=(2, 2), num_steps=3, window=5,
                                                         clean=0, noise=n))(model, tokens, c2w, k4, noise)
    ref = [nnx.jit(lambda d, t, c, k, n: d.render(t, c, k, None, latent_size=(2, 2), num_steps=3, noise=n))(
        st.decoder, tokens, c2w[:, 17 * i:17 * (i + 1)], k4[:, 17 * i:17 * (i + 1)], noise[:, 5 * i:5 * (i + 1)])
        for i in range(2)]
    np.testing.assert_allclose(np.asarray(got), np.concatenate([np.asarray(x) for x in ref], 1), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 5"):
        model.render_latents(tokens, c2w, k4, key, latent_size=(2, 2), window=8, clean=4)


def test_released_scenetok_variants_are_recognised_from_their_shapes():
    """The three released SceneTok checkpoints differ in token count and target latents; the loader picks the
    variant from the tensor shapes alone (abstract models: nothing allocated)."""
    from types import SimpleNamespace

    from scene3d.convert import release as loaders
    from scene3d.convert import scenetok as cv_scenetok
    from scene3d.models.scenetok import SceneTok

    for variant in loaders.RELEASE_SCENETOK:
        shapes = cv_scenetok.official_shapes(nnx.eval_shape(lambda: SceneTok(variant=variant, rngs=nnx.Rngs(0))))
        weights = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}
        weights["autoencoder.target.encoder.weight"] = SimpleNamespace(shape=(3,))  # bundled extras are ignored
        assert loaders.recognise_scenetok(weights) == variant
    key = next(k for k in shapes if k.startswith("denoiser."))
    weights[key] = SimpleNamespace(shape=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="--scenetok_config"):
        loaders.recognise_scenetok(weights, "x.ckpt")
