"""scene3d_torch copies the JAX models' tables and config dataclasses (it must not import scene3d): every copy is
compared with its JAX original so the two cannot drift apart.

- tables (module-level UPPER_CASE dicts / tuples, e.g. VARIANTS): the same names (variants), the same values for
  shared keys; a key on one side only fails unless ``PORT_IRRELEVANT`` lists it with a reason;
- config dataclasses: the same fields and defaults, and for every variant the same built config (``__post_init__``
  derivations included) and the same public properties;
- keyword defaults of every ported class / function: the same parameters and defaults, JAX-only execution or
  placement parameters (``FRAMEWORK_PARAMS``) and listed exceptions aside;
- completeness: every table, dataclass and public callable of scene3d_torch is compared, or listed as port-only
  with a reason, so a new copy cannot escape the check.
"""
import dataclasses
import importlib
import inspect
import pkgutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch

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
}

# Objects of scene3d_torch with no JAX original: "module.name" -> reason.
PORT_ONLY = {
    "scene3d_torch.MODELS": "registry of the torch classes that build() / load() accept",
    "scene3d_torch.build": "rebuilds a torch model from an export spec",
    "scene3d_torch.load": "reads an export (safetensors + sidecar spec)",
    "scene3d_torch.nn.linear": "torch.nn.Linear factory; JAX layers use nn.linear.dense with logical axis names",
}

