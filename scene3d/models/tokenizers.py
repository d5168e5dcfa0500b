"""The Tokenizer contract: what a stage-2 generator sees of its frozen stage-1 model.

A stage-2 model keeps its stage-1 model as a submodule (``Frozen`` variables, under the attribute its checkpoints
use: ``tokenizer`` or ``rae``). The stage-2 task talks to it only through an adapter of this module, a stateless
wrapper bound to that submodule (``adapter.bind(model.tokenizer)``, free inside a jitted function):

- ``token_shape``: the shape of one scene's tokens, e.g. (K, d);
- ``scale``: the factor stage 2 multiplies the tokens by (x0 = scale * tokens, about unit variance);
- ``encode(inputs, rng=None) -> tokens`` (B, *token_shape), float32, no gradient into stage 1;
- ``decode(tokens, cameras=None, rng=None) -> dict`` of outputs: ``gaussians`` (B, N, C) raw 3DGS rows,
  ``images`` (B, M, H, W, 3) in [-1, 1] (unclipped), ``point_maps`` (B, M, H, W, 3) in the scene frame (+
  ``depth`` / ``confidence`` where the family has them) for ``cameras`` (:class:`Cameras`);
- the conditioning a family's generator needs, as named methods: ``SceneTokTokenizer.image_latents`` (SceneGen's
  context views), ``RAE3DTokenizer.view_condition`` (3DDiT's per-view tower features and rays).

One adapter per stage-1 family, registered under the name of the stage-1 task that trains it (``ADAPTERS``):
``autoencode`` -> :class:`Can3TokTokenizer`, ``scenetok`` -> :class:`SceneTokTokenizer` (SceneTok with its image
compressor, :class:`SceneTokModel`), ``rae3d`` -> :class:`RAE3DTokenizer`. ``from_config(stage1_config, module,
**settings)`` builds one from a stage-1 run's config. Building the stage-1 module itself is the stage-1 task's job
(``scene3d.tasks.stage1``).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, ClassVar, Mapping, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import nnx

from scene3d.diffusion.objective import FlowMatching
from scene3d.geometry import rays as rays_lib
from scene3d.models import rae3d as rae3d_lib
from scene3d.models import scenetok as scenetok_lib


class Cameras(NamedTuple):
    """Cameras to decode, per scene: ``c2w`` (B, M, 4, 4) OpenCV in the tokens' scene frame, ``intrinsics``
    (B, M, 4) normalised (fx/W, fy/H, cx/W, cy/H); ``size`` (H, W) in pixels (None: the family's own)."""
    c2w: Any
    intrinsics: Any
    size: tuple[int, int] | None = None


@runtime_checkable
class Tokenizer(Protocol):
    """A stage-1 model as stage 2 sees it (module docstring)."""
    family: ClassVar[str]

    @property
    def token_shape(self) -> tuple[int, ...]: ...

    @property
    def scale(self) -> float: ...

    def bind(self, module: nnx.Module) -> "Tokenizer": ...

    def encode(self, inputs: Mapping[str, jax.Array], rng: jax.Array | None = None) -> jax.Array: ...

    def decode(self, tokens: jax.Array, cameras: Cameras | None = None, rng: jax.Array | None = None
               ) -> dict[str, jax.Array]: ...


def _as_dict(x) -> dict:
    return {} if x is None else dict(x.to_dict() if hasattr(x, "to_dict") else x)


def _bound(adapter, what: str):
    if adapter.module is None:
        raise ValueError(f"{type(adapter).__name__}.{what}: not bound to a stage-1 module (use .bind(module))")
    return adapter.module


# ============================================================================================== Can3Tok


@dataclasses.dataclass(frozen=True)
class Can3TokTokenizer:
    """Can3Tok (3DGS VAE): inputs ``gaussians`` (B, N, C_in) rows -> z viewed as its decoder tokens
    ``token_shape`` = (T, E) (the posterior mean, or a posterior sample with ``sample_posterior`` and an rng);
    decode -> ``gaussians`` (B, num_gaussians, gs_channels) raw rows (render them with ``scene3d.render``)."""
    module: Any = None
    scale: float = 1.0
    sample_posterior: bool = False
    family: ClassVar[str] = "can3tok"

    @classmethod
    def from_config(cls, config, module=None, *, scale: float = 1.0, sample_posterior: bool = False):
        return cls(module, scale=float(scale), sample_posterior=bool(sample_posterior))

    def bind(self, module) -> "Can3TokTokenizer":
        return dataclasses.replace(self, module=module)

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in _bound(self, "token_shape").latent_shape)

    @property
    def output_shape(self) -> tuple[int, int]:
        """(num_gaussians, gs_channels) of a decoded scene."""
        return tuple(int(v) for v in _bound(self, "output_shape").output_shape)

    def encode(self, inputs, rng=None) -> jax.Array:
        rows = inputs["gaussians"]
        if rows.ndim != 3:
            raise ValueError(f"Can3TokTokenizer.encode: inputs['gaussians'] must be (B, N, C), got {rows.shape}")
        z, _ = _bound(self, "encode").encode(rows.astype(jnp.float32), rng=rng,
                                             sample_posterior=self.sample_posterior and rng is not None)
        z = jax.lax.stop_gradient(z.astype(jnp.float32))
        return z.reshape((z.shape[0],) + self.token_shape)

    def decode(self, tokens, cameras=None, rng=None) -> dict:
        if cameras is not None:
            raise ValueError("Can3TokTokenizer.decode: Can3Tok decodes to Gaussians, not views (cameras must be "
                             "None; render the Gaussians with scene3d.render)")
        return {"gaussians": _bound(self, "decode").decode(tokens)[0]}


