#!/bin/bash
# Multi-node training with torchrun (no SLURM): run this on every node with the same MASTER_ADDR/PORT.
# Lightning reads torchrun's environment (TorchElasticEnvironment); trainer.devices must equal --nproc-per-node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash recipes/multinode/torchrun.sh recipe=softvq_imagenet256 data.root=/data/imagenet
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash recipes/multinode/torchrun.sh recipe=softvq_imagenet256 data.root=/data/imagenet
# Every node must write to the same shared RUN_DIR (set it to a path on shared storage).
set -euo pipefail
NPROC="${NPROC:-8}"
RUN_DIR="${RUN_DIR:-outputs/torchrun/run}"
RESUME=()
if [ -f "${RUN_DIR}/checkpoints/last.ckpt" ]; then RESUME=("resume=${RUN_DIR}"); fi
.venv/bin/torchrun --nnodes="${NNODES:-1}" --node-rank="${NODE_RANK:-0}" --nproc-per-node="${NPROC}" \
  --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}" \
  -m vqkit.train trainer=ddp trainer.num_nodes="${NNODES:-1}" trainer.devices="${NPROC}" \
  hydra.run.dir="${RUN_DIR}" "${RESUME[@]}" "$@"
