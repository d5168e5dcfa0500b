"""tfds ArrayRecord builders without TensorFlow: the built-in scenes (vs the .npz files they come from) and
RealEstate10K / DL3DV clip folders made of the real re10k_poses trajectories with synthetic frames."""
import pathlib
import shutil
import sys

import grain
import ml_collections
import numpy as np
import pytest

pytest.importorskip("pybullet")

from scene3d import data as data_lib  # noqa: E402
from scene3d.data import builtin as B  # noqa: E402
from scene3d.data import multiview as M  # noqa: E402
from scene3d.data import pipeline  # noqa: E402
from scene3d.data import tfds_builders as T  # noqa: E402
from scene3d.geometry import conventions as cv  # noqa: E402

SPEC = dict(num_views=6, height=16, width=24, num_gaussians=96)
_OPTS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    cfg = T.builtin_config("runlocal", B.SceneSpec(**SPEC), num_scenes=3, num_eval=1)
    return root, cfg, T.builtin_source(root, "train", cfg)


def test_builtin_records_match_npz(builtin_dir):
    root, cfg, src = builtin_dir
    assert "tensorflow" not in sys.modules
    ev = T.builtin_source(root, "eval", cfg)
    assert len(src) == 2 and len(ev) == 1 and ev[0]["scene_id"] == "builtin/000002"
    files = list((root / "scene3d_builtin" / cfg.name).rglob("*.array_record*"))
    assert files, "no ArrayRecord files written"
    npz = root / "scene3d_builtin_npz" / cfg.name
    for i in range(2):
        ref, rec = B.load_scene(npz / B.scene_filename(i)), src[i]
        assert rec["scene_id"] == f"builtin/{i:06d}"
        np.testing.assert_array_equal(np.stack([M.decode_image(b) for b in rec["images"]]), ref["images"])
        for k in ("c2w", "intrinsics", "depth", "mask", "gaussians", "trajectory", "bounds"):
            np.testing.assert_array_equal(rec[k], ref[k], err_msg=k)
        assert rec["seed"] == B.scene_seed(0, i)
    # prepared once: a second open reuses the files (no rebuild of scenes or records)
    mtimes = {f: f.stat().st_mtime_ns for f in files + list(npz.glob("*.npz"))}
    T.builtin_source(root, "train", cfg)
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    # readable without the builder class (tfds.builder_from_directory)
    import tensorflow_datasets as tfds
    ro = tfds.builder_from_directory(str(files[0].parent))
    assert len(ro.as_data_source(split="train")) == 2


def test_builtin_get_source_multiview_batches(builtin_dir):
    """data.name='builtin' end to end; the un-normalised point maps equal the ones build_scene computed."""
    root, cfg, _ = builtin_dir
    dc = ml_collections.ConfigDict(dict(name="builtin", data_dir=str(root), spec=SPEC, num_scenes=3, num_eval=1,
                                        views=dict(num_context=2, num_target=2, strategy="random")))
    src = data_lib.get_source(dc, "train")
    it = pipeline.make_batch_iterator(src, global_batch_size=2, seed=0, transforms=data_lib.get_transforms(dc, "train"),
                                      process_index=0, process_count=1, read_options=_OPTS)
    b = next(it)
    assert b["context"]["images"].shape == (2, 2, 16, 24, 3) and b["context"]["images"].dtype == np.float32
    npz = root / "scene3d_builtin_npz" / cfg.name
    for e in range(2):
        ref = B.load_scene(npz / B.scene_filename(int(str(b["scene_id"][e]).split("/")[1])))
        for part in ("context", "target"):
            d = b[part]
            for v, frame in enumerate(d["index"][e]):
                m = d["mask"][e, v]
                np.testing.assert_array_equal(m, ref["mask"][frame])
                p = d["points"][e, v][m].astype(np.float64) / b["scale"][e]
                world = p @ b["ref_c2w"][e, :3, :3].T.astype(np.float64) + b["ref_c2w"][e, :3, 3]
                np.testing.assert_allclose(world, ref["points"][frame][m], atol=2e-4)
    g = pipeline.to_global(b)
    assert g["scene_id"].dtype.kind == "U" and g["context"]["c2w"].shape == (2, 2, 4, 4)


# ----------------------------------------------------------------------------------------------- clips


def _re10k(shared_dir):
    d = pathlib.Path(shared_dir) / "data" / "re10k_poses"
    if not d.is_dir():
        pytest.skip(f"real data {d} not found")
    return sorted(d.glob("[0-9a-f]*.txt"))[:3]


