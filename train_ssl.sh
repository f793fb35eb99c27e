#!/usr/bin/env bash
# SmartPretrain pre-training of QCNet (official recipe: 32 epochs, batch 4 per device, lr 1e-4 -> 1.5e-3 over 15
# warm-up epochs then cosine to 1e-6, weight decay 1e-2 -> 1e-1, momentum 0.996 -> 1, temperature 0.07).
# Every setting is an environment variable with a default, e.g.
#   bash train_ssl.sh                                  # synthetic data (generated on first use) on this machine
#   ROOT=/data/av2 DEVICES=8 PRECISION=bf16-mixed bash train_ssl.sh
# ROOT holds either <split>/raw/<scenario_id>/ (the official QCNet layout) or directly <split>/<scenario_id>/ (the AV2
# download and datasets.synthetic; processed files then go to ROOT/processed/<split>). Extra arguments are passed on to train_ssl.py (e.g. --resume, --max_steps 100).
# Fine-tune afterwards: PRETRAINED_CKPT=<run>/checkpoints/last.ckpt bash train.sh
set -euo pipefail
cd "$(dirname "$0")"

source scripts/common.sh
ROOT=${ROOT:-data/synthetic}
ensure_synthetic "$ROOT"
DEVICES=${DEVICES:-1}
NUM_NODES=${NUM_NODES:-1}
ACCELERATOR=${ACCELERATOR:-auto}
BATCH=${BATCH:-4}
NUM_WORKERS=${NUM_WORKERS:-8}
MAX_EPOCHS=${MAX_EPOCHS:-32}
WARMUP=${WARMUP:-15}
PRECISION=${PRECISION:-32}
LOG_DIR=${LOG_DIR:-logs_pretrain}
EXP_NAME=${EXP_NAME:-smartpretrain_bz${BATCH}_epoch${MAX_EPOCHS}}
SEED=${SEED:-2025}
# Multi-dataset pre-training: LOAD_AV1=1 AV1_ROOT=<root with train/raw/*.csv> LOAD_WAYMO=1 WAYMO_ROOT=<root with
# train/raw/*.tfrecord*> (docs/DATASETS.md); DATASET_WEIGHTS="1 1 1" sets sampling weights (AV2, AV1, Waymo).
mix_args=(--load_av1 "${LOAD_AV1:-0}" --load_waymo "${LOAD_WAYMO:-0}")
[ -n "${AV1_ROOT:-}" ] && mix_args+=(--av1_root "$AV1_ROOT")
[ -n "${WAYMO_ROOT:-}" ] && mix_args+=(--waymo_root "$WAYMO_ROOT")
# shellcheck disable=SC2206
[ -n "${DATASET_WEIGHTS:-}" ] && mix_args+=(--dataset_weights $DATASET_WEIGHTS)

exec "$PYTHON" train_ssl.py \
    --root "$ROOT" \
    --resume_path null \
    --num_nodes "$NUM_NODES" --devices "$DEVICES" --accelerator "$ACCELERATOR" \
    --train_batch_size "$BATCH" --val_batch_size "$BATCH" --test_batch_size "$BATCH" \
    --exp_name "$EXP_NAME" --log_dir "$LOG_DIR" \
    --max_epochs "$MAX_EPOCHS" --T_max "$MAX_EPOCHS" \
    --lr 1.5e-3 --lr_init 1e-4 --lr_last 1e-6 \
    --weight_decay 1e-1 --weight_decay_init 1e-2 \
    --contra_t 0.07 --contra_momentum 0.996 --warmup "$WARMUP" --lambda_rec 1.0 \
    --dataset argoverse_v2 --num_historical_steps 50 --num_future_steps 60 \
    --num_recurrent_steps 3 --pl2pl_radius 150 --time_span 10 \
    --pl2a_radius 50 --a2a_radius 50 --num_t2m_steps 30 --pl2m_radius 150 --a2m_radius 150 \
    "${mix_args[@]}" \
    --num_workers "$NUM_WORKERS" --precision "$PRECISION" --seed "$SEED" \
    "$@"
