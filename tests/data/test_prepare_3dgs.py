"""`python -m scene3d.data.prepare_3dgs` on a folder of small scenes (random 3DGS scenes as INRIA PLY, .splat, the
Can3Tok release's .npy, a 3DGS output folder, a COLMAP points PLY that must be skipped, a masked scene) and the real
fox.ply. Projections, centroids and the inverse normalisation are recomputed here from the raw files with plain
pinhole arithmetic, not with the library's camera code."""
import json
import logging
import os
import pathlib

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from scene3d import data as data_lib
from scene3d.data import pipeline, prepare_3dgs as P, splat_io
from scene3d.geometry import conventions as cv
from scene3d.geometry import gaussians as gs
from scene3d.geometry.cameras import Cameras, look_at
from scene3d.render.ply import write_point_ply

N = 64
H, W = 48, 64
FX = 60.0


def random_scene(rng, m, center=(0.0, 0.0, 0.0), spread=1.0):
    q = rng.normal(size=(m, 4))
    return gs.Gaussians(xyz=(np.asarray(center) + spread * rng.normal(size=(m, 3))).astype(np.float32),
                        f_dc=rng.normal(size=(m, 3)).astype(np.float32),
                        opacity=rng.uniform(-1, 3, m).astype(np.float32),
                        scale=rng.uniform(-4, -2, (m, 3)).astype(np.float32),
                        rot=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))


def write_cameras_json(path, eyes, target=(0.0, 0.0, 0.0), names=None):
    c2w = np.stack([look_at(np.asarray(e, float), np.asarray(target, float), (0.0, -1.0, 0.0)) for e in eyes])
    cams = Cameras(c2w, np.array([FX / W, FX / H, 0.5, 0.5]), H, W)
    cv.write_3dgs_cameras(path, cams, names or [f"{i:04d}" for i in range(len(eyes))])


def pinhole(xyz, rotation, position, fx, fy, cx, cy):
    """Pixels (u, v) and depth of world points for a camera given as cameras.json gives it (c2w rotation, centre)."""
    cam = (np.asarray(xyz, np.float64) - np.asarray(position, np.float64)) @ np.asarray(rotation, np.float64)
    return np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], 1), cam[:, 2]


