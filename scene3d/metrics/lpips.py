"""LPIPS perceptual distance (Zhang et al. 2018, the ``lpips`` package v0.1 semantics) in JAX.

d(x, y) = sum_l mean_{h,w} sum_c w_l[c] (n(f_l(x)) - n(f_l(y)))^2 where

- x, y are channels-last images (..., H, W, 3) in [-1, 1], scaled first by (x - shift) / scale with
  shift = (-.030, -.088, -.188), scale = (.458, .448, .450);
- f_l are five ReLU taps of a torchvision backbone's ``features``: ``'alex'`` (AlexNet; relu1..relu5, after
  features.1/4/7/9/11) or ``'vgg'`` (VGG16; relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, after
  features.3/8/15/22/29); max pools are 'valid' (torch's floor mode);
- n(f) = f / (||f||_channels + 1e-10) (the eps outside the square root, as lpips does);
- w_l >= 0 are the learned 1 x 1 'lin' weights (no bias).

Weights come from files (nothing downloads): a torchvision state_dict (``features.{i}.weight/bias``; the bare
``features`` module's ``{i}.weight`` also works) plus an lpips lin file (``lin{l}.model.1.weight`` of shape
(1, C, 1, 1), as in ``lpips/weights/v0.1/alex.pth``), or one combined file as the ``lpips.LPIPS`` module's own
state_dict names it (``net.slice{s}.{i}.weight``, ``lin{l}.model.1.weight`` / ``lins.{l}.model.1.weight``,
optional ``scaling_layer.shift/scale``). ``.pth``/``.pt``/``.bin`` load through ``torch.load(weights_only=True)``,
``.safetensors`` through safetensors. ``LPIPS.random`` builds seeded random weights for tests; its numbers are
not LPIPS.

``LPIPS`` is a pytree (its weights are the leaves), so it can be passed into ``jax.jit`` as an argument; calling
it directly runs a jitted function with the weights as arguments (never baked in as constants).
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
EPS = 1e-10

# torchvision ``features`` in index order: ('conv', out_channels, kernel, stride, padding) | ('relu',) |
# ('pool', kernel, stride). Only the layers up to the last tap.
_ALEX = (("conv", 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 192, 5, 1, 2), ("relu",), ("pool", 3, 2),
         ("conv", 384, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",))


def _vgg16():
    layers = []
    for block, (width, n) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if block:
            layers.append(("pool", 2, 2))
        for _ in range(n):
            layers += [("conv", width, 3, 1, 1), ("relu",)]
    return tuple(layers)


# net -> (features layers, tap indices: the features index whose output is tapped)
ARCHS = {
    "alex": (_ALEX, (1, 4, 7, 9, 11)),
    "vgg": (_vgg16(), (3, 8, 15, 22, 29)),
}

_log = logging.getLogger(__name__)


def _check_net(net):
    if net not in ARCHS:
        raise ValueError(f"LPIPS: unknown net {net!r}; expected one of {sorted(ARCHS)}")


def conv_shapes(net: str) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """{features index: (torch weight shape (O, I, k, k), bias shape (O,))} of the backbone's convs."""
    _check_net(net)
    out, cin = {}, 3
    for i, layer in enumerate(ARCHS[net][0]):
        if layer[0] == "conv":
            _, cout, k = layer[:3]
            out[i] = ((cout, cin, k, k), (cout,))
            cin = cout
    return out


def tap_channels(net: str) -> tuple[int, ...]:
    """Channels of the five taps (the lin layers' input widths): alex (64, 192, 384, 256, 256), vgg (64, ..., 512)."""
    layers, taps = ARCHS[net]
    shapes = conv_shapes(net)
    return tuple(shapes[max(i for i in shapes if i < t)][0][0] for t in taps)


