#!/usr/bin/env bash
# End-to-end demo on the embedded synthetic data (no download needed), through the project's own CLIs:
#   synthetic AV2-format scenarios -> preprocessing -> SmartPretrain pre-training -> fine-tuning QCNet from it
#   -> validation (metric table, vs a constant-velocity guess) -> test submission (parquet) -> prediction plots.
# Usage: bash demo.sh [--gpu] [--out DIR] [--verbose]
#   --gpu      training and inference on one GPU (bf16-mixed training), bigger scenes, data and model
#   --out DIR  where everything is written (default: demo_output); a previous demo's DIR is replaced
#   --verbose  stream every stage's output (default: one line per stage, full output in DIR/logs/demo_*.log)
# Environment overrides: NUM_TRAIN NUM_VAL NUM_TEST PROFILE PRETRAIN_EPOCHS FINETUNE_EPOCHS NUM_PLOTS
# Time (after the first-run setup of .venv): ~3 min on a 2-core CPU; ends with a one-screen summary.
set -eo pipefail
cd "$(dirname "$0")"
OUT=demo_output
GPU=0
VERBOSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) GPU=1; shift ;;
    --out) [ $# -ge 2 ] || { echo "demo.sh: --out needs a directory" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --verbose) VERBOSE=1; shift ;;
    -h|--help) sed -n 2,10p "$0" | cut -c3-; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$GPU" = 1 ]; then
  # A GPU affords the full urban scenes, a wider model and more data; these settings are not tuned.
  ACCEL=gpu; PRECISION=bf16-mixed; LOADER_WORKERS=4
  PROFILE=${PROFILE:-default}; NUM_TRAIN=${NUM_TRAIN:-800}; NUM_VAL=${NUM_VAL:-100}; NUM_TEST=${NUM_TEST:-50}
  PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-4}; FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-12}
  PRETRAIN_BATCH=16; FINETUNE_BATCH=16; FINETUNE_LR=1e-3
  SIZE_FLAGS=(--hidden_dim 64 --num_freq_bands 32 --num_heads 4 --head_dim 16 --num_agent_layers 2
              --num_dec_layers 2 --pl2pl_radius 100 --pl2a_radius 50 --a2a_radius 50 --pl2m_radius 100
              --a2m_radius 100)
else
  # CPU: small scenes (profile 'demo': ~12 agents, ~45 lane/crosswalk polygons, vs ~33 and ~100 for 'default')
  # and a tiny model make a step cheap; many small-batch steps at a high learning rate train the model far
  # enough in ~1.5 min for the modes to follow the lanes. One process, no loader workers: both cores compute.
  ACCEL=cpu; PRECISION=32; LOADER_WORKERS=0
  PROFILE=${PROFILE:-demo}; NUM_TRAIN=${NUM_TRAIN:-160}; NUM_VAL=${NUM_VAL:-32}; NUM_TEST=${NUM_TEST:-16}
  PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-2}; FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-8}
  PRETRAIN_BATCH=8; FINETUNE_BATCH=4; FINETUNE_LR=2e-3
  SIZE_FLAGS=(--hidden_dim 32 --num_freq_bands 16 --num_heads 2 --head_dim 16 --num_agent_layers 1
              --num_dec_layers 1 --pl2pl_radius 50 --pl2a_radius 30 --a2a_radius 30 --pl2m_radius 50
              --a2m_radius 50)
fi
NUM_PLOTS=${NUM_PLOTS:-6}

# Replace only a previous demo's output (marked by .demo_output; older demos left raw/ and logs/), never an
# unrelated folder.
if [ -e "$OUT" ] && [ ! -f "$OUT/.demo_output" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ] \
    && ! { [ -d "$OUT/raw" ] && [ -d "$OUT/logs" ]; }; then
  echo "error: $OUT: exists and is not a demo output folder (choose another --out or remove it)" >&2; exit 2
fi
rm -rf "$OUT/raw" "$OUT/data" "$OUT/logs" "$OUT/plots" "$OUT/submission.parquet" "$OUT/val_metrics.json"
mkdir -p "$OUT/logs"
touch "$OUT/.demo_output"

source scripts/setup_env.sh
NPROC=$(nproc)
RAW="$OUT/raw"
ROOT="$OUT/data"
PRE_CKPT="$OUT/logs/pretrain/checkpoints/last.ckpt"
FT_CKPT="$OUT/logs/finetune/checkpoints/last.ckpt"
DEMO_START=$EPOCHREALTIME
STAGE_NAMES=()
STAGE_SECONDS=()

