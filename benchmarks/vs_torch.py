"""CPU speed and memory of our JAX train step and forward against the same architecture in plain PyTorch.

    python benchmarks/vs_torch.py --family can3tok --size mid --threads 2 --repeats 3 --steps 5
    python benchmarks/vs_torch.py --family can3tok --size tiny --repeats 1 --json /tmp/vs_torch.json

What it does (issue 19 item 4):

1. builds the family's JAX model, task and train state from its config exactly as the trainer does
   (``scene3d.train.setup``; one CPU device) and one synthetic batch of the config's shapes
   (``gpu_check.synthetic_batch``, through the task's own transforms);
2. copies the weights to the PyTorch port (``scene3d.convert.torch_port`` -> ``scene3d_torch``, strict load) and
   checks that the training loss is the same on that batch with the same posterior noise (relative difference
   <= 1e-4, else it stops);
3. times, each in a FRESH child process (imports, model build and weight load included in its memory, not in its
   times), alternating JAX, torch, JAX, torch, ...: the train step (forward + backward + optimiser update: ours is
   the trainer's own step with its clipping + Adam, skip guards and metrics (``--step trainer``), or the same loss,
   gradients and optimiser without the guards (``--step plain``, the work the torch step does); torch's is
   zero_grad, backward, ``clip_grad_norm_`` and ``torch.optim.Adam`` (AdamW with weight decay; default
   ``foreach`` / non-fused implementation) with the config's optimiser settings; denormals flushed to zero as in
   XLA's CPU code)
   and the forward alone (the training loss without gradients: ``jit`` of the task's loss / ``torch.no_grad``).
   Each child is pinned to ``--threads`` CPUs (``sched_setaffinity``, which sizes XLA's CPU thread pools, plus
   ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and ``torch.set_num_threads``), runs one untimed step, then
   ``--steps`` timed ones, and reports their median (wall time, and the process's CPU time: steadier on a shared
   machine), its peak resident memory (``VmHWM``: runtime, compiler and
   model included) and, for JAX, the compile time and the compiled program's ``memory_analysis``;
4. prints a markdown table: per part and framework the median over repeats of the children's medians, the ratio
   JAX / torch of times and of peak memory.

Children get ``XLA_FLAGS`` without a forced host device count and no ``JAX_COMPILATION_CACHE_DIR`` (compile times
are real compiles). Compare only on a quiet machine: the load (``os.getloadavg``) is printed with the table.

Families are entries of ``FAMILIES``: a :class:`Family` says how to make the config of each size and how to run the
torch side (build from the exported weights, the loss of a batch, the noise the JAX task draws for the loss check).
The JAX side is generic (the task's ``build_model`` / ``loss`` and the trainer's step).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
PARTS = ("train", "forward")
STEPS = ("trainer", "plain")  # the JAX train step: the trainer's own, or without its guards (see _compile_plain_step)
FRAMEWORKS = ("jax", "torch")
RESULT_TAG = "VS_TORCH_RESULT "
LOSS_RTOL = 1e-4


def _bench(name: str):
    """A sibling benchmark script as a module (benchmarks/ is not a package): gpu_check for its helpers."""
    mod_name = f"scene3d_bench_{name}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, HERE / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[mod_name]


# ------------------------------------------------------------------------------------------------- families


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family of the comparison.

    sizes: size name -> ``dict(config="configs/X.py:ARGS", set={"dotted.key": value}, batch=B, note="...")``.
    loss_info: task -> JSON-able dict the torch side needs to compute the task's loss (recon kind, weights, ...).
    jax_noise: (task, model, batch, key) -> dict of numpy arrays: the random draws ``task.loss(model, batch, key,
      step=None)`` makes, in the form ``torch_loss`` takes them (for the loss check).
    torch_loss: (torch model, batch dict of tensors, loss_info, noise dict of tensors or None) -> scalar loss
      tensor; with noise None it draws its own (``torch.randn``), as a training step does. Must not import jax.
    """
    sizes: dict[str, dict[str, Any]]
    loss_info: Callable[[Any], dict]
    jax_noise: Callable[..., dict]
    torch_loss: Callable[..., Any]


def _can3tok_loss_info(task) -> dict:
    return dict(recon=task.recon_kind, beta=task.beta)


