"""Architecture tables of every model family, free of jax / flax (standard library and numpy only).

One module per family: its ``VARIANTS`` table (named sizes) and, where a family has one, its config dataclass
and constructor helper. ``scene3d.models`` builds the JAX modules from them and ``scene3d_torch`` (the plain-PyTorch
port, which must not import jax) builds its modules from the same objects, so the two cannot drift apart.
"""