# Keys present on one side only, or whose values legitimately differ: "table" -> {key: reason}. Tables are named
# "module.NAME" (key = a dict key, or "VARIANT.key" inside a variant), "module.Class.field" style for dataclass
# fields / properties ("module.Class" -> {field: reason}) and "module.func()" for keyword defaults.
PORT_IRRELEVANT: dict[str, dict[str, str]] = {
    "scene3d_torch.vit.ViTConfig": {
        "property native_size": "JAX-only property (HF conversion checks); the port resizes position embeddings to any grid",
    },
    "scene3d_torch.nn.attention()": {
        "return_lse": "the JAX RAE3D read combines view blocks by their log-sum-exp; the port reads all views in "
                      "one masked attention and never asks for it",
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
    "dtype": "framework dtype objects (torch: cast the module with .to(dtype))",
    "param_dtype": "parameter dtype (torch: cast the module with .to(dtype))",
    "device": "torch placement of new tensors",
    "xp": "array module (numpy | jax.numpy) of a JAX-side helper",
    "impl": "attention kernel choice (xla | cudnn | pallas)",
    "attn_impl": "attention kernel choice (xla | cudnn | pallas)",
    "scan": "jax.lax.scan over layers (a compile-time choice)",
    "remat": "rematerialisation policy (training only)",
    "stop_gradient": "gradient through a frozen tower (training only)",
}

_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _torch_modules():
    names = ["scene3d_torch"] + [f"scene3d_torch.{m.name}" for m in pkgutil.iter_modules(scene3d_torch.__path__)]
    return {n: importlib.import_module(n) for n in names}


def _own(module):
    """(tables, dataclasses, callables) defined in ``module``: name -> object."""
    tables, classes, funcs = {}, {}, {}
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if name.isupper() and isinstance(obj, (dict, tuple, list, frozenset, set)):
            tables[name] = obj
        elif getattr(obj, "__module__", None) == module.__name__ and inspect.isclass(obj) \
                and dataclasses.is_dataclass(obj):
            classes[name] = obj
        elif getattr(obj, "__module__", None) == module.__name__ and (inspect.isclass(obj) or inspect.isfunction(obj)):
            funcs[name] = obj
    return tables, classes, funcs


def _original(module_name: str, name: str):
    for home in JAX_HOMES[module_name]:
        obj = getattr(importlib.import_module(home), name, None)
        if obj is not None and not inspect.ismodule(obj):
            return obj
    return None


def _objects(kind: int):
    out = []
    for mname, module in _torch_modules().items():
        for name, obj in _own(module)[kind].items():
            if f"{mname}.{name}" not in PORT_ONLY:
                out.append(pytest.param(mname, name, obj, id=f"{mname}.{name}"))
    return out


class _Diff:
    """Collects mismatches of one table; keys listed in PORT_IRRELEVANT[where] are skipped."""

    def __init__(self, where: str):
        self.where, self.problems = where, []
        self.irrelevant = PORT_IRRELEVANT.get(where, {})
        self.used = set()

    def keys(self, ours, theirs, prefix=""):
        for k in sorted(set(ours) ^ set(theirs), key=str):
            if self.skip(prefix + str(k)):
                continue
            side = "scene3d_torch" if k in ours else "JAX"
            self.problems.append(f"{self.where}: key '{prefix}{k}' only on the {side} side (port it, or list it in "
                                 "PORT_IRRELEVANT with a reason)")
        return sorted(set(ours) & set(theirs), key=str)

    def value(self, key: str, ours, theirs):
        if self.skip(key):
            return
        if (type(ours) is not type(theirs) and not (_number(ours) and _number(theirs))) or ours != theirs:
            self.problems.append(f"{self.where}: {key}: scene3d_torch has {ours!r}, JAX has {theirs!r}")

    def skip(self, key: str) -> bool:
        if key in self.irrelevant:
            self.used.add(key)
            return True
        return False

    def check(self):
        stale = sorted(set(self.irrelevant) - self.used)
        problems = self.problems + [f"{self.where}: PORT_IRRELEVANT lists {k!r}, which differs no more" for k in stale]
        assert not problems, "\n".join(problems)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compare_table(diff: _Diff, ours, theirs, prefix=""):
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for k in diff.keys(ours, theirs, prefix):
            a, b = ours[k], theirs[k]
            if isinstance(a, dict) and isinstance(b, dict):
                _compare_table(diff, a, b, f"{prefix}{k}.")
            elif callable(a) and callable(b):
                continue  # function tables (activations, norms): names here, behaviour in the tests below
            else:
                diff.value(f"{prefix}{k}", a, b)
    else:
        diff.value(prefix.rstrip(".") or "value", ours, theirs)


# ---------------------------------------------------------------------------------------------------------------


def test_every_port_object_is_compared_or_port_only():
    """Each scene3d_torch table / dataclass / public callable has a JAX original, or is listed in PORT_ONLY."""
    missing, stale = [], set(PORT_ONLY)
    for mname, module in _torch_modules().items():
        assert mname in JAX_HOMES, f"new module {mname}: add it to JAX_HOMES"
        for kind in _own(module):
            for name in kind:
                key = f"{mname}.{name}"
                stale.discard(key)
                if key not in PORT_ONLY and _original(mname, name) is None:
                    missing.append(key)
    assert not missing, f"no JAX original found for {missing} (add its home to JAX_HOMES or list it in PORT_ONLY)"
    assert not stale, f"PORT_ONLY lists objects that no longer exist: {sorted(stale)}"
    known = {f"{m}.{n}" for m, mod in _torch_modules().items() for kind in _own(mod) for n in kind}
    for where, keys in PORT_IRRELEVANT.items():
        assert where.rstrip("()") in known, f"PORT_IRRELEVANT[{where!r}]: no such scene3d_torch object"


@pytest.mark.parametrize("module_name,name,table", _objects(0))
def test_table_matches_jax(module_name, name, table):
    original = _original(module_name, name)
    diff = _Diff(f"{module_name}.{name}")
    _compare_table(diff, table, original)
    diff.check()


def test_a_drifted_copy_is_caught(monkeypatch):
    """The checks above fail on a changed value, a key on one side only and a changed keyword default."""
    from scene3d_torch import dit3d
    from scene3d_torch import nn as tnn
    drifted = {k: dict(v) for k, v in dit3d.VARIANTS.items()}
    drifted["B"]["depth"] += 1
    drifted["S"]["mlp_ratio"] = 4.0
    del drifted["tiny"]
    diff = _Diff("scene3d_torch.dit3d.VARIANTS")
    _compare_table(diff, drifted, _original("scene3d_torch.dit3d", "VARIANTS"))
    with pytest.raises(AssertionError) as err:
        diff.check()
    assert "B.depth: scene3d_torch has 13, JAX has 12" in str(err.value)
    assert "key 'S.mlp_ratio' only on the scene3d_torch side" in str(err.value)
    assert "key 'tiny' only on the JAX side" in str(err.value)
    init = tnn.TimestepEmbedder.__init__
    monkeypatch.setattr(init, "__kwdefaults__", {**init.__kwdefaults__, "freq_dim": 128})
    with pytest.raises(AssertionError, match="default of freq_dim: scene3d_torch has 128, JAX has 256"):
        test_keyword_defaults_match_jax("scene3d_torch.nn", "TimestepEmbedder", tnn.TimestepEmbedder)


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _properties(cls) -> set[str]:
    return {n for n, v in inspect.getmembers(cls) if isinstance(v, property) and not n.startswith("_")}


def _variant_configs(module_name: str, cls):
    """Built configs of both sides for every variant: [(variant, port config, JAX config)]."""
    port, jaxm = importlib.import_module(module_name), importlib.import_module(JAX_HOMES[module_name][0])
    maker = {"RAE3DConfig": "rae3d_config", "ViTConfig": "vit_config"}[cls.__name__]
    out = []
    for v in sorted(set(port.VARIANTS) & set(jaxm.VARIANTS)):
        out.append((v, getattr(port, maker)(v), getattr(jaxm, maker)(v)))
    if cls.__name__ == "RAE3DConfig":  # the tower is a separate choice: every ViT variant as the encoder
        for enc in sorted(port.vit_lib.VARIANTS):
            out.append((f"tiny+{enc}", port.rae3d_config("tiny", encoder=enc), jaxm.rae3d_config("tiny", encoder=enc)))
    return out


@pytest.mark.parametrize("module_name,name,cls", _objects(1))
def test_config_dataclass_matches_jax(module_name, name, cls):
    original = _original(module_name, name)
    assert dataclasses.is_dataclass(original), f"{module_name}.{name}: the JAX original is not a dataclass"
    diff = _Diff(f"{module_name}.{name}")
    ours, theirs = _fields(cls), _fields(original)
    for k in diff.keys(ours, theirs):
        diff.value(f"default of {k}", ours[k], theirs[k])
    props = diff.keys(_properties(cls), _properties(original), "property ")
    for variant, a, b in _variant_configs(module_name, cls):
        for k in diff.keys(dataclasses.asdict(a), dataclasses.asdict(b), f"{variant}."):
            diff.value(f"{variant}.{k}", getattr(a, k), getattr(b, k))
        for p in props:
            diff.value(f"{variant}.{p}", getattr(a, p), getattr(b, p))
    diff.check()


def _params(fn) -> dict:
    fn = fn.__init__ if inspect.isclass(fn) else fn
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.kind not in _VAR and k != "self"}