def _can3tok_jax_noise(task, model, batch, key) -> dict:
    """AutoencodeTask.loss without a step: full-scale noise, k1 -> eps_tokens, k2 -> eps_latent."""
    import jax
    b, mc = batch["gaussians"].shape[0], model.config
    k1, k2 = jax.random.split(key)
    return {"eps_tokens": np.asarray(jax.random.normal(k1, (b, mc["num_latents"], mc["embed_dim"]))),
            "eps_latent": np.asarray(jax.random.normal(k2, (b, mc["latent_dim"])))}


def _can3tok_torch_loss(model, batch, info, noise=None):
    import torch
    from scene3d_torch import can3tok
    rows = batch["gaussians"].float()
    b, c = rows.shape[0], model.config
    if noise is None:
        noise = {"eps_tokens": torch.randn(b, c["num_latents"], c["embed_dim"]),
                 "eps_latent": torch.randn(b, c["latent_dim"])}
    total, _ = can3tok.loss(model, rows, eps_tokens=noise["eps_tokens"], eps_latent=noise["eps_latent"],
                            recon=info["recon"], beta=info["beta"])
    return total


# Sizes. tiny: the runlocal shapes (512 Gaussians, the tiny variant with a 16-float latent, batch 16), with the
# PCA baseline fit and the mean-scene head init (start-up work, not the step) off. mid (issue 19's "width 384,
# 6 + 12 blocks, 4096 Gaussians, batch 2, 78 M parameters"): the release architecture and recipe (l2_batch + 1e-5
# KL, Adam 1e-4, clipping at 1) with 4096 Gaussians, a 1024-float latent (32 decoder tokens of the release's
# 32-dim token posterior) and a 384-wide head: 77.7 M parameters.
CAN3TOK = Family(
    sizes={
        "tiny": dict(config="configs/can3tok.py:runlocal", batch=16,
                     set={"metrics.baselines": 0, "init.head_bias": "default"},
                     note="runlocal shapes: tiny variant, 512 Gaussians, latent 16, head 1 x 256"),
        "mid": dict(config="configs/can3tok.py:variant=release", batch=2,
                    set={"model.num_gaussians": 4096, "data.gaussians.num_gaussians": 4096, "model.latent_dim": 1024,
                         "model.head_width": 384},
                    note="release architecture: width 384, 6 + 12 blocks, 4096 Gaussians, latent 1024, head 384"),
    },
    loss_info=_can3tok_loss_info, jax_noise=_can3tok_jax_noise, torch_loss=_can3tok_torch_loss)

FAMILIES: dict[str, Family] = {"can3tok": CAN3TOK}


def family_config(family: str, size: str, overrides=()):
    """The config of ``family`` at ``size`` (its ``set`` overrides, then ``overrides`` ("key=value" strings, as
    ``--set``) applied, batch set)."""
    from scene3d.core.config import load_config
    fam = FAMILIES[family]
    if size not in fam.sizes:
        raise ValueError(f"vs_torch: family {family!r} has sizes {sorted(fam.sizes)}, not {size!r}")
    spec = fam.sizes[size]
    config = load_config(spec["config"])
    train_step = _bench("train_step")
    with config.unlocked():
        for key, value in spec.get("set", {}).items():  # the size's own keys may be new (e.g. model.latent_dim)
            *path, leaf = key.split(".")
            node = config
            for name in path:
                node = node[name]
            node[leaf] = value
        config.global_batch_size = int(spec["batch"])
    for assignment in overrides:
        train_step._override(config, assignment)
    return config


# ------------------------------------------------------------------------------------------------- children


def child_env(threads: int) -> dict:
    """The environment of a measuring child: one host device, no persistent compilation cache, ``threads``
    threads for OpenMP / MKL."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(threads)
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def pin_threads(threads: int) -> list[int]:
    """Restrict this process to the first ``threads`` CPUs it may run on (before jax / torch start their pools)."""
    cpus = sorted(os.sched_getaffinity(0))[:max(1, int(threads))]
    os.sched_setaffinity(0, cpus)
    return cpus


def _peak_rss_gib() -> float:
    """This process's peak resident memory: ``VmHWM`` of /proc/self/status (Linux). Not ``ru_maxrss``: Linux keeps
    that across exec, so a child forked from a parent holding 2 GiB would report at least 2 GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 2**30  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux


