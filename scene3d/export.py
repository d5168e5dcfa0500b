"""Training-run checkpoint <-> PyTorch state_dict (safetensors), in the official layouts or our torch port's.

Export (orbax checkpoint -> one safetensors file + a JSON sidecar):

    python -m scene3d.export --workdir=DIR [--step=N] [--params=ema|raw] --out=FILE.safetensors \
        --layout=official|torch_port [--part=PATH]

Reads ``DIR/config.json``, builds the task's model abstractly (``nnx.eval_shape``), restores the variables of
checkpoint ``step`` (default: latest) on one CPU device - the EMA when the run kept one, unless ``--params=raw`` -
and writes the state_dict of the chosen part:

- ``--layout=official``: the released PyTorch code's keys and layouts (``scene3d.convert``): SceneTok,
  Can3Tok (``geo_decoder.*``, never run on the Gaussian path, written as zeros unless an import kept the original
  tensors), SceneGen, ImageVAE. SceneTok's ``denoiser.null_tokens`` is written when our null token is non-zero
  (a CFG-trained model; the release never creates it).
- ``--layout=torch_port``: the keys of our PyTorch port (``scene3d.convert.torch_port``; LatentDiT, DiT3D,
  RAE3D, ViT); the sidecar holds ``model_spec`` (class + constructor kwargs) to rebuild it.

``--part`` picks a submodule by attribute path (``dit``, ``rae``, ``scenetok.decoder`` ...). Default: the whole
model, except for the wrappers a task builds around its trained network, where it is that network:
SceneTokModel -> ``scenetok`` (the image compressor is not part of the SceneTok release), SceneGenModel ->
``generator``, LatentDiffusion / DiT3DModel -> ``dit`` (the frozen tokenizer is exported from its own stage-1 run).
``FILE.json`` (sidecar) records layout, part, class, step, workdir and params (ema|raw). Both files are written to
temporary names and renamed into place: after an error nothing is left at ``--out``. A table of tensors, parameters
and bytes per key group is printed.

Import (state_dict -> a step-0 training run that ``scene3d.train`` resumes and ``scene3d.export`` /
``scene3d.sample`` load):

    python -m scene3d.export --import_from=FILE.safetensors --layout=official|torch_port \
        --config=configs/X.py:ARGS [--config.KEY=VALUE ...] --workdir=NEWDIR [--part=PATH]

Builds the config's model, converts the file into the chosen part (the layout of the part's class,
``scene3d.convert.layout_for``; missing keys and shape mismatches are errors naming the key and the shapes),
creates the full trainer state exactly as ``scene3d.train.setup`` does (so the rest of a stage-2 model, e.g. its
frozen tokenizer, comes from the config as in training), replaces the part's variables (and the EMA, if the config
keeps one) by the imported ones and saves step 0 with the trainer's Checkpointer (with the data iterator's start
position), then ``NEWDIR/config.json`` and ``NEWDIR/import.json``. Official tensors that
have no counterpart in our model but are needed for a bit-exact export (Can3Tok's ``geo_decoder.*``, SceneTok's
RoPE tables) are kept in ``NEWDIR/official_extra.safetensors`` and written back by later exports of the same part.
A released SceneTok (its decoder renders VideoDC latents, 4 cameras each) is not a model the scenetok task builds
(one camera per latent, the compressor's latents): importing one reports the shape mismatch; its weights load with
``scene3d.convert.scenetok.model_from_official`` instead. LatentDiffusion's condition encoder (``cond``) has
no exported layout: ``--part=dit`` exports the DiT only.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import convert
from scene3d import tasks as tasks_lib
from scene3d.convert import engine
from scene3d.core import config as config_lib
from scene3d.core import compile_cache, io, runs
from scene3d.core import sharding as sh
from scene3d.nn.frozen import Frozen
from scene3d.tasks import stage1

LAYOUTS = ("official", "torch_port")
# The trained network inside the wrappers that tasks build (module docstring).
WRAPPER_PARTS = {"SceneTokModel": "scenetok", "ReleaseSceneTok": "scenetok", "SceneGenModel": "generator",
                 "LatentDiffusion": "dit", "DiT3DModel": "dit"}
EXTRA_FILE = "official_extra.safetensors"


# ---------------------------------------------------------------------------------------------------- parts


def default_part(model: nnx.Module) -> str:
    """The part exported when ``--part`` is not given ('' = the whole model)."""
    return WRAPPER_PARTS.get(type(model).__name__, "")


def select_part(model: nnx.Module, part: str | None) -> tuple[nnx.Module, str]:
    """(the submodule at attribute path ``part`` (default: :func:`default_part`), its path)."""
    part = default_part(model) if part is None else part
    node = model
    for i, name in enumerate(p for p in part.split(".") if p):
        child = getattr(node, name, None)
        if child is None and name.isdigit():  # an item of an nnx.List / list of modules
            try:
                child = node[int(name)]
            except (TypeError, IndexError, KeyError):
                child = None
        if not isinstance(child, nnx.Module):
            where = ".".join(part.split(".")[:i]) or type(model).__name__
            subs = sorted(k for k, v in vars(node).items() if isinstance(v, nnx.Module))
            raise ValueError(f"--part={part!r}: {where} ({type(node).__name__}) has no submodule {name!r} "
                             f"(submodules: {subs})")
        node = child
    return node, part


def as_trainable(module: nnx.Module) -> nnx.Module:
    """``module`` with ``Frozen`` variables seen as ``nnx.Param`` (a frozen tokenizer converts like a trained one);
    abstract modules stay abstract."""
    graphdef, state = nnx.split(module)
    state = jax.tree.map(lambda v: nnx.Param(v.get_value(), **v.get_metadata()) if isinstance(v, Frozen) else v,
                         state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def supported_layouts(module: nnx.Module) -> list[str]:
    return convert.layouts_of(module)


def _classes_with(layout: str) -> list[str]:
    return sorted(cls.__name__ for cls, layouts in convert.LAYOUTS.items() if layout in layouts)


def _check_layout(module: nnx.Module, layout: str, part: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: expected one of {LAYOUTS}, got {layout!r}")
    name = type(module).__name__
    if layout not in supported_layouts(module):
        what = f"part {part!r} " if part else ""
        raise ValueError(f"{what}{name} has no {layout!r} layout; {name} supports: "
                         f"{supported_layouts(module) or 'none'} (official: {_classes_with('official')}; "
                         f"torch_port: {_classes_with('torch_port')}; pick another part with --part)")


# ---------------------------------------------------------------------------------------------------- convert


def to_state_dict(module: nnx.Module, layout: str, *, extra: dict | None = None) -> dict[str, Any]:
    """The state_dict of ``module`` (a part) in ``layout``: {key: numpy array}, or ShapeDtypeStructs for an
    abstract module. ``extra``: official tensors to pass through (:data:`EXTRA_FILE`)."""
    _check_layout(module, layout, "")
    m = as_trainable(module)
    return convert.layout_for(m, layout).to_state_dict(m, extra=extra)


def from_state_dict(module: nnx.Module, layout: str, state_dict: dict, *, name: str = "state_dict"):
    """``state_dict`` in ``layout`` -> (pure dict of the part's variables, ``convert.engine.Report``); ``module``
    may be abstract. Missing keys and shape mismatches raise ValueError."""
    _check_layout(module, layout, "")
    m = as_trainable(module)
    state, report = convert.layout_for(m, layout).to_state(m, state_dict, name=name)
    return nnx.to_pure_dict(state), report


# ---------------------------------------------------------------------------------------------------- export


def load_run(workdir: str, *, step: int | None = None, params: str = "ema"):
    """(config, model, info) of a run, restored on one CPU device; info: step, key (ema|params), workdir."""
    if params not in ("ema", "raw"):
        raise ValueError(f"--params: expected 'ema' or 'raw', got {params!r}")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir!r} does not exist")
    mesh = sh.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices("cpu")[:1])
    config, _, model, info = stage1.load_run(workdir, step=step, mesh=mesh, prefer_ema=params == "ema")
    return config, model, info


def _read_extra(workdir: str, part: str, cls: str) -> dict[str, np.ndarray] | None:
    path = os.path.join(workdir, EXTRA_FILE)
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
        if meta.get("part") != part or meta.get("class") != cls:
            return None
        return {k: f.get_tensor(k) for k in f.keys()}


def summary_table(tensors: dict[str, Any], depth: int = 2) -> str:
    """Tensors, parameters and bytes per key group (the first ``depth`` components of the key), plus a total."""
    groups: dict[str, list[int]] = {}
    for k, v in tensors.items():
        g = ".".join(k.split(".")[:depth])
        n = int(np.prod(v.shape))
        row = groups.setdefault(g, [0, 0, 0])
        row[0] += 1
        row[1] += n
        row[2] += n * np.dtype(v.dtype).itemsize
    total = [sum(r[i] for r in groups.values()) for i in range(3)]
    width = max([len(g) for g in groups] + [5])
    lines = [f"{'keys':<{width}}  {'tensors':>8}  {'params':>15}  {'bytes':>15}"]
    lines += [f"{g:<{width}}  {r[0]:>8,}  {r[1]:>15,}  {r[2]:>15,}" for g, r in sorted(groups.items())]
    lines.append(f"{'total':<{width}}  {total[0]:>8,}  {total[1]:>15,}  {total[2]:>15,}")
    return "\n".join(lines)


def export_run(workdir: str, out: str, layout: str, *, step: int | None = None, params: str = "ema",
               part: str | None = None) -> dict:
    """Write ``out`` (safetensors) and ``out`` with ``.json`` (sidecar) from a run's checkpoint; returns the
    sidecar record (plus ``tensors``: {key: shape})."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: expected one of {LAYOUTS}, got {layout!r}")
    if not out.endswith(".safetensors"):
        raise ValueError(f"--out={out!r}: expected a .safetensors file name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"--out={out!r}: folder {os.path.dirname(os.path.abspath(out))} does not exist")
    config, model, info = load_run(workdir, step=step, params=params)
    module, part = select_part(model, part)
    cls = type(module).__name__
    _check_layout(module, layout, part)
    extra = _read_extra(workdir, part, cls) if layout == "official" else None
    tensors = to_state_dict(module, layout, extra=extra)
    record = {"layout": layout, "part": part, "class": cls, "step": int(info["step"]),
              "workdir": os.path.abspath(workdir), "params": "ema" if info["key"] == "ema" else "raw",
              "task": config.task}
    if params == "ema" and info["key"] != "ema":
        record["note"] = "the run keeps no EMA: raw parameters exported"
    if layout == "torch_port":
        record["spec"] = convert.torch_port.model_spec(as_trainable(module))
    elif extra:
        record["passthrough"] = sorted(extra)
    if layout == "official" and cls == "Can3Tok" and getattr(module, "head_layout", "release") != "release":
        record["warning"] = (f"this Can3Tok uses head_layout={module.head_layout!r}: the official code (flash "
                             "attention path) computes a different function with these weights")
        print(f"warning: {record['warning']}", file=sys.stderr)
    write_export(out, tensors, record)
    print(f"{out}: {layout} layout of {cls} (part {part or '<whole model>'!r}), step {record['step']}, "
          f"{record['params']} parameters", file=sys.stderr)
    print(summary_table(tensors), file=sys.stderr)
    return dict(record, tensors={k: tuple(v.shape) for k, v in tensors.items()})


def write_export(out: str, tensors: dict[str, Any], record: dict) -> None:
    """Write the safetensors file and its JSON sidecar, each atomically (the sidecar last)."""
    meta = {"format": "pt", "scene3d.layout": record["layout"], "scene3d.class": record["class"],
            "scene3d.part": record["part"], "scene3d.step": str(record["step"])}
    engine.save_safetensors(out, tensors, meta)
    try:
        io.write_text(sidecar_path(out), json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n")
    except BaseException:
        os.remove(out)
        raise


def sidecar_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".json"


def _json_default(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return np.asarray(x).tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    return repr(x)


# ---------------------------------------------------------------------------------------------------- import


def apply_overrides(config, overrides: list[str]):
    """Apply ``--config.a.b=VALUE`` overrides (existing keys only; VALUE a Python literal or a bare string)."""
    for item in overrides:
        if not item.startswith("--config.") or "=" not in item:
            raise ValueError(f"unrecognised argument {item!r} (config overrides are --config.KEY=VALUE)")
        key, text = item[len("--config."):].split("=", 1)
        *path, leaf = key.split(".")
        node = config
        for p in path:
            if p not in node:
                raise ValueError(f"--config.{key}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"--config.{key}: config has no field {leaf!r} (known: {sorted(node.keys())})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[leaf] = value
    return config


def _put_part(state: dict, part: str, values: dict, name: str) -> int:
    """Replace the trainer state's variables under ``part`` (in ``params`` or ``frozen``) by ``values`` (a pure
    dict of the part); returns the number of arrays replaced."""
    prefix = tuple(p for p in part.split(".") if p)
    prefix = tuple(int(p) if p.isdigit() else p for p in prefix)
    pures = {k: nnx.to_pure_dict(state[k]) for k in ("params", "frozen") if k in state}
    flats = {k: engine.flatten(v) for k, v in pures.items()}
    count = 0
    for path, value in engine.flatten(values).items():
        full = prefix + path
        where = next((k for k, f in flats.items() if full in f), None)
        if where is None:
            raise ValueError(f"{name}: the imported variable {engine.path_name(full)} does not exist in the trainer "
                             "state of this config")
        old = flats[where][full]
        if tuple(np.shape(value)) != tuple(old.shape):
            raise ValueError(f"{name}: {engine.path_name(full)} is {tuple(np.shape(value))}, the config's model "
                             f"expects {tuple(old.shape)}")
        engine.set_path(pures[where], full, jax.device_put(jnp.asarray(value, old.dtype), old.sharding))
        count += 1
    for k, pure in pures.items():
        nnx.replace_by_pure_dict(state[k], pure)
    return count


def import_run(import_from: str, layout: str, config_arg: str, workdir: str, *, part: str | None = None,
               overrides: list[str] = ()) -> dict:
    """Convert ``import_from`` into a step-0 run in ``workdir`` (module docstring); returns the import record."""
    from scene3d import train
    from scene3d.core import checkpoint as ckpt_lib
    if layout not in LAYOUTS:
        raise ValueError(f"--layout: expected one of {LAYOUTS}, got {layout!r}")
    ckdir = runs.checkpoint_dir(workdir)
    if os.path.isdir(ckdir) and os.listdir(ckdir):
        raise FileExistsError(f"--workdir {workdir!r} already holds checkpoints ({ckdir}); import into a new folder")
    state_dict = engine.load_state_dict(import_from)
    config = apply_overrides(config_lib.load_config(config_arg), list(overrides))
    compile_cache.enable_compilation_cache(config)  # the step-0 state's sharded init, as scene3d.train would
    task = tasks_lib.get_task(config)
    abstract = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    module, part = select_part(abstract, part)
    cls = type(module).__name__
    _check_layout(module, layout, part)
    if layout == "torch_port" and os.path.isfile(sidecar_path(import_from)):
        with open(sidecar_path(import_from)) as f:
            spec = json.load(f).get("spec") or {}
        if spec.get("class") not in (None, cls):
            raise ValueError(f"{import_from}: its sidecar describes a {spec['class']}, the config's part "
                             f"{part or '<whole model>'!r} is a {cls}")
    values, report = from_state_dict(module, layout, state_dict, name=os.fspath(import_from))

    s, state = train.setup(config)
    n = _put_part(state, part, values, os.fspath(import_from))
    if "ema" in state:
        state["ema"] = jax.tree.map(jnp.copy, state["params"])
    os.makedirs(workdir, exist_ok=True)
    try:
        data_iter = train.data_iterator(config, s.task, "train")
    except Exception as e:  # noqa: BLE001 - the data may live elsewhere; the weights are still worth saving
        data_iter = None
        print(f"warning: the training data of this config cannot be opened here ({type(e).__name__}: {e}); the "
              "checkpoint holds no data-iterator position", file=sys.stderr)
    record = {"import_from": os.path.abspath(import_from), "layout": layout, "part": part, "class": cls,
              "config": config_arg, "overrides": list(overrides), "arrays": n,
              "report": _short_report(report)}
    with ckpt_lib.Checkpointer(ckdir, keep=int(config.get("keep_ckpts", 3)), async_save=False) as ckpt:
        ckpt.save(0, state, data_iter=data_iter, meta={"step": 0, "imported_from": record["import_from"]},
                  force=True)
    passthrough = getattr(report, "passthrough", None)
    if passthrough:
        engine.save_safetensors(os.path.join(workdir, EXTRA_FILE), passthrough, {"part": part, "class": cls})
    config_lib.config_to_json(config, runs.config_path(workdir))
    io.write_text(os.path.join(workdir, "import.json"), json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"{workdir}: step-0 checkpoint with {n} arrays of {cls} (part {part or '<whole model>'!r}) from "
          f"{import_from}" + (f"; {record['report']}" if report is not None else ""), file=sys.stderr)
    return record


# ---------------------------------------------------------------------------------------------------- CLI


def _short_report(report) -> str | None:
    if report is None:
        return None
    ignored = sorted(report.ignored)
    text = f"imported {len(report.consumed)} tensors; ignored {len(ignored)}"
    if ignored:
        text += " (" + ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "") + ")"
    if report.initialised:
        text += "; initialised: " + ", ".join(f"{k} ({r})" for k, r in report.initialised.items())
    return text


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m scene3d.export", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="run directory (export: read; import: created)")
    p.add_argument("--layout", required=True, help=f"state_dict layout: {' | '.join(LAYOUTS)}")
    p.add_argument("--part", default=None, help="submodule attribute path (default: see module doc)")
    p.add_argument("--out", default=None, help="export: the .safetensors file to write")
    p.add_argument("--step", type=int, default=None, help="export: checkpoint step (default: latest)")
    p.add_argument("--params", default="ema", choices=("ema", "raw"), help="export: EMA (if kept) or raw params")
    p.add_argument("--import_from", default=None, help="import: the state_dict file (.safetensors or torch)")
    p.add_argument("--config", default=None, help="import: configs/X.py:ARGS (plus --config.KEY=VALUE overrides)")
    args, rest = p.parse_known_args(argv)
    if args.import_from is None:
        if args.out is None:
            p.error("export needs --out=FILE.safetensors (or --import_from=FILE to import)")
        if args.config is not None or rest:
            p.error("--config applies to --import_from only")
    elif args.config is None:
        p.error("--import_from needs --config=configs/X.py:ARGS")
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    return args, rest


def main(argv=None) -> dict:
    args, overrides = parse_args(argv)
    if args.import_from is not None:  # (import_run turns the cache on with the config it is given)
        return import_run(args.import_from, args.layout, args.config, args.workdir, part=args.part,
                          overrides=overrides)
    compile_cache.enable_for_run(args.workdir)  # before anything compiles
    return export_run(args.workdir, args.out, args.layout, step=args.step, params=args.params, part=args.part)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # user errors: the message, no traceback
        sys.exit(f"python -m scene3d.export: error: {e}")
