"""SceneTok in the release's training layout: ``scene3d.data.encode_targets`` on three generated RealEstate10K-style
clips through a micro random Video DC-AE (record shapes, latents = the autoencoder on the stored frames and on
their mirror image, resuming a deleted shard, determinism, refusing other settings, bad clips), the release view
sampler against hand-computed cases (farthest-point context views, contiguous target chunks, the mirrored copy,
the reference camera), the multistep learning rate and the mean per-tensor gradient norm, a two-step train of
configs/scenetok.py:release_runlocal shrunk onto the generated latents, release_re10k at released sizes
(eval_shape)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from scene3d import train
from scene3d.core import sharding as sh
from scene3d.core.config import load_config
from scene3d.data import encode_targets as et
from scene3d.data import target_latents as tl
from scene3d.data.multiview import crop_resize_intrinsics
from scene3d.geometry import conventions as cv
from scene3d.tasks import scenetok as stok

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "scenetok.py")
# A 3-stage Video DC-AE with the released 4x temporal compression, 4x spatial: 16 px frames -> 4 x 4 x 8 latents.
MICRO_AE = {"width_list": [4, 8, 8], "encoder_depth": [1, 1, 1], "decoder_depth": [1, 1, 1],
            "block_type": ["ResBlock", "ResBlock", "ResBlock"], "temporal": [True, True, False]}
FRAMES = (8, 10, 12)  # -> 2, 2 and 3 latents of 4 frames (trailing frames dropped)


def make_clip(root, name, n, seed=0, size=(24, 32)):
    d = pathlib.Path(root) / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.linspace(0.0, 1.0, n)
    ts = np.arange(n) * 1000
    for t in ts:
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(d / f"{t}.png")
    cv.write_re10k(d / f"{name}.txt", cv.RE10KClip("url", ts, np.tile([0.8, 1.0, 0.5, 0.5], (n, 1)), c2w))
    return str(d)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_clips")
    clips = [make_clip(root / "clips", f"c{i}", n, seed=i) for i, n in enumerate(FRAMES)]
    out = root / "latents"
    argv = ["--source=captures", f"--paths={','.join(clips)}", "--resolution=16", "--random_tiny",
            f"--ae_overrides={json.dumps(MICRO_AE)}", f"--out={out}", "--min_frames=8", "--shard_size=2",
            "--splits=train,eval", "--batch=2"]
    settings = et.main(argv)
    return out, argv, settings


def _records(out, split="train"):
    src = tl.TargetLatentsSource(out, split)
    return {r["scene_id"]: r for r in (src[i] for i in range(len(src)))}


# ------------------------------------------------------------------------------------------ encode_targets


def test_encode_targets_records(encoded):
    out, _, settings = encoded
    assert settings["latent_shape"] == [4, 4, 8] and settings["splits"]["train"] == dict(
        clips=3, shards=2, complete=True, skipped={})
    recs = _records(out)
    assert sorted(recs) == ["c0", "c1", "c2"]
    model, _ = et.build_autoencoder(dict(tl.RANDOM_TINY_AE, overrides=MICRO_AE))
    enc = et.ClipEncoder(model, "videodc", (16, 16), batch=2)
    for name, n in zip(("c0", "c1", "c2"), FRAMES):
        r = recs[name]
        t = n // 4
        assert r["c2w"].shape == (n, 4, 4) and r["intrinsics"].shape == (n, 4) and len(r["images"]) == n
        assert r["latents"].shape == r["latents_flipped"].shape == (t, 4, 4, 8) and r["latents"].dtype == np.float16
        # every frame kept (context views come from the whole clip); intrinsics of the 24x32 -> 16x16 crop
        np.testing.assert_allclose(r["c2w"][:, 0, 3], np.linspace(0, 1, n), atol=1e-6)
        np.testing.assert_allclose(r["intrinsics"][0], crop_resize_intrinsics([0.8, 1.0, 0.5, 0.5], (24, 32),
                                                                      (16, 16)), rtol=1e-5)
        frames = tl.decode_frames(r["images"], np.arange(4 * t), name)
        assert frames.shape == (4 * t, 16, 16, 3)
        # the stored latents are the autoencoder's (x 0.493) on the stored frames, and on their mirror image
        np.testing.assert_allclose(r["latents"], enc(frames), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(r["latents_flipped"], enc(frames[:, :, ::-1].copy()), rtol=2e-3, atol=2e-3)
        assert not np.allclose(r["latents"], r["latents_flipped"])
    assert tl.TargetLatentsSource(out, "eval")[0]["scene_id"] == "c0"


def test_encode_targets_resumes_deterministically(encoded):
    out, argv, _ = encoded
    before = _records(out)
    kept = sorted((out / tl.BUILDER_NAME / "train_00000").rglob("*.array_record*"))
    stamp = {f: f.stat().st_mtime_ns for f in kept}
    import shutil
    shutil.rmtree(out / tl.BUILDER_NAME / "train_00001")  # an interrupted run: shard 1 missing
    et.main(argv)
    assert all(f.stat().st_mtime_ns == t for f, t in stamp.items())  # finished shard skipped
    after = _records(out)
    for k, r in before.items():
        for key in ("latents", "latents_flipped", "c2w", "intrinsics"):
            np.testing.assert_array_equal(after[k][key], r[key], err_msg=f"{k} {key}")
        assert list(after[k]["images"]) == list(r["images"])
    with pytest.raises(ValueError, match="other settings"):
        et.main([a if not a.startswith("--resolution") else "--resolution=8" for a in argv])


def test_encode_targets_bad_clips():
    rec = dict(scene_id="bad_clip", images=np.zeros((4, 8, 8, 3), np.uint8), c2w=np.tile(np.eye(4), (4, 1, 1)),
               intrinsics=np.tile([1.0, 1.0, 0.5, 0.5], (4, 1)))
    enc = lambda x: np.zeros((len(x) // 4, 2, 2, 8), np.float32)  # noqa: E731
    kw = dict(kind="videodc", resolution=(8, 8), flip=False, latent_shape=(2, 2, 8))
    assert tl.clip_record(rec, enc, **kw)["latents"].shape == (1, 2, 2, 8)
    nan = dict(rec, c2w=rec["c2w"].copy())
    nan["c2w"][2, 0, 3] = np.nan
    with pytest.raises(ValueError, match="clip bad_clip: non-finite camera"):
        tl.clip_record(nan, enc, **kw)
    with pytest.raises(ValueError, match="scene bad_clip: 3 images for 4 cameras"):
        tl.clip_record(dict(rec, images=rec["images"][:3]), enc, **kw)
    with pytest.raises(ValueError, match="bad_clip: (frame 0: )?cannot decode"):
        tl.clip_record(dict(rec, images=np.array([b"not a png"] * 4, dtype=object)), enc, **kw)
    with pytest.raises(ValueError, match="clip bad_clip: non-finite target latents"):
        tl.clip_record(rec, lambda x: np.full((1, 2, 2, 8), np.nan, np.float32), **kw)
    with pytest.raises(ValueError, match="clip bad_clip: the autoencoder gave latents"):
        tl.clip_record(rec, lambda x: np.zeros((1, 3, 3, 8), np.float32), **kw)


# ------------------------------------------------------------------------------------------ view sampler


class ScriptedRng:
    """A numpy Generator stand-in returning scripted draws (integers, random, choice) in order."""

    def __init__(self, integers=(), random=(), choice=()):
        self.q = dict(integers=list(integers), random=list(random), choice=list(choice))

    def integers(self, *a, **k):
        return self.q["integers"].pop(0)

    def random(self):
        return self.q["random"].pop(0)

    def choice(self, n, size, replace=True):
        out = np.asarray(self.q["choice"].pop(0))
        assert len(out) == size and not replace and out.max() < n
        return out


def _line_cameras(n):
    c2w = np.tile(np.eye(4), (n, 1, 1)).astype(np.float32)
    c2w[:, 0, 3] = np.arange(n)
    return c2w


def test_farthest_point_views_hand_case():
    # centres 0..9 on a line, start 3: farthest is 9 (36); then min(|i-3|, |i-9|)^2 peaks at 0 and 6 (9): 0 first
    np.testing.assert_array_equal(tl.farthest_point_views(_line_cameras(10), 3, 3), [0, 3, 9])
    np.testing.assert_array_equal(tl.farthest_point_views(_line_cameras(10), 4, 3), [0, 3, 6, 9])
    # rotation term: squared angle, here a quarter turn about z at the same centre
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, :3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    np.testing.assert_allclose(tl.pose_distance(c2w)[0, 1], (np.pi / 2) ** 2, rtol=1e-5)
    assert tl.pose_distance(c2w)[0, 0] < 1e-6


def test_target_chunks_hand_cases():
    cfg = tl.ReleaseViewConfig(num_context=2, num_target=4, num_target_split=2, target_split_prob=0.7, chunk_gap=2,
                               eval_chunk_gap=4)
    # 8 latents, 4 targets, training starts [0, 2, 4]; a draw below 0.7 splits: chunks at starts 4 and 0, in order
    got = tl.target_chunks(8, cfg, ScriptedRng(random=[0.5], choice=[[2, 0]]), True)
    np.testing.assert_array_equal(got, [4, 5, 0, 1])
    # a draw >= 0.7: one chunk of 4 from start 2
    np.testing.assert_array_equal(tl.target_chunks(8, cfg, ScriptedRng(random=[0.9], choice=[[1]]), True), [2, 3, 4, 5])
    # evaluation: one chunk on the eval grid [0, 4]
    np.testing.assert_array_equal(tl.target_chunks(8, cfg, ScriptedRng(random=[0.1], choice=[[1]]), False),
                                  [4, 5, 6, 7])
    with pytest.raises(ValueError, match="clip x: 3 target latents, fewer than num_target=4"):
        tl.target_chunks(3, cfg, ScriptedRng(), True, "x")
    with pytest.raises(ValueError, match="num_target_split=3 must divide num_target=4"):
        tl.ReleaseViewConfig(num_target=4, num_target_split=3)


def test_release_view_transform_hand_case():
    v, m = 16, 2
    images = np.zeros((v, 4, 6, 3), np.uint8)
    images[:, :, 0] = 255  # left column white: mirrored, the right one
    images[:, 0, 0, 1] = np.arange(v)  # frame id in one pixel
    intr = np.tile(np.float32([1.0, 1.0, 0.4, 0.5]), (v, 1))
    lat = np.arange(4, dtype=np.float16)[:, None, None, None] * np.ones((4, 1, 1, 2), np.float16)
    rec = dict(scene_id="s", images=images, c2w=_line_cameras(v), intrinsics=intr, latents=lat,
               latents_flipped=-lat - 10)
    cfg = tl.ReleaseViewConfig(num_context=3, num_target=m, num_target_split=2, target_split_prob=0.7, chunk_gap=1)
    # draws: flip (0.2 < 0.5), fps start 5, split (0.1 < 0.7), chunk starts #2 and #0 of [0, 1, 2], reference 2
    rng = ScriptedRng(random=[0.2, 0.1], integers=[5, 2], choice=[[2, 0]])
    ex = tl.ReleaseViewTransform(cfg, training=True).random_map(rec, rng)
    assert int(ex["flipped"]) == 1 and int(ex["ref_index"]) == 2
    # mirrored centres -(0..15): from 5 the farthest is 15 (100), then min(|i-5|, |i-15|)^2 peaks at 0 and 10 (25)
    np.testing.assert_array_equal(ex["context_index"], [0, 5, 15])
    np.testing.assert_array_equal(ex["target_latent_index"], [2, 0])  # two chunks of one latent, in drawn order
    np.testing.assert_array_equal(ex["target_index"], [8, 9, 10, 11, 0, 1, 2, 3])
    np.testing.assert_array_equal(ex["target_latents"][:, 0, 0, 0], [-12, -10])  # the mirrored copy's latents
    # poses relative to context view 2 (frame 15, mirrored centre x = -15): context x = -i + 15
    np.testing.assert_allclose(ex["context_c2w"][2], np.eye(4), atol=1e-6)
    np.testing.assert_allclose(ex["context_c2w"][:, 0, 3], [15, 10, 0], atol=1e-5)
    np.testing.assert_allclose(ex["target_c2w"][:, 0, 3], 15.0 - ex["target_index"], atol=1e-5)
    np.testing.assert_allclose(ex["context_intrinsics"][:, 2], 0.6, atol=1e-6)  # cx -> 1 - cx
    # images mirrored and the right frames, in [0, 1]
    assert ex["context_images"].shape == (3, 4, 6, 3) and ex["context_images"].dtype == np.float32
    np.testing.assert_allclose(ex["context_images"][:, 1, -1, 0], 1.0)
    np.testing.assert_allclose(ex["context_images"][:, 0, -1, 1] * 255, [0, 5, 15], atol=1e-4)
    assert "target_images" not in ex  # training examples carry no target frames
    # evaluation: no flip, one chunk on the eval grid, reference num_context // 2, target frames included
    ev = tl.ReleaseViewTransform(dataclasses_replace(cfg, eval_chunk_gap=2), training=False).random_map(
        rec, ScriptedRng(random=[0.1], integers=[0], choice=[[1]]))
    assert int(ev["flipped"]) == 0 and int(ev["ref_index"]) == 1
    np.testing.assert_array_equal(ev["target_latent_index"], [2, 3])
    np.testing.assert_allclose(ev["target_images"][:, 0, 0, 1] * 255, np.arange(8, 16), atol=1e-4)


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


# ------------------------------------------------------------------------------------------ optimiser recipe


def test_multistep_schedule_and_mean_tensor_norm():
    c = ml_collections.ConfigDict(dict(total_steps=100, optim=dict(
        lr=1e-3, schedule="multistep", warmup_steps=10, warmup_start_factor=5e-4, milestones=(20, 40), gamma=0.4,
        clip_norm=0.05)))
    _, sched = train.make_optimizer(c)
    # LinearLR from 5e-4 x lr over 10 steps, then x 0.4 at 20 and 40 steps AFTER the warmup (SequentialLR)
    want = {0: 5e-7, 5: 1e-3 * (5e-4 + (1 - 5e-4) * 0.5), 10: 1e-3, 29: 1e-3, 30: 4e-4, 49: 4e-4, 50: 1.6e-4}
    for step, lr in want.items():
        np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-5, err_msg=str(step))
    stacked = nnx.Param(jnp.asarray([[3.0, 4.0], [0.0, 1.0]]), sharding_names=("layers", None))
    plain = nnx.Param(jnp.asarray([2.0, 0.0]), sharding_names=(None,))
    # per-layer norms 5 and 1 (a stacked parameter counts once per layer), then 2: mean 8 / 3
    np.testing.assert_allclose(float(train.mean_tensor_norm({"a": stacked, "b": plain})), 8.0 / 3.0, rtol=1e-6)


class _SquareTask:
    def loss(self, model, batch, rng, step=None):
        return jnp.mean(jnp.square(model(batch["x"]))), {}


@pytest.mark.parametrize("threshold,skipped", [(1e-4, 1.0), (1e4, 0.0)])
def test_mean_tensor_skip_in_train_step(threshold, skipped):
    """optim.skip_grad_norm_kind='mean_tensor': a step whose mean per-tensor gradient norm exceeds the threshold
    leaves parameters and optimiser state as they were."""
    c = ml_collections.ConfigDict(dict(total_steps=10, ema_decay=0.0, optim=dict(
        lr=1e-2, schedule="multistep", warmup_steps=1, warmup_start_factor=1.0, clip_norm=0.05,
        skip_grad_norm=threshold, skip_grad_norm_kind="mean_tensor")))
    graphdef, params = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    tx, sched = train.make_optimizer(c)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
             "skipped": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(0))}
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    new, m = jax.jit(train.make_train_step(c, _SquareTask(), graphdef, tx, sched))(state, {"x": jnp.ones((4, 2))})
    grads = jax.grad(lambda p: _SquareTask().loss(nnx.merge(graphdef, p), {"x": jnp.ones((4, 2))}, None)[0])(params)
    np.testing.assert_allclose(float(m["grad_norm_mean_tensor"]), float(train.mean_tensor_norm(grads)), rtol=1e-5)
    assert float(m["step_skipped"]) == skipped and int(new["skipped"]) == int(skipped)
    after = nnx.to_pure_dict(new["params"])
    same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert same == bool(skipped)


# ------------------------------------------------------------------------------------------ training


def tiny_release_config(out, **extra):
    c = load_config(f"{CONFIG}:release_runlocal")
    c.data.update(path=str(out), resolution=(16, 16), num_threads=1, prefetch=1)
    c.data.views.update(num_context=2, num_target=2, chunk_gap=1, eval_chunk_gap=1)
    c.target.overrides = MICRO_AE
    c.model.update(compressor=dict(width=32, heads=2, depth=1, patch=2, num_tokens=8, token_dim=4, ray_patch=2),
                   decoder=dict(width=32, heads=2, depth=1, patch=1, ray_patch=4, freq_dim=32))
    c.flow.sample_steps = 1
    c.optim.skip_grad_norm = 0.0  # the mean-tensor skip: test_mean_tensor_skip_in_train_step (compiles faster)
    c.update(global_batch_size=2, eval_batch_size=2, eval_batches=1, total_steps=2, eval_every=2, log_every=1,
             ckpt_every=2, async_checkpoint=False, **extra)
    return c


def test_release_runlocal_trains_two_steps(encoded, tmp_path):
    out, _, _ = encoded
    config = tiny_release_config(out)
    mesh = sh.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    train.train_and_evaluate(config, str(tmp_path), mesh=mesh)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in steps] == [1, 2]
    for l in steps:
        for k in ("flow_loss", "kl", "grad_norm", "latent_std", "t_mean", "chunks_share_time"):
            assert np.isfinite(l[f"train/{k}"]), k
        assert l["train/step_skipped"] == 0.0
    np.testing.assert_allclose(steps[0]["train/lr"], 1e-3 * 5e-4, rtol=1e-5)  # the multistep warmup's first value
    ev = [l for l in lines if "eval/latent_mse" in l]
    assert len(ev) == 1
    for k in ("latent_mse", "latent_mse_mean_latent", "val_flow_loss", "psnr", "ssim", "autoencoder_psnr"):
        assert np.isfinite(ev[0][f"eval/{k}"]), k
    png = np.asarray(Image.open(tmp_path / "images" / "eval_views_00000002.png"))
    # two scenes: [2 context | 2 target frames | 2 decoded target latents | 2 decoded renders] of 16 px
    assert png.shape == (2 * 16 + 2, 4 * (2 * 16 + 1) + 3 * 2, 3)
    # the run exports the SceneTok part in the release's checkpoint layout (what scene3d.release reads)
    from safetensors.numpy import load_file
    from scene3d import export
    export.main([f"--workdir={tmp_path}", f"--out={tmp_path / 'stok.safetensors'}", "--layout=official"])
    assert {k.split(".")[0] for k in load_file(tmp_path / "stok.safetensors")} == {"compressor", "denoiser"}
    # a config whose target autoencoder differs from the dataset's is refused
    with pytest.raises(ValueError, match="encoded with other settings"):
        stok.make_task(tiny_release_config(out, target=dict(config.target.to_dict(), seed=1)))


def test_release_re10k_sizes_eval_shape():
    c = load_config(f"{CONFIG}:release_re10k,latents=/nonexistent/latents")
    assert (c.optim.schedule, c.optim.clip_norm, c.optim.skip_grad_norm, c.optim.milestones) == (
        "multistep", 0.05, 1.0, (10_000, 20_000, 40_000, 500_000))
    task = stok.make_task(c)
    assert isinstance(task, stok.ReleaseSceneTokTask)
    assert task.context_grid == (16, 16) and task.latent_grid == (8, 8) and task.latent_channels == 128
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    assert model.scenetok.decoder.config["temporal_downsample"] == 4
    # the sizes the task derived from the architecture tables are the built models' (ReleaseSceneTok checks channels)
    assert 256 // model.spatial_compression == 8 and 256 // model.vavae.downsample == 16
    assert model.scenetok.compressor.token_shape == (512, 64)
    s = jax.ShapeDtypeStruct
    batch = {"context_images": s((1, 12, 256, 256, 3), jnp.float32), "context_c2w": s((1, 12, 4, 4), jnp.float32),
             "context_intrinsics": s((1, 12, 4), jnp.float32), "target_latents": s((1, 8, 8, 8, 128), jnp.float32),
             "target_c2w": s((1, 32, 4, 4), jnp.float32), "target_intrinsics": s((1, 32, 4), jnp.float32)}
    loss, metrics = jax.eval_shape(lambda m, b: task.loss(m, b, jax.random.key(0)), model, batch)
    assert loss.shape == () and metrics["flow_loss"].shape == ()


def test_restore_official_target_weights(tmp_path):
    """target.weights (the official Video DC-AE layout) fill the frozen target autoencoder of a fresh run."""
    from safetensors.numpy import save_file
    from scene3d.convert import video_dcae as convert_video_dcae
    ae = nnx.eval_shape(lambda: stok.build_target_autoencoder(dict(variant="tiny", overrides=MICRO_AE)))
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in
          convert_video_dcae.official_shapes(ae).items()}
    save_file(sd, str(tmp_path / "ae.safetensors"))
    c = tiny_release_config(tmp_path / "no_latents_here")
    c.target.update(weights=str(tmp_path / "ae.safetensors"), seed=None)
    task = stok.make_task(c)
    variables = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    back = convert_video_dcae.export_official(ae, task.restore_pretrained(variables)["target"])
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(np.asarray(back[k]), v, err_msg=k)
