"""Dtype names in configs ('float32', 'bfloat16', 'float16') and their JAX dtypes: the one table."""
from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str, field: str = "dtype"):
    """The JAX dtype called ``name``; a ValueError naming the config ``field`` for an unknown name."""
    if name not in DTYPES:
        raise ValueError(f"{field}: unknown dtype {name!r} (known: {sorted(DTYPES)})")
    return DTYPES[name]

