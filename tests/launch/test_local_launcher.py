"""Multi-process launching: env parsing (explicit / SLURM / TPU auto), a CPU cluster formed from SLURM variables,
per-process data blocks, the local launcher's process handling, and a 2-process x 4-device training that
checkpoints, resumes and ends with the parameters of a 1-process x 8-device run of the same config."""
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from scene3d import train
from scene3d.core import distributed
from scene3d.core.checkpoint import Checkpointer
from scene3d.core.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCHER = str(REPO / "launch" / "local.py")
CONFIG = str(REPO / "configs" / "flow_shapes.py")

# ---------------------------------------------------------------------------------------------------------------
# initialize_from_env's reading of the environment (nothing is initialised here)


def test_single_process_by_default():
    assert distributed.resolve({}) == distributed.DistributedArgs("single")
    assert distributed.resolve({"SCENE3D_DISTRIBUTED": "0"}).source == "single"
    assert distributed.resolve({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}).source == "single"
    assert distributed.resolve({"SCENE3D_NUM_PROCESSES": "1"}).source == "single"


def test_explicit_env():
    env = {"SCENE3D_COORDINATOR": "10.0.0.1:1234", "SCENE3D_NUM_PROCESSES": "4", "SCENE3D_PROCESS_ID": "3",
           "SCENE3D_LOCAL_DEVICE_IDS": "0, 1", "SLURM_NTASKS": "16", "SLURM_PROCID": "9"}  # explicit wins over SLURM
    assert distributed.resolve(env) == distributed.DistributedArgs("explicit", "10.0.0.1:1234", 4, 3, (0, 1))
    env.pop("SCENE3D_LOCAL_DEVICE_IDS")
    assert distributed.resolve(env).local_device_ids is None


@pytest.mark.parametrize("env, match", [
    ({"SCENE3D_COORDINATOR": "h:1", "SCENE3D_NUM_PROCESSES": "2"}, "SCENE3D_PROCESS_ID is required"),
    ({"SCENE3D_COORDINATOR": "h:1", "SCENE3D_NUM_PROCESSES": "two", "SCENE3D_PROCESS_ID": "0"}, "not an integer"),
    ({"SCENE3D_NUM_PROCESSES": "2", "SCENE3D_PROCESS_ID": "0"}, "needs SCENE3D_COORDINATOR"),
    ({"SCENE3D_COORDINATOR": "h:1", "SCENE3D_NUM_PROCESSES": "2", "SCENE3D_PROCESS_ID": "2"}, r"not in \[0, 2\)"),
    ({"SCENE3D_COORDINATOR": "h", "SCENE3D_NUM_PROCESSES": "2", "SCENE3D_PROCESS_ID": "0"}, "not host:port"),
    ({"SCENE3D_COORDINATOR": "h:1", "SCENE3D_NUM_PROCESSES": "2", "SCENE3D_PROCESS_ID": "0",
      "SCENE3D_LOCAL_DEVICE_IDS": "0;1"}, "comma-separated"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "5"}, "SLURM_STEP_NODELIST"),
])
def test_bad_env_is_a_clear_error(env, match):
    with pytest.raises(ValueError, match=match):
        distributed.resolve(env)


def _slurm(**kw):
    env = {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
           "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[001-099]"}
    env.update(kw)
    return {k: v for k, v in env.items() if v is not None}


def test_slurm_one_process_per_gpu():
    a = distributed.resolve(_slurm())
    # JAX's port rule for SLURM: 61440 + job id mod 4096; the step's first node is the coordinator.
    assert a == distributed.DistributedArgs("slurm", f"gpu007:{61440 + 123456 % 4096}", 16, 9, (1,))
    assert distributed.resolve(_slurm(SLURM_STEP_NODELIST=None)).coordinator_address.startswith("gpu001:")
    assert distributed.resolve(_slurm(SCENE3D_COORDINATOR_PORT="4000")).coordinator_address == "gpu007:4000"
    # srun --gpus-per-task=1 already leaves the task one GPU: keep it (it is device 0 of this process).
    assert distributed.resolve(_slurm(CUDA_VISIBLE_DEVICES="5")).local_device_ids is None
    assert distributed.resolve(_slurm(SCENE3D_LOCAL_DEVICE_IDS="2,3")).local_device_ids == (2, 3)


def test_slurm_one_process_per_node():
    a = distributed.resolve(_slurm(SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0"))
    assert (a.num_processes, a.process_id, a.local_device_ids) == (2, 1, None)  # all GPUs of the node


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("a100-[3-4],b[1-2]", "a100-3"), ("r[1-2]-n[07-09]", "r1-n07")])
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host


def test_tpu_pod_uses_jax_auto_detection():
    assert distributed.resolve({"SCENE3D_DISTRIBUTED": "1"}) == distributed.DistributedArgs("auto")


# ---------------------------------------------------------------------------------------------------------------
# Data sharding across processes


class _Ints:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": np.int64(i)}