def record_pinhole(xyz, c2w, intr, h, w):
    return pinhole(xyz, c2w[:3, :3], c2w[:3, 3], intr[0] * w, intr[1] * h, intr[2] * w, intr[3] * h)


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def build_src(root: pathlib.Path, shared=None) -> dict:
    """The scene folders; returns what the checks need (the scenes as written)."""
    rng = np.random.default_rng(0)
    ref = {}
    (root / "a").mkdir(parents=True)
    ref["a"] = random_scene(rng, 300)
    splat_io.write_ply(root / "a" / "scene.ply", ref["a"])
    eyes = [(6 * np.sin(t), 0.5, -6 * np.cos(t)) for t in np.linspace(-0.6, 0.6, 4)]
    write_cameras_json(root / "a" / "cameras.json", eyes, names=["d", "b", "c", "a"])  # stored sorted by name
    (root / "a" / "caption.txt").write_text("  a cloud of random blobs \n")
    (root / "b").mkdir()
    splat_io.write_splat(root / "b" / "scene.splat", random_scene(rng, 200, spread=2.0))
    ref["b"] = splat_io.read_splat(root / "b" / "scene.splat")
    (root / "c").mkdir()
    ref["c"] = random_scene(rng, 150, center=(5.0, -3.0, 1.0), spread=4.0)
    np.save(root / "c" / "c.npy", gs.pack(ref["c"]))  # the release's 14 columns
    (root / "c" / "transforms.json").write_text(json.dumps({"fl_x": FX, "fl_y": FX, "w": W, "h": H, "frames": [
        {"file_path": f"images/{i}.png", "transform_matrix": np.eye(4).tolist()} for i in range(3)]}))
    d = root / "nested" / "d"
    for it, m in ((7000, 120), (30000, 100)):
        (d / "point_cloud" / f"iteration_{it}").mkdir(parents=True)
        splat_io.write_ply(d / "point_cloud" / f"iteration_{it}" / "point_cloud.ply", random_scene(rng, m))
    ref["nested/d"] = splat_io.read_ply(d / "point_cloud" / "iteration_30000" / "point_cloud.ply")
    write_cameras_json(d / "cameras.json", eyes)
    # two blobs 4 apart; the mask drawn on the middle camera (index 2 of 5, at -z) covers the one at +x
    (root / "m").mkdir()
    blob_a, blob_b = random_scene(rng, 200, (-2.0, 0.0, 0.0), 0.25), random_scene(rng, 200, (2.0, 0.0, 0.0), 0.25)
    ref["m"] = gs.Gaussians(*(np.concatenate([x, y]) for x, y in zip(blob_a[:5], blob_b[:5])))
    splat_io.write_ply(root / "m" / "scene.ply", ref["m"])
    write_cameras_json(root / "m" / "cameras.json", [(8 * np.sin(t), 0.0, -8 * np.cos(t)) for t in
                                                     np.linspace(-0.5, 0.5, 5)])
    mid = json.loads((root / "m" / "cameras.json").read_text())[2]
    uv, _ = pinhole(blob_b.xyz, mid["rotation"], mid["position"], mid["fx"], mid["fy"], W / 2, H / 2)
    lo, hi = uv.min(0) - 3, uv.max(0) + 3
    mask = np.zeros((H // 2, W // 2), np.uint8)  # half resolution: only the aspect ratio must match
    mask[int(lo[1] / 2):int(np.ceil(hi[1] / 2)), int(lo[0] / 2):int(np.ceil(hi[0] / 2))] = 255
    Image.fromarray(mask).save(root / "m" / "mask.png")
    ref["m_mask"] = (mask, mid)
    # a COLMAP point cloud: the file is skipped with a warning, then the scene (no 3DGS file left)
    (root / "pts").mkdir()
    write_point_ply(root / "pts" / "points3D.ply", rng.normal(size=(50, 3)), rng.integers(0, 255, (50, 3)))
    if shared is not None:
        (root / "fox").mkdir()
        os.symlink(shared / "data" / "fox_3dgs" / "fox.ply", root / "fox" / "fox.ply")
        os.symlink(shared / "data" / "fox_nerf" / "transforms.json", root / "fox" / "transforms.json")
    return ref


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("prep")
    shared = None
    fox = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fox_3dgs" / "fox.ply"
    if fox.is_file():
        shared = fox.parents[2]
    ref = build_src(root / "src", shared)
    handler = _Messages()
    logging.getLogger(P.__name__).addHandler(handler)
    try:
        summary = P.main([f"--src={root / 'src'}", f"--out={root / 'out'}", f"--num_gaussians={N}",
                          "--eval_scenes=c,nested/d", "--preview_scenes=2"])
    finally:
        logging.getLogger(P.__name__).removeHandler(handler)
    recs = {}
    for split in ("train", "eval"):
        src = P.PreparedSource(root / "out", split, full=True)
        recs.update({src[i]["scene_id"]: dict(src[i], split=split) for i in range(len(src))})
    return dict(root=root, ref=ref, summary=summary, recs=recs, messages=handler.messages, fox=shared is not None)


def test_scenes_splits_and_skips(prepared):
    s, recs = prepared["summary"], prepared["recs"]
    expect = {"a", "b", "m"} | ({"fox"} if prepared["fox"] else set())
    assert set(s["splits"]["train"]) == expect and s["splits"]["eval"] == ["c", "nested/d"]
    assert set(recs) == expect | {"c", "nested/d"}
    assert list(s["skipped"]) == ["pts"] and "points3D.ply" in s["skipped"]["pts"]
    assert any("points3D.ply" in m and "not a 3DGS scene" in m for m in prepared["messages"])
    assert recs["nested/d"]["source_file"] == "point_cloud/iteration_30000/point_cloud.ply"
    assert recs["a"]["caption"] == "a cloud of random blobs" and recs["b"]["caption"] == ""
    assert [n.decode() for n in recs["a"]["camera_names"]] == ["a", "b", "c", "d"]
    assert len(recs["b"]["c2w"]) == 0 and recs["b"]["seed_source"] == "center"
    assert (prepared["root"] / "out" / "preview.png").is_file()
    assert not (prepared["root"] / "out" / "downloads").exists()


def test_examples_are_normalised_crops_of_the_input(prepared):
    """Exactly N rows inside the radius; the stored (center, scale) maps them back onto rows of the input file."""
    for sid, rec in prepared["recs"].items():
        g = rec["gaussians"]
        assert g.shape == (N, 14) and g.dtype == np.float32, sid
        r = np.linalg.norm(g[:, :3].astype(np.float64), axis=1)
        assert r.max() == pytest.approx(1.0 / 1.1, rel=1e-5), sid
        np.testing.assert_allclose(g[:, :3].mean(0), 0, atol=1e-5)
        if sid == "fox":
            continue
        src = gs.pack(prepared["ref"][sid]).astype(np.float64)
        back = g.astype(np.float64).copy()
        back[:, :3] = back[:, :3] / rec["scale"] + rec["center"]
        back[:, 7:10] -= np.log(rec["scale"])
        # every row is a distinct row of the input (nearest input row, all 14 channels)
        d = np.linalg.norm(back[:, None, :] - src[None], axis=-1)
        idx = d.argmin(1)
        assert len(set(idx.tolist())) == N, sid
        np.testing.assert_allclose(back, src[idx], atol=2e-5 * max(1.0, np.abs(src[:, :3]).max()), err_msg=sid)
        # the crop is centred at its own mean and its farthest Gaussian is at radius / 1.1
        np.testing.assert_allclose(rec["center"], src[idx, :3].mean(0), atol=1e-5)


def test_cameras_follow_the_normalisation(prepared):
    """A Gaussian projects to the same pixel with the input camera (cameras.json, raw) and with the stored
    normalised camera (the normalised Gaussian)."""
    root, recs = prepared["root"], prepared["recs"]
    raw = json.loads((root / "src" / "a" / "cameras.json").read_text())
    raw = sorted(raw, key=lambda e: e["img_name"])
    rec = recs["a"]
    assert tuple(rec["image_size"]) == (H, W)
    xyz_n = rec["gaussians"][:, :3].astype(np.float64)
    xyz = xyz_n / rec["scale"] + rec["center"]
    for i, e in enumerate(raw):
        uv0, z0 = pinhole(xyz, e["rotation"], e["position"], e["fx"], e["fy"], W / 2, H / 2)
        uv1, z1 = record_pinhole(xyz_n, rec["c2w"][i], rec["intrinsics"][i], H, W)
        np.testing.assert_allclose(uv1, uv0, atol=1e-3)
        np.testing.assert_allclose(z1, z0 * rec["scale"], rtol=1e-5)


def test_mask_seed_lands_in_the_masked_blob(prepared):
    rec, info = prepared["recs"]["m"], prepared["summary"]["scenes"]["m"]
    mask, mid = prepared["ref"]["m_mask"]
    xyz = np.asarray(prepared["ref"]["m"].xyz, np.float64)
    uv, z = pinhole(xyz, mid["rotation"], mid["position"], mid["fx"], mid["fy"], W / 2, H / 2)
    ij = np.floor(uv / 2).astype(int)  # the mask has half the resolution
    ok = (z > 0) & (ij[:, 0] >= 0) & (ij[:, 0] < W // 2) & (ij[:, 1] >= 0) & (ij[:, 1] < H // 2)
    inside = np.zeros(len(xyz), bool)
    inside[ok] = mask[ij[ok, 1], ij[ok, 0]] > 0
    np.testing.assert_array_equal(inside, np.arange(len(xyz)) >= 200)  # exactly the +x blob
    assert rec["seed_source"] == "mask" and info["mask_camera"] == mid["img_name"]
    np.testing.assert_allclose(info["seed_world"], xyz[inside].mean(0), atol=1e-9)
    np.testing.assert_allclose(rec["seed"] / rec["scale"] + rec["center"], xyz[inside].mean(0), atol=1e-5)
    back = rec["gaussians"][:, :3] / rec["scale"] + rec["center"]
    assert (back[:, 0] > 1.0).all()  # every cropped Gaussian comes from the masked blob


def test_release_npy_layouts(tmp_path):
    g = random_scene(np.random.default_rng(1), 20)
    rows = gs.pack(g)
    np.save(tmp_path / "g18.npy", np.concatenate([np.ones((20, 4), np.float32), rows], 1))  # voxel prefix
    np.testing.assert_array_equal(gs.pack(P.read_gaussian_file(tmp_path / "g18.npy")), rows)
    np.save(tmp_path / "poses.npy", np.zeros((20, 17)))
    with pytest.raises(P.NotGaussians, match="poses.npy"):
        P.read_gaussian_file(tmp_path / "poses.npy")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="bad.npy"):
        P.read_gaussian_file(tmp_path / "bad.npy")


def test_fox_real_scene(prepared):
    if not prepared["fox"]:
        pytest.skip("../shared/data/fox_3dgs not found")
    rec, info = prepared["recs"]["fox"], prepared["summary"]["scenes"]["fox"]
    assert info["num_input"] == 50000 and info["num_cameras"] == 67  # every frame of transforms.json
    tj = cv.read_transforms_json(prepared["root"] / "src" / "fox" / "transforms.json", check_files=False)
    i = [n.decode() for n in rec["camera_names"]].index(tj.file_paths[10])
    raw = cv.opengl_to_opencv(json.loads((prepared["root"] / "src" / "fox" / "transforms.json").read_text())
                              ["frames"][10]["transform_matrix"])
    xyz_n = rec["gaussians"][:, :3].astype(np.float64)
    uv0, _ = pinhole(xyz_n / rec["scale"] + rec["center"], raw[:3, :3], raw[:3, 3], 1375.52, 1374.49, 554.558,
                     965.268)
    uv1, _ = record_pinhole(xyz_n, rec["c2w"][i], rec["intrinsics"][i], 1920, 1080)
    np.testing.assert_allclose(uv1, uv0, atol=2e-2)


def _values(out):
    src = P.PreparedSource(out, "train", full=True)
    return {src[i]["scene_id"]: src[i] for i in range(len(src))}


def _small_src(root, n=3):
    rng = np.random.default_rng(5)
    for k in range(n):
        (root / f"s{k}").mkdir(parents=True)
        splat_io.write_ply(root / f"s{k}" / "scene.ply", random_scene(rng, 100 + 10 * k))
    return root


def test_deterministic_and_resumable(tmp_path, monkeypatch):
    src = _small_src(tmp_path / "src")
    args = [f"--src={src}", f"--num_gaussians={N}", "--eval_fraction=0.34", "--preview_scenes=0"]
    real = P._run_scene
    calls = []

    def interrupted(*a, **k):
        calls.append(a[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(P, "_run_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.main(args + [f"--out={tmp_path / 'o1'}"])
    assert not (tmp_path / "o1" / P.SUMMARY_FILE).exists()  # nothing published
    done = sorted((tmp_path / "o1" / "work").glob("*.npz"))
    assert len(done) == 2
    mtimes = [f.stat().st_mtime_ns for f in done]
    monkeypatch.setattr(P, "_run_scene", real)
    s1 = P.main(args + [f"--out={tmp_path / 'o1'}"])
    assert (s1["reused"], s1["computed"]) == (2, 1)
    assert [f.stat().st_mtime_ns for f in done] == mtimes
    s2 = P.main(args + [f"--out={tmp_path / 'o2'}", "--workers=2"])
    assert s2["splits"] == s1["splits"] and s1["splits"]["eval"] and s1["splits"]["train"]
    v1, v2 = _values(tmp_path / "o1"), _values(tmp_path / "o2")
    assert sorted(v1) == sorted(v2)
    for sid in v1:
        for k, a in v1[sid].items():
            if isinstance(a, np.ndarray) and a.dtype != object:
                assert a.tobytes() == v2[sid][k].tobytes(), (sid, k)
    s3 = P.main(args + [f"--out={tmp_path / 'o1'}"])  # a finished run: nothing recomputed or rewritten
    assert (s3["reused"], s3["computed"]) == (3, 0) and s3["dataset"] == s1["dataset"]


def test_split_is_stable_when_scenes_are_added():
    ids = [f"scene{i}" for i in range(200)]
    small = P.split_scenes(ids[:100], 0.2, seed=3)
    big = P.split_scenes(ids, 0.2, seed=3)
    assert set(small["eval"]) == set(big["eval"]) & set(ids[:100])
    assert 20 <= len(big["eval"]) <= 60
    assert P.split_scenes(["x", "y"], 0.1)["eval"] and P.split_scenes(["x", "y"], 0.9)["train"]
    assert P.split_scenes(ids, 0.2, seed=4)["eval"] != big["eval"]


def test_paths_leaving_the_scene_folder_are_rejected(tmp_path):
    src = _small_src(tmp_path / "src", n=2)
    Image.new("RGB", (W, H)).save(tmp_path / "secret.png")  # would give the image size if it were opened
    (src / "s0" / "transforms.json").write_text(json.dumps({"fl_x": FX, "frames": [
        {"file_path": "../../secret.png", "transform_matrix": np.eye(4).tolist()}]}))
    write_cameras_json(src / "s1" / "cameras.json", [(0.0, 0.0, -5.0)], names=["/etc/passwd"])
    args = [f"--src={src}", f"--out={tmp_path / 'out'}", f"--num_gaussians={N}", "--preview_scenes=0"]
    with pytest.raises(ValueError, match=r"every scene was skipped.*transforms.json: frames\[0\].*leaves"):
        P.main(args)
    with pytest.raises(ValueError, match=r"transforms.json: frames\[0\]\.file_path: path '../../secret.png' leaves"):
        P.main(args + ["--strict"])
    with pytest.raises(ValueError, match="leaves"):
        P.check_inside(src, "images/../../x.png", "f")
    assert P.check_inside(src, "images/./a/../b.png", "f") == src / "images" / "b.png"


def test_train_pipeline_reads_it(prepared):
    out = prepared["root"] / "out"
    cfg = ml_collections.ConfigDict(dict(name="prepared_3dgs", path=str(out),
                                         gaussians=dict(num_gaussians=N, rotate=False)))
    src = data_lib.get_source(cfg, "train")
    assert len(src) == len(prepared["summary"]["splits"]["train"])
    (tf,) = data_lib.get_transforms(cfg, "train")
    assert tf.cfg.prepared
    it = pipeline.make_batch_iterator(src, global_batch_size=2, seed=0, transforms=[tf], process_index=0,
                                      process_count=1, read_options=grain.ReadOptions(num_threads=1,
                                                                                      prefetch_buffer_size=1))
    batch = next(it)
    assert batch["gaussians"].shape == (2, N, 14) and batch["caption"].shape == (2,)
    for b in range(2):  # not cropped or normalised again: the stored rows, in order
        rec = prepared["recs"][str(batch["scene_id"][b])]
        np.testing.assert_array_equal(batch["gaussians"][b], rec["gaussians"])
        np.testing.assert_allclose(batch["center"][b], rec["center"], rtol=1e-6)
    ev = data_lib.get_source(cfg, "eval")
    assert sorted(ev[i]["scene_id"] for i in range(len(ev))) == ["c", "nested/d"]
    bad = ml_collections.ConfigDict(dict(name="prepared_3dgs", path=str(out), gaussians=dict(num_gaussians=2048)))
    with pytest.raises(ValueError, match="num_gaussians=2048.*64"):
        data_lib.get_transforms(bad, "train")
    with pytest.raises(ValueError, match="not a prepared 3DGS dataset"):
        data_lib.get_source(ml_collections.ConfigDict(dict(name="prepared_3dgs", path=str(out / "work"))), "train")
