"""Multi-process start-up: one call, ``initialize_from_env()``, before any JAX computation.

The training code is the same for one process and for many; only this call differs. It reads, in order:

1. our explicit variables (``launch/local.py`` sets them; any launcher can):
   ``SCENE3D_COORDINATOR=host:port``, ``SCENE3D_NUM_PROCESSES``, ``SCENE3D_PROCESS_ID`` and optionally
   ``SCENE3D_LOCAL_DEVICE_IDS=0,1,...`` (the accelerators this process uses; default all it sees);
2. SLURM (inside ``srun``): ``SLURM_NTASKS`` processes, id ``SLURM_PROCID``, coordinator = the first host of
   ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``) on port ``SCENE3D_COORDINATOR_PORT`` /
   ``JAX_COORDINATOR_PORT`` / ``61440 + SLURM_JOB_ID % 4096`` (JAX's own SLURM rule). Local devices: with one
   task per node (``SLURM_NTASKS == SLURM_STEP_NUM_NODES``) all GPUs of the node; with several, GPU
   ``SLURM_LOCALID`` (unless ``CUDA_VISIBLE_DEVICES`` already leaves this task a single GPU). JAX's built-in
   SLURM detection reads the same variables but always pins one GPU per task (``SLURM_LOCALID``), which breaks
   one-process-per-node runs, and needs ``SLURM_STEP_NODELIST``: hence our own reading;
3. ``SCENE3D_DISTRIBUTED=1`` with neither of the above: plain ``jax.distributed.initialize()``, whose cluster
   auto-detection covers Cloud TPU VM pods (GCE metadata ``agent-worker-number``, ``worker-network-endpoints``;
   ``MEGASCALE_*`` for multislice), GKE TPU (``TPU_WORKER_ID``, ``TPU_WORKER_HOSTNAMES``), Open MPI and k8s.

Anything else (or a count of 1) is a single process: nothing is initialised. On CPU the cross-process
collectives are gloo (``jax_cpu_collectives_implementation``).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
    """What ``jax.distributed.initialize`` is called with; ``source`` is single | explicit | slurm | auto."""
    source: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def multi_process(self) -> bool:
        return self.source != "single"


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None or not value.strip():
        raise ValueError(f"environment variable {name} is required here (an integer) but is not set")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _device_ids(env: Mapping[str, str], name: str = "SCENE3D_LOCAL_DEVICE_IDS") -> tuple[int, ...] | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected comma-separated device ids, "
                         "e.g. 0,1,2,3") from None


def _check(args: DistributedArgs, where: str) -> DistributedArgs:
    if args.num_processes < 1:
        raise ValueError(f"{where}: number of processes must be >= 1, got {args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"{where}: process id {args.process_id} is not in [0, {args.num_processes})")
    if args.coordinator_address is not None and not re.fullmatch(r".+:\d+", args.coordinator_address):
        raise ValueError(f"{where}: coordinator {args.coordinator_address!r} is not host:port")
    return args


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist: 'gpu[003-008,010],cpu1' -> 'gpu003', 'r[1-2]-n[07-09]' -> 'r1-n07'."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first host expression
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], first)
    if not host or "[" in host or "]" in host:
        raise ValueError(f"cannot read the first host of the SLURM node list {nodelist!r}")
    return host


def _slurm(env: Mapping[str, str]) -> DistributedArgs:
    where = "SLURM environment"
    num, pid = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID")
    if num == 1:
        return DistributedArgs("single")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError(f"{where}: SLURM_NTASKS={num} but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST "
                         "is set (run the training command under srun)")
    port = env.get("SCENE3D_COORDINATOR_PORT") or env.get("JAX_COORDINATOR_PORT")
    if not port:
        port = str(61440 + _int(env, "SLURM_JOB_ID") % 4096)
    local = _device_ids(env)
    if local is None:
        nodes = next((env[k] for k in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES") if env.get(k)),
                     None)
        per_node = num if nodes is None else num // max(int(nodes), 1)
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if per_node > 1 and len(visible) != 1:
            local = (_int(env, "SLURM_LOCALID"),)
    return _check(DistributedArgs("slurm", f"{first_slurm_host(nodelist)}:{port}", num, pid, local), where)


def resolve(env: Mapping[str, str] | None = None) -> DistributedArgs:
    """Read the process layout from ``env`` (default ``os.environ``) without initialising anything."""
    env = os.environ if env is None else env
    if env.get("SCENE3D_COORDINATOR") or env.get("SCENE3D_NUM_PROCESSES"):
        where = "SCENE3D_* environment"
        coord = env.get("SCENE3D_COORDINATOR", "").strip()
        num = _int(env, "SCENE3D_NUM_PROCESSES")
        if num == 1:
            return DistributedArgs("single")
        if not coord:
            raise ValueError(f"{where}: SCENE3D_NUM_PROCESSES={num} needs SCENE3D_COORDINATOR=host:port")
        return _check(DistributedArgs("explicit", coord, num, _int(env, "SCENE3D_PROCESS_ID"), _device_ids(env)),
                      where)
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        return _slurm(env)
    if env.get("SCENE3D_DISTRIBUTED", "").strip().lower() in _TRUE:
        return DistributedArgs("auto")
    return DistributedArgs("single")


def initialize_from_env(env: Mapping[str, str] | None = None) -> DistributedArgs:
    """Call ``jax.distributed.initialize`` as the environment says (nothing for a single process); log the layout."""
    import jax
    from absl import logging

    args = resolve(env)
    if args.multi_process:
        # CPU multi-process runs (launch/local.py, CI) need cross-process collectives; no effect on GPU/TPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.source == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                       num_processes=args.num_processes, process_id=args.process_id,
                                       local_device_ids=list(args.local_device_ids) if args.local_device_ids else None)
    logging.info("process %d of %d (%s); %d local devices %s; %d global devices (%s)", jax.process_index(),
                 jax.process_count(), args.source, jax.local_device_count(),
                 [d.id for d in jax.local_devices()], jax.device_count(), jax.devices()[0].platform)
    return args


def process_local(tree):
    """``tree`` with every array spanning other processes gathered whole onto this process's first device.

    For host-side work on global arrays in a multi-process run (images, files written by process 0): afterwards
    no computation on the result involves other processes. Collective: every process must call it. Identity in
    a single process.
    """
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return tree
    device = jax.local_devices()[0]

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(multihost_utils.process_allgather(x, tiled=True), device)
        return x

    return jax.tree.map(local, tree)
