"""What every PyTorch <-> NNX converter shares: reading state_dict files, writing them atomically, paths into
nested parameter dicts, and the import report.

- ``load_state_dict(path, prefix=None)``: a safetensors file, or a torch file (``.pt`` / ``.pth`` / ``.ckpt`` /
  ``.bin``; a Lightning checkpoint's ``state_dict`` entry) -> {key: numpy array}.
- ``save_safetensors(path, tensors, metadata)``: written to a temporary file beside ``path`` and renamed into place
  (``os.replace``), so ``path`` is either the complete new file or untouched.
- ``atomic_write(path, write)``: the same for any writer ``write(tmp_path)``.
- ``flatten(tree)`` / ``set_path(tree, path, value)`` / ``is_abstract(tree)``: nested dicts as {path tuple: leaf}.
- ``ImportReport``: consumed keys, ignored keys (key -> reason), initialised parameters (key -> how) and the
  ``passthrough`` tensors an export needs for a bit-exact round trip.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np

Path = tuple  # a path into nnx.to_pure_dict(state)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclasses.dataclass
class ImportReport:
    """What an import did: consumed official keys, ignored ones (key -> reason), parameters the file did not
    provide (key -> how they were set), and the tensors to pass back to the export for a bit-exact round trip
    (``passthrough``: keys as the converter's export takes them in ``extra``)."""
    consumed: list[str]
    ignored: dict[str, str]
    prefix: str = ""
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    passthrough: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def ignored_tensors(self) -> dict[str, np.ndarray]:
        """The ignored tensors kept for the export (Can3Tok's name for ``passthrough``)."""
        return self.passthrough

    def summary(self) -> str:
        prefix = f" (prefix {self.prefix!r})" if self.prefix else ""
        out = (f"imported {len(self.consumed)} tensors{prefix}; ignored {len(self.ignored)}: "
               + ", ".join(f"{k} ({r})" for k, r in sorted(self.ignored.items())))
        if self.initialised:
            out += "; initialised: " + ", ".join(f"{k} ({r})" for k, r in self.initialised.items())
        return out


# ---------------------------------------------------------------------------------------------------- trees


def flatten(tree, prefix: Path = ()) -> dict[Path, Any]:
    """A nested mapping -> {path tuple: leaf}."""
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, prefix + (k,)))
        return out
    return {prefix: tree}


def set_path(tree: dict, path: Path, value) -> None:
    """``tree[path[0]]...[path[-1]] = value`` (the intermediate dicts must exist)."""
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def path_name(path: Path) -> str:
    return "/".join(map(str, path))


def is_abstract(tree) -> bool:
    """Whether any leaf is a ``jax.ShapeDtypeStruct`` (an ``nnx.eval_shape`` model's state)."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------------- files


def load_state_dict(path: str | os.PathLike, *, prefix: str | None = None) -> dict[str, np.ndarray]:
    """A safetensors file or a torch checkpoint -> {key: numpy array}.

    Torch files: the ``state_dict`` entry of a dict that has one (Lightning), else the dict itself; tensors are
    returned as float32 (bfloat16 has no numpy dtype) and non-tensor entries dropped. ``prefix``: keep only keys
    starting with it (keys unchanged).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state_dict file {path!r} not found")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        sd = load_file(path)
    elif path.endswith(TORCH_SUFFIXES):
        import torch
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        if not isinstance(sd, Mapping):
            raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(sd).__name__}")
        sd = {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}
    else:
        raise ValueError(f"{path}: unknown state_dict format (expected .safetensors or one of {TORCH_SUFFIXES})")
    if prefix is not None:
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary path in ``path``'s folder, then rename it to ``path``; on any error the
    temporary file is removed and ``path`` is left as it was."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_numpy(x) -> np.ndarray:
    """A contiguous numpy array as safetensors stores it (bfloat16 and other non-numpy floats -> float32)."""
    a = np.asarray(jax.device_get(x))
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write {key: array} to a safetensors file atomically (see :func:`atomic_write`)."""
    from safetensors.numpy import save_file
    arrays = {k: to_numpy(v) for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta or None))
