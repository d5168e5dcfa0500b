#!/usr/bin/env bash
# Run one training command on every worker of a Cloud TPU VM pod slice (e.g. v5p-64: 8 workers).
#
#   launch/tpu_pod.sh NAME ZONE -- python -m scene3d.train --config=configs/flow_shapes.py:variant=B \
#       --workdir=gs://BUCKET/runs/flow_b
#
# Steps: (1) copy this checkout (git-tracked files of HEAD plus uncommitted changes) to ~/scene3d on all workers,
# (2) pip install -r requirements.txt -e . and jax[tpu] at the pinned jax version, (3) run the command on all
# workers at once with SCENE3D_DISTRIBUTED=1: scene3d.core.distributed then calls jax.distributed.initialize(),
# which reads the pod layout from the TPU VM metadata. The workdir must be reachable from every worker (gs://).
#
# Environment: PROJECT (gcloud project, optional), SETUP=0 skips steps 1-2 (code already there),
# DRY_RUN=1 prints the gcloud commands instead of running them, REMOTE_DIR (default scene3d).
set -euo pipefail

usage() { echo "usage: $0 TPU_NAME ZONE -- COMMAND ..." >&2; exit 2; }
[[ $# -ge 4 && "$3" == "--" ]] || usage
NAME="$1"; ZONE="$2"; shift 3
REMOTE_DIR="${REMOTE_DIR:-scene3d}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_VERSION="$(sed -n 's/^jax==\(.*\)$/\1/p' "$REPO/requirements.txt")"
[[ -n "$JAX_VERSION" ]] || { echo "$0: no 'jax==VERSION' line in $REPO/requirements.txt" >&2; exit 2; }

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project "$PROJECT")

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# The training command, quoted for the remote shell.
CMD="$(printf '%q ' "$@")"

if [[ "${SETUP:-1}" == 1 ]]; then
  TARBALL="${TMPDIR:-/tmp}/scene3d-$$.tar.gz"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    trap 'rm -f "$TARBALL"' EXIT
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | tar --null -czf "$TARBALL" -T -)
  fi
  run "${GCLOUD[@]}" scp "$TARBALL" "$NAME:/tmp/scene3d.tar.gz" "${WHERE[@]}" --worker=all
  run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command \
    "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/scene3d.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
pip install -q -r requirements.txt -e . && pip install -q 'jax[tpu]==$JAX_VERSION'"
fi

run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command \
  "cd ~/$REMOTE_DIR && SCENE3D_DISTRIBUTED=1 $CMD"
