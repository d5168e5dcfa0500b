"""The one conversion engine: a table of entries (official keys <-> our variable paths, a transform kind, the
layer slice) applied in both directions, a report of what an import did, and state_dict file IO.

- :class:`Kind`: one layout transform, written once per direction: ``to_official(arrays, xp)`` (our arrays ->
  official tensors; ``xp`` is numpy, or ``jax.numpy`` when traced for shapes) and ``to_ours(tensors, shapes)``
  (numpy, exact). Built in: :data:`COPY`, :data:`LINEAR` (kernel (in, out) <-> weight (out, in)), :data:`CONV`
  (channels-last kernel (*k, in, out) <-> torch (out, in, *k)), :data:`CONV1X1` (a dense kernel <-> a 1x1 conv),
  :data:`ROWS` / :data:`ROWS_BIAS` (several kernels fused row-wise, e.g. qkv), :func:`heads` / :func:`heads_bias`
  (fused per head), :func:`patch` (patch-embedding kernel <-> Conv2d), :func:`reshape`.
- :class:`Entry`: official keys <-> our paths, with a kind and an ``index`` into the leading (stacked 'layers')
  axes of every path: per-layer official tensors are stacked into / sliced out of our scanned variables.
  :func:`entry`, :func:`linear`, :func:`norm`, :func:`fused` build the common ones.
- :class:`Layout`: a table for one model class plus what the files look like around it (key prefix, keys read but
  unused, renamed legacy keys, the nnx variables it covers). ``export`` / ``shapes`` / ``to_state`` /
  ``import_into`` / ``build`` are the same for every layout; a layout module is mostly its ``table``.
- :class:`Report`: consumed keys, ignored keys (key -> reason), variables the file did not provide
  (``initialised``), tensors an export needs back for a bit-exact round trip (``passthrough``). Missing keys, shape
  mismatches and unexpected keys are collected together and raised as one ValueError naming every key.
- Files: :func:`load_state_dict` (safetensors, torch ``.pt/.pth/.ckpt/.bin`` (a Lightning ``state_dict``), or a
  folder of shards) and :func:`save_safetensors` (atomic, through ``scene3d.core.io``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.core import io

Path = tuple  # a path into nnx.to_pure_dict(state): strings (attributes) and ints (list items)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


# ---------------------------------------------------------------------------------------------------- kinds


@dataclasses.dataclass(frozen=True)
class Kind:
    """A layout transform: ``to_official(arrays, xp) -> tensors``; ``to_ours(tensors, shapes) -> arrays`` with
    ``shapes`` our (per-layer) shapes."""
    name: str
    to_official: Callable[[Sequence[Any], Any], Sequence[Any]]
    to_ours: Callable[[Sequence[np.ndarray], Sequence[tuple]], Sequence[np.ndarray]]


def _split_at(t: np.ndarray, sizes: Sequence[int], axis: int = 0) -> list[np.ndarray]:
    return np.split(t, np.cumsum(sizes)[:-1], axis=axis)


COPY = Kind("copy", lambda a, xp: list(a), lambda t, s: [x.reshape(sh) for x, sh in zip(t, s)])
LINEAR = Kind("linear", lambda a, xp: [xp.swapaxes(a[0], -1, -2)], lambda t, s: [np.swapaxes(t[0], -1, -2)])
CONV = Kind("conv", lambda a, xp: [xp.transpose(a[0], (a[0].ndim - 1, a[0].ndim - 2) + tuple(range(a[0].ndim - 2)))],
            lambda t, s: [np.transpose(t[0], tuple(range(2, t[0].ndim)) + (1, 0))])
CONV1X1 = Kind("conv1x1", lambda a, xp: [xp.transpose(a[0])[:, :, None, None]], lambda t, s: [t[0][:, :, 0, 0].T])
ROWS = Kind("rows", lambda a, xp: [xp.concatenate([xp.transpose(x) for x in a], axis=0)],
            lambda t, s: [p.T for p in _split_at(t[0], [sh[-1] for sh in s])])
ROWS_BIAS = Kind("rows_bias", lambda a, xp: [xp.concatenate(list(a), axis=0)],
                 lambda t, s: _split_at(t[0], [sh[0] for sh in s]))


def reshape(official_shape: Callable[[tuple], tuple], name: str = "reshape") -> Kind:
    """Our array reshaped to ``official_shape(our shape)`` (and back to our shape)."""
    return Kind(name, lambda a, xp: [xp.reshape(a[0], official_shape(tuple(a[0].shape)))],
                lambda t, s: [t[0].reshape(s[0])])


def patch(channels: int) -> Kind:
    """A patch-embedding kernel (p * p * C, D), rows ordered (py, px, c) <-> torch Conv2d weight (D, C, p, p)."""
    def to_official(a, xp):
        k = a[0]
        p = math.isqrt(k.shape[0] // channels)
        return [xp.transpose(xp.reshape(k, (p, p, channels, k.shape[-1])), (3, 2, 0, 1))]

    return Kind(f"patch{channels}", to_official, lambda t, s: [np.transpose(t[0], (2, 3, 1, 0)).reshape(s[0])])


def heads(n: int) -> Kind:
    """Kernels (in, n * d) each, fused per head: weight rows ordered (head, part, d) (GPT-style c_qkv)."""
    def to_official(a, xp):
        st = xp.stack([xp.reshape(xp.transpose(x), (n, -1, x.shape[0])) for x in a], axis=1)
        return [xp.reshape(st, (-1, st.shape[-1]))]

    def to_ours(t, s):
        r = t[0].reshape(n, len(s), -1, t[0].shape[-1])
        return [r[:, j].reshape(-1, t[0].shape[-1]).T for j in range(len(s))]

    return Kind(f"heads{n}", to_official, to_ours)


def heads_bias(n: int) -> Kind:
    """The biases of :func:`heads`."""
    return Kind(f"heads{n}_bias", lambda a, xp: [xp.reshape(xp.stack([xp.reshape(x, (n, -1)) for x in a], 1), (-1,))],
                lambda t, s: [t[0].reshape(n, len(s), -1)[:, j].reshape(-1) for j in range(len(s))])


# ---------------------------------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Entry:
    """Official ``keys`` <-> our ``paths`` through ``kind``. ``index``: the slice of the leading (stacked) axes of
    every path this entry holds (``()``: the whole array). ``optional``: an import accepts a file without these
    keys (the variables keep the model's values, zeros for an abstract model). An entry without paths is a
    tensor the model computes (e.g. a fixed table): exported from ``kind.to_official([], xp)``, checked on import
    by ``kind.to_ours`` (which raises ValueError on a mismatch) and kept in the report's ``passthrough``."""
    keys: tuple[str, ...]
    paths: tuple[Path, ...]
    kind: Kind = COPY
    index: tuple[int, ...] = ()
    optional: bool = False


def entry(key: str, path: Path, kind: Kind = COPY, index: tuple[int, ...] = (), optional: bool = False) -> Entry:
    return Entry((key,), (tuple(path),), kind, tuple(index), optional)


def linear(key: str, path: Path, index: tuple[int, ...] = (), bias: bool = True, kind: Kind = LINEAR) -> list[Entry]:
    """``key.weight`` <-> ``path/kernel`` (``kind``, default :data:`LINEAR`) and ``key.bias`` <-> ``path/bias``."""
    out = [entry(key + ".weight", tuple(path) + ("kernel",), kind, index)]
    if bias:
        out.append(entry(key + ".bias", tuple(path) + ("bias",), COPY, index))
    return out


def norm(key: str, path: Path, index: tuple[int, ...] = (), bias: bool = True) -> list[Entry]:
    """``key.weight`` <-> ``path/scale`` and ``key.bias`` <-> ``path/bias``."""
    out = [entry(key + ".weight", tuple(path) + ("scale",), COPY, index)]
    if bias:
        out.append(entry(key + ".bias", tuple(path) + ("bias",), COPY, index))
    return out


def fused(key: str, path: Path, parts: Sequence[str], index: tuple[int, ...] = (), bias: bool = True,
          num_heads: int | None = None) -> list[Entry]:
    """One fused official linear (``key.weight`` / ``key.bias``) <-> ``path/<part>/kernel`` / ``bias`` per part:
    rows concatenated part after part, or interleaved per head when ``num_heads`` is given."""
    w, b = (ROWS, ROWS_BIAS) if num_heads is None else (heads(num_heads), heads_bias(num_heads))
    path = tuple(path)
    out = [Entry((key + ".weight",), tuple(path + (p, "kernel") for p in parts), w, tuple(index))]
    if bias:
        out.append(Entry((key + ".bias",), tuple(path + (p, "bias") for p in parts), b, tuple(index)))
    return out


def path_name(path: Path) -> str:
    return "/".join(map(str, path))


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


def is_abstract(tree) -> bool:
    """Whether any leaf is a ``jax.ShapeDtypeStruct`` (an ``nnx.eval_shape`` model's state)."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def _floating(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def to_numpy(x) -> np.ndarray:
    """A numpy array of a jax / numpy array or torch tensor (without importing torch); floating -> float32, the
    dtype torch files store (bfloat16 has no numpy dtype); other dtypes kept."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    a = np.asarray(jax.device_get(x))
    if a.dtype.kind == "V" or _floating(a.dtype):
        a = a.astype(np.float32)
    return a


def _take(a, index: tuple[int, ...]):
    return a[index] if index else a


def check_table(table: Sequence[Entry], flat: Mapping[Path, Any], what: str, complete: bool = True) -> None:
    """Every table path is a variable of ``flat`` and (``complete``: an import) every variable is covered by the
    table (ValueError otherwise)."""
    paths = {p for e in table for p in e.paths}
    missing, extra = sorted(paths - set(flat), key=str), sorted(set(flat) - paths, key=str) if complete else []
    if missing or extra:
        raise ValueError(f"the state does not match {what}: the table's variables "
                         f"{[path_name(p) for p in missing][:20]} are missing from it, its variables "
                         f"{[path_name(p) for p in extra][:20]} have no official tensor")


def to_official(table: Sequence[Entry], flat: Mapping[Path, Any], xp=np) -> dict[str, Any]:
    """{official key: tensor} of our variables ``flat`` ({path: array})."""
    out = {}
    for e in table:
        tensors = e.kind.to_official([_take(flat[p], e.index) for p in e.paths], xp)
        if len(tensors) != len(e.keys):
            raise ValueError(f"conversion kind {e.kind.name!r} gave {len(tensors)} tensors for keys {e.keys}")
        out.update(zip(e.keys, tensors))
    return out


def export(table: Sequence[Entry], flat: Mapping[Path, Any]) -> dict[str, Any]:
    """:func:`to_official` as numpy arrays (floating as float32); an abstract ``flat`` (ShapeDtypeStructs) gives
    {key: ShapeDtypeStruct} without allocating anything."""
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values()):
        structs = {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat.items()}
        out = jax.eval_shape(lambda f: to_official(table, f, jnp), structs)
        return {k: jax.ShapeDtypeStruct(v.shape, jnp.float32 if _floating(v.dtype) else v.dtype)
                for k, v in out.items()}
    arrays = {p: to_numpy(v) for p, v in flat.items()}
    return {k: np.ascontiguousarray(to_numpy(v)) for k, v in to_official(table, arrays, np).items()}


