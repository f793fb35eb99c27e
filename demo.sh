#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic default (no download needed):
#   synthetic AV2-format scenarios -> preprocessing -> SmartPretrain pre-training -> fine-tuning from it
#   -> validation (metric table) -> test submission (parquet) -> prediction plots.
# Usage: bash demo.sh [--gpu] [--out DIR] [--small]
#   --gpu    run the training stages on one GPU (bf16-mixed) instead of the CPU
#   --out    where everything is written (default: demo_output)
# Time: a few minutes on a 2-core CPU.
set -e
cd "$(dirname "$0")"
OUT=demo_output
ACCEL=cpu
PRECISION=32
NUM_TRAIN=${NUM_TRAIN:-48}
NUM_VAL=${NUM_VAL:-16}
NUM_TEST=${NUM_TEST:-8}
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) ACCEL=gpu; PRECISION=bf16-mixed; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
source scripts/setup_env.sh
NPROC=$(nproc)
RAW="$OUT/raw"
ROOT="$OUT/data"
echo "== 1/7 synthetic Argoverse 2 scenarios -> $RAW"
"$PY" -m datasets.synthetic --out "$RAW" --split train --num "$NUM_TRAIN" --seed 0 --num_workers "$NPROC"
"$PY" -m datasets.synthetic --out "$RAW" --split val --num "$NUM_VAL" --seed 1 --num_workers "$NPROC"
"$PY" -m datasets.synthetic --out "$RAW" --split test --num "$NUM_TEST" --seed 2 --num_workers "$NPROC"
echo "== 2/7 preprocessing -> $ROOT/<split>/processed"
for split in train val test; do
  "$PY" -m datasets.preprocess --dataset argoverse_v2 --raw_dir "$RAW/$split" \
      --processed_dir "$ROOT/$split/processed" --num_workers "$NPROC"
done
DATA_FLAGS=(--root "$ROOT" --train_raw_dir "$RAW/train" --val_raw_dir "$RAW/val" --test_raw_dir "$RAW/test"
            --train_processed_dir "$ROOT/train/processed" --val_processed_dir "$ROOT/val/processed"
            --test_processed_dir "$ROOT/test/processed")
MODEL_FLAGS=(--dataset argoverse_v2 --num_historical_steps 50 --num_future_steps 60 --num_recurrent_steps 3
             --time_span 10 --num_t2m_steps 30 --hidden_dim 32 --num_freq_bands 16 --num_heads 2 --head_dim 16 --num_map_layers 1 --num_agent_layers 1
             --num_dec_layers 1 --pl2pl_radius 50 --pl2a_radius 30 --a2a_radius 30 --pl2m_radius 50 --a2m_radius 50)
echo "== 3/7 SmartPretrain pre-training"
"$PY" train_ssl.py "${DATA_FLAGS[@]}" "${MODEL_FLAGS[@]}" --train_batch_size 8 --val_batch_size 8 \
    --max_epochs 2 --warmup 1 --accelerator "$ACCEL" --devices 1 --precision "$PRECISION" \
    --log_dir "$OUT/logs" --exp_name pretrain --num_workers 0
PRE_CKPT="$OUT/logs/pretrain/checkpoints/last.ckpt"
echo "== 4/7 fine-tuning QCNet from $PRE_CKPT"
"$PY" train.py "${DATA_FLAGS[@]}" "${MODEL_FLAGS[@]}" --train_batch_size 8 --val_batch_size 8 --test_batch_size 8 \
    --max_epochs 3 --accelerator "$ACCEL" --devices 1 --precision "$PRECISION" \
    --pretrained_ckpt "$PRE_CKPT" --copy_refine 1 --log_dir "$OUT/logs" --exp_name finetune --num_workers 0
FT_CKPT="$OUT/logs/finetune/checkpoints/last.ckpt"
echo "== 5/7 validation"
"$PY" val.py --root "$ROOT" --val_raw_dir "$RAW/val" --val_processed_dir "$ROOT/val/processed" --val_batch_size 8 --ckpt_path "$FT_CKPT" --accelerator "$ACCEL" \
    --output_json "$OUT/val_metrics.json"
echo "== 6/7 test submission"
"$PY" test.py --root "$ROOT" --test_raw_dir "$RAW/test" --test_processed_dir "$ROOT/test/processed" --test_batch_size 8 --ckpt_path "$FT_CKPT" --accelerator "$ACCEL" \
    --submission_dir "$OUT" --submission_file_name submission
echo "== 7/7 prediction plots"
"$PY" visualize.py --root "$ROOT" --split val --raw_dir "$RAW/val" --processed_dir "$ROOT/val/processed" \
    --ckpt_path "$FT_CKPT" --num_scenarios 4 --out_dir "$OUT/plots"
echo
echo "Demo finished. Artefacts:"
echo "  raw synthetic scenarios : $RAW/{train,val,test}"
echo "  processed samples       : $ROOT/{train,val,test}/processed"
echo "  pre-trained checkpoint  : $PRE_CKPT"
echo "  fine-tuned checkpoint   : $FT_CKPT"
echo "  validation metrics      : $OUT/val_metrics.json"
echo "  submission parquet      : $OUT/submission.parquet"
echo "  prediction plots        : $OUT/plots/"
echo "  logs (TensorBoard, CSV) : $OUT/logs  (tensorboard --logdir $OUT/logs)"