# ============================================================================================== SceneTok


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """Static settings of the SceneTok decoder's renders: the latent grid and the run's flow matching (its sampler:
    ``sample_steps``, ``sampler``, ``sample_shift``, ``cfg_scale``, ``cfg_interval``)."""
    latent_grid: tuple
    flow: FlowMatching

    def render(self, scenetok: scenetok_lib.SceneTok, tokens, c2w, intrinsics, rng):
        """Latents (B, M, h, w, C) of cameras (B, M, ...) rendered from scene tokens (B, K, d) alone."""
        return scenetok.render(tokens, c2w, intrinsics, rng, latent_size=self.latent_grid, flow=self.flow)


def render_spec(flow, latent_grid, *, num_steps=None, cfg_scale=None) -> RenderSpec:
    """The RenderSpec of a SceneTok run's flow matching (a ``FlowMatching`` or the run's ``flow`` config),
    ``num_steps`` / ``cfg_scale`` overriding its sampler when given."""
    fm = flow if isinstance(flow, FlowMatching) else scenetok_lib.flow_objective(flow)
    overrides = {k: v for k, v in (("sample_steps", num_steps or None), ("cfg_scale", cfg_scale)) if v is not None}
    return RenderSpec(tuple(int(v) for v in latent_grid), dataclasses.replace(fm, **overrides) if overrides else fm)


class SceneTokModel(nnx.Module):
    """The SceneTok stage-1 model: ``image`` (PixelLatent or ImageVAE, the image compressor) and ``scenetok``
    (compressor + decoder)."""

    def __init__(self, image, model: scenetok_lib.SceneTok):
        self.image, self.scenetok = image, model

    def latents(self, images: jax.Array, rng=None) -> jax.Array:
        """Views (B, V, H, W, 3) in [-1, 1] -> latents (B, V, h, w, C)."""
        b, v = images.shape[:2]
        lat = self.image.encode(images.reshape((b * v,) + images.shape[2:]), rng)
        return lat.reshape((b, v) + lat.shape[1:])

    def pixels(self, latents: jax.Array) -> jax.Array:
        """Latents (B, V, h, w, C) -> views (B, V, H, W, 3) (float32, unclipped)."""
        b, v = latents.shape[:2]
        im = self.image.decode(latents.reshape((b * v,) + latents.shape[2:])).astype(jnp.float32)
        return im.reshape((b, v) + im.shape[1:])

    def tokens(self, images, c2w, intrinsics, *, rng=None, sample: bool = False):
        """Context views -> scene tokens (B, K, d) (posterior mean unless ``sample``) and the compressor's aux."""
        lat = jax.lax.stop_gradient(self.latents(images))
        return self.scenetok.encode(lat, c2w, intrinsics, rng=rng, sample=sample)