def shapes(table: Sequence[Entry], flat: Mapping[Path, Any]) -> dict[str, tuple[int, ...]]:
    """{official key: shape} for variables of ``flat``'s shapes (nothing allocated)."""
    structs = {p: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for p, v in flat.items()}
    return {k: tuple(v.shape) for k, v in export(table, structs).items()}


# ---------------------------------------------------------------------------------------------------- import


@dataclasses.dataclass
class Report:
    """What an import did: consumed official keys, ignored ones (key -> reason), variables the file did not
    provide (official key -> how they were set), tensors to pass back to an export for a bit-exact round trip
    (``passthrough``, keys without the prefix) and the number of legacy key names renamed."""
    consumed: list[str]
    ignored: dict[str, str]
    prefix: str = ""
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    passthrough: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    renamed: int = 0

    @property
    def ignored_tensors(self) -> dict[str, np.ndarray]:
        """The ignored tensors kept for the export (another name for ``passthrough``)."""
        return self.passthrough

    def summary(self) -> str:
        prefix = f" (prefix {self.prefix!r})" if self.prefix else ""
        out = f"imported {len(self.consumed)} tensors{prefix}; ignored {len(self.ignored)}"
        if self.ignored:
            items = sorted(self.ignored.items())
            out += ": " + ", ".join(f"{k} ({r})" for k, r in items[:5]) + (", ..." if len(items) > 5 else "")
        if self.initialised:
            out += "; initialised: " + ", ".join(f"{k} ({r})" for k, r in self.initialised.items())
        return out


