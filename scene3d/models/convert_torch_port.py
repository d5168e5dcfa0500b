"""The "torch_port" checkpoint layout: our NNX models <-> the plain-PyTorch port in ``scene3d_torch``.

Layout: a flat dict ``name -> np.ndarray`` holding every array variable of the model (``nnx.Param``, the
``Frozen`` weights of ``scene3d.nn.frozen``, any other ``nnx.Variable``), except RNG state (``nnx.RngState``).

- Name = the variable's nnx state path joined by '.' (``blocks.layers.attn.q.kernel`` ...), then:
- Stacked layers: a variable under a ``scene3d.nn.Stack``'s ``layers`` attribute carries a leading layer axis; it
  is split per layer and the layer index goes right after ``layers``: ``blocks.layers.<i>.attn.q.weight``
  (nested Stacks split one leading axis each, outermost first). ``Stack`` is the only stacked-layer scheme in
  scene3d (``nn.PerceiverProcess`` and ``models.vit`` use it too); scan=True and scan=False hold the same state.
- Leaf renames, decided by the type of the module that owns the leaf (never by shape):
  ``nnx.Linear``   kernel (in, out)                -> weight (out, in)
  ``nnx.Conv``     kernel (*spatial, in/g, out)    -> weight (out, in/g, *spatial),
                   e.g. (kh, kw, i, o) -> (o, i, kh, kw)
  ``nnx.Embed``    embedding (n, d)                -> weight (n, d)
  norms (``scene3d.nn.LayerNorm`` / ``RMSNorm``, ``nnx.LayerNorm`` / ``RMSNorm`` / ``GroupNorm``)  scale -> weight
  anything else keeps its name and array (biases, learned tokens ``pos_emb``, LayerScale ``ls1`` ...).
- Values: floating arrays as float32; other dtypes (e.g. integer buffers) keep their dtype.

These keys are exactly the ``state_dict()`` keys of the ``scene3d_torch`` modules (their attribute names mirror
the JAX modules). ``model_spec(model)`` gives the JSON-able ``{"class", "kwargs"}`` that
``scene3d_torch.build`` turns back into the torch model; a checkpoint on disk is ``FILE.safetensors`` (the
layout) plus ``FILE.json`` (the spec), see :func:`save_torch_port` and ``scene3d_torch.load``.

API: :func:`export_torch_port`, :func:`torch_port_to_state`, :func:`import_torch_port`,
:func:`torch_port_shapes`, :func:`model_spec`, :func:`save_torch_port`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from scene3d.nn.norm import LayerNorm, RMSNorm
from scene3d.nn.transformer import Stack

_NORM_TYPES = (LayerNorm, RMSNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)
_VARS = nnx.Not(nnx.RngState)


# ----------------------------------------------------------------------------------------------- path rules


def _module_types(model: nnx.Module) -> dict[tuple, nnx.Module]:
    return {tuple(p): m for p, m in nnx.iter_modules(model)}


def _stack_axes(path: tuple, modules: dict) -> list[int]:
    """Positions in ``path`` of the 'layers' keys that belong to a Stack (a leading axis each)."""
    return [i for i in range(1, len(path)) if path[i] == "layers" and isinstance(modules.get(path[:i]), Stack)]


def _rename(owner, leaf: str, value_ndim: int) -> tuple[str, Any]:
    """(torch leaf name, fn mapping one layer's JAX array to torch layout) for ``owner.<leaf>``."""
    if isinstance(owner, nnx.Linear) and leaf == "kernel":
        return "weight", lambda a: np.swapaxes(a, -1, -2)
    if isinstance(owner, nnx.Conv) and not isinstance(owner, nnx.ConvTranspose) and leaf == "kernel":
        n = value_ndim
        return "weight", lambda a: np.transpose(a, (n - 1, n - 2) + tuple(range(n - 2)))
    if isinstance(owner, nnx.ConvTranspose) and leaf == "kernel":
        raise ValueError("torch_port: nnx.ConvTranspose kernels have no torch_port rule yet")
    if isinstance(owner, nnx.Embed) and leaf == "embedding":
        return "weight", lambda a: a
    if isinstance(owner, _NORM_TYPES) and leaf == "scale":
        return "weight", lambda a: a
    return leaf, lambda a: a


def _inverse(owner, leaf: str, torch_ndim: int):
    """Map one layer's torch array back to the JAX layout (inverse of :func:`_rename`'s fn)."""
    if isinstance(owner, nnx.Linear) and leaf == "kernel":
        return lambda a: np.swapaxes(a, -1, -2)
    if isinstance(owner, nnx.Conv) and leaf == "kernel":
        n = torch_ndim
        return lambda a: np.transpose(a, tuple(range(2, n)) + (1, 0))
    return lambda a: a


@dataclasses.dataclass
class _Entry:
    path: tuple           # nnx state path
    stack: list[int]      # positions of the stacked 'layers' keys in path
    owner: Any            # owning module (per layer)
    leaf: str             # JAX leaf name
    torch_leaf: str


def _entries(model: nnx.Module, state=None) -> Iterator[tuple[_Entry, Any]]:
    """(entry, variable) for every non-RNG variable of ``model`` (values from ``state`` if given)."""
    modules = _module_types(model)
    own = nnx.state(model, _VARS)
    st = own if state is None else state
    flat = []
    for path, var in nnx.to_flat_state(st):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if (isinstance(var, nnx.RngState) or not hasattr(value, "shape")
                or jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)):
            continue
        flat.append((tuple(path), var, value))
    if state is not None:
        want = {tuple(p) for p, _ in nnx.to_flat_state(own)}
        got = {p for p, _, _ in flat}
        if want != got:
            raise ValueError(f"torch_port: the state does not match {type(model).__name__}: missing "
                             f"{sorted('.'.join(map(str, p)) for p in want - got)[:10]}, unexpected "
                             f"{sorted('.'.join(map(str, p)) for p in got - want)[:10]}")
    for path, var, value in flat:
        owner = modules.get(path[:-1])
        stack = _stack_axes(path, modules)
        torch_leaf, _ = _rename(owner, str(path[-1]), len(value.shape) - len(stack))
        yield _Entry(path, stack, owner, str(path[-1]), torch_leaf), var