@pytest.mark.parametrize("module_name,name,obj", _objects(2))
def test_keyword_defaults_match_jax(module_name, name, obj):
    original = _original(module_name, name)
    assert original is not None, f"{module_name}.{name}: no JAX original"
    diff = _Diff(f"{module_name}.{name}()")
    ours, theirs = ({k: v for k, v in _params(f).items() if k not in FRAMEWORK_PARAMS} for f in (obj, original))
    for k in diff.keys(ours, theirs):
        diff.value(f"default of {k}", ours[k], theirs[k])
    diff.check()


def test_activation_tables_compute_the_same():
    from scene3d.nn import mlp as jax_mlp
    from scene3d_torch import nn as tnn
    x = np.linspace(-6.0, 6.0, 241, dtype=np.float32)
    for name, fn in tnn.ACTIVATIONS.items():
        ours = fn(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, np.asarray(jax_mlp.ACTIVATIONS[name](jnp.asarray(x))), atol=2e-6,
                                   err_msg=name)


def test_norm_tables_map_the_same_names_to_the_same_norms():
    from scene3d.nn import norm as jax_norm
    from scene3d_torch import nn as tnn
    assert {k: v.__name__ for k, v in tnn.NORMS.items()} == {k: v.__name__ for k, v in jax_norm.NORMS.items()}
