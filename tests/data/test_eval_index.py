"""Evaluation index files of the SceneTok release: an excerpt of its files (and the files themselves when the
release's git mirror is on this machine), null entries, the one-item-list form, malformed files (always a
ValueError naming the file and the scene / field), latent indices of its VideoDC / Wan samplers, frame selection
against a clip's length, and the scene lookup of a source."""
import json
import pathlib
import subprocess

import numpy as np
import pytest

from scene3d.data import eval_index as ei
from scene3d.data import multiview

RELEASE = pathlib.Path("/work/.mirror/mohammadasim98+scenetok/repo")

# The first entries of the release's assets/evaluation_index/re10k_c2_32.json, re10k_c2_64.json and
# re10k_c12_70.json (frame ids as released; the last file wraps each entry in a one-item list).
EXCERPT = {
    "004e9db3337e8206": {"context": [0, 31], "target": list(range(32))},
    "10351dc7a37a44c1": {"context": [1, 64], "target": list(range(1, 65))},
    "d73d3d65657b28dd": [{"context": [0, 7, 13, 20, 27, 33, 40, 46, 53, 60, 66, 73], "target": list(range(74))}],
    "0000skipped00000": None,
}


def write(tmp_path, obj, name="index.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_read_release_excerpt(tmp_path):
    index = ei.read_index(write(tmp_path, EXCERPT))
    assert list(index) == ["004e9db3337e8206", "10351dc7a37a44c1", "d73d3d65657b28dd"]  # file order
    assert index.skipped == ("0000skipped00000",)
    e = index["004e9db3337e8206"]
    assert e == ei.IndexEntry(context=(0, 31), target=tuple(range(32)))
    assert index["d73d3d65657b28dd"].context[-1] == 73 and len(index["d73d3d65657b28dd"].target) == 74
    assert index.path.endswith("index.json")


@pytest.mark.parametrize("name,scenes", [("re10k_c2_32.json", 277), ("re10k_c12_70.json", 3933)])
def test_read_release_files(tmp_path, name, scenes):
    """The release's own files, read from its git mirror (skipped where the mirror is absent)."""
    if not RELEASE.is_dir():
        pytest.skip(f"the release's git mirror is not at {RELEASE}")
    text = subprocess.run(["git", "-C", str(RELEASE), "show", f"HEAD:assets/evaluation_index/{name}"],
                          capture_output=True, check=True).stdout
    index = ei.read_index(write(tmp_path, text.decode(), name))
    assert len(index) == scenes and not index.skipped
    assert all(len(e.context) == len(next(iter(index.values())).context) for e in index.values())


@pytest.mark.parametrize("content,match", [
    ("{not json", r"index\.json: not JSON"),
    (b"\xff\xfe{}", r"index\.json: not a UTF-8 JSON"),
    ("[1, 2]", r"index\.json: expected a JSON object.*list"),
    ("{}", r"index\.json: the evaluation index lists no scenes"),
    ('{"a": 3}', r"index\.json: scene 'a': expected an object"),
    ('{"a": {"context": [0]}}', r"scene 'a': missing field 'target'"),
    ('{"a": {"context": [0], "target": [1], "extra": 1}}', r"scene 'a': unknown field 'extra'"),
    ('{"a": {"context": [0, -1], "target": [1]}}', r"scene 'a' field 'context'\[1\].*-1"),
    ('{"a": {"context": [0], "target": [1.5]}}', r"scene 'a' field 'target'\[0\].*1\.5"),
    ('{"a": {"context": [0], "target": [2.0]}}', r"scene 'a' field 'target'\[0\]"),
    ('{"a": {"context": [true], "target": [1]}}', r"scene 'a' field 'context'\[0\].*True"),
    ('{"a": {"context": ["3"], "target": [1]}}', r"scene 'a' field 'context'\[0\]"),
    ('{"a": {"context": 3, "target": [1]}}', r"scene 'a' field 'context': expected a list"),
    ('{"a": {"context": [], "target": [1]}}', r"scene 'a' field 'context': empty"),
    ('{"a": {"context": [0], "target": [1, 2, 1]}}', r"scene 'a' field 'target': frame 1 is listed twice"),
    ('{"a": [{"context": [0], "target": [1]}, {"context": [0], "target": [2]}]}', r"scene 'a'.*exactly one"),
    ('{"a": {"context": [0], "target": [1]}, "a": null}', r"key 'a' appears twice"),
    ('{"": {"context": [0], "target": [1]}}', r"index\.json: scene keys are non-empty strings"),
])
def test_malformed_files(tmp_path, content, match):
    p = tmp_path / "index.json"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        ei.read_index(p)


def test_unreadable_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.json: cannot read"):
        ei.read_index(tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"cannot read"):
        ei.read_index(tmp_path)  # a folder


def test_latent_indices_and_sampler_targets():
    t = tuple(range(32))
    assert ei.latent_indices(t, 4) == tuple(v // 4 for v in t)  # VideoDC: 4 frames per latent, repeats kept
    assert ei.latent_indices((5, 9, 2), 4) == (1, 2, 0)
    assert ei.latent_indices(t, 1) == t
    # Wan (temporal 4, chunk gap 5): 17-frame chunks of 5 latents; 32 targets get 4 more frames (36), whose range
    # starts latents 0..10; the 34 frames the renderer keeps are latents 0..9
    wan = ei.sampler_targets(t, "evaluation_video_wan")
    assert wan == tuple(range(36))
    assert ei.latent_indices(wan[:34], 4, chunk_index_gap=5) == tuple(range(10))
    # frames 17..21, the second chunk's first frame (latent 5) and the next 4 (latent 6); then 4 more (latent 7)
    assert ei.latent_indices(tuple(range(17, 22)), 4, chunk_index_gap=5) == (5, 6)
    assert ei.latent_indices(tuple(range(17, 26)), 4, chunk_index_gap=5) == (5, 6, 7)
    assert ei.sampler_targets(tuple(range(34)), "evaluation_video_wan") == tuple(range(34))  # not a multiple of 4
    assert ei.sampler_targets(tuple(range(30)), "evaluation") == tuple(range(28))
    assert ei.sampler_targets(t, "evaluation_video") == t
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="temporal_downsample"):
            ei.latent_indices(t, bad)
    with pytest.raises(ValueError, match="chunk_index_gap"):
        ei.latent_indices(t, 4, chunk_index_gap=1)
    with pytest.raises(ValueError, match="sampler"):
        ei.sampler_targets(t, "video")


def _record(n, sid="clip"):
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    c2w[:, 0, 3] = np.arange(n, dtype=np.float32)
    return {"scene_id": sid, "images": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), "c2w": c2w,
            "intrinsics": np.tile(np.float32([1, 1, 0.5, 0.5]), (n, 1))}


