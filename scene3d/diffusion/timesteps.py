"""Training-time samplers for t in [0, 1] (t = 1 is noise): uniform or logit-normal, optionally shifted.

Spec strings (the config field ``time_sampler``): ``"uniform"``, ``"logit_normal"``,
``"logit_normal,mean=0.0,std=1.0,shift=3.0"``, ``"uniform,shift=3"``; a dict/ConfigDict with keys
``kind``, ``mean``, ``std``, ``shift`` works too.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from scene3d.core.config import parse_arg

KINDS = ("uniform", "logit_normal")


def shift_time(t: jax.Array, shift: float) -> jax.Array:
    """t' = s t / (1 + (s - 1) t): s > 1 moves mass towards noise (t = 1); fixes 0 and 1; monotone."""
    if isinstance(shift, (int, float)) and shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def shift_for_dim(dim: int, base_dim: int = 4096, base_shift: float = 1.0) -> float:
    """Resolution-dependent shift (SD3): ``base_shift * sqrt(dim / base_dim)`` for a data dimension ``dim``."""
    return float(base_shift * math.sqrt(dim / base_dim))


def uniform(rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(rng, shape, dtype)


def logit_normal(rng: jax.Array, shape, mean: float = 0.0, std: float = 1.0, dtype=jnp.float32) -> jax.Array:
    """t = sigmoid(mean + std * n), n ~ N(0, 1)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape, dtype))


@dataclasses.dataclass(frozen=True)
class TimeSampler:
    """Draws training times: ``kind`` in KINDS, logit-normal ``mean``/``std``, then ``shift``."""
    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"time sampler kind {self.kind!r}; expected one of {KINDS}")
        if self.std <= 0:
            raise ValueError(f"time sampler std must be > 0, got {self.std}")
        if self.shift <= 0:
            raise ValueError(f"time sampler shift must be > 0, got {self.shift}")

    def __call__(self, rng: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if self.kind == "uniform":
            t = uniform(rng, shape, dtype)
        else:
            t = logit_normal(rng, shape, self.mean, self.std, dtype)
        return t if self.shift == 1.0 else shift_time(t, self.shift)

    @classmethod
    def from_spec(cls, spec: "str | Mapping[str, Any] | TimeSampler | None") -> "TimeSampler":
        if spec is None:
            return cls()
        if isinstance(spec, TimeSampler):
            return spec
        if isinstance(spec, str):
            kind, _, rest = spec.strip().partition(",")
            args = parse_arg(rest, mean=0.0, std=1.0, shift=1.0)
            return cls(kind=kind.strip(), **args.to_dict())
        if hasattr(spec, "items"):
            d = dict(spec.items())
            unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"time sampler spec has unknown keys {sorted(unknown)}; "
                                 "known: kind, mean, std, shift")
            return cls(**{k: (float(v) if k != "kind" else v) for k, v in d.items()})
        raise ValueError(f"time sampler spec must be a string or a dict, got {type(spec).__name__}")
