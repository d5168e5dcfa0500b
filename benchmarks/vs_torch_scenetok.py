"""SceneTok train step and forward: our JAX model against the same architecture and weights in plain PyTorch.

    python benchmarks/vs_torch_scenetok.py --size small                       # prepare, alternate fresh processes
    python benchmarks/vs_torch_scenetok.py --size tiny --repeats 2 --steps 3 --mode forward
    python benchmarks/vs_torch_scenetok.py --side jax --dir DIR --steps 5     # one timed process, one JSON line

The SceneTok half of issue 19 item 4, self-contained (``FAMILY``: the functions ``benchmarks/vs_torch.py`` can
call; its generic path times the trainer's step of a config, whose SceneTok models hold the image compressor and
compute latents inside the step, while this script feeds precomputed latents to both sides). One comparison:

1. ``prepare(size, dir)``: the JAX model (random weights, every parameter perturbed so adaLN-Zero and the
   zero-initialised layers are not trivial), one synthetic batch of the size's shapes and one set of explicit
   random draws (token noise, times, latent noise, null-token mask: ``draws_from_rng``) are written to ``dir``:
   ``model.safetensors`` + ``model.json`` (``scene3d.convert.torch_port.save_torch_port``) and ``inputs.npz``.
   The loss of both sides on them is computed and checked equal (relative 1e-4) before anything is timed.
2. ``run(side, dir, steps, mode)`` in a fresh process per side: the JAX side re-imports the weights from the
   safetensors (``import_torch_port``), the torch side builds ``scene3d_torch.load`` (no jax imported); ``mode``
   'step' = forward + backward + Adam (optax.adam / torch.optim.Adam, lr 1e-4), 'forward' = the loss alone. One
   untimed step (JAX: after compiling), then ``steps`` timed ones: median ms, peak RSS (``ru_maxrss``: runtime and
   compiler included), JAX compile seconds, the first loss.

The loss is the SceneTok stage-1 objective as our train step computes it (``SceneTok.loss`` /
``ReleaseSceneTokTask.loss``): precomputed context latents -> compressor -> tokens = mean + std * token_eps;
x_t = (1 - t) x0 + t eps; decoder velocity (null token where drop); velocity MSE + kl_weight x KL.
``jax_train_loss`` is that loss with the draws explicit (equal to ``SceneTok.loss(batch, rng)`` when the draws
come from ``draws_from_rng(rng)``; tests/torch_port/test_scenetok_torch.py checks both), and
``scene3d_torch.scenetok.train_loss`` its PyTorch twin.

Sizes (``SIZES``):
  tiny   configs/scenetok.py:runlocal: pixel-patch latents 8 x 8 x 48, 2 context + 2 target views, batch 8, the
         runlocal compressor (width 64, depth 2, 32 x 8 tokens) and decoder (width 64, depth 3, x-prediction),
         logit-normal times, null-token probability 0.1, KL 1e-6.
  small  16.6 M parameters, RE10K-like shapes as configs/scenetok.py:release_re10k: 12 context VA-VAE latents
         16 x 16 x 32, 8 target video latents 8 x 8 x 128 (4 cameras each: 32 cameras), release rays / timestep /
         bf16 pose rounding; compressor and decoder width 256, depth 4, 4 heads, 128 x 64 tokens; batch 1;
         uniform times in 2 chunks, no null token, KL 1e-10.

Threads: ``--threads`` sets torch.set_num_threads (and OMP / MKL); XLA's CPU client uses every core of the host, so
give it a host (or a ``taskset``) with that many cores. Compare only on a quiet machine: the table prints the load
average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[1]

SMALL_NET = dict(width=256, depth=4, heads=4)
SIZES = {
    "tiny": dict(config="runlocal", batch=8),
    "small": dict(variant="re10k", compressor=dict(SMALL_NET, num_tokens=128), decoder=dict(SMALL_NET), batch=1,
                  num_context=12, num_target=8, config="release_re10k"),
}
INPUTS = "inputs.npz"
MODEL = "model"


# ================================================================================================ JAX side


def _flow_and_loss(size: str):
    """(FlowMatching, kl_weight, latent_scale) of the size's config."""
    from configs.scenetok import get_config
    from scene3d.models import scenetok
    cfg = get_config(SIZES[size]["config"])
    latent_scale = float((cfg.get("release") or {}).get("latent_scale", 1.0))
    return scenetok.flow_objective(cfg.flow), float(cfg.loss.kl_weight), latent_scale


