#!/usr/bin/env bash
# Supervised QCNet training on Argoverse 2; set PRETRAINED_CKPT to fine-tune a SmartPretrain checkpoint.
# Every setting is an environment variable with a default, e.g.
#   ROOT=/data/av2 DEVICES=8 bash train.sh
#   PRETRAINED_CKPT=ckpts/smartpretrain.ckpt COPY_REFINE=1 EXP_NAME=finetune bash train.sh
# Extra arguments are passed on to train.py (e.g. --resume, --max_steps 100).
# FAST=1 adds every speed option (CUDA GPUs; the first steps compile for a few minutes; docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")"

source scripts/common.sh
fast_args train  # FAST=1: speed options (checked before any data is written)
ROOT=${ROOT:-data/synthetic}
ensure_synthetic "$ROOT"
DEVICES=${DEVICES:-1}
NUM_NODES=${NUM_NODES:-1}
ACCELERATOR=${ACCELERATOR:-auto}
BATCH=${BATCH:-4}
NUM_WORKERS=${NUM_WORKERS:-8}
MAX_EPOCHS=${MAX_EPOCHS:-64}
PRECISION=${PRECISION:-32}
LOG_DIR=${LOG_DIR:-lightning_logs}
EXP_NAME=${EXP_NAME:-qcnet_av2}
# PRETRAINED_CKPT: a SmartPretrain checkpoint to fine-tune from; "auto" (default) takes the newest
# logs_pretrain/*/checkpoints/last.ckpt written by train_ssl.sh, if any; "none" trains from scratch.
PRETRAINED_CKPT=${PRETRAINED_CKPT:-auto}
if [ "$PRETRAINED_CKPT" = "auto" ]; then
    PRETRAINED_CKPT=$(ls -t logs_pretrain/*/checkpoints/last.ckpt 2>/dev/null | head -n 1 || true)
    if [ -n "$PRETRAINED_CKPT" ]; then
        echo "train.sh: fine-tuning from $PRETRAINED_CKPT (PRETRAINED_CKPT=none trains from scratch)"
    fi
elif [ "$PRETRAINED_CKPT" = "none" ]; then
    PRETRAINED_CKPT=
fi
COPY_REFINE=${COPY_REFINE:-1}

finetune_args=()
if [ -n "$PRETRAINED_CKPT" ]; then
    finetune_args=(--pretrained_ckpt "$PRETRAINED_CKPT" --copy_refine "$COPY_REFINE")
fi

exec "$PYTHON" train.py \
    --root "$ROOT" \
    --train_batch_size "$BATCH" --val_batch_size "$BATCH" --test_batch_size "$BATCH" \
    --num_workers "$NUM_WORKERS" \
    --accelerator "$ACCELERATOR" --devices "$DEVICES" --num_nodes "$NUM_NODES" \
    --max_epochs "$MAX_EPOCHS" --T_max "$MAX_EPOCHS" \
    --precision "$PRECISION" \
    --log_dir "$LOG_DIR" --exp_name "$EXP_NAME" \
    --dataset argoverse_v2 \
    --num_historical_steps 50 --num_future_steps 60 --num_recurrent_steps 3 \
    --pl2pl_radius 150 --time_span 10 --pl2a_radius 50 --a2a_radius 50 \
    --num_t2m_steps 30 --pl2m_radius 150 --a2m_radius 150 \
    "${finetune_args[@]}" \
    "${FAST_ARGS[@]}" \
    "$@"
