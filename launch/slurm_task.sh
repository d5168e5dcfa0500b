#!/usr/bin/env bash
# One SLURM task of a scene3d training (started by srun from launch/slurm.sbatch): `python -m scene3d.train "$@"`.
# GPU performance settings can be overridden from the environment; XLA_FLAGS given by the user are kept.
set -euo pipefail
cd "${SCENE3D_REPO:-$(dirname "${BASH_SOURCE[0]}")/..}"

# Overlap collectives with compute on GPU (no effect on other backends).
export XLA_FLAGS="${XLA_FLAGS:-} ${SCENE3D_GPU_XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"
# Let XLA take most of the GPU memory up front (JAX's default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

exec python -m scene3d.train "$@"