def test_select_frames_and_example():
    entry = ei.IndexEntry(context=(0, 5), target=(1, 5, 3))
    ctx, tgt = ei.select_frames(entry, 6, "clip")
    assert ctx.tolist() == [0, 5] and tgt.tolist() == [1, 5, 3] and tgt.dtype == np.int64
    with pytest.raises(ValueError, match=r"scene 'clip': target frame 6 is out of range: the clip has 6 frames"):
        ei.select_frames(ei.IndexEntry((0,), (2, 6, 7)), 6, "clip")
    with pytest.raises(ValueError, match=r"scene 'x': context frame 9"):
        ei.select_frames(ei.IndexEntry((9,), (0,)), 6, "x")
    rec = _record(6)
    views = multiview.ViewConfig(scale_mode=None, with_depth=False)
    ex = ei.index_example(rec, entry, views)
    assert ex["target"]["index"].tolist() == [1, 5, 3] and ex["context"]["index"].tolist() == [0, 5]
    np.testing.assert_allclose((ex["target"]["images"] + 1) * 127.5, rec["images"][[1, 5, 3]], atol=1e-3)
    np.testing.assert_allclose(ex["target"]["c2w"][:, 0, 3], [1, 5, 3])  # relative to context frame 0 (x = 0)
    with pytest.raises(ValueError, match=r"scene 'clip': target frame 8"):
        ei.index_example(rec, ei.IndexEntry((0,), (8,)), views)


def test_find_scenes():
    class Source:  # records only: the lookup reads each record's scene_id, stopping when all are found
        def __init__(self, ids):
            self.ids, self.read = ids, []

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            self.read.append(i)
            return {"scene_id": self.ids[i].encode()}

    src = Source(["a", "b", "c", "b", "d"])
    found, missing = ei.find_scenes(src, ["b", "x", "a"])
    assert found == {"b": 1, "a": 0} and missing == ["x"] and src.read == [0, 1, 2, 3, 4]
    src.read.clear()
    assert ei.find_scenes(src, ["b", "a"]) == ({"b": 1, "a": 0}, []) and src.read == [0, 1]

    class Captures:
        captures = [type("C", (), {"scene_id": s})() for s in ("p", "q")]

        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise AssertionError("capture names are read without building records")

    assert ei.find_scenes(Captures(), ["q"]) == ({"q": 1}, [])