def model_kwargs(size: str) -> dict:
    """SceneTok(**kwargs) of a size (variant, compressor, decoder overrides)."""
    s = SIZES[size]
    if s["config"] == "runlocal":  # the task derives in_channels / input_size from the image compressor
        from configs.scenetok import get_config
        from scene3d.tasks.scenetok import SceneTokTask
        task = SceneTokTask(get_config("runlocal"))
        return dict(variant=task.variant, compressor=task.compressor_cfg, decoder=task.decoder_cfg)
    return dict(variant=s["variant"], compressor=dict(s["compressor"]), decoder=dict(s["decoder"]))


def view_counts(size: str) -> tuple[int, int]:
    """(context views, target latents) of a size."""
    s = SIZES[size]
    if s["config"] == "runlocal":
        from configs.scenetok import get_config
        views = get_config("runlocal").data.views
        return int(views.num_context), int(views.num_target)
    return int(s["num_context"]), int(s["num_target"])


def build_jax(size: str, seed: int = 0, perturb: float = 0.05, scan: bool = True):
    """The JAX SceneTok of ``size`` with random weights, each parameter + N(0, perturb^2) (0: as initialised);
    ``scan``: the layer stacks as one scanned layer (the configs' default) or unrolled."""
    import jax
    from flax import nnx
    from scene3d.models.scenetok import SceneTok
    model = SceneTok(**model_kwargs(size), scan=scan, rngs=nnx.Rngs(seed))
    if perturb:
        params = nnx.state(model, nnx.Param)
        rng = np.random.default_rng(seed + 1)
        nnx.update(model, jax.tree.map(lambda x: x + perturb * rng.standard_normal(x.shape).astype(x.dtype), params))
    return model


def _cameras(rng: np.random.Generator, b: int, v: int) -> tuple[np.ndarray, np.ndarray]:
    """Random OpenCV c2w (B, V, 4, 4) near the first camera and normalised intrinsics (B, V, 4)."""
    q, _ = np.linalg.qr(rng.normal(size=(b, v, 3, 3)))
    c2w = np.tile(np.eye(4), (b, v, 1, 1))
    c2w[..., :3, :3] = q * np.sign(np.linalg.det(q))[..., None, None]
    c2w[..., :3, 3] = rng.normal(scale=0.5, size=(b, v, 3))
    k = np.concatenate([rng.uniform(0.8, 1.2, (b, v, 2)), rng.uniform(0.45, 0.55, (b, v, 2))], -1)
    return c2w.astype(np.float32), k.astype(np.float32)