def tap_sizes(net: str, height: int, width: int) -> tuple[tuple[int, int], ...]:
    """Spatial (h, w) of each tap for an H x W input (0 where the input is too small)."""
    _check_net(net)
    layers, taps = ARCHS[net]
    h, w, out = height, width, []
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, _, k, s, p = layer
            h, w = max((h + 2 * p - k) // s + 1, 0), max((w + 2 * p - k) // s + 1, 0)
        elif layer[0] == "pool":
            _, k, s = layer
            h, w = max((h - k) // s + 1, 0), max((w - k) // s + 1, 0)
        if i in taps:
            out.append((h, w))
    return tuple(out)


def _slice_of(net: str, index: int) -> int:
    """1-based lpips slice (``net.slice{s}``) holding features index ``index``."""
    taps = ARCHS[net][1]
    return next(s + 1 for s, t in enumerate(taps) if index <= t)


# ----------------------------------------------------------------------------------------------------------
# Forward


def _features(params, x, net, precision):
    layers, taps = ARCHS[net]
    outs = []
    for i, layer in enumerate(layers):
        if layer[0] == "conv":
            _, _, _, s, p = layer
            conv = params["features"][str(i)]
            x = jax.lax.conv_general_dilated(x, conv["kernel"], (s, s), ((p, p), (p, p)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
            x = x + conv["bias"]
        elif layer[0] == "relu":
            x = jax.nn.relu(x)
        else:
            _, k, s = layer
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")
        if i in taps:
            outs.append(x)
    return outs


def _unit(f):
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)


def lpips_layers(params, x, y, net: str = "alex", precision=jax.lax.Precision.HIGHEST):
    """(..., 5) per-tap LPIPS terms of images x, y (..., H, W, 3) in [-1, 1]; their sum is the distance."""
    _check_net(net)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    if x.shape != y.shape or x.ndim < 4 or x.shape[-1] != 3:
        raise ValueError(f"LPIPS: images must be (..., H, W, 3) of equal shape with a batch axis, got {x.shape} "
                         f"and {y.shape}")
    lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
    sizes = tap_sizes(net, h, w)
    if any(a == 0 or b == 0 for a, b in sizes):
        raise ValueError(f"LPIPS[{net}]: images {h}x{w} are too small (tap sizes {sizes}); alex needs >= 31 px, "
                         f"vgg >= 16 px per side")
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    z = jnp.concatenate([x.reshape((-1, h, w, 3)), y.reshape((-1, h, w, 3))], axis=0)
    feats = _features(params, (z - shift) / scale, net, precision)
    n = z.shape[0] // 2
    terms = []
    for f, lin in zip(feats, params["lin"]):
        d = jnp.square(_unit(f[:n]) - _unit(f[n:]))
        terms.append(jnp.mean(jnp.einsum("bhwc,c->bhw", d, lin, precision=precision), axis=(1, 2)))
    return jnp.stack(terms, axis=-1).reshape(lead + (len(terms),))


def lpips_distance(params, x, y, net: str = "alex", precision=jax.lax.Precision.HIGHEST):
    """(...,) LPIPS distances of images x, y (..., H, W, 3) in [-1, 1] (module docstring)."""
    return jnp.sum(lpips_layers(params, x, y, net, precision), axis=-1)


_layers_jit = jax.jit(lpips_layers, static_argnames=("net", "precision"))


# ----------------------------------------------------------------------------------------------------------
# Weights


def random_params(net: str = "alex", seed: int = 0) -> dict:
    """Seeded random weights (He-normal convs, zero-mean small biases, non-negative lin weights): NOT LPIPS."""
    rng = np.random.default_rng(seed)
    feats = {}
    for i, ((o, ci, k, _), _) in conv_shapes(net).items():
        feats[str(i)] = {"kernel": (rng.standard_normal((k, k, ci, o)) * np.sqrt(2.0 / (ci * k * k))).astype(np.float32),
                         "bias": (0.1 * rng.standard_normal(o)).astype(np.float32)}
    lin = [(rng.uniform(0.0, 2.0, c) / c).astype(np.float32) for c in tap_channels(net)]
    return jax.tree.map(jnp.asarray, {"features": feats, "lin": lin})


def load_state_dict(path) -> dict[str, np.ndarray]:
    """A torch (``.pth``/``.pt``/``.bin``/``.ckpt``, ``weights_only``) or ``.safetensors`` file -> {key: float32 array}.

    A torch file holding a ``state_dict`` entry (a training checkpoint) uses that entry.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"LPIPS: weights file {path!r} not found")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            sd = load_file(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"LPIPS: cannot read safetensors file {path!r}: {e}") from e
    else:
        import torch
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"LPIPS: cannot read {path!r} with torch.load(weights_only=True): {e}") from e
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise ValueError(f"LPIPS: {path!r} holds a {type(sd).__name__}, expected a state_dict (str -> tensor)")
        sd = {k: v.detach().float().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def _pick(sd, names, path, shape, what):
    for name in names:
        if name in sd:
            if tuple(sd[name].shape) != tuple(shape):
                raise ValueError(f"LPIPS: {path!r} key {name!r} ({what}) has shape {tuple(sd[name].shape)}, "
                                 f"expected {tuple(shape)}")
            return sd[name]
    raise ValueError(f"LPIPS: {path!r} has no {what}: expected key {names[0]!r} (or {', '.join(map(repr, names[1:]))})"
                     f" of shape {tuple(shape)}")


def backbone_from_state_dict(sd: Mapping[str, np.ndarray], net: str = "alex", path: str = "<state_dict>") -> dict:
    """{'features': {i: {'kernel' HWIO, 'bias'}}} from torchvision or lpips-combined key names."""
    feats = {}
    for i, (wshape, bshape) in conv_shapes(net).items():
        s = _slice_of(net, i)
        wnames = [f"features.{i}.weight", f"{i}.weight", f"net.slice{s}.{i}.weight"]
        bnames = [f"features.{i}.bias", f"{i}.bias", f"net.slice{s}.{i}.bias"]
        w = _pick(sd, wnames, path, wshape, f"{net} conv features.{i} weight")
        b = _pick(sd, bnames, path, bshape, f"{net} conv features.{i} bias")
        feats[str(i)] = {"kernel": np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))), "bias": b}
    return {"features": feats}


def lin_from_state_dict(sd: Mapping[str, np.ndarray], net: str = "alex", path: str = "<state_dict>") -> list:
    """The five lin weight vectors (C_l,) from lpips key names (``lin{l}.model.1.weight``, (1, C, 1, 1))."""
    lins = []
    for l, c in enumerate(tap_channels(net)):
        names = [f"lin{l}.model.1.weight", f"lin{l}.model.0.weight", f"lins.{l}.model.1.weight",
                 f"lins.{l}.model.0.weight"]
        w = _pick(sd, names, path, (1, c, 1, 1), f"{net} lin layer {l} weight")
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"LPIPS: {path!r} lin layer {l} has negative or non-finite weights; LPIPS lin weights "
                             f"are non-negative")
        lins.append(w.reshape(c))
    for key, ref in (("scaling_layer.shift", SHIFT), ("scaling_layer.scale", SCALE)):
        if key in sd and not np.allclose(np.asarray(sd[key]).reshape(-1), ref, atol=1e-6):
            raise ValueError(f"LPIPS: {path!r} key {key!r} = {np.asarray(sd[key]).reshape(-1)}, expected the v0.1 "
                             f"constants {ref} (shape (1, 3, 1, 1))")
    return lins


class LPIPS:
    """LPIPS metric: ``LPIPS(net)(x, y)`` -> (B,) distances of images (B, H, W, 3) in [-1, 1].

    ``params``: {'features': {str(i): {'kernel': (k, k, I, O), 'bias': (O,)}}, 'lin': [(C_l,)] * 5}, as built by
    ``from_files`` / ``from_state_dict`` / ``random``. ``LPIPS(net)`` without params is an error (no downloads).
    """

    def __init__(self, net: str = "alex", params: dict | None = None, *, random_weights: bool = False,
                 precision=jax.lax.Precision.HIGHEST):
        _check_net(net)
        if params is None:
            raise ValueError(f"LPIPS({net!r}): no weights given and nothing downloads; use LPIPS.from_files("
                             f"backbone_path, lin_path, net) with the torchvision and lpips v0.1 weights, or "
                             f"LPIPS.random(net, seed) for tests")
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
        self.net, self.params, self.random_weights, self.precision = net, params, bool(random_weights), precision
        self._check_params()

    def _check_params(self):
        feats, lin = self.params.get("features", {}), self.params.get("lin", ())
        for i, ((o, ci, k, _), _) in conv_shapes(self.net).items():
            got = tuple(np.shape(feats.get(str(i), {}).get("kernel", ())))
            if got != (k, k, ci, o) or tuple(np.shape(feats[str(i)].get("bias", ()))) != (o,):
                raise ValueError(f"LPIPS[{self.net}]: params['features']['{i}'] must hold kernel {(k, k, ci, o)} and "
                                 f"bias {(o,)}, got kernel {got}")
        chans = tap_channels(self.net)
        if len(lin) != len(chans) or any(tuple(np.shape(w)) != (c,) for w, c in zip(lin, chans)):
            raise ValueError(f"LPIPS[{self.net}]: params['lin'] must be {len(chans)} vectors of sizes {chans}, got "
                             f"{[tuple(np.shape(w)) for w in lin]}")

    @classmethod
    def from_state_dict(cls, backbone: Mapping, lin: Mapping | None = None, net: str = "alex", *,
                        names: tuple[str, str] = ("<backbone state_dict>", "<lin state_dict>")) -> "LPIPS":
        """From numpy state_dicts (torchvision + lpips lin, or one combined lpips state_dict with ``lin=None``)."""
        _check_net(net)
        params = backbone_from_state_dict(backbone, net, names[0])
        params["lin"] = lin_from_state_dict(backbone if lin is None else lin, net, names[0] if lin is None else names[1])
        return cls(net, jax.tree.map(jnp.asarray, params))

    @classmethod
    def from_files(cls, backbone_path, lin_path=None, net: str = "alex") -> "LPIPS":
        """From a torchvision state_dict file plus an lpips lin file, or one combined lpips file (``lin_path=None``)."""
        sd = load_state_dict(backbone_path)
        lin = None if lin_path is None else load_state_dict(lin_path)
        return cls.from_state_dict(sd, lin, net, names=(os.fspath(backbone_path),
                                                        os.fspath(lin_path) if lin_path is not None else ""))

    @classmethod
    def random(cls, net: str = "alex", seed: int = 0) -> "LPIPS":
        """Seeded random weights, for tests and weightless runs. Logs a warning: the numbers are NOT LPIPS."""
        _log.warning("LPIPS[%s] uses RANDOM weights (seed %d): its numbers are NOT LPIPS and must not be reported as "
                     "such. Pass the torchvision + lpips v0.1 weight files for the real metric.", net, seed)
        return cls(net, random_params(net, seed), random_weights=True)

    def layers(self, x, y):
        """(B, 5) per-tap terms; their sum over the last axis is ``self(x, y)`` (any leading axes work)."""
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        if x.shape != y.shape or x.ndim < 4:
            raise ValueError(f"LPIPS: images must be (..., H, W, 3) of equal shape with a batch axis, got {x.shape} "
                             f"and {y.shape}")
        lead, tail = x.shape[:-3], x.shape[-3:]  # one compiled function per (N, H, W) whatever the leading axes
        out = _layers_jit(self.params, x.reshape((-1,) + tail), y.reshape((-1,) + tail), net=self.net,
                          precision=self.precision)
        return out.reshape(lead + out.shape[-1:])

    def __call__(self, x, y):
        """(B,) LPIPS distances of images x, y (B, H, W, 3) in [-1, 1] (any leading axes work)."""
        return jnp.sum(self.layers(x, y), axis=-1)

    def __repr__(self):
        return f"LPIPS(net={self.net!r}{', RANDOM weights' if self.random_weights else ''})"

    def tree_flatten(self):
        return (self.params,), (self.net, self.random_weights, self.precision)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.params, (obj.net, obj.random_weights, obj.precision) = children[0], aux
        return obj


jax.tree_util.register_pytree_node_class(LPIPS)


def from_config(spec, field: str = "config.metrics.lpips") -> "LPIPS | None":
    """The LPIPS metric a config asks for, or None when ``spec`` is empty (not computed). ``spec`` (a dict or
    ConfigDict): ``net`` ('alex' | 'vgg', default alex) and either ``backbone`` + ``lin`` (a torchvision state_dict
    and the lpips v0.1 lin file), ``file`` (one combined lpips state_dict) or ``random=True`` (seeded random
    weights, ``seed``; tests only, not LPIPS). ``field`` names the config field in errors."""
    spec = {} if spec is None else dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    if not spec:
        return None
    net = spec.get("net", "alex")
    if spec.get("random"):
        return LPIPS.random(net, int(spec.get("seed", 0)))
    if spec.get("file"):
        return LPIPS.from_files(spec["file"], None, net=net)
    if spec.get("backbone") and spec.get("lin"):
        return LPIPS.from_files(spec["backbone"], spec["lin"], net=net)
    raise ValueError(f"{field}: expected backbone=PATH and lin=PATH, file=PATH, or random=True; got {spec}")
