"""`python -m scene3d.data.inspect`: kind detection, printed counts and a non-blank PNG on the real captures in
../shared/data and on generated data; one-line errors (no traceback) on bad inputs."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scene3d.data import inspect as I
from scene3d.data import splat_io
from scene3d.geometry.gaussians import Gaussians
from scene3d.render import plots

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _data(shared_dir, rel):
    p = pathlib.Path(shared_dir) / "data" / rel
    if not p.exists():
        pytest.skip(f"real data {p} not found")
    return p


def _run(argv, capsys):
    capsys.readouterr()  # drop earlier output (e.g. tfds progress bars)
    rc = I.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _field(out, key):
    m = re.search(rf"^{re.escape(key)}:\s+(.*)$", out, re.M)
    assert m, f"no {key!r} line in:\n{out}"
    return m.group(1)


def _check_png(path, min_size=(400, 300)):
    assert path.is_file()
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).astype(np.float64)
    assert a.shape[1] >= min_size[0] and a.shape[0] >= min_size[1], a.shape
    assert a.std() > 20  # not blank
    # the figure area (above the text footer) holds real content, not one flat colour; measured over the columns
    # that hold anything, so a wider figure (a longer title or footer line) does not dilute it
    band = a[40: a.shape[0] // 2]
    cols = np.nonzero((np.abs(band - np.asarray(plots.BACKGROUND, np.float64)).sum(-1) > 0).any(0))[0]
    assert cols.size, "the figure area is empty"
    top = band[:, cols.min(): cols.max() + 1]
    assert top.std() > 15 and len(np.unique(top.reshape(-1, 3), axis=0)) > 50
    return a


REAL = [  # (path under shared/data, kind substring, {summary key: regex})
    ("fox_nerf", "capture folder with transforms.json",
     {"cameras": r"^50$", "frames": r"^67 in the json, 50 with an image file, 17 skipped",
      "image size": r"^1080 x 1920"}),
    ("fox_nerf/transforms.json", "transforms.json", {"cameras": r"^50$", "distortion": r"k1 .*p2"}),
    ("llff_fern", "LLFF capture", {"cameras": r"^20$", "points3D": r"^10091 ",
                                   "image folders": r"images_8: 20 x 504 x 378",
                                   "near/far bounds": r"near 16\.99\.\.18\.92"}),
    ("llff_fern/sparse/0", "COLMAP sparse model", {"points3D": r"^10091 ", "camera 1": r"^SIMPLE_RADIAL 4032 x 3024"}),
    ("re10k_poses/0bf152ef84195293.txt", "RealEstate10K", {"frames": r"^16,", "cameras": r"^16$",
                                                          "image size": r"^unknown"}),
    ("fox_3dgs/fox.ply", "Gaussian Splatting PLY", {"gaussians": r"^50000 ", "SH degree": r"^0$",
                                                    "inf/NaN repaired": r"^37 \(infinite opacity logits found: 37\)"}),
]


@pytest.mark.parametrize("rel,kind,fields", REAL, ids=[r[0] for r in REAL])
def test_real_data(shared_dir, tmp_path, capsys, rel, kind, fields):
    src = _data(shared_dir, rel)
    out_png = tmp_path / "fig.png"
    rc, out, err = _run([src, "--out", out_png], capsys)
    assert rc == 0 and err == "", err
    assert kind in _field(out, "kind")
    for key, pattern in fields.items():
        assert re.search(pattern, _field(out, key)), (key, _field(out, key))
    assert f"wrote {out_png}" in out
    _check_png(out_png)


def test_real_data_counts_and_views(shared_dir):
    fox = I.inspect_path(_data(shared_dir, "fox_nerf"))
    assert fox.counts["cameras"] == 50 and fox.counts["skipped"] == 17
    assert len(fox.images) == I.MAX_THUMBS and all(im.ndim == 3 and max(im.shape[:2]) <= I.THUMB_SIDE
                                                   for _, im in fox.images)
    fern = I.inspect_path(_data(shared_dir, "llff_fern"))
    assert fern.counts["cameras"] == 20 and fern.counts["points"] == 10091 and fern.points.shape == (10091, 3)
    np.testing.assert_allclose(fern.up, [0, -1, 0], atol=0.05)  # LLFF/COLMAP world: camera y points down
    ply = I.inspect_path(_data(shared_dir, "fox_3dgs/fox.ply"))
    assert ply.counts == dict(gaussians=50000, sh_degree=0, inf_opacity=37, repaired=37)
    assert np.isfinite(ply.gaussians.opacity).all()
    assert any("37" in n for n in ply.notes)  # the reader's log message is kept as a note, not printed on stderr


def test_fox_ply_render_shows_the_statue(shared_dir):
    """The splat panel: the statue (darker than the white background) fills a good part of each view, centred."""
    insp = I.inspect_path(_data(shared_dir, "fox_3dgs/fox.ply"))
    panel = np.asarray(I._splat_panel(insp, side=96)).astype(float)
    fg = panel.mean(-1) < 200
    assert 0.05 < fg.mean() < 0.6
    ys, xs = np.nonzero(fg)
    assert abs(xs.mean() / panel.shape[1] - 0.5) < 0.15


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    pytest.importorskip("pybullet")
    from scene3d.data import builtin as B
    d = tmp_path_factory.mktemp("builtin")
    B.build_dataset(d, 2, B.SceneSpec(**SPEC_KW), seed=3)
    return d


def test_builtin_dataset(builtin_dir, tmp_path, capsys):
    rc, out, err = _run([builtin_dir, "--out", tmp_path / "b.png", "--scene", "1"], capsys)
    assert rc == 0 and err == ""
    assert _field(out, "kind") == "built-in dataset folder"
    assert _field(out, "scenes").startswith("2 listed, 2 present")
    assert _field(out, "views").startswith("5 (")
    assert _field(out, "cameras") == "5"
    assert _field(out, "image size").startswith("32 x 24")
    assert _field(out, "gaussians").startswith("256 ")
    assert "scene_000001.npz" in _field(out, "scene file")
    _check_png(tmp_path / "b.png")
    insp = I.inspect_path(builtin_dir)
    from scene3d.data import builtin as B
    s = B.load_scene(builtin_dir / "scene_000000.npz")
    assert insp.counts["points"] == int(s["mask"].sum())
    np.testing.assert_allclose(insp.cameras.c2w, s["c2w"])
    assert insp.images[-1][0] == "3DGS from view 0" and len(insp.images) == 6
    # a single scene file works too
    one = I.inspect_path(builtin_dir / "scene_000000.npz")
    assert one.kind.startswith("built-in scene file") and one.counts["views"] == 5


def test_splat_file_and_default_out(tmp_path, capsys, monkeypatch):
    splat_io.write_splat(tmp_path / "blob.splat", _random_gaussians(700))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, out, err = _run([tmp_path / "blob.splat"], capsys)
    assert rc == 0 and err == ""
    assert _field(out, "gaussians").startswith("700 ") and _field(out, "SH degree") == "0"
    assert _field(out, "inf/NaN repaired").startswith("0 ")
    _check_png(work / "blob_inspect.png")
    # --up is honoured and reported
    rc, out, _ = _run([tmp_path / "blob.splat", "--up=-y", "--no-png"], capsys)
    assert rc == 0 and _field(out, "up").startswith("(0, -1, 0) (from --up)")


def test_figure_does_not_depend_on_where_the_file_sits(tmp_path, capsys):
    """The same file under a short and a very long folder name gives a figure of the same width (the title elides
    long paths; the footer wraps a long path onto more lines); the long title keeps both ends of the path."""
    short = tmp_path / "s"
    deep = tmp_path / ("a_very_long_directory_name_" * 4) / ("another_long_directory_name_" * 4)
    sizes = []
    for folder in (short, deep):
        folder.mkdir(parents=True)
        splat_io.write_splat(folder / "blob.splat", _random_gaussians(300))
        rc, _, _ = _run([folder / "blob.splat", "--out", folder / "fig.png"], capsys)
        assert rc == 0
        with Image.open(folder / "fig.png") as im:
            sizes.append(im.size)
    assert sizes[0][0] == sizes[1][0]
    title = plots.elide(str(deep / "blob.splat") + " - .splat", 100)
    assert len(title) == 100 and title.startswith(str(tmp_path)[:20]) and title.endswith("blob.splat - .splat")
    assert plots.elide("short", 100) == "short"


def _random_gaussians(n, seed=0):
    rng = np.random.default_rng(seed)
    return Gaussians(xyz=rng.normal(size=(n, 3)).astype(np.float32), f_dc=rng.normal(size=(n, 3)).astype(np.float32),
                     opacity=rng.normal(1.0, 1.0, n).astype(np.float32),
                     scale=np.log(rng.uniform(0.02, 0.1, (n, 3))).astype(np.float32),
                     rot=rng.normal(size=(n, 4)).astype(np.float32))


def test_colmap_capture_and_3dgs_output(tmp_path, capsys):
    """Generated COLMAP capture (sparse/0 with images + an images/ folder) and a 3DGS output folder."""
    from scene3d.geometry import conventions as cv
    from scene3d.geometry.cameras import Cameras, look_at
    th = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    c2w = look_at(np.stack([3 * np.cos(th), 3 * np.sin(th), np.ones(6)], -1), np.zeros((6, 3)))
    cams = Cameras(c2w, np.array([0.9, 1.2, 0.5, 0.5]), 30, 40)
    names = [f"im{i}.png" for i in range(6)]
    ccams, cims = cv.cameras_to_colmap(cams, names)
    xyz = np.random.default_rng(0).normal(size=(300, 3))
    pts = cv.ColmapPoints(np.arange(1, 301), xyz, np.full((300, 3), 200, np.uint8), np.full(300, 0.5),
                          [np.array([[1, 0], [2, 0]])] * 300)
    cap = tmp_path / "cap"
    cv.write_colmap_model(cap / "sparse" / "0", ccams, cims, pts, ext=".txt")
    (cap / "images").mkdir()
    for i, n in enumerate(names):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(cap / "images" / n)
    rc, out, err = _run([cap, "--out", tmp_path / "c.png"], capsys)
    assert rc == 0 and err == ""
    assert _field(out, "kind") == "COLMAP capture folder"
    assert _field(out, "cameras") == "6" and _field(out, "points3D").startswith("300 ")
    assert _field(out, "images").startswith("6 registered")
    _check_png(tmp_path / "c.png")
    insp = I.inspect_path(cap)
    np.testing.assert_allclose(insp.cameras.c2w, c2w, atol=1e-9)
    assert [lab for lab, _ in insp.images] == [f"{i}: {n}" for i, n in enumerate(names)]
    np.testing.assert_allclose(insp.up, [0, 0, 1], atol=0.05)
    # 3DGS output folder: cameras.json + point_cloud/iteration_*/point_cloud.ply (the latest iteration is read)
    out_dir = tmp_path / "gs_out"
    out_dir.mkdir()
    cv.write_3dgs_cameras(out_dir / "cameras.json", cams, names)
    for it, n in ((7000, 50), (30000, 80)):
        (out_dir / "point_cloud" / f"iteration_{it}").mkdir(parents=True)
        splat_io.write_ply(out_dir / "point_cloud" / f"iteration_{it}" / "point_cloud.ply", _random_gaussians(n))
    insp = I.inspect_path(out_dir)
    assert insp.kind == "3DGS output folder" and insp.counts["cameras"] == 6 and insp.counts["gaussians"] == 80
    rc, out, err = _run([out_dir / "cameras.json", "--no-png"], capsys)
    assert rc == 0 and _field(out, "kind") == "3DGS cameras.json" and _field(out, "cameras") == "6"


def _bad_inputs(tmp_path):
    cases = {}
    ply = tmp_path / "trunc.ply"
    header = (b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n" +
              b"".join(f"property float {n}\n".encode() for n in
                       ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                        "rot_0", "rot_1", "rot_2", "rot_3"]) + b"end_header\n")
    ply.write_bytes(header + b"\0" * (56 * 40))
    cases["truncated ply"] = ply
    sp = tmp_path / "random.splat"
    sp.write_bytes(np.random.default_rng(1).integers(0, 256, 32 * 5 + 7, np.uint8).tobytes())
    cases["splat of wrong size"] = sp
    (tmp_path / "empty").mkdir()
    cases["empty dir"] = tmp_path / "empty"
    cases["nonexistent"] = tmp_path / "does_not_exist.ply"
    js = tmp_path / "settings.json"
    js.write_text('{"learning_rate": 0.1, "frames": 3}')
    cases["json that is not a transforms file"] = js
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("hi")
    cases["unrecognised folder"] = tmp_path / "junk"
    tr = tmp_path / "tr" / "transforms.json"
    tr.parent.mkdir()
    tr.write_text('{"frames": [{"file_path": "a.png"}]}')
    cases["transforms frame without matrix"] = tr
    return cases


@pytest.mark.parametrize("case", ["truncated ply", "splat of wrong size", "empty dir", "nonexistent",
                                  "json that is not a transforms file", "unrecognised folder",
                                  "transforms frame without matrix"])
def test_bad_inputs_one_line_error(tmp_path, capsys, case):
    path = _bad_inputs(tmp_path)[case]
    rc, out, err = _run([path, "--out", tmp_path / "x.png"], capsys)
    assert rc != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert path.name in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_subprocess_errors_and_success(tmp_path, shared_dir):
    """The real `python -m` entry point: exit status, one stderr line, no traceback."""
    cases = _bad_inputs(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for case in ("truncated ply", "nonexistent"):
        r = subprocess.run([sys.executable, "-m", "scene3d.data.inspect", str(cases[case])], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=120)
        assert r.returncode == 1, r
        assert len(r.stderr.strip().splitlines()) == 1 and str(cases[case]) in r.stderr
        assert "Traceback" not in r.stderr
    assert "truncated" in r.stderr or "no such file" in r.stderr
    re10k = pathlib.Path(shared_dir) / "data" / "re10k_poses" / "0c11dbe781b1c11c.txt"
    if re10k.is_file():
        r = subprocess.run([sys.executable, "-m", "scene3d.data.inspect", str(re10k)], capture_output=True,
                           text=True, cwd=tmp_path, env=env, timeout=120)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        _check_png(tmp_path / "0c11dbe781b1c11c_inspect.png", min_size=(300, 300))


def test_unexpected_exception_is_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    p = tmp_path / "a.splat"
    p.write_bytes(b"")

    def boom(insp, path, up):
        raise RuntimeError("kaboom")

    monkeypatch.setitem(I._INSPECTORS, "gaussians", boom)
    rc, out, err = _run([p], capsys)
    assert rc == 1 and len(err.splitlines()) == 1
    assert "a.splat" in err and "RuntimeError: kaboom" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="kaboom"):
        I.main([str(p), "--debug"])


SPEC_KW = dict(num_views=5, height=24, width=32, num_gaussians=256)


def test_arrayrecord_dataset(builtin_dir, tmp_path, capsys):
    """A prepared tfds ArrayRecord dataset (built from the same scenes): found from its data_dir root, record
    contents match the .npz scene it came from."""
    T = pytest.importorskip("scene3d.data.tfds_builders")
    from scene3d.data import builtin as B
    cfg = T.builtin_config("runlocal", spec=B.SceneSpec(**SPEC_KW), num_scenes=2, num_eval=1, seed=3)
    T.builtin_source(tmp_path / "tfds", "train", config=cfg, source_dir=builtin_dir)
    rc, out, err = _run([tmp_path / "tfds", "--out", tmp_path / "a.png", "--split", "eval"], capsys)
    assert rc == 0 and err == "", err
    assert _field(out, "kind").startswith("ArrayRecord dataset folder (tfds scene3d_builtin")
    assert _field(out, "splits") == "train 1, eval 1"
    assert _field(out, "views").startswith("5 (") and _field(out, "gaussians").startswith("256 ")
    _check_png(tmp_path / "a.png")
    insp = I.inspect_path(tmp_path / "tfds", split="eval")
    s = B.load_scene(builtin_dir / "scene_000001.npz")
    np.testing.assert_allclose(insp.cameras.c2w, s["c2w"])
    assert insp.counts["points"] == int(s["mask"].sum())
    np.testing.assert_array_equal(insp.images[0][1], s["images"][0])  # PNG round trip is lossless
    # array_record files without the tfds metadata: a one-line error
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "x.array_record-00000-of-00001").write_bytes(b"")
    rc, out, err = _run([bare], capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and "dataset_info.json" in err and "bare" in err


def test_parse_up():
    np.testing.assert_array_equal(I.parse_up("-y"), [0, -1, 0])
    np.testing.assert_allclose(I.parse_up("1,0,1"), [2 ** -0.5, 0, 2 ** -0.5])
    assert I.parse_up("auto") is None
    with pytest.raises(ValueError, match="--up"):
        I.parse_up("0,0,0")
