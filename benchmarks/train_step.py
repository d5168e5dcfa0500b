"""Train-step throughput of any config: steps/s, examples/s, FLOPs per step, MFU, peak memory and compile time.

    python benchmarks/train_step.py --config=configs/can3tok.py:runlocal [--steps 10] [--peak_flops 989e12]
    python benchmarks/train_step.py --config=configs/scenetok.py:runlocal --batch 2 --set model.remat=full --json o.json

The step is the trainer's own (``scene3d.train.setup`` + ``compile_train_step``: params, Adam, EMA, the skip
guards), on the config's mesh over all local devices, fed one synthetic batch of the config's shapes through the
task's own train transforms (``gpu_check.synthetic_batch``: no dataset files are read), so the figures are those of
``python -m scene3d.train`` minus data loading. What it measures, and where from (the helpers are gpu_check's, so
the two scripts count the same way):

- ``compile_s``: lowering + compiling the train step (this script turns no persistent compilation cache on; with
  ``JAX_COMPILATION_CACHE_DIR`` set, a warm cache makes it small);
- ``step_ms`` / ``steps_per_s`` / ``examples_per_s``: the median of ``--steps`` timed steps after one untimed step;
- ``compiled_flops``: the compiled program's ``cost_analysis()`` (as run: remat recomputation counted, nothing inside
  Pallas / cuDNN custom calls; per device, after SPMD partitioning) times ``compiled_loop_factor`` (XLA counts a
  while loop's body once; ``compiled_flops_xla`` is its raw figure); ``model_flops``: the step traced with
  attn_impl='xla' and no remat, counted on its jaxpr with every scan's body x its length (benchmarks/flops.py: the
  model's arithmetic, scanned layer stacks in full, whole program). MFU = model_flops x steps/s / ``--peak_flops``
  (FLOP/s of all devices together; omitted without it);
- ``program_mib``: the compiled program's arguments / temporaries / outputs; ``peak_gib``: the device allocator's peak
  where the backend reports one (GPU, TPU), and on CPU ``peak_rss_gib``, the process's peak resident memory (compiler
  and runtime included).
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import resource
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def _gpu_check():
    """gpu_check.py as a module (benchmarks/ is not a package); its ``_load_bench`` registers it under this name."""
    name = "scene3d_bench_gpu_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "gpu_check.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _override(config, assignment: str) -> None:
    """``key.sub=value`` (value a Python literal, else a string) on the config: the ``--config.key.sub=value`` of
    ``scene3d.export.apply_overrides``."""
    key, sep, _ = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set: expected key=value, got {assignment!r}")
    from scene3d import export
    export.apply_overrides(config, [f"--config.{assignment}"])


def measure(config_arg: str, *, steps: int = 10, batch: int | None = None, peak_flops: float | None = None,
            overrides=(), model_flops: bool = True, log=print) -> dict:
    """One row of figures for ``config_arg`` (``configs/X.py:ARGS``); see the module docstring."""
    import jax

    from scene3d import train
    from scene3d.core.config import load_config
    from scene3d.data import pipeline
    gc = _gpu_check()

    config = load_config(config_arg)
    with config.unlocked():
        if batch:
            config.global_batch_size = int(batch)
    for assignment in overrides:
        _override(config, assignment)
    batch = int(config.global_batch_size)
    row = dict(config=config_arg, overrides=list(overrides), batch=batch, device=gc.device_info(),
               dtype=config.model.get("dtype"), attn_impl=config.model.get("attn_impl"),
               remat=config.model.get("remat"))

    t0 = time.perf_counter()
    s, state = train.setup(config)
    jax.block_until_ready(state)
    row["init_s"] = time.perf_counter() - t0
    row["params_m"] = sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6
    gbatch = pipeline.to_global(gc.synthetic_batch(config, s.task, batch, seed=0), s.mesh)
    log(f"{config_arg}: {row['params_m']:.2f} M parameters, batch {batch}, init {row['init_s']:.1f} s; compiling")

    t0 = time.perf_counter()
    compiled = train.compile_train_step(s, state, gbatch)
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
        row["program_mib"] = dict(args=mem.argument_size_in_bytes / 2**20, temps=mem.temp_size_in_bytes / 2**20,
                                  outputs=mem.output_size_in_bytes / 2**20)
    # per device: the SPMD-partitioned program one device runs (replicated work, e.g. Adam on replicated params,
    # counted on each)
    row["compiled_flops"] = row["compiled_flops_xla"] = float(
        (compiled.cost_analysis() or {}).get("flops", float("nan")))  # loop bodies once; corrected below

    state, metrics = compiled(state, gbatch)  # first step (allocation, transfers): not timed
    jax.block_until_ready(metrics)
    times = []
    for _ in range(max(1, int(steps))):
        t0 = time.perf_counter()
        state, metrics = compiled(state, gbatch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    row.update(timed_steps=len(times), step_ms=1e3 * step_s, steps_per_s=1.0 / step_s, examples_per_s=batch / step_s,
               loss=float(jax.device_get(metrics["loss"])))
    stats = gc._memory_stats(jax.devices()[0])
    if stats and stats.get("peak_bytes_in_use"):
        row["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB

    row["compiled_loop_factor"] = gc._compiled_loop_factor(s, state, gbatch)
    row["compiled_flops"] = row["compiled_flops_xla"] * row["compiled_loop_factor"]
    if model_flops:
        try:
            row["model_flops"] = gc._model_flops(config, s, state, gbatch)
        except Exception as e:  # noqa: BLE001 - MFU then uses the compiled count
            row["model_flops_error"] = gc.first_line(e)
    if row["compiled_loop_factor"] != 1.0:
        # XLA's cost analysis counts a while loop's body once: a scanned layer stack's FLOPs are under-counted by
        # about its depth (flow_shapes runlocal: 1.6e9 scanned against 4.8e9 unrolled); both counts shown are full.
        row["flops_note"] = (f"scanned layers: XLA's compiled count {row['compiled_flops_xla']:.4g} (loop bodies "
                             f"once) x {row['compiled_loop_factor']:.3g}")
    flops = row.get("model_flops") or row.get("compiled_flops", 0.0) * jax.device_count()
    if peak_flops and flops and np.isfinite(flops):
        row["achieved_tflops"] = flops * row["steps_per_s"] / 1e12
        row["mfu"] = flops * row["steps_per_s"] / float(peak_flops)
        row["mfu_flops"] = "model_flops" if row.get("model_flops") else "compiled_flops"
    return row


def _g(x, fmt="{:.3g}"):
    return "-" if x is None else fmt.format(x)


def summary(row: dict) -> str:
    mem = row.get("program_mib") or {}
    lines = [
        f"config        {row['config']} {' '.join(row['overrides'])}".rstrip(),
        f"device        {row['device'].get('kind')} x{row['device'].get('count')} (jax {row['device'].get('jax')})",
        f"params        {row['params_m']:.2f} M   batch {row['batch']}   dtype {row['dtype']}   remat {row['remat']}",
        f"init / compile {row['init_s']:.1f} s / {row['compile_s']:.1f} s",
        f"step          {row['step_ms']:.1f} ms (median of {row['timed_steps']})   {row['steps_per_s']:.3g} steps/s   "
        f"{row['examples_per_s']:.3g} examples/s",
        f"FLOPs/step    model {_g(row.get('model_flops'), '{:.4g}')}   compiled (per device, loops counted) "
        f"{_g(row.get('compiled_flops'), '{:.4g}')}",
        f"MFU           {_g(row.get('mfu'), '{:.1%}')}"
        + ("" if row.get("mfu") is not None else "   (no --peak_flops)"),
        f"memory        program args {_g(mem.get('args'), '{:.0f}')} + temps {_g(mem.get('temps'), '{:.0f}')} MiB   "
        f"device peak {_g(row.get('peak_gib'), '{:.2f}')} GiB   process peak RSS {row['peak_rss_gib']:.2f} GiB",
    ]
    if row.get("flops_note"):
        lines.append(f"NOTE          {row['flops_note']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="configs/X.py:ARGS")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--batch", type=int, default=None, help="global batch size (default: the config's)")
    p.add_argument("--peak_flops", type=float, default=None, help="peak FLOP/s of all devices, for MFU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--no_model_flops", action="store_true", help="skip the second lowering that counts model FLOPs")
    p.add_argument("--json", default=None, help="also write the row to this JSON file")
    a = p.parse_args(argv)
    row = measure(a.config, steps=a.steps, batch=a.batch, peak_flops=a.peak_flops, overrides=a.set,
                  model_flops=not a.no_model_flops)
    print(summary(row))
    if a.json:
        _gpu_check().write_results(a.json, row)  # temp file + rename, strict JSON
    return row


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # scene3d and configs/ from this checkout, however it was started
    main()
