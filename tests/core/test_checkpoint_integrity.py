"""Checkpoint integrity: every item of a step carries a SHA-256 manifest of the files orbax wrote; a damaged step
(truncated or bit-flipped array file, truncated metadata, missing manifest) is refused with one line naming it, and a
resume falls back to the newest good step, moving the damaged one aside. Hashes are checked against hashlib here,
restored values against the arrays that were saved."""
import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from scene3d.core import checkpoint as ckpt_lib
from scene3d.core import runs
from scene3d.core.checkpoint import Checkpointer, CorruptCheckpointError

CORRUPTIONS = ("truncated_array", "flipped_array", "truncated_metadata", "missing_manifest")


def _host(step: int) -> dict:
    """Distinct values per step; big enough that the array data file is the largest file of the item."""
    r = np.random.default_rng(step)
    return {"w": r.standard_normal((64, 32)).astype(np.float32),
            "b": r.standard_normal((32,)).astype(jnp.bfloat16),
            "n": r.integers(-1000, 1000, (16,)).astype(np.int32),
            "step": np.int32(step)}


def _abstract(mesh=None):
    sharding = lambda spec: (NamedSharding(mesh, spec) if mesh is not None
                             else jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding(P("data") if k == "w" and mesh else P()))
            for k, v in _host(0).items()}


def _assert_same(restored, host):
    for k, v in host.items():
        got = np.asarray(restored[k])
        assert got.dtype == np.asarray(v).dtype, k
        assert got.tobytes() == np.asarray(v).tobytes(), k  # bit-identical (NaN payloads, -0.0 included)


def _files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def _array_file(step_dir) -> str:
    """The largest file of the state item: the compressed array data."""
    state = os.path.join(step_dir, "state")
    return max((os.path.join(state, f) for f in _files(state) if f != ckpt_lib.MANIFEST), key=os.path.getsize)