@dataclasses.dataclass(frozen=True)
class SceneTokTokenizer:
    """SceneTok + its image compressor: inputs ``images`` (B, V, H, W, 3) in [-1, 1] (or their ``latents`` from
    :meth:`image_latents`), ``c2w`` (B, V, 4, 4) in the frame of context view 0, ``intrinsics`` (B, V, 4) ->
    scene tokens (B, K, d) (posterior mean, a sample with ``sample_tokens`` and an rng). decode renders
    ``cameras`` (same frame) from the tokens alone with the rectified-flow decoder (``render``: the sampler
    settings), ``views_per_call`` views per decoder call (the number it was trained on; the last call repeats
    its final camera; one key per call from ``rng``) -> ``images`` (B, M, H, W, 3) and their ``latents``."""
    module: Any = None
    render: RenderSpec | None = None
    views_per_call: int | None = None
    scale: float = 1.0
    sample_tokens: bool = False
    family: ClassVar[str] = "scenetok"

    @classmethod
    def from_config(cls, config, module=None, *, scale: float = 1.0, sample_tokens: bool = False,
                    flow_overrides: Mapping | None = None):
        """From a scenetok run's config: the decoder's sampler (its ``flow``, with the non-None
        ``flow_overrides``) on the module's latent grid, and ``data.views.num_target`` views per call."""
        flow = dict(_as_dict(config.get("flow")), **{k: v for k, v in _as_dict(flow_overrides).items()
                                                      if v is not None})
        views = _as_dict(_as_dict(config.get("data")).get("views"))
        out = cls(None, render=render_spec(flow, (0, 0)), views_per_call=int(views.get("num_target", 1)),
                  scale=float(scale), sample_tokens=bool(sample_tokens))
        return out if module is None else out.bind(module)

    def bind(self, module) -> "SceneTokTokenizer":
        """This adapter on ``module`` (its render settings on the module's latent grid)."""
        grid = (int(module.scenetok.decoder.config["input_size"]),) * 2
        return dataclasses.replace(self, module=module, render=dataclasses.replace(self.render, latent_grid=grid))

    @property
    def token_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in _bound(self, "token_shape").scenetok.compressor.token_shape)

    @property
    def latent_grid(self) -> tuple[int, int]:
        """(h, w) of the image compressor's latents (the decoder's grid)."""
        return (int(_bound(self, "latent_grid").scenetok.decoder.config["input_size"]),) * 2

    @property
    def latent_channels(self) -> int:
        return int(_bound(self, "latent_channels").image.latent_channels)

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the views the tokenizer takes and renders."""
        f = int(_bound(self, "resolution").image.downsample)
        return tuple(g * f for g in self.latent_grid)

    def image_latents(self, images) -> jax.Array:
        """Views (B, V, H, W, 3) in [-1, 1] -> image-compressor latents (B, V, h, w, C) (no gradient)."""
        return jax.lax.stop_gradient(_bound(self, "image_latents").latents(images))

    def encode(self, inputs, rng=None) -> jax.Array:
        lat = inputs["latents"] if "latents" in inputs else self.image_latents(inputs["images"])
        tokens, _ = _bound(self, "encode").scenetok.encode(lat, inputs["c2w"], inputs["intrinsics"], rng=rng,
                                                           sample=self.sample_tokens and rng is not None)
        return jax.lax.stop_gradient(tokens.astype(jnp.float32))

    def render_latents(self, tokens, cameras: Cameras, rng) -> jax.Array:
        """Latents (B, M, h, w, C) of ``cameras`` (see the class docstring for the per-call chunking)."""
        model = _bound(self, "render_latents")
        if rng is None:
            raise ValueError("SceneTokTokenizer.decode: the rectified-flow decoder needs an rng")
        c2w, intr = jnp.asarray(cameras.c2w, jnp.float32), jnp.asarray(cameras.intrinsics, jnp.float32)
        n = c2w.shape[1]
        m = min(int(self.views_per_call or n), n)
        chunks = math.ceil(n / m)
        if chunks == 1:
            return self.render.render(model.scenetok, tokens, c2w, intr, rng)
        idx = jnp.minimum(jnp.arange(chunks * m), n - 1)

        def per_chunk(x):  # (B, chunks * m, ...) -> (chunks, B, m, ...)
            x = x[:, idx].reshape((x.shape[0], chunks, m) + x.shape[2:])
            return jnp.moveaxis(x, 1, 0)

        out = jax.lax.map(lambda a: self.render.render(model.scenetok, tokens, a[0], a[1], a[2]),
                          (per_chunk(c2w), per_chunk(intr), jax.random.split(rng, chunks)))
        out = jnp.moveaxis(out, 0, 1)  # (B, chunks, m, h, w, C)
        return out.reshape((out.shape[0], chunks * m) + out.shape[3:])[:, :n]

    def decode(self, tokens, cameras=None, rng=None) -> dict:
        if cameras is None:
            raise ValueError("SceneTokTokenizer.decode: SceneTok renders views: cameras are required")
        if cameras.size is not None and tuple(cameras.size) != self.resolution:
            raise ValueError(f"SceneTokTokenizer.decode: renders {self.resolution} views, asked for {cameras.size}")
        lat = self.render_latents(tokens, cameras, rng)
        return {"images": _bound(self, "decode").pixels(lat), "latents": lat}


# ============================================================================================== 3DRAE

# RAE3D decoder output names -> the contract's.
_RAE_OUTPUTS = {"rgb": "images", "points": "point_maps", "conf": "confidence"}


@dataclasses.dataclass(frozen=True)
class RAE3DTokenizer:
    """3DRAE: inputs ``images`` (B, V, H, W, 3) in [-1, 1], ``c2w``, ``intrinsics`` (+ optional ``view_mask``
    (B, V)) -> tokens (B, K, latent_dim); decode renders ``cameras`` (``size`` required) -> ``images``, and with
    a point head ``point_maps`` / ``depth`` / ``confidence`` (+ ``features`` with alignment). ``config`` (an
    RAE3DConfig) gives the shapes without a module."""
    module: Any = None
    config: rae3d_lib.RAE3DConfig | None = None
    scale: float = 1.0
    family: ClassVar[str] = "rae3d"

    @classmethod
    def from_config(cls, config, module=None, *, scale: float = 1.0):
        """From a rae3d run's config (``model``: variant + RAE3DConfig fields); no module needed for shapes."""
        if module is not None:
            cfg = module.config
        else:
            mc = _as_dict(config.get("model"))
            cfg = rae3d_lib.rae3d_config(mc.get("variant", "tiny"),
                                         **{k: mc[k] for k in rae3d_lib.RAE3DConfig.__dataclass_fields__ if k in mc})
        return cls(module, config=cfg, scale=float(scale))

    def bind(self, module) -> "RAE3DTokenizer":
        return dataclasses.replace(self, module=module, config=module.config)

    @property
    def token_shape(self) -> tuple[int, int]:
        return (int(self.config.num_tokens), int(self.config.latent_dim))

    @property
    def feature_dim(self) -> int:
        """Channels of the per-view tower features of :meth:`view_condition`."""
        return int(self.config.feature_dim)

    @property
    def patch(self) -> int:
        """The tower's patch size: views are (H/patch, W/patch) feature grids."""
        return int(self.config.patch)

    def encode(self, inputs, rng=None) -> jax.Array:
        tokens = _bound(self, "encode").encode(inputs["images"], inputs["c2w"], inputs["intrinsics"],
                                               view_mask=inputs.get("view_mask"))
        return jax.lax.stop_gradient(tokens.astype(jnp.float32))

    def view_condition(self, images, c2w, intrinsics) -> dict:
        """Per-view conditioning of 3DDiT: ``view_features`` (B, V, H/p, W/p, feature_dim) of the frozen tower
        (no gradient) and ``view_rays`` (B, V, H/p, W/p, 6) Pluecker rays of the patch centres."""
        feats = jax.lax.stop_gradient(_bound(self, "view_condition").encoder.features(images))
        rays = rays_lib.plucker_map(jnp.asarray(c2w, jnp.float32), jnp.asarray(intrinsics, jnp.float32),
                                    images.shape[-3], images.shape[-2], self.patch)
        return {"view_features": feats, "view_rays": rays}

    def decode(self, tokens, cameras=None, rng=None) -> dict:
        if cameras is None or cameras.size is None:
            raise ValueError("RAE3DTokenizer.decode: the 3DRAE decoder renders views: cameras with a size needed")
        out = _bound(self, "decode").decode(tokens, cameras.c2w, cameras.intrinsics, cameras.size)
        return {_RAE_OUTPUTS.get(k, k): v for k, v in out.items()}


# ============================================================================================== registry

ADAPTERS: dict[str, type] = {"autoencode": Can3TokTokenizer, "scenetok": SceneTokTokenizer, "rae3d": RAE3DTokenizer}


def from_config(config, module=None, **settings) -> Tokenizer:
    """The adapter of a stage-1 run's config (``config.task`` picks the family), bound to ``module`` (the stage-1
    module, concrete or abstract; None: unbound). ``settings``: the family's options (``scale``,
    ``sample_posterior`` / ``sample_tokens``, SceneTok's ``flow_overrides``)."""
    task = config.get("task")
    if task not in ADAPTERS:
        raise ValueError(f"stage-1 config: task {task!r} has no tokenizer adapter (known: {sorted(ADAPTERS)})")
    cls = ADAPTERS[task]
    known = set(inspect.signature(cls.from_config).parameters) - {"config", "module"}
    if set(settings) - known:
        raise ValueError(f"tokenizer settings for a {task!r} run: unknown {sorted(set(settings) - known)} (known: "
                         f"{sorted(known)})")
    return cls.from_config(config, module, **settings)