def _names(e: _Entry, shape: tuple) -> Iterator[tuple[str, tuple]]:
    """(torch_port name, index into the stacked axes) for every per-layer slice of the variable."""
    for idx in np.ndindex(*shape[:len(e.stack)]):
        parts = [str(p) for p in e.path[:-1]]
        for pos, i in zip(reversed(e.stack), reversed(idx)):
            parts.insert(pos + 1, str(i))
        yield ".".join(parts + [e.torch_leaf]), idx


def _torch_shape(e: _Entry, shape: tuple) -> tuple:
    layer_shape = tuple(shape[len(e.stack):])
    _, fn = _rename(e.owner, e.leaf, len(layer_shape))
    return tuple(fn(np.broadcast_to(np.zeros((), np.uint8), layer_shape)).shape)


def _to_numpy(a) -> np.ndarray:
    a = np.asarray(jax.device_get(a))
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16" else a


# ----------------------------------------------------------------------------------------------- API


def torch_port_shapes(model: nnx.Module) -> dict[str, tuple]:
    """name -> torch-side shape for every entry of the layout (works on ``nnx.eval_shape`` models too)."""
    out = {}
    for e, var in _entries(model):
        shape = tuple(var.get_value().shape)
        ts = _torch_shape(e, shape)
        for name, _ in _names(e, shape):
            out[name] = ts
    return out


def export_torch_port(model: nnx.Module, state=None) -> dict[str, np.ndarray]:
    """The model's variables (or those of ``state``, an nnx.State of this model's graph) in the torch_port layout."""
    out = {}
    for e, var in _entries(model, state):
        value = _to_numpy(var.get_value() if isinstance(var, nnx.Variable) else var)
        _, fn = _rename(e.owner, e.leaf, value.ndim - len(e.stack))
        for name, idx in _names(e, value.shape):
            if name in out:
                raise ValueError(f"torch_port: two variables map to the key {name!r}")
            out[name] = np.ascontiguousarray(fn(value[idx]))
    return out


