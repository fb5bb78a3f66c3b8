#!/usr/bin/env bash
# Multi-node training with torchrun (README "Running at scale"). Run it on every node with the
# same settings except NODE_RANK; extra arguments go to the stage command:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 NPROC_PER_NODE=8 \
#     infra/torchrun-train.sh train --root /shared/project
#
# NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1: set it to node 0's address), MASTER_PORT
# (29500) and NPROC_PER_NODE (the node's GPU count, or 1 without a GPU) come from the
# environment; the scheduler (Slurm, Kubernetes: infra/k8s/train-job.yaml) sets them. Every
# rank reads params.yaml; rank 0 alone tracks to MLflow, writes metrics and publishes the model;
# checkpoints hold one file per rank (its head shard and RNG) plus rank 0's shared state, so the
# project folder (or runtime.train.checkpoint_dir) must be on storage every node sees, or
# runtime.train.checkpoint_dir an s3:// prefix (each rank then uploads its own file).
set -euo pipefail
stage="${1:-train}"
case "$stage" in
  train|baseline) ;;
  *) echo "usage: $0 [train|baseline] [mofi options...]" >&2; exit 2 ;;
esac
shift || true
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(python -c 'import torch; print(torch.cuda.device_count() or 1)')"
fi
# with a storage root (storage.root / MOFI_STORAGE_ROOT), this node fetches the stage inputs
# once, before the launch; rank 0 publishes the outputs at the end
mofi storage pull "$stage" --if-configured "$@"
echo "torchrun: node ${NODE_RANK}/${NNODES}, ${NPROC_PER_NODE} processes, rendezvous ${MASTER_ADDR}:${MASTER_PORT}" >&2
exec torchrun --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC_PER_NODE" \
  --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" --no-python mofi "$stage" "$@"
