"""Non-trainable variables: pretrained weights a model holds but the trainer never updates.

The trainer optimises ``nnx.Param`` only; every other variable (``Frozen`` weights of a pretrained encoder or
stage-1 tokenizer, buffers) is sharded, checkpointed and passed to the jitted step as state, receives no gradient
and has no optimiser state.
"""
from __future__ import annotations

import jax
from flax import nnx


class Frozen(nnx.Variable):
    """A parameter that the trainer does not optimise (e.g. a pretrained tokenizer's or encoder's weights)."""


def freeze(module: nnx.Module) -> nnx.Module:
    """``module`` with its ``nnx.Param`` variables turned into ``Frozen`` ones (values and metadata kept)."""
    graphdef, state = nnx.split(module)
    state = jax.tree.map(lambda v: Frozen(v.get_value(), **v.get_metadata()) if isinstance(v, nnx.Param) else v,
                         state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)