def _make_re10k_root(root, pose_files, H=18, W=32):
    rng = np.random.default_rng(0)
    for f in pose_files:
        clip = root / f.stem
        clip.mkdir(parents=True)
        shutil.copy(f, clip / f.name)
        for t in cv.read_re10k(f).timestamps:
            (clip / f"{t}.png").write_bytes(M.encode_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
    return root


def test_re10k_clips_builder(shared_dir, tmp_path):
    files = _re10k(shared_dir)
    root = _make_re10k_root(tmp_path / "clips", files)
    train = T.clips_source(tmp_path / "tfds", "train", root, layout="re10k", eval_fraction=0.3)
    ev = T.clips_source(tmp_path / "tfds", "eval", layout="re10k", eval_fraction=0.3)  # prepared: no source needed
    assert len(train) == 2 and len(ev) == 1
    ids = {train[0]["scene_id"], train[1]["scene_id"], ev[0]["scene_id"]}
    assert ids == {f.stem for f in files}
    for rec in (train[0], train[1], ev[0]):
        ref = cv.read_re10k(root / rec["scene_id"] / f"{rec['scene_id']}.txt")
        np.testing.assert_allclose(rec["c2w"], ref.c2w, atol=1e-6)
        np.testing.assert_allclose(rec["intrinsics"], ref.intrinsics, atol=1e-7)
        np.testing.assert_array_equal(rec["timestamps"], ref.timestamps)
        assert rec["images"][3] == (root / rec["scene_id"] / f"{ref.timestamps[3]}.png").read_bytes()

    # build-time resize + crop to 12 x 12: frames re-encoded as PNG, intrinsics updated
    small = T.clips_source(tmp_path / "tfds", "train", root, name="re10k_12", image_size=(12, 12))
    rec = small[0]
    ref = cv.read_re10k(root / rec["scene_id"] / f"{rec['scene_id']}.txt")
    assert M.decode_image(rec["images"][0]).shape == (12, 12, 3)
    np.testing.assert_allclose(rec["intrinsics"], M.crop_resize_intrinsics(ref.intrinsics, (18, 32), (12, 12)),
                               atol=1e-6)

    # train/ + test/ subfolders become the splits
    split_root = tmp_path / "split"
    _make_re10k_root(split_root / "train", files[:2])
    _make_re10k_root(split_root / "test", files[2:])
    assert len(T.clips_source(tmp_path / "tfds", "eval", split_root, name="split")) == 1
    with pytest.raises(ValueError, match="no split 'validation'"):
        T.clips_source(tmp_path / "tfds", "validation", split_root, name="split")
    with pytest.raises(ValueError, match="source_dir"):
        T.clips_source(tmp_path / "tfds", "train", None, name="never_prepared")


def test_dl3dv_clips_via_get_source(shared_dir, tmp_path):
    files = _re10k(shared_dir)
    root = tmp_path / "dl3dv"
    rng = np.random.default_rng(1)
    for f in files:
        clip = cv.read_re10k(f)
        d = root / f.stem / "nerfstudio"
        (d / "images").mkdir(parents=True)
        names = [f"images/frame_{i:05d}.png" for i in range(len(clip.timestamps))]
        for n in names:
            (d / n).write_bytes(M.encode_png(rng.integers(0, 256, (18, 32, 3), dtype=np.uint8)))
        cv.write_transforms_json(d / "transforms.json", clip.cameras(18, 32), names)
    dc = ml_collections.ConfigDict(dict(name="clips", data_dir=str(tmp_path / "tfds"), source_dir=str(root),
                                        layout="dl3dv", dataset_name="dl3dv_test",
                                        views=dict(num_context=2, num_target=3, strategy="heldout_trajectory",
                                                   resolution=(8, 16), image_dtype="uint8")))
    src = data_lib.get_source(dc, "train")
    assert len(src) == 3
    rec = src[0]
    ref = cv.read_re10k(files[[f.stem for f in files].index(rec["scene_id"])])
    np.testing.assert_allclose(rec["c2w"], ref.c2w, atol=1e-5)
    np.testing.assert_array_equal(rec["timestamps"], np.arange(len(ref.timestamps)))
    it = pipeline.make_batch_iterator(src, global_batch_size=3, seed=1, transforms=data_lib.get_transforms(dc, "train"),
                                      process_index=0, process_count=1, read_options=_OPTS)
    b = next(it)
    assert b["target"]["images"].shape == (3, 3, 8, 16, 3) and b["target"]["images"].dtype == np.uint8
    assert np.all(np.diff(b["target"]["index"], axis=1) == 1)  # held-out contiguous run
    np.testing.assert_allclose(b["context"]["c2w"][:, 0], np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-5)
    with pytest.raises(ValueError, match="unknown dataset"):
        data_lib.get_source(ml_collections.ConfigDict(dict(name="imagenet")), "train")


def test_builtin_gaussians_via_get_source(builtin_dir):
    """data.name='builtin_gaussians': the eval example (no crop needed: N = all) is the stored scene normalised."""
    root, cfg, _ = builtin_dir
    dc = ml_collections.ConfigDict(dict(name="builtin_gaussians", data_dir=str(root), spec=SPEC, num_scenes=3,
                                        num_eval=1, gaussians=dict(num_gaussians=SPEC["num_gaussians"])))
    src = data_lib.get_source(dc, "eval")
    (tf,) = data_lib.get_transforms(dc, "eval")
    ex = tf.random_map(src[0], np.random.default_rng(0))
    raw = B.load_scene(root / "scene3d_builtin_npz" / cfg.name / B.scene_filename(2))["gaussians"].astype(np.float64)
    c = raw[:, :3].mean(0)
    s = (1 / 1.1) / np.linalg.norm(raw[:, :3] - c, axis=-1).max()
    want = np.concatenate([(raw[:, :3] - c) * s, raw[:, 3:7], raw[:, 7:10] + np.log(s), raw[:, 10:]], 1)
    got = ex["gaussians"].astype(np.float64)
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=1e-5)
