"""Test helpers: build modules and run them under one jit (eager op-by-op dispatch compiles every op)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d.core.sharding import create_sharded_model
from tests.nn import np_ref


def build(ctor):
    """Construct ``ctor()`` under jit (no mesh) and return the module."""
    return nnx.merge(*create_sharded_model(ctor))


def run(module, *args, **kwargs):
    """module(*args, **kwargs) under jax.jit (kwargs closed over, so callables are fine)."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a, **kwargs))(state, *args)


def randomize(module, seed=0, scale=0.5):
    """Set every Param of ``module`` to fresh random values; returns them as a float64 numpy dict."""
    r = np.random.default_rng(seed)
    state = nnx.state(module, nnx.Param)
    new = jax.tree.map(lambda v: jnp.asarray(r.standard_normal(v.shape) * scale, v.dtype), state)
    nnx.update(module, new)
    return np_ref.pure(nnx.state(module, nnx.Param))
