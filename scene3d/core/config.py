"""Config helpers: big_vision-style ``parse_arg``, loading ``configs/x.py:arg``, and JSON dumps of a config.

A config file defines ``get_config(arg=None)`` and starts with
``arg = parse_arg(arg, variant="B", runlocal=False, res=64)``; the command line then picks variants with
``--config=configs/x.py:runlocal,variant=S,res=32``.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import math
import os
import pathlib
import sys
from typing import Any

import ml_collections
import numpy as np

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def _to_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"config arg {key}={text!r}: expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})")


def _guess(text: str) -> Any:
    """Type of a value without a default: bool, int, float, else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _cast(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):  # before int: bool is an int subclass
        return _to_bool(key, text)
    if default is None:
        return _guess(text)
    if isinstance(default, (list, tuple)):
        # Sequences use '+' as separator (',' separates args): "shape=2+4"; elements take the first element's type.
        parts = [p for p in text.split("+") if p != ""]
        elem = default[0] if len(default) else None
        return type(default)(_cast(key, p, elem) for p in parts)
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ValueError(f"config arg {key}={text!r}: expected {type(default).__name__} "
                         f"(the default is {default!r})") from None
    if isinstance(default, str):
        return text
    raise ValueError(f"config arg {key!r}: cannot parse a command-line value for a default of type "
                     f"{type(default).__name__}")


def parse_arg(arg: str | None, *, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parse ``"runlocal,variant=B,res=64"`` into a ConfigDict holding ``spec``'s defaults, overridden.

    A bare name sets that key to True. Values are cast to the type of the key's default (bools accept
    true/false/1/0/yes/no; tuples/lists take ``a+b+c``; a ``None`` default guesses bool/int/float/str).
    Unknown keys raise a ValueError listing the known ones, unless ``lazy`` (then their type is guessed).
    """
    res = dict(spec)
    if arg is None:
        return ml_collections.ConfigDict(res)
    if not isinstance(arg, str):
        raise ValueError(f"config arg must be a string like 'runlocal,variant=B', got {type(arg).__name__}")
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, text = (s.strip() for s in item.split("=", 1))
        else:
            key, text = item, None
        if not key:
            raise ValueError(f"config arg {item!r} in {arg!r}: empty key")
        if key not in spec and not lazy:
            known = ", ".join(f"{k}={v!r}" for k, v in spec.items()) or "(none)"
            raise ValueError(f"config arg {key!r} in {arg!r} is not a known key; known keys: {known}")
        default = spec.get(key)
        if text is None:
            if key in spec and not isinstance(default, bool) and default is not None:
                raise ValueError(f"config arg {key!r} in {arg!r} is given without a value but its default "
                                 f"{default!r} is not a bool; write {key}=VALUE")
            value = True
        else:
            value = _cast(key, text, default) if key in spec else _guess(text)
        res[key] = value
    return ml_collections.ConfigDict(res)


def _import_file(path: pathlib.Path):
    name = f"_scene3d_config_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import config file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_config(path_with_arg: str) -> ml_collections.ConfigDict:
    """Load ``"configs/x.py:runlocal,variant=S"``: import the file and call ``get_config(arg)``.

    Relative paths are tried from the working directory, then from the repository root.
    """
    path, sep, arg = str(path_with_arg).partition(":")
    candidates = [pathlib.Path(path)]
    if not candidates[0].is_absolute():
        candidates.append(pathlib.Path(__file__).resolve().parents[2] / path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"config file {path!r} not found (looked at {[str(c) for c in candidates]})")
    module = _import_file(found.resolve())
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {found} defines no get_config(arg)")
    return module.get_config(arg) if sep else module.get_config()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        x = x.to_dict()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.name
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return repr(x)


def config_to_json(config, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
    """The resolved config as sorted JSON (non-JSON values become their repr); also written to ``path`` if given."""
    text = json.dumps(_jsonable(config), indent=indent, sort_keys=True)
    if path is not None:
        from scene3d.core import io  # noqa: PLC0415  (config is imported by everything; io only when writing)
        io.write_text(path, text + "\n")
    return text


def check_keys(section, known, where: str, hint: str = "") -> None:
    """A ValueError naming the config field ``where`` when the mapping ``section`` has keys outside ``known`` (the
    message lists the unknown and the known keys, then ``hint``)."""
    unknown = sorted(set(section.keys()) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}{(' ' + hint) if hint else ''}")


def model_section(config, task: str, model: str, known, hint: str = ""):
    """``config.model`` of a stage-1 task, checked: its ``name`` (default ``model``) must be ``model`` and its keys
    must be in ``known`` (ValueErrors naming the field)."""
    mc = config.model
    if mc.get("name", model) != model:
        raise ValueError(f"config.model.name: the {task} task trains {model!r}, got {mc.name!r}")
    check_keys(mc, known, "config.model", hint)
    return mc


def dataclass_from_config(cls, cfg, where: str):
    """The fields of dataclass ``cls`` from a dict / ConfigDict, checked: unknown keys raise a ValueError that
    names ``where`` (the config field, e.g. 'config.data.views') and lists the known keys. Returns a dict
    ({} for None) for the caller to post-process and pass to ``cls``."""
    import dataclasses
    if cfg is None:
        return {}
    d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    check_keys(d, {f.name for f in dataclasses.fields(cls)}, where)
    return d