def _timed(fn, steps: int, row: dict) -> None:
    """row['times_s'] (wall) and row['cpu_times_s'] (this process's CPU time, all threads) of ``steps`` calls after
    one untimed call (allocation, caches). On a shared machine CPU time is the steadier figure."""
    fn()
    row["times_s"], row["cpu_times_s"] = [], []
    for _ in range(max(1, int(steps))):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        row["times_s"].append(time.perf_counter() - t0)
        row["cpu_times_s"].append(time.process_time() - c0)


def run_jax(job: dict) -> dict:
    """Child: the JAX train step or forward of ``job`` (see :func:`measure`)."""
    import jax
    from flax import nnx

    from scene3d import tasks, train
    from scene3d.convert import engine
    from scene3d.convert import torch_port as ctp
    from scene3d.data import pipeline

    config = family_config(job["family"], job["size"], job.get("set", ()))
    task = tasks.get_task(config)
    # the exported weights onto the model's abstract shapes (no second copy of random initial values)
    abstract = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(int(config.seed))))
    params = ctp.torch_port_to_state(abstract, engine.load_state_dict(job["weights"])).filter(nnx.Param)
    row: dict[str, Any] = {"params_m": sum(x.size for x in jax.tree.leaves(params)) / 1e6}
    with np.load(job["batch"]) as f:
        batch = {k: f[k] for k in f.files}
    if job["part"] == "train":
        # the trainer's state (sharded init, optimiser state, step, rng) with the exported weights swapped in
        s, state = train.setup(config)
        if jax.tree.structure(params) != jax.tree.structure(state["params"]):
            raise ValueError(f"vs_torch: the weights in {job['weights']} do not give the train state's parameters")
        state["params"] = jax.device_put(params, s.state_shardings["params"])
        del params
        batch = pipeline.to_global(batch, s.mesh)
        t0 = time.perf_counter()
        compiled = (train.compile_train_step(s, state, batch) if job.get("step", "trainer") == "trainer"
                    else _compile_plain_step(s, state, batch))
        holder = {"state": state}

        def call():
            holder["state"], metrics = compiled(holder["state"], batch)
            jax.block_until_ready((holder["state"], metrics))
            row["loss"] = float(metrics["loss"])
    else:
        # the forward needs no train state (no optimiser state held: torch's forward child holds none either)
        graphdef = nnx.split(abstract)[0]
        key = jax.random.key(0)
        batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}

        def fwd(p, b, k):
            return task.loss(nnx.merge(graphdef, p), b, k, step=None)[0]

        t0 = time.perf_counter()
        compiled = jax.jit(fwd).lower(params, batch, key).compile()

        def call():
            row["loss"] = float(jax.block_until_ready(compiled(params, batch, key)))
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
        row["program_mib"] = dict(args=mem.argument_size_in_bytes / 2**20, temps=mem.temp_size_in_bytes / 2**20,
                                  outputs=mem.output_size_in_bytes / 2**20)
    _timed(call, job["steps"], row)
    return row


def _compile_plain_step(s, state, batch):
    """The trainer's step without its guards: loss, gradients, the trainer's optimiser (``make_optimizer``: clipping
    + Adam), the update; no finiteness / skip checks, no EMA, no metrics but the loss (what the torch step does)."""
    import jax
    import optax

    from scene3d import train
    from scene3d.core import sharding as sh

    def step_fn(st, b):
        rng = jax.random.fold_in(jax.random.wrap_key_data(st["rng"]), st["step"])

        def loss_fn(p):
            return s.task.loss(train.merge_model(s.graphdef, p, st), b, rng, step=st["step"])[0]

        loss, grads = jax.value_and_grad(loss_fn)(st["params"])
        updates, opt_state = s.tx.update(grads, st["opt_state"], st["params"])
        out = dict(st, params=optax.apply_updates(st["params"], updates), opt_state=opt_state, step=st["step"] + 1)
        return out, {"loss": loss}

    with sh.use_mesh(s.mesh, s.rules):
        return jax.jit(step_fn, in_shardings=(s.state_shardings, train.batch_shardings(batch, s.mesh)),
                       out_shardings=(s.state_shardings, sh.replicated(s.mesh)),
                       donate_argnums=(0,)).lower(state, batch).compile()


