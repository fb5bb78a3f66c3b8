#!/usr/bin/env bash
# Multi-node training with torchrun (README "Running at scale"). Run it on every node with the
# same settings except NODE_RANK; extra arguments go to the stage command:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 NPROC_PER_NODE=8 \
#     infra/torchrun-train.sh train --root /shared/project
#
# NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1: set it to node 0's address), MASTER_PORT
# (29500) and NPROC_PER_NODE (the node's GPU count, or 1 without a GPU) come from the
# environment; the scheduler (Slurm, Kubernetes: infra/k8s/train-job.yaml) sets them. With
# RDZV_ENDPOINT=host:port the nodes meet at torchrun's c10d rendezvous there instead of
# MASTER_ADDR/MASTER_PORT: RDZV_ID (the same on every node, new for each run) names the group,
# MAX_RESTARTS (0) is how often torchrun restarts it after a failure.
#
# Every rank reads params.yaml; rank 0 alone tracks to MLflow, writes metrics and publishes the
# model; checkpoints hold one file per rank (its head shard and RNG) plus rank 0's shared state,
# so the project folder (or runtime.train.checkpoint_dir) must be on storage every node sees, or
# runtime.train.checkpoint_dir an s3:// prefix (each rank then uploads its own file).
#
# Afterwards, on node 0, when the project folder (--root, default: here) is a DVC project and
# the run read its params.yaml (no --set, no other --params), `dvc commit --force <stage>`
# records the new model in dvc.lock, so that `dvc repro` keeps it instead of restoring the
# previous one; MOFI_DVC_COMMIT=0 skips that. One line says which happened.
set -euo pipefail
stage="${1:-train}"
case "$stage" in
  train|baseline) ;;
  *) echo "usage: $0 [train|baseline] [mofi options...]" >&2; exit 2 ;;
esac
shift || true
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(python -c 'import torch; print(torch.cuda.device_count() or 1)')"
fi
if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
  if [[ -z "${RDZV_ID:-}" ]]; then
    echo "$0: RDZV_ENDPOINT is set but RDZV_ID is not: set it to one id per run, the same on" \
         "every node (the Kubernetes Job uses its uid)" >&2
    exit 2
  fi
  where="c10d rendezvous ${RDZV_ENDPOINT} (id ${RDZV_ID})"
else
  MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
  MASTER_PORT="${MASTER_PORT:-29500}"
  where="rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
fi
# one launch per unit of work: a process group is set up once per process, so `train` runs one
# torchrun per entry of train.recipes (each a fresh group; a c10d id per recipe)
rendezvous_for() {
  if [[ -n "${RDZV_ENDPOINT:-}" ]]; then
    rendezvous=(--rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$RDZV_ID$1"
                --max-restarts="${MAX_RESTARTS:-0}")
  else
    rendezvous=(--master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT")
  fi
}

# the project folder, the params the stage reads (mofi: --params, default ./params.yaml) and
# the options `mofi storage pull` takes too
root="."
params="params.yaml"
overridden=""
pull_args=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --root) root="${args[i + 1]:-.}"; pull_args+=("${args[@]:i:2}") ;;
    --root=*) root="${args[i]#--root=}"; pull_args+=("${args[i]}") ;;
    --params) params="${args[i + 1]:-params.yaml}"; pull_args+=("${args[@]:i:2}") ;;
    --params=*) params="${args[i]#--params=}"; pull_args+=("${args[i]}") ;;
    --set|--set=*|-S|-S*) overridden="yes" ;;
  esac
done

# the DVC stages to launch: baseline, or train@<recipe> for the recipe given as the first
# argument, else for every entry of train.recipes (mofi reads the params and refuses an entry
# they lack, before anything is pulled or launched)
units=("$stage")
if [[ "$stage" == train ]]; then
  listed="$(mofi train --list "$@")"
  mapfile -t units <<< "$listed"
  if [[ $# -gt 0 && "$1" != -* ]]; then
    shift
  fi
  if [[ -z "${units[0]:-}" ]]; then
    echo "$0: train.recipes in $params is empty: nothing to launch" >&2
    exit 2
  fi
fi
# with a storage root (storage.root / MOFI_STORAGE_ROOT), this node fetches the stage inputs
# once, before the launch; rank 0 publishes the outputs at the end
mofi storage pull "$stage" --if-configured "${pull_args[@]}"
for unit in "${units[@]}"; do
  item="${unit#*@}"
  [[ "$unit" == *@* ]] || item=""
  rendezvous_for "${item:+-$item}"
  echo "torchrun: ${unit}: node ${NODE_RANK}/${NNODES}, ${NPROC_PER_NODE} processes, ${where}" >&2
  torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC_PER_NODE" \
    "${rendezvous[@]}" --no-python mofi "$stage" ${item:+"$item"} "$@"
done

# torchrun succeeded: record the result in dvc.lock (node 0 only, one line either way)
project="$(realpath -m "$root")"
params="$(realpath -m "$params")"
skip=""
if [[ "${MOFI_DVC_COMMIT:-1}" == 0 ]]; then
  skip="MOFI_DVC_COMMIT=0"
elif [[ "$NODE_RANK" != 0 ]]; then
  skip="node 0 does it"
elif [[ ! -f "$root/dvc.yaml" || ! -d "$root/.dvc" ]]; then
  skip="$project is not a DVC project (no dvc.yaml or .dvc/)"
elif ! command -v dvc > /dev/null; then
  skip="dvc is not on PATH"
elif [[ -n "$overridden" ]]; then
  skip="the run used --set overrides, which params.yaml does not hold"
elif [[ "$params" != "$project/params.yaml" ]]; then
  skip="the run read $params, not $project/params.yaml"
fi
if [[ -n "$skip" ]]; then
  echo "torchrun-train: dvc.lock not updated: $skip" >&2
  exit 0
fi
if ! (cd "$project" && dvc commit --force --quiet "${units[@]}"); then
  echo "torchrun-train: dvc commit --force ${units[*]} failed (see above): the models are in" \
       "place; run that command in $project" >&2
  exit 1
fi
echo "torchrun-train: dvc commit --force ${units[*]}: dvc.lock now names what torchrun wrote" >&2
