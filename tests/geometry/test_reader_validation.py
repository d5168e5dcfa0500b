"""The camera readers' validation policy (issue 17): rigid poses or an opt-in repair, bounded reads, confined paths.
The broad malformed-input sweep is tests/data/test_fuzz_readers.py; these are the behaviours it cannot pin down."""
import json
import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from scene3d.core import io as core_io
from scene3d.geometry import cameras as C
from scene3d.geometry import conventions as cv
from tests.geometry._helpers import random_cameras


def _perturbed(n, eps, seed=0):
    R = Rotation.random(n, random_state=seed).as_matrix()
    return R + eps * np.random.default_rng(seed).standard_normal(R.shape)


def test_check_rotations_accepts_rigid_rejects_or_repairs_the_rest():
    R = Rotation.random(4, random_state=1).as_matrix()
    out, n = C.check_rotations(R + 1e-6, [f"v{i}" for i in range(4)])
    assert n == 0 and np.array_equal(out, R + 1e-6)  # within RIGID_ATOL: kept exactly as stored
    near = _perturbed(4, 3e-3)
    with pytest.raises(ValueError, match=r"v0: rotation is not rigid: .* \(pass repair=True"):
        C.check_rotations(near, [f"v{i}" for i in range(4)])
    fixed, n = C.check_rotations(near, [f"v{i}" for i in range(4)], repair=True)
    assert n == 4 and C.rigid_error(fixed).max() < 1e-12 and (np.linalg.det(fixed) > 0).all()
    # the nearest rotation in the Frobenius norm, as scipy's (independent, quaternion-based) projection finds it
    np.testing.assert_allclose(fixed, Rotation.from_matrix(near).as_matrix(), atol=1e-9)
    for bad, why in ((2 * R, "scaled"), (-R, "mirrored"), (_perturbed(4, 0.2), "far off")):
        with pytest.raises(ValueError, match="is not rigid"):
            C.check_rotations(bad, [f"v{i}" for i in range(4)], repair=True)


def test_3dgs_cameras_repair_is_opt_in(tmp_path):
    c2w, intr = random_cameras(3, seed=2)
    cams = C.Cameras(c2w, intr, 24, 32)
    cv.write_3dgs_cameras(tmp_path / "cameras.json", cams, ["a", "b", "c"])
    entries = json.loads((tmp_path / "cameras.json").read_text())
    entries[1]["rotation"] = np.round(np.asarray(entries[1]["rotation"]), 3).tolist()  # 3 decimals kept
    (tmp_path / "cameras.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"cameras\.json: entry 1 \(b\): 'rotation' rotation is not rigid"):
        cv.read_3dgs_cameras(tmp_path / "cameras.json")
    got, names, ids = cv.read_3dgs_cameras(tmp_path / "cameras.json", repair=True)
    assert names == ["a", "b", "c"] and ids == [0, 1, 2]
    np.testing.assert_allclose(got.c2w[1, :3, :3], c2w[1, :3, :3], atol=2e-3)
    np.testing.assert_array_equal(got.c2w[[0, 2]], cams.c2w[[0, 2]])  # rigid ones untouched
    assert C.rigid_error(got.c2w[:, :3, :3]).max() < 1e-12


def test_npy_reads_are_bounded(tmp_path):
    a = np.arange(17.0 * 3).reshape(3, 17)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(core_io.read_npy(tmp_path / "a.npy"), np.load(tmp_path / "a.npy"))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "big.npy").write_bytes(raw.replace(b"(3, 17)", b"(300000000000, 17)"))
    with pytest.raises(ValueError, match=r"big\.npy: truncated array: header declares shape \(300000000000, 17\)"):
        core_io.read_npy(tmp_path / "big.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy: object arrays"):
        core_io.read_npy(tmp_path / "o.npy")
    np.savez_compressed(tmp_path / "z.npz", c2w=a, k=np.ones(3))
    got = core_io.read_npz(tmp_path / "z.npz")
    assert sorted(got) == ["c2w", "k"] and np.array_equal(got["c2w"], a)


def test_paths_stay_in_the_capture(tmp_path):
    root = tmp_path / "cap"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "images" / "b.png")
    assert cv.resolve_image(root, "images/a") == root / "images" / "a.png"  # extension added, inside
    assert cv.resolve_image(root, "images/../images/a.png") is not None
    assert cv.resolve_image(root, "images/missing.png") is None
    for bad in ("../secret.png", str(tmp_path / "secret.png"), "images/b.png", "images/b", "/"):
        with pytest.raises(ValueError, match="leads outside the capture folder"):
            cv.resolve_image(root, bad, where="here")


def test_re10k_without_url_keeps_every_frame(tmp_path, caplog):
    c2w, intr = random_cameras(4, seed=3)
    clip = cv.RE10KClip("https://example.com/v", np.arange(4) * 1000, intr, c2w)
    cv.write_re10k(tmp_path / "a.txt", clip)
    lines = (tmp_path / "a.txt").read_text().splitlines()
    (tmp_path / "b.txt").write_text("\n".join(lines[1:]) + "\n")
    got = cv.read_re10k(tmp_path / "b.txt")
    assert got.url == "" and "no URL" in caplog.text
    np.testing.assert_array_equal(got.timestamps, clip.timestamps)
    np.testing.assert_allclose(got.c2w, c2w, atol=1e-8)