def problems(expected: Mapping[str, tuple], got: Mapping[str, Any], *, optional: Iterable[str] = (),
             allowed: Callable[[str], bool] = lambda k: False, prefix: str = "") -> tuple[list, list, list]:
    """(missing, shape mismatches, unexpected) of a state_dict ``got`` (keys without ``prefix``) against the
    ``expected`` {key: shape}; ``optional`` keys may be absent, ``allowed(key)`` unknown keys are not unexpected.
    Each is a list of readable strings with the full keys."""
    optional = set(optional)
    missing = [f"{prefix}{k} (expected shape {s})" for k, s in expected.items() if k not in got and k not in optional]
    bad = [f"{prefix}{k}: expected {s}, got {tuple(np.shape(got[k]))}" for k, s in expected.items()
           if k in got and tuple(np.shape(got[k])) != tuple(s)]
    unexpected = [prefix + k for k in got if k not in expected and not allowed(k)]
    return missing, bad, unexpected


def raise_problems(name: str, what: str, missing: list, bad: list, unexpected: list, *, hint: str = "") -> None:
    """One ValueError naming every missing key (with its expected shape), shape mismatch and unexpected key."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys for this {what}: " + ", ".join(missing[:40])
                     + (", ..." if len(missing) > 40 else ""))
    if bad:
        parts.append("shape mismatch for " + ", ".join(bad[:40]) + (", ..." if len(bad) > 40 else "")
                     + (f" ({hint})" if hint else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (this {what} does not use: {sorted(unexpected)[:40]}; "
                     "pass strict=False to ignore them)")
    if parts:
        raise ValueError(f"{name}: " + "; ".join(parts))


def from_official(table: Sequence[Entry], sd: Mapping[str, Any], targets: Mapping[Path, Any], *,
                  name: str = "state_dict", prefix: str = "") -> tuple[dict[Path, np.ndarray], list[str], dict]:
    """Our arrays from an official state_dict ``sd`` (keys ``prefix + key``; checked beforehand): ({path: numpy
    array of the target's shape}, absent optional keys, {key: tensor} of the computed (path-less) entries).

    ``targets``: {path: current value or ShapeDtypeStruct}; stacked variables are assembled slice by slice, the
    slices of absent optional entries start from the current value (zeros when abstract).
    """
    values: dict[Path, np.ndarray] = {}
    absent, computed = [], {}
    keep = {p for e in table if any(prefix + k not in sd for k in e.keys) for p in e.paths}

    def start(p):
        if p not in values:
            t = targets[p]
            dtype = np.float32 if _floating(t.dtype) else t.dtype
            values[p] = (np.array(to_numpy(t), dtype=dtype) if p in keep and not isinstance(t, jax.ShapeDtypeStruct)
                         else np.zeros(t.shape, dtype))
        return values[p]

    for e in table:
        if any(prefix + k not in sd for k in e.keys):
            absent += [prefix + k for k in e.keys]
            for p in e.paths:
                start(p)
            continue
        tensors = [to_numpy(sd[prefix + k]) for k in e.keys]
        try:
            arrays = e.kind.to_ours(tensors, [tuple(targets[p].shape[len(e.index):]) for p in e.paths])
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        if not e.paths:
            computed.update(zip(e.keys, tensors))
        for p, a in zip(e.paths, arrays):
            start(p)[e.index] = a
    return values, absent, computed


# ---------------------------------------------------------------------------------------------------- layouts


class Layout:
    """The table of one model class and the shape of its files; the methods are the same for every layout.

    Class attributes: ``name`` (registry name: 'official', 'torch_port'); ``what`` (in messages: "this {what}");
    ``prefix`` (key prefix of the files: written by ``export``, found on import from ``anchor`` (default: the
    first key of the table) and otherwise assumed); ``anchor_required`` (a file without the anchor key is not of
    this layout); ``ignore`` ({relative key prefix: reason}: read, reported as ignored); ``passthrough`` (keep the
    ignored tensors in the report so that an export writes them back); ``strict`` (default for unknown keys);
    ``renames`` (legacy key fragments (old, new), replaced in '.'-led relative keys before matching);
    ``variables`` (the nnx filter of the state it converts); ``hint`` (added to shape-mismatch errors).
    """
    name = "official"
    what = "model"
    prefix = ""
    anchor: str | None = None
    anchor_required = False
    ignore: Mapping[str, str] = {}
    passthrough = False
    strict = True
    renames: tuple[tuple[str, str], ...] = ()
    variables: Any = nnx.Param
    hint = ""

    # -- per layout
    def table(self, model) -> list[Entry]:
        raise NotImplementedError

    def validate(self, keys: Sequence[str], name: str) -> None:
        """Layout-specific checks of a file's (relative, renamed) keys before matching."""

    def to_state_dict(self, model, *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The file an export of a training run writes (``extra``: passthrough tensors of an earlier import)."""
        return self.export(model, extra=extra)

    # -- the same for every layout
    def state(self, model):
        """The converted variables of a module; a State is taken as is (a new container: never changed in place)."""
        if isinstance(model, nnx.Module):
            return nnx.state(model, self.variables)
        return nnx.from_flat_state(nnx.to_flat_state(model))

    def flat(self, model) -> dict[Path, Any]:
        return flatten(nnx.to_pure_dict(self.state(model)))

    def export(self, model, state=None, *, prefix: str | None = None, table: Sequence[Entry] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Our variables (``state``: an nnx.State or its pure dict; default the model's) -> {key: numpy array},
        or {key: ShapeDtypeStruct} for an abstract model / state. ``extra``: tensors written as given (keys
        without prefix), overriding computed ones."""
        table = self.table(model) if table is None else table
        state = self.state(model) if state is None else state
        flat = flatten(nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state)
        check_table(table, flat, self.what, complete=False)
        out = export(table, flat)
        out.update(extra or {})
        prefix = self.prefix if prefix is None else prefix
        return {prefix + k: v for k, v in out.items()}

    def shapes(self, model, *, prefix: str = "", table: Sequence[Entry] | None = None) -> dict[str, tuple]:
        """{official key: shape} of ``model``'s configuration (nothing allocated)."""
        table = self.table(model) if table is None else table
        flat = self.flat(model)
        check_table(table, flat, self.what, complete=False)
        return {prefix + k: v for k, v in shapes(table, flat).items()}

    def find_prefix(self, keys: Sequence[str], table: Sequence[Entry], name: str) -> str:
        anchor = self.anchor or table[0].keys[0]
        hits = sorted({k[:-len(anchor)] for k in keys if k.endswith(anchor)
                       and (len(k) == len(anchor) or k[-len(anchor) - 1] == ".")})
        if len(hits) > 1:
            raise ValueError(f"{name}: several {self.what} models in the state_dict (key prefixes {hits}); pass "
                             "prefix=")
        if hits:
            return hits[0]
        if self.anchor_required:
            raise ValueError(f"{name}: no key ending in {anchor!r}: not a {self.what} state_dict (first keys: "
                             f"{sorted(keys)[:8]})")
        return self.prefix

    def to_state(self, model, state_dict: Mapping[str, Any], *, prefix: str | None = None,
                 strict: bool | None = None, partial: bool = False, name: str = "state_dict"):
        """An official state_dict -> (the nnx.State of ``model``'s converted variables holding its values, Report).

        ``model``: a module (concrete or ``nnx.eval_shape``) or its State. Missing keys, shape mismatches and
        (``strict``) unknown keys raise one ValueError naming them all; ``partial``: missing keys leave the
        model's values. Values take each variable's dtype and sharding.
        """
        strict = self.strict if strict is None else strict
        table = self.table(model)
        state = self.state(model)
        pure = nnx.to_pure_dict(state)
        flat = flatten(pure)
        check_table(table, flat, self.what)
        keys = list(state_dict)
        prefix = self.find_prefix(keys, table, name) if prefix is None else prefix
        ignored = {k: f"outside the key prefix {prefix!r}" for k in keys if not k.startswith(prefix)}
        sd, renamed = {}, 0
        for k, v in state_dict.items():
            if k.startswith(prefix):
                rel = "." + k[len(prefix):]
                for old, new in self.renames:
                    if old in rel:
                        rel, renamed = rel.replace(old, new), renamed + 1
                sd[rel[1:]] = v
        self.validate(list(sd), name)
        expected = shapes(table, flat)
        optional = {k for e in table if e.optional or partial for k in e.keys}
        skip = lambda k: k.startswith(tuple(self.ignore))  # noqa: E731
        missing, bad, unexpected = problems(expected, sd, optional=optional, allowed=skip, prefix=prefix)
        raise_problems(name, f"{self.what} configuration", missing, bad, unexpected if strict else [],
                       hint=self.hint)
        values, absent, computed = from_official(table, sd, flat, name=name)
        passthrough = dict(computed)
        for k in sd:
            if k in expected:
                continue
            reason = next((r for p, r in self.ignore.items() if k.startswith(p)), None)
            ignored[prefix + k] = reason or f"not used by this {self.what} configuration"
            if self.passthrough:
                passthrough[k] = to_numpy(sd[k])
        initialised = {k: "absent from the state_dict: " + ("zeros" if is_abstract(pure) else "the model's value")
                       for k in absent}
        for p, v in values.items():
            t = flat[p]
            sharding = getattr(t, "sharding", None)
            arr = jnp.asarray(v, dtype=t.dtype)
            set_path(pure, p, jax.device_put(arr, sharding) if sharding is not None else arr)
        nnx.replace_by_pure_dict(state, pure)
        consumed = sorted(prefix + k for k in expected if k in sd)
        return state, Report(consumed=consumed, ignored=ignored, prefix=prefix, initialised=initialised,
                             passthrough=passthrough, renamed=renamed)

    def import_into(self, model: nnx.Module, source, **kwargs) -> Report:
        """Load a state_dict (a mapping or a file) into ``model`` in place; returns the report."""
        sd, name = read(source)
        state, report = self.to_state(model, sd, name=name, **kwargs)
        nnx.update(model, state)
        return report

    def build(self, make: Callable[[], nnx.Module], weights, **kwargs):
        """(model, Report): ``make()`` built abstractly (``nnx.eval_shape``: no random init computed), holding the
        imported ``weights`` (a mapping or a file); its other variables must not need values."""
        abstract = nnx.eval_shape(make)
        sd, name = read(weights)
        state, report = self.to_state(abstract, sd, name=name, **kwargs)
        graphdef, _, rest = nnx.split(abstract, self.variables, ...)
        left = [path_name(p) for p, v in flatten(nnx.to_pure_dict(rest)).items() if isinstance(v, jax.ShapeDtypeStruct)]
        if left:
            raise ValueError(f"{name}: {self.what} has variables this layout does not provide: {left[:10]}")
        return nnx.merge(graphdef, state, rest), report


# ---------------------------------------------------------------------------------------------------- files


def read(source) -> tuple[Mapping[str, Any], str]:
    """(state_dict, name for messages) of a mapping or a file path."""
    if isinstance(source, Mapping):
        return source, "state_dict"
    return load_state_dict(source), os.fspath(source)


def load_state_dict(path: str | os.PathLike, *, prefix: str | None = None) -> dict[str, np.ndarray]:
    """A safetensors file, a torch checkpoint (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin``; the ``state_dict`` entry
    of a dict that has one, as Lightning writes) or a folder of them (sharded checkpoints) -> {key: numpy array}.

    Floating tensors come back as float32 (bfloat16 has no numpy dtype); non-tensor entries are dropped.
    ``prefix``: keep only the keys starting with it (keys unchanged).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        names = names or sorted(f for f in os.listdir(path) if re.fullmatch(r"pytorch_model.*\.bin", f))
        if not names:
            raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model*.bin files in the folder")
        sd = {}
        for f in names:
            sd.update(load_state_dict(os.path.join(path, f)))
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"state_dict file {path!r} not found")
    elif path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="pt" if _has_bfloat16(path) else "np") as f:
            sd = {k: to_numpy(f.get_tensor(k)) for k in f.keys()}
    elif path.endswith(TORCH_SUFFIXES):
        import torch
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        if not isinstance(sd, Mapping):
            raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(sd).__name__}")
        sd = {k: to_numpy(v) for k, v in sd.items() if hasattr(v, "numpy")}
    else:
        raise ValueError(f"{path}: unknown state_dict format (expected .safetensors or one of {TORCH_SUFFIXES})")
    if prefix is not None:
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _has_bfloat16(path: str) -> bool:
    """Whether a safetensors file holds bfloat16 tensors (numpy cannot read those; torch can)."""
    import json
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values())


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write {key: array} to a safetensors file atomically (``scene3d.core.io.atomic_write``)."""
    from safetensors.numpy import save_file
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    io.atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta or None))
