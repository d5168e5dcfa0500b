"""scene3d_torch and the JAX models share their architecture tables and config dataclasses (``scene3d.specs``, the
one jax-free home of both); what the port still writes itself is compared with its JAX original:

- shared tables / dataclasses: the port's object *is* the JAX model's (one table, imported on both sides); a
  table the port defines itself must be a port-only or function table (the latter compared by behaviour);
- keyword defaults of every ported class / function: the same parameters and defaults, JAX-only execution or
  placement parameters (``FRAMEWORK_PARAMS``) and listed exceptions aside;
- completeness: every table and public callable of scene3d_torch is shared, compared or listed as port-only with a
  reason, so a new copy cannot escape the check.
"""
import importlib
import inspect
import pkgutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import scene3d.specs
import scene3d_torch

# scene3d_torch module -> the JAX modules holding its originals (searched in order for a same-named object).
JAX_HOMES = {
    "scene3d_torch": (),
    "scene3d_torch.nn": ("scene3d.nn", "scene3d.nn.mlp", "scene3d.nn.rope", "scene3d.nn.norm",
                         "scene3d.kernels.attention", "scene3d.kernels.reference"),
    "scene3d_torch.geometry": ("scene3d.geometry.rays",),
    "scene3d_torch.dit3d": ("scene3d.models.dit3d",),
    "scene3d_torch.latent_dit": ("scene3d.models.latent_dit",),
    "scene3d_torch.rae3d": ("scene3d.models.rae3d",),
    "scene3d_torch.vit": ("scene3d.models.vit",),
    "scene3d_torch.scenetok": ("scene3d.models.scenetok", "scene3d.tasks.scenetok"),
    "scene3d_torch.can3tok": ("scene3d.models.can3tok", "scene3d.losses.reconstruction", "scene3d.nn.gaussian"),
}

# Objects of scene3d_torch with no JAX original: "module.name" -> reason.
PORT_ONLY = {
    "scene3d_torch.MODELS": "registry of the torch classes that build() / load() accept",
    "scene3d_torch.build": "rebuilds a torch model from an export spec",
    "scene3d_torch.load": "reads an export (safetensors + sidecar spec)",
    "scene3d_torch.nn.linear": "torch.nn.Linear factory; JAX layers use nn.linear.dense with logical axis names",
    "scene3d_torch.scenetok.ATTN_IMPLS": "torch attention kernels (F.scaled_dot_product_attention or the einsum)",
    "scene3d_torch.scenetok.set_attention_impl": "switches the torch attention kernel of every Attention in a model",
    "scene3d_torch.scenetok.rope_2d": "builds the torch RoPE function from rope_2d_positions' layout (the JAX "
                                      "model builds its tables inline); compared by tests/torch_port/"
                                      "test_scenetok_torch.py",
    "scene3d_torch.scenetok.rope_3d": "as rope_2d, for rope_3d_positions",
    "scene3d_torch.scenetok.train_loss": "SceneTok.loss with every random draw passed in (the speed comparison "
                                         "feeds both sides the same draws); equal to it in "
                                         "tests/torch_port/test_scenetok_torch.py",
    "scene3d_torch.scenetok.BATCH_KEYS": "the inputs train_loss reads",
    "scene3d_torch.scenetok.LOSS_WEIGHTINGS": "train_loss's loss_weighting choices (the JAX task's, as arguments)",
    "scene3d_torch.can3tok.ATTENTION": "torch attention kernels of the port (F.scaled_dot_product_attention or the "
                                       "einsum)",
    "scene3d_torch.can3tok.loss": "AutoencodeTask.loss with the posterior noise passed in (the speed comparison "
                                  "feeds both sides the same draws); equal to it in "
                                  "tests/torch_port/test_can3tok_torch.py",
}
# Tables of framework functions (one per side by nature): compared by behaviour below.
FUNCTION_TABLES = {"scene3d_torch.nn.ACTIVATIONS", "scene3d_torch.nn.NORMS"}

