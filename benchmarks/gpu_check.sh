#!/usr/bin/env bash
# The prepared accelerator check (issue 19): benchmarks/gpu_check.py with its defaults, results to $1.
#   benchmarks/gpu_check.sh [OUT.json] [more gpu_check.py flags]
# Prints the device first (nvidia-smi / the TPU's JAX devices) so that a run on the wrong machine is plain.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check_$(date +%Y%m%d_%H%M%S).json}"
shift || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec python benchmarks/gpu_check.py --out="$out" "$@"
