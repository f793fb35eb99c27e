#!/usr/bin/env bash
# Validates a checkpoint on the Argoverse 2 val split and prints the metric table, e.g.
#   ROOT=/data/av2 CKPT=lightning_logs/qcnet_av2/checkpoints/last.ckpt bash val.sh
# Extra arguments are passed on to val.py (e.g. --output_json val.json).
# FAST=1 adds every speed option (CUDA GPUs; the first steps compile for a few minutes; docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")"

source scripts/common.sh
fast_args eval  # FAST=1: speed options (checked before any data is written)
ROOT=${ROOT:-data/synthetic}
ensure_synthetic "$ROOT"
CKPT=${CKPT:-lightning_logs/qcnet_av2/checkpoints/last.ckpt}
DEVICES=${DEVICES:-1}
ACCELERATOR=${ACCELERATOR:-auto}
BATCH=${BATCH:-32}
NUM_WORKERS=${NUM_WORKERS:-8}

exec "$PYTHON" val.py \
    --model QCNet \
    --root "$ROOT" \
    --ckpt_path "$CKPT" \
    --val_batch_size "$BATCH" --num_workers "$NUM_WORKERS" \
    --accelerator "$ACCELERATOR" --devices "$DEVICES" \
    "${FAST_ARGS[@]}" \
    "$@"
