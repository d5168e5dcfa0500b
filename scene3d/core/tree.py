"""Small pytree helpers: readable key paths and flat {path: leaf} views."""
from __future__ import annotations

from typing import Any

import jax


def key_name(entry) -> str:
    """One key-path entry as a plain string (dict keys, attribute names and sequence indices alike)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path, sep: str = "/") -> str:
    return sep.join(key_name(e) for e in path)


def flatten_with_paths(tree, *, sep: str = "/", is_leaf=None) -> dict[str, Any]:
    """``{"params/layer/kernel/value": leaf, ...}``. nnx Variables flatten through their ``value``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {path_str(p, sep): x for p, x in leaves}


def nest(flat: dict[str, Any], sep: str = "/") -> dict:
    """Inverse of a flat {path: leaf} dict: nested plain dicts."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def to_pure_dict(tree) -> dict:
    """Nested plain dicts of leaves (an nnx.State or any pytree); drops the trailing ``value`` of Variables."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [key_name(e) for e in path]
        if len(names) > 1 and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
            names = names[:-1]
        flat["/".join(names) if names else "value"] = leaf
    return nest(flat)


def count_params(tree) -> int:
    return int(sum(getattr(x, "size", 0) for x in jax.tree.leaves(tree)))
