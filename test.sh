#!/usr/bin/env bash
# Writes the Argoverse 2 leaderboard submission (one parquet covering every test scenario), e.g.
#   ROOT=/data/av2 CKPT=ckpts/qcnet.ckpt DEVICES=4 bash test.sh
# Extra arguments are passed on to test.py.
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
SUBMISSION_DIR=${SUBMISSION_DIR:-submissions}
SUBMISSION_FILE_NAME=${SUBMISSION_FILE_NAME:-submission}

exec "$PYTHON" test.py \
    --model QCNet \
    --root "$ROOT" \
    --ckpt_path "$CKPT" \
    --test_batch_size "$BATCH" --num_workers "$NUM_WORKERS" \
    --accelerator "$ACCELERATOR" --devices "$DEVICES" \
    --submission_dir "$SUBMISSION_DIR" --submission_file_name "$SUBMISSION_FILE_NAME" \
    "${FAST_ARGS[@]}" \
    "$@"
