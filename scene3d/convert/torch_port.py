"""The "torch_port" checkpoint layout: our NNX models <-> the plain-PyTorch port in ``scene3d_torch``.

Layout: a flat dict ``name -> np.ndarray`` holding every array variable of the model (``nnx.Param``, the
``Frozen`` weights of ``scene3d.nn.frozen``, any other ``nnx.Variable``), except RNG state (``nnx.RngState``).
The table is derived from the model:

- Name = the variable's nnx state path joined by '.' (``blocks.layers.attn.q.kernel`` ...), then:
- Stacked layers: a variable under a ``scene3d.nn.Stack``'s ``layers`` attribute carries a leading layer axis; it
  is split per layer and the layer index goes right after ``layers``: ``blocks.layers.<i>.attn.q.weight``
  (nested Stacks split one leading axis each, outermost first). ``Stack`` is the only stacked-layer scheme in
  scene3d (``nn.PerceiverProcess`` and ``models.vit`` use it too); scan=True and scan=False hold the same state.
- Leaf renames, decided by the type of the module that owns the leaf (never by shape):
  ``nnx.Linear``   kernel (in, out)                -> weight (out, in)
  ``nnx.Conv``     kernel (*spatial, in/g, out)    -> weight (out, in/g, *spatial),
                   e.g. (kh, kw, i, o) -> (o, i, kh, kw)
  ``nnx.Embed``    embedding (n, d)                -> weight (n, d)
  norms (``scene3d.nn.LayerNorm`` / ``RMSNorm``, ``nnx.LayerNorm`` / ``RMSNorm`` / ``GroupNorm``)  scale -> weight
  anything else keeps its name and array (biases, learned tokens ``pos_emb``, LayerScale ``ls1`` ...).
- Values: floating arrays as float32; other dtypes (e.g. integer buffers) keep their dtype.

These keys are exactly the ``state_dict()`` keys of the ``scene3d_torch`` modules (their attribute names mirror
the JAX modules). ``model_spec(model)`` gives the JSON-able ``{"class", "kwargs"}`` that
``scene3d_torch.build`` turns back into the torch model; a checkpoint on disk is ``FILE.safetensors`` (the
layout) plus ``FILE.json`` (the spec), see :func:`save_torch_port` and ``scene3d_torch.load``.

API: :func:`export_torch_port`, :func:`torch_port_to_state`, :func:`import_torch_port`,
:func:`torch_port_shapes`, :func:`model_spec`, :func:`save_torch_port`.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from scene3d.convert import engine
from scene3d.core import io
from scene3d.models.can3tok import Can3Tok
from scene3d.models.dit3d import DiT3D
from scene3d.models.latent_dit import LatentDiT
from scene3d.models.rae3d import RAE3D
from scene3d.models.scenetok import SceneTok
from scene3d.models.vit import ViT
from scene3d.nn.norm import LayerNorm, RMSNorm
from scene3d.nn.transformer import Stack

_NORM_TYPES = (LayerNorm, RMSNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)
# The classes scene3d_torch ports -> their constructor kwargs (the spec scene3d_torch.build reads).
SPECS = {LatentDiT: lambda m: dict(m.spec_kwargs), DiT3D: lambda m: dict(m.spec_kwargs),
         RAE3D: lambda m: dataclasses.asdict(m.config), ViT: lambda m: dataclasses.asdict(m.config)}
SPECS[Can3Tok] = lambda m: dict(m.config, variant=m.variant, head_layout=m.head_layout)
SPECS[SceneTok] = lambda m: dict(variant=m.compressor.variant, compressor=m.compressor.config,
                                 decoder=m.decoder.config)


# Training-only submodules scene3d_torch does not port (the rae3d task's GAN discriminator heads).
TRAINING_ONLY = ("discriminator",)


def _array_variable(path, var) -> bool:
    """The variables of the layout: arrays that are not RNG state nor in a TRAINING_ONLY submodule."""
    value = var.get_value() if isinstance(var, nnx.Variable) else var
    if path and str(path[0]) in TRAINING_ONLY:
        return False
    return (not isinstance(var, nnx.RngState) and hasattr(value, "shape")
            and not jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key))


def _kind(owner, leaf: str) -> tuple[str, engine.Kind]:
    """(torch leaf name, transform) for ``owner.<leaf>``."""
    if isinstance(owner, nnx.ConvTranspose) and leaf == "kernel":
        raise ValueError("torch_port: nnx.ConvTranspose kernels have no torch_port rule yet")
    if isinstance(owner, nnx.Linear) and leaf == "kernel":
        return "weight", engine.LINEAR
    if isinstance(owner, nnx.Conv) and leaf == "kernel":
        return "weight", engine.CONV
    if (isinstance(owner, nnx.Embed) and leaf == "embedding") or (isinstance(owner, _NORM_TYPES) and leaf == "scale"):
        return "weight", engine.COPY
    return leaf, engine.COPY


class TorchPortLayout(engine.Layout):
    name = "torch_port"
    what = "torch_port layout"
    variables = staticmethod(_array_variable)

    def state(self, model):
        state = super().state(model)
        return state if isinstance(model, nnx.Module) else state.filter(_array_variable)

    def table(self, model: nnx.Module) -> list[engine.Entry]:
        modules = {tuple(p): m for p, m in nnx.iter_modules(model)}
        out = []
        for path, value in self.flat(model).items():
            stack = [i for i in range(1, len(path)) if path[i] == "layers" and isinstance(modules.get(path[:i]), Stack)]
            leaf, kind = _kind(modules.get(path[:-1]), str(path[-1]))
            for idx in np.ndindex(*value.shape[:len(stack)]):
                parts = [str(p) for p in path[:-1]]
                for pos, i in zip(reversed(stack), reversed(idx)):
                    parts.insert(pos + 1, str(i))
                out.append(engine.entry(".".join(parts + [leaf]), path, kind, tuple(int(i) for i in idx)))
        keys = [e.keys[0] for e in out]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"torch_port: two variables map to the keys {twice}")
        return out

    def find_prefix(self, keys, table, name) -> str:
        return ""  # the port's state_dict keys have no prefix


LAYOUT = TorchPortLayout()


def torch_port_shapes(model: nnx.Module) -> dict[str, tuple]:
    """name -> torch-side shape for every entry of the layout (works on ``nnx.eval_shape`` models too)."""
    return LAYOUT.shapes(model)


def export_torch_port(model: nnx.Module, state=None) -> dict[str, np.ndarray]:
    """The model's variables (or those of ``state``, an nnx.State of this model's graph; RNG state is dropped) in
    the torch_port layout."""
    return LAYOUT.export(model, None if state is None else state.filter(_array_variable))


def torch_port_to_state(model: nnx.Module, state_dict, *, strict: bool = True) -> nnx.State:
    """An nnx.State (the model's non-RNG variables) holding the values of a torch_port ``state_dict`` (numpy
    arrays or torch tensors), cast to each variable's dtype and placed with its sharding. ``strict``: every key
    present and none unexpected; otherwise missing keys keep the model's value and unexpected ones are ignored.
    Shape mismatches are always errors. Errors are one ValueError naming the keys (and expected / got shapes)."""
    state, _ = LAYOUT.to_state(model, state_dict, strict=strict, partial=not strict,
                               name=f"torch_port -> {type(model).__name__}")
    return state


def import_torch_port(model: nnx.Module, source, *, strict: bool = True) -> nnx.Module:
    """Load a torch_port dict (or a ``.safetensors`` path, the suffix optional) into ``model`` in place; returns
    the model."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        path = path if path.endswith(".safetensors") else path + ".safetensors"
        if not os.path.exists(path):
            raise ValueError(f"import_torch_port: {path} not found")
        source = engine.load_state_dict(path)
    nnx.update(model, torch_port_to_state(model, source, strict=strict))
    return model


def model_spec(model: nnx.Module) -> dict:
    """JSON-able ``{"class": name, "kwargs": {...}}`` that ``scene3d_torch.build`` rebuilds the model from."""
    spec = SPECS.get(type(model))
    if spec is None:
        raise ValueError(f"model_spec: no torch port for {type(model).__name__}; expected one of "
                         f"{sorted(c.__name__ for c in SPECS)}")
    return {"class": type(model).__name__, "kwargs": json.loads(json.dumps(spec(model)))}


def save_torch_port(model: nnx.Module, path: str, state=None) -> tuple[str, str]:
    """Write ``FILE.safetensors`` (:func:`export_torch_port`) and ``FILE.json`` (:func:`model_spec`), atomically."""
    base = os.fspath(path)
    base = base[:-len(".safetensors")] if base.endswith(".safetensors") else base
    st, js = base + ".safetensors", base + ".json"
    engine.save_safetensors(st, export_torch_port(model, state))
    io.write_json(js, model_spec(model), indent=1)
    return st, js