def make_batch(size: str, model, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic batch of the size's shapes (SceneTok.loss inputs; latents of unit scale)."""
    return synthetic_batch(model, SIZES[size]["batch"], *view_counts(size), seed)


def synthetic_batch(model, batch: int, context: int, target: int, seed: int = 0) -> dict[str, np.ndarray]:
    """SceneTok.loss inputs for ``model``: ``context`` views of latents N(0, 1) with random cameras, ``target``
    latents N(0, 1) with the decoder's number of cameras for them."""
    rng = np.random.default_rng(seed)
    cc, dc = model.compressor.config, model.decoder.config
    ctx_c2w, ctx_k = _cameras(rng, batch, context)
    tgt_c2w, tgt_k = _cameras(rng, batch, model.decoder.num_cameras(target))
    return dict(
        context_latents=rng.normal(size=(batch, context, cc["input_size"], cc["input_size"], cc["in_channels"])
                                   ).astype(np.float32),
        context_c2w=ctx_c2w, context_intrinsics=ctx_k,
        target_latents=rng.normal(size=(batch, target, dc["input_size"], dc["input_size"], dc["in_channels"])
                                  ).astype(np.float32),
        target_c2w=tgt_c2w, target_intrinsics=tgt_k)


def draws_from_rng(model, batch, flow, rng) -> dict:
    """The draws ``SceneTok.loss(batch, rng, flow=flow)`` makes, as arrays: token_eps (B, K, d), t (B, M),
    eps (B, M, h, w, C) and drop (B,) bool (only with ``flow.cond_drop`` > 0). Same key splits as SceneTok.loss."""
    import jax
    import jax.numpy as jnp
    k_enc, k_t, k_eps, k_drop = jax.random.split(rng, 4)
    x0 = jnp.asarray(batch["target_latents"], jnp.float32)
    b = x0.shape[0]
    out = dict(token_eps=jax.random.normal(k_enc, (b,) + model.compressor.token_shape, jnp.float32))
    out["t"], out["eps"], _ = flow.draw(x0, k_t, k_eps, per_view=True)
    if flow.cond_drop > 0:
        out["drop"] = flow.drop(k_drop, b)
    return out


def jax_train_loss(model, batch, draws, *, flow, kl_weight=None, latent_scale: float = 1.0):
    """SceneTok stage-1 loss with explicit draws (module docstring): what SceneTok.loss and
    ReleaseSceneTokTask.loss compute once their random draws are made."""
    import jax.numpy as jnp
    tokens, caux = model.compressor(batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"],
                                    eps=draws["token_eps"])
    x0 = jnp.asarray(batch["target_latents"], jnp.float32) * latent_scale
    t, eps = draws["t"], draws["eps"]
    x_t = flow.x_t(x0, eps, t)
    v, _ = model.decoder(x_t, t, batch["target_c2w"], batch["target_intrinsics"], tokens, drop=draws.get("drop"))
    fm, _ = flow.loss(v, x0, eps, t)
    kl = jnp.mean(caux["kl"])
    w = model.compressor.config["kl_weight"] if kl_weight is None else kl_weight
    return fm + w * kl


def jax_loss_fn(size: str):
    """loss(model, batch, draws) of the size's config (its flow weighting, KL weight and latent scale)."""
    flow, kl, scale = _flow_and_loss(size)
    return lambda model, batch, draws: jax_train_loss(model, batch, draws, flow=flow, kl_weight=kl,
                                                      latent_scale=scale)


def torch_loss_fn(size: str):
    """The PyTorch twin of :func:`jax_loss_fn` (scene3d_torch.scenetok.train_loss); imports no jax."""
    return torch_loss_fn_from_meta(_meta_of(size))


def _meta_of(size: str) -> dict:
    flow, kl, scale = _flow_and_loss(size)
    return dict(size=size, kl_weight=kl, loss_weighting=flow.loss_weighting, latent_scale=scale)


def prepare(size: str, out_dir, seed: int = 0, check: bool = True) -> dict:
    """Write the weights, batch and draws of one comparison to ``out_dir`` (module docstring); returns the meta
    (size, loss settings, parameter count, JAX and torch losses)."""
    import jax
    from flax import nnx
    from scene3d.convert import torch_port
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_jax(size, seed)
    batch = make_batch(size, model, seed)
    flow, _, _ = _flow_and_loss(size)
    draws = {k: np.asarray(v) for k, v in draws_from_rng(model, batch, flow, jax.random.key(seed)).items()}
    torch_port.save_torch_port(model, str(out / MODEL))
    meta = dict(_meta_of(size), params=int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))))
    tmp = out / (INPUTS + ".tmp.npz")
    np.savez(tmp, **{f"batch.{k}": v for k, v in batch.items()}, **{f"draws.{k}": v for k, v in draws.items()},
             meta=json.dumps(meta))
    os.replace(tmp, out / INPUTS)
    if check:
        import torch
        import scene3d_torch
        jl = float(nnx.jit(jax_loss_fn(size))(model, batch, draws))
        tm = scene3d_torch.load(str(out / MODEL))
        with torch.no_grad():
            tl = float(torch_loss_fn(size)(tm, *_torch_inputs(batch, draws)))
        if abs(tl - jl) > 1e-4 * max(1.0, abs(jl)):
            raise AssertionError(f"SceneTok {size}: torch loss {tl} != JAX loss {jl}")
        meta.update(jax_loss=jl, torch_loss=tl)
    return meta


