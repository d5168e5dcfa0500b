"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves nothing behind.

Every writer goes through a temporary file in the destination's folder (same file system), flushed and fsynced, then
``os.replace``d onto the destination. On any error (including KeyboardInterrupt) the temporary file is removed and
the destination is left as it was. The file gets the mode an ordinary ``open(path, 'w')`` would give it: an existing
file keeps its mode, a new one gets 0o666 minus the umask (``mkstemp`` alone would make it 0o600).

- ``atomic_write(path, write)``: ``write(tmp_path)`` produces the file (for libraries that take a file name:
  safetensors, ``np.savez``, PIL, imageio).
- ``write_bytes(path, data)``: bytes or an iterable of bytes-like chunks.
- ``write_text(path, text)`` / ``write_json(path, obj, **json_kwargs)``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable

_UMASK = os.umask(0)
os.umask(_UMASK)


def _mode_for(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` with a temporary path in ``path``'s folder, then rename it onto ``path``."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the writer may have closed its handle without syncing
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview | Iterable) -> None:
    """Write ``data`` (bytes-like, or an iterable of bytes-like chunks) to ``path`` atomically."""
    chunks = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data

    def write(tmp):
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)

    atomic_write(path, write)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, obj: Any, **json_kwargs) -> None:
    """``json.dumps(obj, **json_kwargs)`` plus a newline, written atomically (nothing is written if it fails)."""
    write_text(path, json.dumps(obj, **json_kwargs) + "\n")