# run_stage NUMBER NAME LOG_NAME COMMAND...: runs COMMAND with its output in $OUT/logs/demo_<LOG_NAME>.log
# (also on screen with --verbose), records its wall time, and on failure shows the end of the log.
run_stage() {
  local number=$1 name=$2 log="$OUT/logs/demo_$3.log" short=${3#*_} start status=0
  shift 3
  start=$EPOCHREALTIME
  if [ "$VERBOSE" = 1 ]; then
    echo "== $number $name"
    "$@" 2>&1 | tee "$log" || status=$?
  else
    printf '== %-5s %-52s' "$number" "$name"
    "$@" > "$log" 2>&1 || status=$?
  fi
  local seconds
  seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
  if [ "$status" != 0 ]; then
    [ "$VERBOSE" = 1 ] || { echo "FAILED after $seconds s"; tail -n 25 "$log" | tr '\r' '\n' | tail -n 25; }
    echo "demo.sh: stage '$name' failed (exit status $status); full output: $log" >&2
    exit "$status"
  fi
  [ "$VERBOSE" = 1 ] && echo "== $number done in $seconds s" || echo "$seconds s"
  STAGE_NAMES+=("$short")
  STAGE_SECONDS+=("$seconds")
}

# The three splits are written (then preprocessed) by concurrent processes: each CLI spends ~4 s importing
# torch & co. before ~1 s of work, and concurrent start-ups overlap on the cores.
wait_all() {   # wait_all PID...: waits for every one, returns the last non-zero exit status (0 if none)
  local pid status=0
  for pid in "$@"; do wait "$pid" || status=$?; done
  return "$status"
}

generate_data() {
  local pids=()
  "$PY" -m datasets.synthetic --out "$RAW" --split train --num "$NUM_TRAIN" --seed 0 --profile "$PROFILE" \
      --num_workers "$NPROC" --no_progress & pids+=($!)
  "$PY" -m datasets.synthetic --out "$RAW" --split val --num "$NUM_VAL" --seed 1 --profile "$PROFILE" \
      --num_workers "$NPROC" --no_progress & pids+=($!)
  "$PY" -m datasets.synthetic --out "$RAW" --split test --num "$NUM_TEST" --seed 2 --profile "$PROFILE" \
      --num_workers "$NPROC" --no_progress & pids+=($!)
  wait_all "${pids[@]}"
}

preprocess_data() {
  local split pids=()
  for split in train val test; do
    "$PY" -m datasets.preprocess --dataset argoverse_v2 --raw_dir "$RAW/$split" \
        --processed_dir "$ROOT/$split/processed" --num_workers "$NPROC" --no_progress & pids+=($!)
  done
  wait_all "${pids[@]}"
}

DATA_FLAGS=(--root "$ROOT" --train_raw_dir "$RAW/train" --val_raw_dir "$RAW/val" --test_raw_dir "$RAW/test"
            --train_processed_dir "$ROOT/train/processed" --val_processed_dir "$ROOT/val/processed"
            --test_processed_dir "$ROOT/test/processed" --num_workers "$LOADER_WORKERS")
MODEL_FLAGS=(--dataset argoverse_v2 --num_historical_steps 50 --num_future_steps 60 --num_recurrent_steps 3
             --time_span 10 --num_t2m_steps 30 --num_map_layers 1 "${SIZE_FLAGS[@]}")
TRAINER_FLAGS=(--accelerator "$ACCEL" --devices 1 --precision "$PRECISION" --log_dir "$OUT/logs")

echo "SmartPretrain demo: profile '$PROFILE', $NUM_TRAIN/$NUM_VAL/$NUM_TEST train/val/test scenarios, $ACCEL -> $OUT"
run_stage 1/7 "synthetic Argoverse 2 scenarios ($PROFILE)" 1_data generate_data
run_stage 2/7 "preprocessing" 2_preprocess preprocess_data
run_stage 3/7 "SmartPretrain pre-training ($PRETRAIN_EPOCHS epochs)" 3_pretrain \
    "$PY" train_ssl.py "${DATA_FLAGS[@]}" "${MODEL_FLAGS[@]}" "${TRAINER_FLAGS[@]}" \
    --train_batch_size "$PRETRAIN_BATCH" --val_batch_size 16 --max_epochs "$PRETRAIN_EPOCHS" \
    --warmup $(( (PRETRAIN_EPOCHS + 1) / 2 )) --exp_name pretrain
# The cosine schedule ends with the run (T_max = epochs); no sanity validation (the pipeline is tested).
run_stage 4/7 "fine-tuning QCNet from it ($FINETUNE_EPOCHS epochs)" 4_finetune \
    "$PY" train.py "${DATA_FLAGS[@]}" "${MODEL_FLAGS[@]}" "${TRAINER_FLAGS[@]}" \
    --train_batch_size "$FINETUNE_BATCH" --val_batch_size 16 --test_batch_size 16 \
    --max_epochs "$FINETUNE_EPOCHS" --T_max "$FINETUNE_EPOCHS" --lr "$FINETUNE_LR" --num_sanity_val_steps 0 \
    --pretrained_ckpt "$PRE_CKPT" --copy_refine 1 --exp_name finetune
run_stage 5/7 "validation" 5_val \
    "$PY" val.py --root "$ROOT" --val_raw_dir "$RAW/val" --val_processed_dir "$ROOT/val/processed" \
    --val_batch_size 16 --num_workers "$LOADER_WORKERS" --ckpt_path "$FT_CKPT" --accelerator "$ACCEL" \
    --output_json "$OUT/val_metrics.json"
run_stage 6/7 "test submission" 6_test \
    "$PY" test.py --root "$ROOT" --test_raw_dir "$RAW/test" --test_processed_dir "$ROOT/test/processed" \
    --test_batch_size 16 --num_workers "$LOADER_WORKERS" --ckpt_path "$FT_CKPT" --accelerator "$ACCEL" \
    --submission_dir "$OUT" --submission_file_name submission
run_stage 7/7 "prediction plots ($NUM_PLOTS val scenarios)" 7_plots \
    "$PY" visualize.py --root "$ROOT" --split val --raw_dir "$RAW/val" --processed_dir "$ROOT/val/processed" \
    --ckpt_path "$FT_CKPT" --labels "fine-tuned QCNet" --num_scenarios "$NUM_PLOTS" --out_dir "$OUT/plots" \
    --accelerator "$ACCEL"
TOTAL_SECONDS=$(awk -v a="$DEMO_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')

# Summary: the model's metrics next to a constant-velocity guess (the focal agent keeps its last observed
# velocity for the 60 future steps; one mode, so its minADE/minFDE are plain ADE/FDE), read from the raw files.
"$PY" - "$OUT" "$RAW/val" "$TOTAL_SECONDS" "${STAGE_NAMES[@]}" -- "${STAGE_SECONDS[@]}" <<'PY'
import glob, json, os, sys, textwrap

import numpy as np
import pyarrow.parquet as pq

out, val_raw, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
rest = sys.argv[4:]
names, seconds = rest[:rest.index('--')], rest[rest.index('--') + 1:]
metrics = json.load(open(os.path.join(out, 'val_metrics.json')))
model = metrics['metrics']

ade, fde = [], []
for path in sorted(glob.glob(os.path.join(val_raw, '*', 'scenario_*.parquet'))):
    table = pq.read_table(path, columns=['track_id', 'timestep', 'position_x', 'position_y', 'velocity_x',
                                         'velocity_y', 'focal_track_id']).to_pandas()
    focal = table[table.track_id == table.focal_track_id.iloc[0]].sort_values('timestep')
    pos = focal[['position_x', 'position_y']].to_numpy()
    vel = focal[['velocity_x', 'velocity_y']].to_numpy()
    if len(pos) != 110:
        raise SystemExit(f'error: {path}: focal track has {len(pos)} steps, expected 110')
    guess = pos[49] + vel[49] * (np.arange(1, 61)[:, None] * 0.1)
    err = np.linalg.norm(guess - pos[50:], axis=1)
    ade.append(err.mean())
    fde.append(err[-1])
cv = {'minADE': float(np.mean(ade)), 'minFDE': float(np.mean(fde)), 'MR': float(np.mean(np.array(fde) > 2.0))}

rule = '=' * 78
print(f'\n{rule}\nDemo finished in {total // 60} min {total % 60:02d} s\n')
print(f'validation, {metrics["num_scenarios"]} scenarios (focal agents, K = 6 modes, miss = final error > 2 m)')
print(f'  {"metric":<14}{"fine-tuned QCNet":>18}{"constant velocity":>20}')
for key in ('minADE', 'minFDE', 'MR', 'Brier', 'brier-minFDE', 'minAHE', 'minFHE'):
    unit = ' m' if key in ('minADE', 'minFDE', 'brier-minFDE') else ''
    base = f'{cv[key]:.2f}{unit}' if key in cv else '-'
    print(f'  {key:<14}{model[key]:>16.2f}{unit or "  "}{base:>20}')
print('\n' + textwrap.fill(', '.join(f'{n} {s} s' for n, s in zip(names, seconds)), width=78,
                           initial_indent='stage times: ', subsequent_indent=' ' * 13))
print('\nartefacts:')
rows = [('raw synthetic scenarios', 'raw/{train,val,test}/'), ('processed samples', 'data/{train,val,test}/processed/'),
        ('pre-trained checkpoint', 'logs/pretrain/checkpoints/last.ckpt'),
        ('fine-tuned checkpoint', 'logs/finetune/checkpoints/last.ckpt'), ('validation metrics', 'val_metrics.json'),
        ('submission parquet', 'submission.parquet'),
        ('prediction plots', f'plots/ ({len(glob.glob(os.path.join(out, "plots", "*.png")))} PNGs)'),
        ('stage logs', 'logs/demo_*.log'), ('TensorBoard + CSV logs', 'logs/{pretrain,finetune}/')]
for label, rel in rows:
    print(f"  {label:<26}{os.path.join(out, rel)}")
print(f'  (tensorboard --logdir {os.path.join(out, "logs")})\n{rule}')
PY