# Keyword defaults that legitimately differ: "module.func()" -> {parameter: reason}.
PORT_IRRELEVANT: dict[str, dict[str, str]] = {
    "scene3d_torch.nn.attention()": {
        "return_lse": "the JAX RAE3D read combines view blocks by their log-sum-exp; the port reads all views in "
                      "one masked attention and never asks for it",
    },
    "scene3d_torch.can3tok.diagonal_gaussian_kl()": {
        "axes": "the port's posterior always sums the KL over the last axis (the JAX default)",
    },
    "scene3d_torch.can3tok.Can3Tok()": {
        "attention": "torch attention kernel choice (sdpa | einsum), as attn_impl in JAX",
    },
    "scene3d_torch.geometry.ray_map()": {
        "patch_mode": "the models call ray_map with the default 'center'; the port implements that mode only",
    },
    "scene3d_torch.geometry.plucker_map()": {
        "patch_mode": "the models call plucker_map with the default 'center'; the port implements that mode only",
    },
}

# Parameters that only steer execution, placement or random initialisation in one framework: skipped on either
# side (the port loads weights and runs eagerly in the module's dtype; JAX arrays follow the default device).
FRAMEWORK_PARAMS = {
    "rngs": "random init (port values come from a checkpoint)",
    "zero_init_out": "initialiser choice (port values come from a checkpoint)",
    "cross_zero_init": "initialiser choice (port values come from a checkpoint)",
    "dtype": "framework dtype objects (torch: cast the module with .to(dtype))",
    "param_dtype": "parameter dtype (torch: cast the module with .to(dtype))",
    "device": "torch placement of new tensors",
    "xp": "array module (numpy | jax.numpy) of a JAX-side helper",
    "impl": "attention kernel choice (xla | cudnn | pallas)",
    "attn_impl": "attention kernel choice (xla | cudnn | pallas)",
    "scan": "jax.lax.scan over layers (a compile-time choice)",
    "remat": "rematerialisation policy (training only)",
    "stop_gradient": "gradient through a frozen tower (training only)",
    "sdpa": "torch attention kernel choice (F.scaled_dot_product_attention), as impl / attn_impl in JAX",
}

_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _modules(package):
    names = [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    return {n: importlib.import_module(n) for n in names}


def _specs_objects() -> dict[int, str]:
    """id(object) -> 'scene3d.specs.module.NAME' for every public object of scene3d.specs."""
    return {id(obj): f"{m}.{n}" for m, mod in _modules(scene3d.specs).items() for n, obj in vars(mod).items()
            if not n.startswith("_") and not inspect.ismodule(obj)}


def _own(module):
    """(tables: module-level UPPER_CASE containers and the classes / functions imported from scene3d.specs,
    callables: classes / functions defined in ``module``), each name -> object."""
    tables, funcs = {}, {}
    for name, obj in vars(module).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        home = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        if name.isupper() and isinstance(obj, (dict, tuple, list, frozenset, set)):
            tables[name] = obj
        elif home == module.__name__:
            funcs[name] = obj
        elif home is not None and home.startswith("scene3d.specs"):
            tables[name] = obj
    return tables, funcs


def _original(module_name: str, name: str):
    for home in JAX_HOMES[module_name]:
        obj = getattr(importlib.import_module(home), name, None)
        if obj is not None and not inspect.ismodule(obj):
            return obj
    return None


def _port_objects(kind: int):
    out = []
    for mname, module in _modules(scene3d_torch).items():
        for name, obj in _own(module)[kind].items():
            if f"{mname}.{name}" not in PORT_ONLY:
                out.append(pytest.param(mname, name, obj, id=f"{mname}.{name}"))
    return out


# ---------------------------------------------------------------------------------------------------------------


def test_every_port_object_is_shared_compared_or_port_only():
    """Each scene3d_torch table / public callable has a JAX original, or is listed in PORT_ONLY."""
    missing, stale = [], set(PORT_ONLY)
    for mname, module in _modules(scene3d_torch).items():
        assert mname in JAX_HOMES, f"new module {mname}: add it to JAX_HOMES"
        for kind in _own(module):
            for name in kind:
                key = f"{mname}.{name}"
                stale.discard(key)
                if key not in PORT_ONLY and _original(mname, name) is None:
                    missing.append(key)
    assert not missing, f"no JAX original found for {missing} (add its home to JAX_HOMES or list it in PORT_ONLY)"
    assert not stale, f"PORT_ONLY lists objects that no longer exist: {sorted(stale)}"
    for where in PORT_IRRELEVANT:
        mname, name = where.rstrip("()").rsplit(".", 1)
        assert name in _own(importlib.import_module(mname))[1], f"PORT_IRRELEVANT[{where!r}]: no such object"


def _not_shared(module_name: str, name: str, obj) -> str | None:
    """Why ``obj`` (a table / dataclass / helper of the port) is not the JAX model's own object, or None."""
    where = f"{module_name}.{name}"
    if where in PORT_ONLY or where in FUNCTION_TABLES:
        return None
    home = _specs_objects().get(id(obj))
    if home is None:
        return f"{where} is the port's own copy: move it to scene3d.specs and import it on both sides"
    if _original(module_name, name) is not obj:
        return f"{where} is {home}, but the JAX model's {name} is another object"
    return None


@pytest.mark.parametrize("module_name,name,obj", _port_objects(0))
def test_tables_and_configs_are_the_shared_specs(module_name, name, obj):
    problem = _not_shared(module_name, name, obj)
    assert problem is None, problem


def _params(fn) -> dict:
    fn = fn.__init__ if inspect.isclass(fn) else fn
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind not in _VAR and k != "self"}


