"""scene3d.core.io: atomic writes leave either the complete new file or the old one, with ordinary permissions."""
import json
import os
import stat

import pytest

from scene3d.core import io


def test_write_bytes_text_json(tmp_path):
    io.write_bytes(tmp_path / "a.bin", [b"ab", bytearray(b"cd"), memoryview(b"ef")])
    assert (tmp_path / "a.bin").read_bytes() == b"abcdef"
    io.write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    io.write_json(tmp_path / "j.json", {"x": [1, 2]}, indent=1)
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "j.json", "t.txt"]  # no temporary file left


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, half_then_fail)
    with pytest.raises(TypeError):  # not JSON-serialisable: nothing written
        io.write_json(target, {"x": object()})
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.write_text(tmp_path / "missing" / "x.txt", "x")


def test_modes_new_file_from_umask_existing_file_kept(tmp_path):
    old = os.umask(0o027)
    try:
        io.write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    # the module reads the umask once at import; a new file gets 0o666 & ~that umask, never mkstemp's 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o666 & ~io._UMASK
    existing = tmp_path / "exe.sh"
    existing.write_text("old")
    os.chmod(existing, 0o751)
    io.write_text(existing, "new")
    assert existing.read_text() == "new" and stat.S_IMODE(os.stat(existing).st_mode) == 0o751