def _corrupt(step_dir, kind) -> str:
    """Damage ``step_dir`` as ``kind``; returns the path (relative to the step) of the file touched."""
    if kind == "missing_manifest":  # what a save cut short between orbax's files and the manifest leaves
        path = os.path.join(step_dir, "state", ckpt_lib.MANIFEST)
        os.remove(path)
    elif kind == "truncated_metadata":
        path = os.path.join(step_dir, "state", "_METADATA")
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    else:
        path = _array_file(step_dir)
        data = bytearray(open(path, "rb").read())
        if kind == "truncated_array":
            data = data[:len(data) // 2]
        else:  # a few flipped bytes in the middle: same size, different content
            mid = len(data) // 2
            for i in range(mid, mid + 4):
                data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))
    return os.path.relpath(path, step_dir)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pristine checkpoint folder with steps 1, 2, 3 (async saves, as the trainer makes them)."""
    root = tmp_path_factory.mktemp("ck") / "pristine"
    with Checkpointer(root, keep=None) as ck:
        for step in (1, 2, 3):
            ck.save(step, {k: jnp.asarray(v) for k, v in _host(step).items()}, meta={"step": step})
    return root


def _copy(saved, tmp_path):
    import shutil
    dest = tmp_path / "ck"
    shutil.copytree(saved, dest)
    return dest


def test_manifest_hashes_every_file_and_restore_is_bit_identical(saved, tmp_path):
    root = _copy(saved, tmp_path)
    for item in ("state", "meta"):
        folder = os.path.join(root, "3", item)
        manifest = json.loads(open(os.path.join(folder, ckpt_lib.MANIFEST)).read())
        listed = manifest["files"]
        # Every file orbax wrote into the item, except its own commit marker (written after the manifest).
        assert sorted(listed) == [f for f in _files(folder) if f not in (ckpt_lib.MANIFEST, "commit_success.txt")]
        for rel, (size, digest) in listed.items():
            data = open(os.path.join(folder, rel), "rb").read()
            assert size == len(data) and digest == hashlib.sha256(data).hexdigest(), rel
    mesh = jax.make_mesh((8,), ("data",), devices=jax.devices()[:8])
    with Checkpointer(root) as ck:
        for step in (1, 2, 3):
            ck.verify(step)
            state, meta = ck.restore(step, abstract_state=_abstract(mesh))
            _assert_same(state, _host(step))
            assert meta == {"step": step}
        assert state["w"].sharding == NamedSharding(mesh, P("data"))


def test_sync_save_is_sealed_too(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(4, {k: jnp.asarray(v) for k, v in _host(4).items()})
        ck.verify(4)
        state, _ = ck.restore(4, abstract_state=_abstract())
    _assert_same(state, _host(4))


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damaged_step_is_refused_and_resume_falls_back(saved, tmp_path, caplog, kind):
    root = _copy(saved, tmp_path)
    touched = _corrupt(os.path.join(root, "3"), kind)
    ck = Checkpointer(root, keep=None)
    assert ck.all_steps() == [1, 2, 3]  # orbax still lists it: only the manifest tells
    with pytest.raises(CorruptCheckpointError) as e:
        ck.restore(3, abstract_state=_abstract())
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint step 3 " in msg and touched.split("/")[-1] in msg, msg
    assert e.value.step == 3 and isinstance(e.value, ValueError)
    if kind in ("flipped_array", "truncated_array"):
        # The damage matters: read without the check, step 3 either fails or is not what was saved.
        try:
            state, _ = ck.restore(3, abstract_state=_abstract(), verify=False)
        except Exception:  # noqa: BLE001 - any read failure shows the damage too
            pass
        else:
            assert any(not np.array_equal(np.asarray(state[k]), v) for k, v in _host(3).items())

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        step, state, meta = ck.restore_latest_good(abstract_state=_abstract())
    assert step == 2 and meta == {"step": 2}
    _assert_same(state, _host(2))
    lines = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "checkpoint step 3 " in lines[0] and "resuming from step 2" in lines[0]
    # Moved aside, so the resumed run can save step 3 again.
    assert ck.all_steps() == [1, 2] and os.path.isdir(os.path.join(root, "corrupt", "3"))
    ck.save(3, {k: jnp.asarray(v) for k, v in _host(33).items()}, force=True)
    ck.close()
    with Checkpointer(root) as ck:
        assert ck.all_steps() == [1, 2, 3]
        _assert_same(ck.restore(3, abstract_state=_abstract())[0], _host(33))


def test_no_good_step_is_a_clear_error_and_nothing_moves(saved, tmp_path):
    root = _copy(saved, tmp_path)
    for step, kind in zip((1, 2, 3), ("truncated_metadata", "flipped_array", "missing_manifest")):
        _corrupt(os.path.join(root, str(step)), kind)
    with Checkpointer(root) as ck:
        with pytest.raises(ckpt_lib.NoGoodCheckpointError,
                           match=r"no usable checkpoint in .*every step \(\[1, 2, 3\]\) is damaged"):
            ck.restore_latest_good(abstract_state=_abstract())
        assert ck.all_steps() == [1, 2, 3]
    assert not os.path.exists(os.path.join(root, "corrupt"))


def test_manifest_paths_never_leave_the_item(saved, tmp_path):
    root = _copy(saved, tmp_path)
    path = os.path.join(root, "3", "meta", ckpt_lib.MANIFEST)
    manifest = json.loads(open(path).read())
    secret = tmp_path / "outside.txt"
    secret.write_bytes(b"x")
    manifest["files"]["../../../outside.txt"] = [1, hashlib.sha256(b"x").hexdigest()]
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match=r"meta/sha256.json: bad entry '\.\./\.\./\.\./outside.txt'"):
        ckpt_lib.verify_step(root, 3)
    open(path, "w").write("{not json")
    with pytest.raises(CorruptCheckpointError, match="meta/sha256.json is unreadable"):
        ckpt_lib.verify_step(root, 3)


def test_run_readers_refuse_a_damaged_step(saved, tmp_path):
    """scene3d.core.runs (export, sampling, evaluation) verifies too, naming the step; no silent fallback."""
    workdir = tmp_path / "run"
    os.makedirs(workdir)
    os.rename(_copy(saved, tmp_path), workdir / "checkpoints")
    _corrupt(os.path.join(workdir, "checkpoints", "3"), "flipped_array")
    with pytest.raises(CorruptCheckpointError, match="checkpoint step 3 .* does not match its SHA-256"):
        runs.restore_variables(workdir, {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)})  # checked first


def test_step_without_any_manifest_is_a_legacy_step_restored_with_a_warning(saved, tmp_path, caplog):
    """A step written before checkpoints carried checksums has no manifest in any item: it restores (unverified,
    with a warning) instead of being called damaged; one missing manifest among present ones stays damage."""
    root = _copy(saved, tmp_path)
    for r, _, fs in os.walk(os.path.join(root, "3")):
        for f in fs:
            if f == ckpt_lib.MANIFEST:
                os.remove(os.path.join(r, f))
    with Checkpointer(root) as ck, caplog.at_level(logging.WARNING):
        state, meta = ck.restore(3, abstract_state=_abstract())
    _assert_same(state, _host(3))
    assert any("before checkpoints carried checksums" in r.getMessage() for r in caplog.records)
    _corrupt(os.path.join(root, "2"), "missing_manifest")
    with Checkpointer(root) as ck, pytest.raises(CorruptCheckpointError, match="state/sha256.json is missing"):
        ck.verify(2)