@pytest.mark.parametrize("num_epochs", [None, 1])
def test_each_process_reads_its_block_of_the_global_batch(num_epochs):
    from scene3d.data import pipeline

    def batches(p, count):
        it = pipeline.make_batch_iterator(_Ints(21), global_batch_size=8, seed=5, process_index=p,
                                          process_count=count, num_epochs=num_epochs)
        return [b["x"] for b in it] if num_epochs else [next(it)["x"] for _ in range(5)]

    full = batches(0, 1)
    assert len(full) == (2 if num_epochs else 5)
    for count in (2, 4):
        per = [batches(p, count) for p in range(count)]
        assert all(len(b) == len(full) for b in per)  # same number of steps on every process
        for i, g in enumerate(full):  # process p holds rows p*8/P .. (p+1)*8/P of the same global batch
            np.testing.assert_array_equal(np.concatenate([b[i] for b in per]), g)


# ---------------------------------------------------------------------------------------------------------------
# The launcher's process handling (plain python children, no JAX)


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "SCENE3D_", "SLURM_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def _launch(*args, timeout=600):
    return subprocess.run([sys.executable, LAUNCHER, *args], cwd=REPO, env=_clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_launcher_env_and_prefixes():
    code = ("import os; print(os.environ['SCENE3D_PROCESS_ID'], os.environ['SCENE3D_NUM_PROCESSES'], "
            "os.environ['SCENE3D_COORDINATOR'], os.environ['JAX_PLATFORMS'], os.environ['XLA_FLAGS'])")
    r = _launch("--num_processes=3", "--devices_per_process=2", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 3
    ports = set()
    for i, line in enumerate(lines):
        prefix, pid, num, coord, platform, flags = line.split()
        assert (prefix, pid, num, platform, flags) == (f"[p{i}]", str(i), "3", "cpu",
                                                       "--xla_force_host_platform_device_count=2")
        ports.add(coord)
    assert len(ports) == 1 and ports.pop().startswith("127.0.0.1:")


def test_launcher_stops_all_on_first_failure():
    code = ("import os, sys, time\n"
            "if os.environ['SCENE3D_PROCESS_ID'] == '1': print('failing', flush=True); sys.exit(3)\n"
            "time.sleep(120)")
    t0 = time.monotonic()
    r = _launch("--num_processes=3", "--devices_per_process=1", "--", sys.executable, "-c", code)
    assert r.returncode == 3, r.stdout + r.stderr
    assert time.monotonic() - t0 < 60  # the sleeping processes were stopped, not waited for
    assert "[p1] failing" in r.stdout and "process 1 exited with 3" in r.stdout


_ALLREDUCE = """
from scene3d.core import distributed
args = distributed.initialize_from_env()
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = jax.make_mesh((jax.device_count(),), ("d",))
local = np.arange(jax.local_device_count(), dtype=np.float32) + 10 * jax.process_index()
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local)
total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
here = distributed.process_local({"x": x, "name": "s"})  # whole on this process, usable without the others
assert here["name"] == "s" and here["x"].is_fully_addressable and len(here["x"].devices()) == 1
np.testing.assert_array_equal(np.asarray(here["x"]), [0, 1, 10, 11])
print("RESULT", args.source, jax.process_index(), jax.process_count(), jax.device_count(), float(total))
"""


def test_slurm_env_initializes_a_working_cluster():
    """Two processes that only see SLURM variables (as under `srun -N1 -n2`) form one 4-device CPU cluster."""
    from importlib import util
    spec = util.spec_from_file_location("local_launcher", LAUNCHER)
    launcher = util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    base = dict(_clean_env(), JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                SLURM_JOB_ID="4242", SLURM_NTASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_STEP_NODELIST="localhost",
                SCENE3D_COORDINATOR_PORT=str(launcher.free_port()))
    procs = [subprocess.Popen([sys.executable, "-c", _ALLREDUCE], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(base, SLURM_PROCID=str(i), SLURM_LOCALID=str(i))) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out[-3000:]
        line = next(l for l in out.splitlines() if l.startswith("RESULT"))
        # devices hold 0, 1 (process 0) and 10, 11 (process 1): the sum crosses processes
        assert line.split()[1:] == ["slurm", str(i), "2", "4", "22.0"], line


# ---------------------------------------------------------------------------------------------------------------
# 2 processes x 4 devices == 1 process x 8 devices, across a checkpoint / resume

# 8x8 images, 2 DiT blocks of width 32, global batch 8, constant LR after a 2-step warmup (so a run stopped at
# step K is the first K steps of the run to N), synchronous checkpoints, no eval.
TINY = {
    "data.size": 8, "data.num_train": 256, "data.num_eval": 16,
    "model.width": 32, "model.depth": 2, "model.heads": 2, "model.patch": 2,
    "global_batch_size": 8, "ckpt_every": 100, "log_every": 1, "eval_every": 0, "async_checkpoint": False,
    "num_sample_images": 4, "flow.sample_steps": 2,
    "optim.warmup_steps": 2, "optim.lr": 1e-3, "optim.schedule": "constant",
}
K, N = 2, 4


def _config(total_steps):
    c = load_config(f"{CONFIG}:runlocal")
    for k, v in {**TINY, "total_steps": total_steps}.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    return c


def _train_2x4(workdir, total_steps, cache, **extra):
    # The processes compile with this process's XLA flags (conftest's, less the device count: the launcher sets
    # that) so that their programs are those of the 1 x 8 reference run here. Both launches share one persistent
    # compilation cache that only they use: the first fills it (both processes compile side by side), the second
    # loads every program in both processes alike (a process that hit a cache while the other compiled would reach
    # the first collective much earlier, and gloo waits only 30 s for its peers).
    args = [f"--config.{k}={v}" for k, v in {**TINY, "total_steps": total_steps, **extra}.items()]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(_clean_env(), XLA_FLAGS=" ".join(flags), JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run([sys.executable, LAUNCHER, "--num_processes=2", "--devices_per_process=4", "--",
                           sys.executable, "-m", "scene3d.train", f"--config={CONFIG}:runlocal",
                           f"--workdir={workdir}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)


def _restore(workdir, abstract, step):
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.latest_step() == step, ckpt.all_steps()
        state, _ = ckpt.restore(step, abstract_state=abstract)
    return jax.device_get(state)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    multi, single = root / "multi", root / "single"
    first = _train_2x4(multi, K, root / "jax_cache")
    assert first.returncode == 0, first.stdout[-4000:]
    second = _train_2x4(multi, N, root / "jax_cache")
    assert second.returncode == 0, second.stdout[-4000:]
    assert len(jax.devices()) == 8
    train.train_and_evaluate(_config(N), str(single))  # this pytest process: 1 process, 8 devices
    s, state = train.setup(_config(N))
    abstract = train.abstract_like(state)
    return dict(first=first.stdout, second=second.stdout, multi=_restore(multi, abstract, N),
                single=_restore(single, abstract, N), init=jax.device_get(state), multi_dir=multi)


def test_two_processes_really_ran_and_resumed(runs):
    for out in (runs["first"], runs["second"]):
        assert "[p0]" in out and "[p1]" in out
        for p in (0, 1):
            assert f"process {p} of 2 (explicit); 4 local devices" in out and "8 global devices (cpu)" in out
    assert f"resumed from step {K}" in runs["second"] and f"step {K + 1}/{N}" in runs["second"]
    assert f"step {K + 1}/" not in runs["first"]
    # each process saved its own slice of the data iterator
    data = sorted(p.name for p in (runs["multi_dir"] / "checkpoints" / str(N) / "data").glob("process_*.json"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]


def test_two_process_resume_matches_one_process(runs):
    multi, single, init = runs["multi"], runs["single"], runs["init"]
    assert int(multi["step"]) == int(single["step"]) == N and int(multi["skipped"]) == 0
    paths = jax.tree_util.tree_flatten_with_path(single)[0]
    assert len(paths) == len(jax.tree.leaves(multi))
    diff = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
               for (_, b), a in zip(paths, jax.tree.leaves(multi)))
    print(f"max |2x4 - 1x8| over the train state: {diff:.3g}")
    for (path, b), a in zip(paths, jax.tree.leaves(multi)):
        # same XLA program; only the cross-process (gloo) reductions may order float sums differently
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
             zip(jax.tree.leaves(multi["params"]), jax.tree.leaves(init["params"]))]
    assert max(moved) > 1e-4  # training really changed the parameters


# ---------------------------------------------------------------------------------------------------------------
# The pod / cluster scripts (no cloud or cluster here: gcloud dry run, a stand-in srun)


def test_tpu_pod_script_dry_run():
    cmd = ["bash", str(REPO / "launch" / "tpu_pod.sh"), "my-tpu", "us-east5-a", "--", "python", "-m",
           "scene3d.train", "--config=configs/flow_shapes.py:variant=B,res=64", "--workdir=gs://b/run"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(_clean_env(), DRY_RUN="1", PROJECT="proj"), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    scp, setup, train_cmd = r.stdout.strip().splitlines()
    assert scp.startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in scp
    jax_version = next(l.split("==")[1] for l in (REPO / "requirements.txt").read_text().splitlines()
                       if l.startswith("jax=="))
    assert "--worker=all" in setup and "requirements.txt" in setup and f"jax\\[tpu\\]=={jax_version}" in setup
    assert train_cmd.startswith("gcloud compute tpus tpu-vm ssh my-tpu --zone us-east5-a --project proj "
                                "--worker=all --command ")
    assert "SCENE3D_DISTRIBUTED=1" in train_cmd and "scene3d.train" in train_cmd and "gs://b/run" in train_cmd
    r = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "my-tpu"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_slurm_sbatch_runs_the_training_command_under_srun(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/usr/bin/env bash\necho "srun $*"\n')
    (fake / "srun").chmod(0o755)
    env = dict(_clean_env(), PATH=f"{fake}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(REPO), SLURM_NTASKS="16",
               SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[01-02]")
    r = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), "--config=configs/x.py:a=1", "--workdir=/w"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (f"srun --kill-on-bad-exit=1 --cpu-bind=none {REPO}/launch/slurm_task.sh --config=configs/x.py:a=1 "
            "--workdir=/w") in r.stdout