def run_torch(job: dict) -> dict:
    """Child: the PyTorch train step or forward of ``job`` (see :func:`measure`). Imports no jax."""
    import torch

    import scene3d_torch
    torch.set_num_threads(int(job["threads"]))
    # Flush denormals to zero, as XLA's CPU code does: without it Adam's sqrt over denormal second moments alone
    # took 2/3 of the tiny size's torch step (0.84 s against 0.28 s).
    torch.set_flush_denormal(True)
    fam = FAMILIES[job["family"]]
    model = scene3d_torch.load(job["weights"]).train()
    with np.load(job["batch"]) as f:
        batch = {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    info, opt_cfg = job["loss_info"], job["optim"]
    row: dict[str, Any] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if job["part"] == "train":
        params = [p for p in model.parameters() if p.requires_grad]
        kw = dict(lr=opt_cfg["lr"], betas=(opt_cfg["b1"], opt_cfg["b2"]), eps=opt_cfg["eps"])
        wd = float(opt_cfg.get("weight_decay") or 0.0)
        opt = torch.optim.AdamW(params, weight_decay=wd, **kw) if wd else torch.optim.Adam(params, **kw)

        def call():
            opt.zero_grad(set_to_none=True)
            loss = fam.torch_loss(model, batch, info)
            loss.backward()
            if opt_cfg.get("clip_norm"):
                torch.nn.utils.clip_grad_norm_(params, float(opt_cfg["clip_norm"]))
            opt.step()
            row["loss"] = float(loss.detach())
    else:
        def call():
            with torch.no_grad():
                row["loss"] = float(fam.torch_loss(model, batch, info))
    _timed(call, job["steps"], row)
    return row


def child_main(job: dict) -> None:
    cpus = pin_threads(job["threads"])
    row = (run_jax if job["framework"] == "jax" else run_torch)(job)
    row.update(framework=job["framework"], part=job["part"], cpus=cpus, peak_rss_gib=_peak_rss_gib(),
               median_ms=1e3 * float(np.median(row["times_s"])),
               median_cpu_ms=1e3 * float(np.median(row["cpu_times_s"])))
    print(RESULT_TAG + json.dumps(row), flush=True)


def run_child(job: dict, timeout_s: float) -> dict:
    """One measurement in a fresh process; its result row (ValueError with the child's last output on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(job)],
                          env=child_env(job["threads"]), capture_output=True, text=True, timeout=timeout_s,
                          cwd=str(REPO))
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ValueError(f"vs_torch: the {job['framework']} {job['part']} child failed (exit {proc.returncode}):\n"
                         f"{tail}")
    return dict(json.loads(lines[-1][len(RESULT_TAG):]), process_s=wall)


# ------------------------------------------------------------------------------------------------- parent


def prepare(family: str, size: str, workdir: str, overrides=(), log=print) -> dict:
    """Build the JAX side, export its weights and a batch into ``workdir``, check the torch loss equals ours.

    Returns the job fields every child shares and the loss check's figures."""
    import jax
    import torch
    from flax import nnx

    import scene3d_torch
    from scene3d import train
    from scene3d.convert import torch_port as ctp
    fam = FAMILIES[family]
    config = family_config(family, size, overrides)
    s, state = train.setup(config)
    model = nnx.merge(s.graphdef, state["params"])
    batch = _bench("gpu_check").synthetic_batch(config, s.task, int(config.global_batch_size), seed=0)
    weights, _ = ctp.save_torch_port(model, os.path.join(workdir, "weights"))
    batch_path = os.path.join(workdir, "batch.npz")
    np.savez(batch_path, **batch)
    info = fam.loss_info(s.task)

    key = jax.random.key(0)
    jbatch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    jax_loss = float(jax.jit(lambda m, b, k: s.task.loss(m, b, k, step=None)[0])(model, jbatch, key))
    noise = {k: torch.from_numpy(np.array(v)) for k, v in fam.jax_noise(s.task, model, jbatch, key).items()}
    tm = scene3d_torch.load(weights).train()
    with torch.no_grad():
        torch_loss = float(fam.torch_loss(tm, {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}, info,
                                          noise))
    rel = abs(torch_loss - jax_loss) / max(abs(jax_loss), 1e-12)
    check = dict(jax=jax_loss, torch=torch_loss, rel_diff=rel, rtol=LOSS_RTOL, ok=bool(rel <= LOSS_RTOL))
    log(f"loss check on one batch, same weights and posterior noise: jax {jax_loss:.7g}  torch {torch_loss:.7g}  "
        f"relative difference {rel:.2e} ({'equal' if check['ok'] else 'DIFFERENT'} within {LOSS_RTOL:g})")
    if not check["ok"]:
        raise ValueError(f"vs_torch: {family} {size}: the torch loss {torch_loss!r} differs from ours {jax_loss!r} "
                         f"(relative {rel:.3g} > {LOSS_RTOL:g}); the timings would compare different computations")
    oc = config.optim
    optim = dict(lr=float(oc.lr), b1=float(oc.get("b1", 0.9)), b2=float(oc.get("b2", 0.999)),
                 eps=float(oc.get("eps", 1e-8)), weight_decay=float(oc.get("weight_decay", 0.0) or 0.0),
                 clip_norm=float(oc.get("clip_norm", 0.0) or 0.0))
    params_m = sum(x.size for x in jax.tree.leaves(state["params"])) / 1e6
    return dict(job=dict(family=family, size=size, set=list(overrides), weights=weights, batch=batch_path,
                         loss_info=info, optim=optim),
                loss_check=check, params_m=params_m, batch=int(config.global_batch_size))


def measure(family: str, size: str = "tiny", *, threads: int = 2, repeats: int = 3, steps: int = 5,
            parts=PARTS, step: str = "trainer", overrides=(), timeout_s: float = 1800.0, log=print) -> dict:
    """The whole comparison (module docstring); returns {family, size, params_m, batch, loss_check, rows, summary}."""
    if family not in FAMILIES:
        raise ValueError(f"vs_torch: unknown family {family!r}; known: {sorted(FAMILIES)}")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"vs_torch: unknown parts {sorted(unknown)}; known: {PARTS}")
    if step not in STEPS:
        raise ValueError(f"vs_torch: step must be one of {STEPS}, got {step!r}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="scene3d_vs_torch_") as workdir:
        t0 = time.perf_counter()
        prep = prepare(family, size, workdir, overrides, log=log)
        log(f"  prepared (JAX + torch models, weights copied, loss checked) in {time.perf_counter() - t0:.0f} s")
        rows = []
        for r in range(max(1, int(repeats))):
            for part in parts:
                for fw in FRAMEWORKS:  # alternating: jax, torch, jax, torch, ...
                    job = dict(prep["job"], framework=fw, part=part, threads=int(threads), steps=int(steps),
                               step=step)
                    row = run_child(job, timeout_s)
                    row["repeat"] = r
                    rows.append(row)
                    log(f"  repeat {r} {part:7s} {fw:5s} median {row['median_ms']:8.1f} ms   peak RSS "
                        f"{row['peak_rss_gib']:.2f} GiB" + (f"   compile {row['compile_s']:.1f} s"
                                                           if "compile_s" in row else "")
                        + f"   (process {row['process_s']:.0f} s)")
    out = dict(family=family, size=size, note=FAMILIES[family].sizes[size].get("note", ""), threads=int(threads),
               repeats=int(repeats), steps=int(steps), step=step, overrides=list(overrides),
               params_m=prep["params_m"], batch=prep["batch"], loss_check=prep["loss_check"],
               load_before=list(load_before), load_after=list(os.getloadavg()), rows=rows)
    out["summary"] = summarize(rows, parts)
    return out


def summarize(rows: list[dict], parts=PARTS) -> dict:
    """part -> {jax: {...}, torch: {...}, ratio_time, ratio_rss}: medians over repeats of the children's medians."""
    out = {}
    for part in parts:
        per = {}
        for fw in FRAMEWORKS:
            mine = [r for r in rows if r["part"] == part and r["framework"] == fw]
            if not mine:
                continue
            d = dict(median_ms=float(np.median([r["median_ms"] for r in mine])),
                     runs_ms=[round(r["median_ms"], 1) for r in mine],
                     peak_rss_gib=float(np.median([r["peak_rss_gib"] for r in mine])))
            if all("median_cpu_ms" in r for r in mine):
                d["median_cpu_ms"] = float(np.median([r["median_cpu_ms"] for r in mine]))
            if any("compile_s" in r for r in mine):
                d["compile_s"] = float(np.median([r["compile_s"] for r in mine if "compile_s" in r]))
            progs = [r["program_mib"] for r in mine if r.get("program_mib")]
            if progs:
                d["program_mib"] = progs[-1]
            per[fw] = d
        if len(per) == 2:
            per["ratio_time"] = per["jax"]["median_ms"] / per["torch"]["median_ms"]
            per["ratio_rss"] = per["jax"]["peak_rss_gib"] / per["torch"]["peak_rss_gib"]
            if "median_cpu_ms" in per["jax"] and "median_cpu_ms" in per["torch"]:
                per["ratio_cpu"] = per["jax"]["median_cpu_ms"] / per["torch"]["median_cpu_ms"]
        out[part] = per
    return out


def table(result: dict) -> str:
    """The markdown table of a :func:`measure` result."""
    head = (f"{result['family']} {result['size']} ({result['note']}): {result['params_m']:.1f} M parameters, batch "
            f"{result['batch']}, {result['threads']} threads, {result['repeats']} repeats x {result['steps']} timed "
            f"steps, JAX step '{result['step']}'{''.join(' --set ' + o for o in result['overrides'])}; load "
            f"{result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after; loss check "
            f"jax {result['loss_check']['jax']:.6g} / torch {result['loss_check']['torch']:.6g} (rel. diff "
            f"{result['loss_check']['rel_diff']:.1e})")
    lines = [head, "",
             "| part | JAX ms (runs) | torch ms (runs) | JAX / torch time | CPU ms JAX / torch (ratio) | JAX compile s "
             "| JAX program args + temps MiB | JAX peak RSS GiB | torch peak RSS GiB | JAX / torch RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for part, per in result["summary"].items():
        j, t = per.get("jax", {}), per.get("torch", {})
        prog = j.get("program_mib")
        prog = "-" if not prog else f"{prog['args']:.0f} + {prog['temps']:.0f}"
        lines.append(
            f"| {part} | {j.get('median_ms', float('nan')):.1f} ({', '.join(map(str, j.get('runs_ms', [])))}) "
            f"| {t.get('median_ms', float('nan')):.1f} ({', '.join(map(str, t.get('runs_ms', [])))}) "
            f"| {per.get('ratio_time', float('nan')):.2f} "
            f"| {j.get('median_cpu_ms', float('nan')):.0f} / {t.get('median_cpu_ms', float('nan')):.0f} "
            f"({per.get('ratio_cpu', float('nan')):.2f}) | {j.get('compile_s', float('nan')):.1f} "
            f"| {prog} "
            f"| {j.get('peak_rss_gib', float('nan')):.2f} | {t.get('peak_rss_gib', float('nan')):.2f} "
            f"| {per.get('ratio_rss', float('nan')):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="can3tok", help=f"one of {sorted(FAMILIES)}")
    p.add_argument("--size", default="tiny", help="a size of the family (can3tok: tiny, mid)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each measuring child")
    p.add_argument("--repeats", type=int, default=3, help="rounds of fresh processes (jax, torch alternating)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per child (after one untimed)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of train,forward")
    p.add_argument("--step", default="trainer", choices=STEPS,
                   help="JAX train step: the trainer's (skip guards, metrics) or 'plain' (loss, grads, optimiser)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="JAX config override (repeatable), e.g. model.scan=False: the torch side is unaffected, so "
                        "only what keeps the architecture (layer scanning, remat, attn_impl)")
    p.add_argument("--timeout_s", type=float, default=1800.0, help="wall-clock limit of one child")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        child_main(json.loads(a.child))
        return {}
    if a.family not in FAMILIES:
        p.error(f"--family: unknown {a.family!r}; known: {sorted(FAMILIES)}")
    if a.size not in FAMILIES[a.family].sizes:
        p.error(f"--size: family {a.family!r} has sizes {sorted(FAMILIES[a.family].sizes)}, not {a.size!r}")
    result = measure(a.family, a.size, threads=a.threads, repeats=a.repeats, steps=a.steps,
                     parts=tuple(x for x in a.parts.split(",") if x), step=a.step, overrides=a.set,
                     timeout_s=a.timeout_s)
    print(table(result))
    if a.json:
        _bench("gpu_check").write_results(a.json, result)  # temp file + rename, strict JSON
    return result


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = child_env(1)["XLA_FLAGS"]  # the parent too: one host device (before jax starts)
    sys.path.insert(0, str(REPO))
    main()
