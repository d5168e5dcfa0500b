"""One flow-matching objective for every generator: ``FlowMatching`` owns training times, noise, x_t, the
velocity target, the loss, condition dropout and the guided sampler; the network stays outside.

Path (``scene3d.diffusion.paths``): x_t = (1 - t) x0 + t eps, t = 1 is pure noise, v = eps - x0. Times are
per example ``(B,)`` or per example and view ``(B, V)`` (drawn per chunk of ``V / num_chunks`` consecutive views
and repeated over the views of a chunk). Every method is a pure function of explicit keys: a caller splits its own
key and passes the pieces, so the order of its draws is its own.

A network predicts the velocity (``prediction='velocity'``) or the clean data (``'x'``: v = (x_t - x) / max(t,
``x_pred_t_min``)). ``loss_weighting``: 'velocity' (plain velocity MSE) or 'x0' (each element's velocity error
times t^2: the clean-data MSE |x0_hat - x0|^2 of the same prediction).

Sampling integrates from t = 1 to 0 (``sampler`` euler | heun, ``sample_steps`` on a grid shifted by
``sample_shift``) with classifier-free guidance ``v_u + cfg_scale (v_c - v_u)`` for t inside ``cfg_interval``
(everywhere when None). Guidance is off when no unconditional function is given or the scale is the number 1.

Config (``config.flow``): the field names of ``FlowMatching``; ``FlowMatching.from_config`` names a bad field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from scene3d.diffusion import guidance, paths, samplers
from scene3d.diffusion.timesteps import TimeSampler

PREDICTIONS = ("velocity", "x")
LOSS_WEIGHTINGS = ("velocity", "x0")
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def _as_dict(x) -> dict:
    if x is None:
        return {}
    return dict(x.to_dict() if hasattr(x, "to_dict") else x)


@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """Flow-matching settings (module docstring); frozen and hashable, so it can be a static jit argument.

    time_sampler: a TimeSampler or its spec ("logit_normal,shift=3"); cond_drop: probability of dropping an
    example's condition in training (for CFG); prediction, x_pred_t_min, loss_weighting: see the module docstring;
    num_chunks: per-view times come in this many chunks of consecutive views; sample_steps, sampler, sample_shift,
    cfg_scale, cfg_interval: the sampler.
    """
    time_sampler: TimeSampler = TimeSampler()
    cond_drop: float = 0.0
    prediction: str = "velocity"
    x_pred_t_min: float = 0.05
    loss_weighting: str = "velocity"
    num_chunks: int = 1
    sample_steps: int = 32
    sampler: str = "euler"
    sample_shift: float = 1.0
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] | None = None

    def __post_init__(self):
        def bad(field, what):
            raise ValueError(f"FlowMatching.{field} {what}, got {getattr(self, field)!r}")

        def number(field, kind=float):
            try:
                object.__setattr__(self, field, kind(getattr(self, field)))
            except (TypeError, ValueError):
                bad(field, f"must be a{'n integer' if kind is int else ' number'}")
            return getattr(self, field)

        try:
            object.__setattr__(self, "time_sampler", TimeSampler.from_spec(self.time_sampler))
        except ValueError as e:
            raise ValueError(f"FlowMatching.time_sampler: {e}") from None
        if not 0.0 <= number("cond_drop") <= 1.0:
            bad("cond_drop", "must be in [0, 1]")
        if self.prediction not in PREDICTIONS:
            bad("prediction", f"must be one of {PREDICTIONS}")
        if number("x_pred_t_min") < 0:
            bad("x_pred_t_min", "must be >= 0")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            bad("loss_weighting", f"must be one of {LOSS_WEIGHTINGS}")
        if number("num_chunks", int) < 1:
            bad("num_chunks", "must be >= 1")
        if number("sample_steps", int) < 1:
            bad("sample_steps", "must be >= 1")
        if self.sampler not in samplers.METHODS:
            bad("sampler", f"must be one of {samplers.METHODS}")
        if number("sample_shift") <= 0:
            bad("sample_shift", "must be > 0")
        number("cfg_scale")
        if self.cfg_interval is not None:
            try:
                lo, hi = (float(v) for v in self.cfg_interval)
            except (TypeError, ValueError):
                bad("cfg_interval", "must be None or (t_lo, t_hi)")
            if not 0.0 <= lo <= hi <= 1.0:
                bad("cfg_interval", "must satisfy 0 <= t_lo <= t_hi <= 1")
            object.__setattr__(self, "cfg_interval", (lo, hi))

    @classmethod
    def from_config(cls, flow: Mapping[str, Any] | None, *, name: str = "config.flow",
                    rename: Mapping[str, str] | None = None, **defaults) -> "FlowMatching":
        """From a config section (``config.flow``: a ConfigDict, a dict or None). ``defaults`` replace the class
        defaults for fields the section leaves out; ``rename`` maps a family's own key to a field (e.g.
        ``{'null_prob': 'cond_drop'}``). Unknown keys and bad values raise a ValueError naming ``name.field``."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad_defaults = set(defaults) - known
        if bad_defaults:
            raise ValueError(f"FlowMatching.from_config: unknown defaults {sorted(bad_defaults)}")
        given = _as_dict(flow)
        for old, new in (rename or {}).items():
            if old in given:
                if new in given:
                    raise ValueError(f"{name}: set {old} or {new}, not both")
                given[new] = given.pop(old)
        unknown = set(given) - known
        if unknown:
            raise ValueError(f"{name}: unknown keys {sorted(unknown)}; known: "
                             f"{sorted(known | set(rename or {}))}")
        try:
            return cls(**dict(defaults, **given))
        except ValueError as e:
            msg = str(e)
            raise ValueError(name + msg[len("FlowMatching"):] if msg.startswith("FlowMatching.") else
                             f"{name}: {msg}") from None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (``from_config`` of it gives this objective back)."""
        return dataclasses.asdict(self)

    # -- training ----------------------------------------------------------------------------------------------
    def sample_times(self, rng: jax.Array, batch: int, views: int | None = None, *,
                     chunks: int | None = None) -> jax.Array:
        """Training times: ``(batch,)``, or ``(batch, views)`` with one time per chunk of ``views / chunks``
        consecutive views (``chunks`` defaults to ``num_chunks``; ``chunks = views``: one time per view)."""
        if views is None:
            return self.time_sampler(rng, (batch,))
        chunks = self.num_chunks if chunks is None else int(chunks)
        if chunks < 1 or views % chunks:
            raise ValueError(f"FlowMatching: num_chunks={chunks} must divide the {views} views (one time per chunk)")
        return jnp.repeat(self.time_sampler(rng, (batch, chunks)), views // chunks, axis=1)

    def noise(self, rng: jax.Array, x0: jax.Array) -> jax.Array:
        """Standard normal noise of ``x0``'s shape (at least float32)."""
        return jax.random.normal(rng, x0.shape, jnp.promote_types(x0.dtype, jnp.float32))

    def x_t(self, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
        """(1 - t) x0 + t eps, ``t`` broadcast over the trailing axes."""
        return paths.interpolate(x0, eps, t)

    def draw(self, x0: jax.Array, rng_t: jax.Array, rng_eps: jax.Array, *, per_view: bool = False):
        """-> (t, eps, x_t) for clean data ``x0``: times from ``rng_t`` (per example, or per view along axis 1 in
        ``num_chunks`` chunks), noise from ``rng_eps``."""
        t = self.sample_times(rng_t, x0.shape[0], x0.shape[1] if per_view else None)
        eps = self.noise(rng_eps, x0)
        return t, eps, self.x_t(x0, eps, t)

    def target(self, x0: jax.Array, eps: jax.Array) -> jax.Array:
        """The velocity target eps - x0."""
        return paths.target_velocity(x0, eps)

    def velocity(self, pred: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The network output as a velocity (an x-prediction is converted)."""
        if self.prediction == "x":
            return paths.velocity_from_x0(x_t, pred, t, self.x_pred_t_min)
        return pred

    def x0(self, pred: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """The network output as a clean-data estimate."""
        return pred if self.prediction == "x" else paths.x0_from_velocity(x_t, pred, t)

    def loss(self, pred: jax.Array, x0: jax.Array, eps: jax.Array, t: jax.Array, *, mask: jax.Array | None = None,
             weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """-> (scalar loss, per-example losses (B,)): the squared velocity error of ``pred`` at x_t(x0, eps, t),
        weighted per ``loss_weighting``, averaged per example over the elements of ``mask`` (a leading part of
        x0's shape, 1 = counted), times ``weights`` (B,), then over the batch."""
        v = self.velocity(pred, self.x_t(x0, eps, t), t) if self.prediction == "x" else pred
        err = paths.squared_error(v, x0, eps, "FlowMatching.loss")
        if self.loss_weighting == "x0":
            err = err * jnp.square(paths.expand_t(t, err))
        per_example = paths.per_example_mean(err, mask, weights, "FlowMatching.loss")
        return jnp.mean(per_example), per_example

    def drop(self, rng: jax.Array, batch: int) -> jax.Array:
        """(B,) bool condition-dropout mask: True with probability ``cond_drop`` (drop that example's condition)."""
        return guidance.drop_mask(rng, batch, self.cond_drop)

    def drop_condition(self, rng: jax.Array, cond: Any, null: Any) -> Any:
        """``cond`` (a batched array or pytree) with each example replaced by ``null`` with probability
        ``cond_drop`` (``guidance.drop_condition``)."""
        return guidance.drop_condition(rng, cond, self.cond_drop, null)

    def fixed_time_losses(self, velocity_fn: ModelFn, x0: jax.Array, eps: jax.Array,
                          times: Sequence[float] = (0.25, 0.5, 0.75), *, name: str = "val_loss",
                          per_view: bool = False) -> dict[str, jax.Array]:
        """A low-variance validation curve: the plain velocity MSE of ``velocity_fn(x_t, t)`` at each fixed time
        (``{name}_t{time}``) and their mean (``name``); ``t`` is ``(B,)`` or ``(B, V)`` (``per_view``)."""
        out, vals = {}, []
        for tv in times:
            t = jnp.full(x0.shape[:2] if per_view else x0.shape[:1], tv, jnp.float32)
            x_t = self.x_t(x0, eps, t)
            vals.append(paths.velocity_loss(self.velocity(velocity_fn(x_t, t), x_t, t), x0, eps))
            out[f"{name}_t{tv}"] = vals[-1]
        out[name] = sum(vals) / len(vals)
        return out

    # -- sampling ----------------------------------------------------------------------------------------------
    def uses_guidance(self, cfg_scale=None) -> bool:
        """Whether a guided sampler mixes in the unconditional model: not for the number 1 (a traced scale
        always guides)."""
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        return isinstance(scale, jax.core.Tracer) or float(scale) != 1.0

    def sample(self, cond_fn: ModelFn, noise: jax.Array, *, uncond_fn: ModelFn | None = None,
               num_steps: int | None = None, method: str | None = None, shift: float | None = None,
               cfg_scale=None, cfg_interval: tuple[float, float] | None = None, return_trajectory: bool = False):
        """Integrate ``cond_fn(x, t)`` (network outputs, t ``(B,)``) from ``noise`` at t = 1 to t = 0.

        With ``uncond_fn`` and a scale other than 1: classifier-free guidance inside the interval. The keyword
        settings override the configured ones (None: configured). Returns x0, or (x0, trajectory)."""
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        interval = self.cfg_interval if cfg_interval is None else tuple(float(v) for v in cfg_interval)
        if self.prediction == "x":
            cond_fn = self._as_velocity(cond_fn)
            uncond_fn = None if uncond_fn is None else self._as_velocity(uncond_fn)
        model_fn = cond_fn
        if uncond_fn is not None and self.uses_guidance(scale):
            model_fn = guidance.guided(cond_fn, uncond_fn, scale, interval=interval)
        return samplers.sample(model_fn, noise, num_steps=int(num_steps or self.sample_steps),
                               method=method or self.sampler,
                               shift=self.sample_shift if shift is None else float(shift),
                               return_trajectory=return_trajectory)

    def _as_velocity(self, fn: ModelFn) -> ModelFn:
        return lambda x, t: self.velocity(fn(x, t), x, t)