def load_inputs(dir_) -> tuple[dict, dict, dict]:
    """(batch, draws, meta) numpy arrays written by :func:`prepare`."""
    with np.load(pathlib.Path(dir_) / INPUTS) as z:
        batch = {k[6:]: z[k] for k in z.files if k.startswith("batch.")}
        draws = {k[6:]: z[k] for k in z.files if k.startswith("draws.")}
        meta = json.loads(str(z["meta"]))
    return batch, draws, meta


def _torch_inputs(batch, draws):
    import torch
    return ({k: torch.from_numpy(np.array(v)) for k, v in batch.items()},
            {k: torch.from_numpy(np.array(v)) for k, v in draws.items()})


# ================================================================================================ timing


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _result(side, mode, times, cpu, loss, compile_s) -> dict:
    """One process's figures: median wall ms (and each step's), median CPU ms (all threads), first loss, peak RSS."""
    return dict(side=side, mode=mode, ms=1e3 * statistics.median(times), times_ms=[1e3 * t for t in times],
                cpu_ms=1e3 * statistics.median(cpu), loss=loss, compile_s=compile_s, peak_rss_gib=_rss_gib())


def run_jax(dir_, steps: int, mode: str = "step", scan: bool = True) -> dict:
    """Time the JAX side in this process (weights re-imported from the safetensors)."""
    import jax
    import optax
    from flax import nnx
    from scene3d.convert import torch_port
    batch, draws, meta = load_inputs(dir_)
    model = build_jax(meta["size"], perturb=0.0, scan=scan)
    torch_port.import_torch_port(model, str(pathlib.Path(dir_) / MODEL))
    loss_fn = jax_loss_fn(meta["size"])
    graphdef, params = nnx.split(model)
    batch, draws = jax.device_put((batch, draws))

    def loss_of(p, b, d):
        return loss_fn(nnx.merge(graphdef, p), b, d)

    if mode == "step":
        opt = optax.adam(1e-4)
        state = (params, opt.init(params))

        def step(state, b, d):
            p, o = state
            loss, grads = jax.value_and_grad(loss_of)(p, b, d)
            updates, o = opt.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), loss

        fn = jax.jit(step, donate_argnums=0)
    else:
        state = params
        fn = jax.jit(lambda p, b, d: (p, loss_of(p, b, d)))
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch, draws).compile()
    compile_s = time.perf_counter() - t0
    state, loss = compiled(state, batch, draws)
    first = float(loss)
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        state, loss = compiled(state, batch, draws)
        jax.block_until_ready((state, loss))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return _result("jax", mode, times, cpu, first, compile_s)


def run_torch(dir_, steps: int, mode: str = "step") -> dict:
    """Time the PyTorch side in this process (scene3d_torch.load: strict load of the same weights)."""
    import torch
    import scene3d_torch
    batch, draws, meta = load_inputs(dir_)
    model = scene3d_torch.load(str(pathlib.Path(dir_) / MODEL)).train()
    loss_fn = torch_loss_fn_from_meta(meta)
    batch, draws = _torch_inputs(batch, draws)
    if mode == "step":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def fn():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch, draws)
            loss.backward()
            opt.step()
            return loss.detach()
    else:
        def fn():
            with torch.no_grad():
                return loss_fn(model, batch, draws)
    first = float(fn())
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return _result("torch", mode, times, cpu, first, 0.0)


def torch_loss_fn_from_meta(meta: dict):
    """torch_loss_fn without importing the configs (the torch process stays jax-free)."""
    from scene3d_torch.scenetok import train_loss
    return lambda model, batch, draws: train_loss(model, batch, draws, kl_weight=meta["kl_weight"],
                                                  loss_weighting=meta["loss_weighting"],
                                                  latent_scale=meta["latent_scale"])


def run(side: str, dir_, steps: int, mode: str = "step", scan: bool = True) -> dict:
    return run_jax(dir_, steps, mode, scan) if side == "jax" else run_torch(dir_, steps, mode)