def torch_port_to_state(model: nnx.Module, state_dict, *, strict: bool = True) -> nnx.State:
    """An nnx.State (the model's non-RNG variables) holding the values of a torch_port ``state_dict``.

    ``state_dict`` maps names to numpy arrays or torch tensors. Values are cast to each variable's dtype and
    placed with its sharding. ``strict``: every key must be present and no key unexpected; otherwise missing
    keys keep the model's current value and unexpected ones are ignored. A shape mismatch is always an error.
    Errors are ValueError listing the offending keys (with expected and got shapes).
    """
    sd = {k: _as_numpy(v) for k, v in state_dict.items()}
    state = nnx.state(model, _VARS)
    expected, missing, bad = set(), [], []
    new_flat = []
    for e, var in _entries(model, state):
        cur = var.get_value()
        shape = tuple(cur.shape)
        ts = _torch_shape(e, shape)
        inv = _inverse(e.owner, e.leaf, len(ts))
        layers, complete = {}, True
        for name, idx in _names(e, shape):
            expected.add(name)
            if name not in sd:
                missing.append(name)
                complete = False
                continue
            got = tuple(sd[name].shape)
            if got != ts:
                bad.append(f"{name}: expected {ts}, got {got}")
                complete = False
                continue
            layers[idx] = inv(sd[name])
        if layers:
            if complete:
                arr = np.stack([layers[i] for i in np.ndindex(*shape[:len(e.stack)])]).reshape(shape) \
                    if e.stack else layers[()]
            else:  # partial (non-strict): start from the current values
                arr = np.array(jax.device_get(cur))
                for i, a in layers.items():
                    arr[i] = a
            arr = arr.astype(cur.dtype)
            sharding = getattr(cur, "sharding", None)
            new = jax.device_put(arr, sharding) if sharding is not None else jax.numpy.asarray(arr)
            new_flat.append((e.path, var.copy(new)))
        else:
            new_flat.append((e.path, var))
    unexpected = sorted(set(sd) - expected)
    problems = []
    if bad:
        problems.append("shape mismatches:\n  " + "\n  ".join(bad))
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {sorted(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if problems:
        raise ValueError(f"torch_port -> {type(model).__name__}: " + "\n".join(problems))
    return nnx.from_flat_state(new_flat)


def import_torch_port(model: nnx.Module, source, *, strict: bool = True) -> nnx.Module:
    """Load a torch_port dict (or a ``.safetensors`` path) into ``model`` in place; returns the model."""
    if isinstance(source, (str, os.PathLike)):
        from safetensors.numpy import load_file
        path = os.fspath(source)
        if not path.endswith(".safetensors"):
            path += ".safetensors"
        if not os.path.exists(path):
            raise ValueError(f"import_torch_port: {path} not found")
        source = load_file(path)
    nnx.update(model, torch_port_to_state(model, source, strict=strict))
    return model


def model_spec(model: nnx.Module) -> dict:
    """JSON-able ``{"class": name, "kwargs": {...}}`` that ``scene3d_torch.build`` rebuilds the model from."""
    name = type(model).__name__
    if name in ("LatentDiT", "DiT3D"):
        spec = getattr(model, "spec_kwargs", None)
        if spec is None:
            raise ValueError(f"model_spec: this {name} has no recorded spec_kwargs")
        kwargs = dict(spec)
    elif name in ("RAE3D", "ViT"):
        kwargs = dataclasses.asdict(model.config)
    else:
        raise ValueError(f"model_spec: no torch port for {name}; expected LatentDiT, DiT3D, RAE3D or ViT")
    return {"class": name, "kwargs": json.loads(json.dumps(kwargs))}


def save_torch_port(model: nnx.Module, path: str, state=None) -> tuple[str, str]:
    """Write ``FILE.safetensors`` (:func:`export_torch_port`) and ``FILE.json`` (:func:`model_spec`)."""
    from safetensors.numpy import save_file
    base = os.fspath(path)
    base = base[:-len(".safetensors")] if base.endswith(".safetensors") else base
    st, js = base + ".safetensors", base + ".json"
    save_file(export_torch_port(model, state), st)
    with open(js, "w") as f:
        json.dump(model_spec(model), f, indent=1)
    return st, js


def _as_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor, without importing torch
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)
