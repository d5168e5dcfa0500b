"""Meshes and logical-axis sharding.

Every parameter is created with logical axis names (``param_init(init, names)``) and every large activation is
annotated with ``constrain(x, names)``. One rules table (``config.sharding.rules``) maps logical names to mesh
axes. Mesh axes that do not divide a dimension are dropped for that dimension, so tiny configs run on any mesh.

Outside ``use_mesh(...)`` every annotation is a no-op, so modules run unchanged on a single device.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# We resolve shardings ourselves (eval_shape -> jit(init, out_shardings)); flax must not shard at creation.
# The flag is per thread: ``create_sharded_model`` sets it again for runs started from other threads.
nnx.use_eager_sharding(False)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis vocabulary. Parameters: embed, mlp, heads, kv (head dim), vocab, patch (patch input features),
# cond (conditioning width), latent (latent channels), conv_in/conv_out, norm (scales/biases of norms), layers
# (the stacked axis of scanned layers), queries (learned query tokens). Activations: batch, length, kv_length,
# views, act_embed, act_mlp, act_heads, act_kv, height, width, channels.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("cond", None),
    ("latent", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("norm", None),
    ("layers", None),
    ("queries", None),
    ("length", None),
    ("kv_length", None),
    ("views", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("height", None),
    ("width", None),
    ("channels", None),
)


class _Context(threading.local):
    def __init__(self):
        self.mesh: Mesh | None = None
        self.rules: dict[str, Any] = dict(DEFAULT_RULES)


_CTX = _Context()


def make_mesh(shape: Sequence[int] | dict, axis_names: Sequence[str] = MESH_AXES, devices=None) -> Mesh:
    """Mesh over all (or the given) devices. ``shape`` may contain one -1, filled with the remaining devices.

    ``shape`` may also be a dict {axis_name: size} (the config's ``mesh`` field).
    """
    if isinstance(shape, dict) or hasattr(shape, "items"):
        axis_names = tuple(shape.keys())
        shape = tuple(int(v) for v in shape.values())
    shape = [int(s) for s in shape]
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh shape {shape} does not divide the {n} available devices")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"mesh shape {dict(zip(axis_names, shape))} needs {math.prod(shape)} devices, have {n}")
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} and axis names {axis_names} differ in length")
    return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def rules_from_config(rules: Iterable | dict | None) -> dict[str, Any]:
    if rules is None:
        return dict(DEFAULT_RULES)
    if hasattr(rules, "items"):
        out = dict(rules.items())
    else:
        out = {k: v for k, v in rules}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items()}


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules=None):
    """Activate a mesh and a rules table for ``constrain`` and ``state_shardings``."""
    old_mesh, old_rules = _CTX.mesh, _CTX.rules
    _CTX.mesh = mesh
    _CTX.rules = rules_from_config(rules) if rules is not None else old_rules
    try:
        if mesh is not None:
            with jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else contextlib.nullcontext():
                yield mesh
        else:
            yield mesh
    finally:
        _CTX.mesh, _CTX.rules = old_mesh, old_rules


def current_mesh() -> Mesh | None:
    return _CTX.mesh


def current_rules() -> dict[str, Any]:
    return _CTX.rules


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                    rules: dict | None = None) -> PartitionSpec:
    """Map logical names to a PartitionSpec. Unknown names raise; mesh axes that don't divide a dim are dropped,
    and a mesh axis is used at most once per spec."""
    if names is None:
        return PartitionSpec()
    rules = _CTX.rules if rules is None else rules
    mesh = _CTX.mesh if mesh is None else mesh
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis name {name!r} has no entry in the sharding rules table "
                           f"(known: {sorted(rules)})")
        target = rules[name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        kept = []
        size = None if shape is None else int(shape[i])
        prod = 1
        for ax in axes:
            if ax in used or (mesh is not None and ax not in mesh.shape):
                continue
            ax_size = mesh.shape[ax] if mesh is not None else 1
            if size is not None and size % (prod * ax_size):
                continue
            kept.append(ax)
            prod *= ax_size
        used.update(kept)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return PartitionSpec(*out)


def param_init(init: Callable, names: Sequence[str | None]) -> Callable:
    """Wrap an initializer so the created ``nnx.Param`` carries logical axis names."""
    return nnx.with_partitioning(init, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotate an activation with logical axis names (no-op without an active mesh)."""
    mesh = _CTX.mesh
    if mesh is None or mesh.size == 1:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
    spec = logical_to_spec(names, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _var_names(v: nnx.Variable):
    md = v.get_metadata()
    return md.get("out_sharding") or md.get("sharding_names") or md.get("sharding")


def state_shardings(state, mesh: Mesh | None = None, rules: dict | None = None):
    """NamedShardings for an (abstract) nnx.State, from each variable's logical names."""
    mesh = _CTX.mesh if mesh is None else mesh
    rules = _CTX.rules if rules is None else rules

    def f(v):
        if isinstance(v, nnx.Variable):
            names = _var_names(v)
            shape = v.get_value().shape if hasattr(v, "get_value") else v.value.shape
            spec = logical_to_spec(names, shape, mesh, rules) if names else PartitionSpec()
            return v.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(f, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh | None = None) -> NamedSharding:
    mesh = _CTX.mesh if mesh is None else mesh
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(ndim: int, mesh: Mesh | None = None, rules: dict | None = None, shape=None) -> NamedSharding:
    """Sharding of a batch array: leading axis on the 'batch' rule, the rest replicated."""
    mesh = _CTX.mesh if mesh is None else mesh
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), shape, mesh, rules)
    return NamedSharding(mesh, spec)


def create_sharded_model(constructor: Callable[[], nnx.Module], mesh: Mesh | None = None, rules=None):
    """Create a model with its parameters already sharded: eval_shape, then jit(init, out_shardings=...).

    ``constructor`` is a zero-argument function that builds the module (rngs included) so that it can be
    traced. Returns (graphdef, state); no parameter is ever materialised unsharded.
    """
    nnx.use_eager_sharding(False)  # per thread (see the module top)
    mesh = _CTX.mesh if mesh is None else mesh
    rules = _CTX.rules if rules is None else rules_from_config(rules)

    def init():
        return nnx.split(constructor())[1]

    graphdef, abstract_state = nnx.split(nnx.eval_shape(constructor))
    if mesh is None:
        return graphdef, jax.jit(init)()
    shardings = state_shardings(abstract_state, mesh, rules)
    with use_mesh(mesh, rules):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state


def tree_shardings_like(tree, sharding: NamedSharding):
    return jax.tree.map(lambda _: sharding, tree)


def describe(mesh: Mesh) -> str:
    return " x ".join(f"{k}={v}" for k, v in mesh.shape.items()) + f" ({mesh.size} devices, {mesh.devices.flat[0].platform})"


def local_devices_array(mesh: Mesh) -> np.ndarray:
    return mesh.devices