def _default_problems(module_name: str, name: str, obj) -> list[str]:
    where = f"{module_name}.{name}()"
    irrelevant, problems = PORT_IRRELEVANT.get(where, {}), []
    original = _original(module_name, name)
    ours, theirs = ({k: v for k, v in _params(f).items() if k not in FRAMEWORK_PARAMS} for f in (obj, original))
    for k in sorted(set(ours) | set(theirs)):
        if k in irrelevant:
            continue
        if k not in ours or k not in theirs:
            side = "scene3d_torch" if k in ours else "JAX"
            problems.append(f"{where}: parameter {k!r} only on the {side} side (port it, or list it in "
                            "PORT_IRRELEVANT with a reason)")
        elif type(ours[k]) is not type(theirs[k]) or ours[k] != theirs[k]:
            problems.append(f"{where}: default of {k}: scene3d_torch has {ours[k]!r}, JAX has {theirs[k]!r}")
    stale = [k for k in irrelevant if k in ours and k in theirs and ours[k] == theirs[k]]
    return problems + [f"{where}: PORT_IRRELEVANT lists {k!r}, which differs no more" for k in stale]


@pytest.mark.parametrize("module_name,name,obj", _port_objects(1))
def test_keyword_defaults_match_jax(module_name, name, obj):
    assert _original(module_name, name) is not None, f"{module_name}.{name}: no JAX original"
    problems = _default_problems(module_name, name, obj)
    assert not problems, "\n".join(problems)


def test_a_copy_or_a_drifted_default_is_caught(monkeypatch):
    """The checks above fail on a copied table and on a changed keyword default."""
    from scene3d_torch import dit3d
    from scene3d_torch import nn as tnn
    copy = {k: dict(v) for k, v in dit3d.VARIANTS.items()}
    assert "port's own copy" in _not_shared("scene3d_torch.dit3d", "VARIANTS", copy)
    monkeypatch.setattr("scene3d.models.dit3d.VARIANTS", copy)
    assert "another object" in _not_shared("scene3d_torch.dit3d", "VARIANTS", dit3d.VARIANTS)
    init = tnn.TimestepEmbedder.__init__
    monkeypatch.setattr(init, "__kwdefaults__", {**init.__kwdefaults__, "freq_dim": 128})
    assert _default_problems("scene3d_torch.nn", "TimestepEmbedder", tnn.TimestepEmbedder) == [
        "scene3d_torch.nn.TimestepEmbedder(): default of freq_dim: scene3d_torch has 128, JAX has 256"]


def test_activation_tables_compute_the_same():
    from scene3d.nn import mlp as jax_mlp
    from scene3d_torch import nn as tnn
    x = np.linspace(-6.0, 6.0, 241, dtype=np.float32)
    assert sorted(tnn.ACTIVATIONS) == sorted(jax_mlp.ACTIVATIONS)
    for name, fn in tnn.ACTIVATIONS.items():
        ours = fn(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, np.asarray(jax_mlp.ACTIVATIONS[name](jnp.asarray(x))), atol=2e-6,
                                   err_msg=name)


def test_norm_tables_map_the_same_names_to_the_same_norms():
    from scene3d.nn import norm as jax_norm
    from scene3d_torch import nn as tnn
    assert {k: v.__name__ for k, v in tnn.NORMS.items()} == {k: v.__name__ for k, v in jax_norm.NORMS.items()}
