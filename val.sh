#!/usr/bin/env bash
# Validates a checkpoint on the Argoverse 2 val split and prints the metric table, e.g.
#   ROOT=/data/av2 CKPT=lightning_logs/qcnet_av2/checkpoints/last.ckpt bash val.sh
# Extra arguments are passed on to val.py (e.g. --output_json val.json).
set -euo pipefail
cd "$(dirname "$0")"

source scripts/common.sh
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
    "$@"
