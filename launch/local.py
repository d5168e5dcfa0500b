"""Run a command as N cooperating JAX processes on this machine (CPU), like N hosts of a pod.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
        python -m scene3d.train --config=configs/flow_shapes.py:runlocal --workdir=/tmp/run

Each process gets JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=K and the SCENE3D_*
variables that ``scene3d.core.distributed.initialize_from_env`` reads (coordinator 127.0.0.1 on a free port).
Output lines are prefixed with ``[pI]``. If a process fails, the others are stopped; the exit code is that of
the first failure (128 + signal for a killed process), 0 when all succeed.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, *, process_id: int, num_processes: int, devices_per_process: int, port: int) -> dict:
    """The environment of process ``process_id``: CPU platform, K fake devices, our coordinator variables."""
    env = {k: v for k, v in base.items() if not k.startswith(("SLURM_", "SCENE3D_", "JAX_COORDINATOR"))}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join(flags + [f"{_DEVICE_FLAG}={devices_per_process}"]),
        SCENE3D_COORDINATOR=f"127.0.0.1:{port}",
        SCENE3D_NUM_PROCESSES=str(num_processes),
        SCENE3D_PROCESS_ID=str(process_id),
        PYTHONUNBUFFERED="1",
    )
    return env


def _pump(stream, prefix: str, out, lock: threading.Lock):
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line.decode(errors="replace"))
            out.flush()
    stream.close()


def _stop(procs, grace: float = 10.0):
    """SIGTERM the process groups still running, SIGKILL those left after ``grace`` seconds (JAX's preemption
    service catches SIGTERM in distributed processes)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def launch(command: list[str], *, num_processes: int, devices_per_process: int, env: dict | None = None,
           out=None, poll: float = 0.2) -> int:
    """Run ``command`` as ``num_processes`` processes; returns the exit code (first failure, else 0)."""
    if not command:
        raise ValueError("launch: no command given (put it after --)")
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(f"launch: num_processes={num_processes} and devices_per_process={devices_per_process} "
                         "must both be >= 1")
    out = sys.stdout if out is None else out
    base = dict(os.environ if env is None else env)
    port = free_port()
    lock = threading.Lock()
    procs, pumps = [], []

    def _on_term(signum, frame):  # `kill LAUNCHER` stops the children too
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        for i in range(num_processes):
            penv = process_env(base, process_id=i, num_processes=num_processes,
                               devices_per_process=devices_per_process, port=port)
            p = subprocess.Popen(command, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out, lock), daemon=True)
            t.start()
            pumps.append(t)
        first_failure = 0
        while None in [p.poll() for p in procs]:  # a list: poll every process, not just up to the first live one
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:
                first_failure = _exit_code(failed[0].returncode)
                with lock:
                    out.write(f"[launch] process {procs.index(failed[0])} exited with {failed[0].returncode}; "
                              "stopping the others\n")
                    out.flush()
                _stop(procs)
                break
            time.sleep(poll)
        if not first_failure:
            failed = [p for p in procs if p.returncode != 0]
            first_failure = _exit_code(failed[0].returncode) if failed else 0
    except KeyboardInterrupt:
        _stop(procs)
        first_failure = 130
    finally:
        _stop(procs)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        for t in pumps:
            t.join(timeout=5)
    return first_failure


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        own, command = argv[:i], argv[i + 1:]
    else:
        own, command = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --num_processes=N --devices_per_process=K -- COMMAND ...")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    args = parser.parse_args(own)
    if not command:
        parser.error("no command: put the command to run after --")
    return launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