def _child(side: str, dir_, steps: int, mode: str, threads: int, cpus: str | None = None, scan: bool = True) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                         if p]))
    env.pop("XLA_FLAGS", None)  # no fake devices: one CPU device, as the torch side
    cmd = [sys.executable, str(HERE), "--side", side, "--dir", str(dir_), "--steps", str(steps), "--mode", mode,
           "--threads", str(threads)] + (["--cpus", cpus] if cpus else []) + ([] if scan else ["--unroll"])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(size: str, *, repeats: int = 3, steps: int = 5, mode: str = "step", threads: int = 2,
            cpus: str | None = None, scan: bool = True, dir_=None, seed: int = 0) -> dict:
    """prepare + ``repeats`` rounds of fresh processes (jax, torch alternating; the first side alternates too)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(dir_ or tmp)
        meta = prepare(size, d, seed)
        rows = {"jax": [], "torch": []}
        for r in range(repeats):
            for side in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
                rows[side].append(_child(side, d, steps, mode, threads, cpus, scan))
    return dict(meta=dict(meta, scan=scan), rows=rows)


def table(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    med = {s: statistics.median(r["ms"] for r in rows[s]) for s in rows}
    rss = {s: max(r["peak_rss_gib"] for r in rows[s]) for s in rows}
    lines = [f"SceneTok {meta['size']} ({meta['params'] / 1e6:.2f} M parameters), mode {rows['jax'][0]['mode']}, "
             f"JAX layers {'scanned' if meta.get('scan', True) else 'unrolled'}; "
             f"loss jax {meta.get('jax_loss', float('nan')):.6g} torch {meta.get('torch_loss', float('nan')):.6g}",
             "| side | median ms | per-process medians | CPU ms / step | peak RSS GiB | compile s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in ("jax", "torch"):
        per = ", ".join(f"{r['ms']:.0f}" for r in rows[s])
        comp = statistics.median(r["compile_s"] for r in rows[s])
        cpu = statistics.median(r["cpu_ms"] for r in rows[s])
        lines.append(f"| {s} | {med[s]:.0f} | {per} | {cpu:.0f} | {rss[s]:.2f} | {comp:.1f} |")
    cpu = {s: statistics.median(r["cpu_ms"] for r in rows[s]) for s in rows}
    lines.append(f"jax / torch: time {med['jax'] / med['torch']:.2f}x, CPU time {cpu['jax'] / cpu['torch']:.2f}x, "
                 f"peak RSS {rss['jax'] / rss['torch']:.2f}x")
    return "\n".join(lines)


# The entry benchmarks/vs_torch.py reads: sizes, the two sides' builders and the timing functions.
FAMILY = dict(name="scenetok", sizes=tuple(SIZES), prepare=prepare, run=run, compare=compare, table=table,
              build_jax=build_jax, make_batch=make_batch, draws_from_rng=draws_from_rng, jax_loss_fn=jax_loss_fn,
              torch_loss_fn=torch_loss_fn)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--side", choices=("jax", "torch"), help="time one side in this process (needs --dir)")
    ap.add_argument("--dir", help="where prepare writes / the sides read the weights and inputs")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="step", choices=("step", "forward"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpus", help="pin each timed process to these cores (e.g. '0' or '0,1'; before jax / torch load)")
    ap.add_argument("--unroll", action="store_true", help="JAX side: unrolled layer stacks (scan=False)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    if args.side:
        if args.cpus:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        if not args.dir:
            ap.error("--side needs --dir (written by a run without --side, or by prepare)")
        if args.side == "torch":
            import torch
            torch.set_num_threads(args.threads)
        print(json.dumps(run(args.side, args.dir, args.steps, args.mode, scan=not args.unroll)))
        return
    load = os.getloadavg()
    result = compare(args.size, repeats=args.repeats, steps=args.steps, mode=args.mode, threads=args.threads,
                     cpus=args.cpus, scan=not args.unroll, dir_=args.dir)
    result["load_before"], result["load_after"] = load, os.getloadavg()
    print(table(result))
    print(f"load average before {load[0]:.2f}, after {result['load_after'][0]:.2f} (uptime); threads {args.threads}"
          f"{'; cores ' + args.cpus if args.cpus else ''}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
