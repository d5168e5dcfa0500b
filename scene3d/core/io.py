"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves nothing behind.

Every writer goes through a temporary file in the destination's folder (same file system), flushed and fsynced, then
``os.replace``d onto the destination. On any error (including KeyboardInterrupt) the temporary file is removed and
the destination is left as it was. The file gets the mode an ordinary ``open(path, 'w')`` would give it: an existing
file keeps its mode, a new one gets 0o666 minus the umask (``mkstemp`` alone would make it 0o600).

- ``atomic_write(path, write)``: ``write(tmp_path)`` produces the file (for libraries that take a file name:
  safetensors, ``np.savez``, PIL, imageio).
- ``write_bytes(path, data)``: bytes or an iterable of bytes-like chunks.
- ``write_text(path, text)`` / ``write_json(path, obj, **json_kwargs)``.

Bounded array reads, the other direction: ``read_npy(path)`` / ``read_npz(path)`` parse the ``.npy`` header
themselves and check the declared shape against the bytes the file (or zip member) actually holds *before*
allocating, so a crafted header cannot make a reader allocate terabytes; object (pickled) arrays are refused.
Every malformed file raises ``ValueError`` naming the file (and the member of an ``.npz``); a missing file is the
usual ``FileNotFoundError``.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from typing import Any, Callable, Iterable

import numpy as np

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


# ------------------------------------------------------------------------------------------ bounded array reads

_NPY_ERRORS = (ValueError, EOFError, OverflowError, struct.error, zipfile.BadZipFile, zlib.error, KeyError,
               NotImplementedError, TypeError, SyntaxError)


def _npy_header(f, name: str, size: int):
    """Parse an .npy header from file object f holding `size` bytes -> (shape, fortran_order, dtype, data bytes)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays (pickled data) are not read")
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"{name}: negative dimension in shape {shape}")
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    left = size - f.tell()
    if nbytes > left:
        raise ValueError(f"{name}: truncated array: header declares shape {shape} of {dtype} = {nbytes} bytes, "
                         f"only {max(left, 0)} bytes follow")
    return tuple(int(d) for d in shape), fortran, dtype, nbytes


def _npy_array(raw: bytes, shape, fortran, dtype) -> np.ndarray:
    a = np.frombuffer(raw, dtype=dtype, count=math.prod(shape)).copy()
    return a.reshape(shape[::-1]).transpose() if fortran else a.reshape(shape)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` array, its size checked against the file before reading (see the module docstring)."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            shape, fortran, dtype, nbytes = _npy_header(f, name, size)
            return _npy_array(f.read(nbytes), shape, fortran, dtype)
        except _NPY_ERRORS as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(name) else f"{name}: not a readable .npy array ({msg})") from None


def read_npz(path: str | os.PathLike) -> dict:
    """The arrays of an ``.npz`` (name -> array, ``.npy`` members only), each member's declared size checked against
    its uncompressed size in the zip directory before reading (see the module docstring)."""
    name = os.fspath(path)
    out = {}
    try:
        with zipfile.ZipFile(name) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                where = f"{name} [{info.filename}]"
                with z.open(info) as f:
                    shape, fortran, dtype, nbytes = _npy_header(f, where, info.file_size)
                    raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise ValueError(f"{where}: truncated member: {len(raw)} of {nbytes} bytes")
                out[info.filename[:-4]] = _npy_array(raw, shape, fortran, dtype)
    except _NPY_ERRORS as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(name) else f"{name}: not a readable .npz archive ({msg})") from None
    return out
