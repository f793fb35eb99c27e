#!/usr/bin/env bash
# One backbone's low-label study (docs/LOW_LABEL.md) in one call of about ten minutes on one GPU: data, the
# pre-trainings, then every fine-tune that fits before the deadline, and the report.
#
#   bash benchmarks/low_label_in_one_command.sh OUT_DIR [BACKBONE [BUDGET_SECONDS]]
#
# OUT_DIR gets low_label.tar.gz (runs.csv, finetune_curves.csv, pretrain.json, pretrain_curves.csv, protocol.json,
# summary.md, gain_vs_labelled.png, failures.log if a run failed; no checkpoints) and the logs' tails.
# BACKBONE: QCNet (default) or ForecastMAE. BUDGET_SECONDS (default 540) bounds the whole call; fine-tunes that would
# end later are left for a repeat of the finetune step (docs/LOW_LABEL.md, Resuming). The pre-training sources
# are the target pool and the supervised oracle, plus the one-task pre-trainings when ARMS names their ablation arms
# (pretrained_contrastive, pretrained_reconstruction); the mixed-source arm needs the two-command form of
# docs/LOW_LABEL.md. ARMS (default "scratch pretrained pretrained_sym oracle"), LABELLED (default "50 200") and
# EPOCHS (default "30 15", one value or one per labelled size) pick the fine-tunes.
set -u
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
OUT=${1:?usage: low_label_in_one_command.sh OUT_DIR [BACKBONE [BUDGET_SECONDS]]}
BACKBONE=${2:-QCNet}
BUDGET=${3:-540}
WORK=${WORK_DIR:-work_dirs/low_label}
STUDY=$WORK/results
mkdir -p "$OUT" "$STUDY"
COMMON="--work_dir $WORK --backbones $BACKBONE --profile default --num_pool 5000 --num_val 500
        --accelerator gpu --precision bf16-mixed --num_workers 16"
ARM_LIST=${ARMS:-scratch pretrained pretrained_sym oracle}
SOURCES="ssl_target oracle"
for task in contrastive reconstruction; do
    case " $ARM_LIST " in *" pretrained_$task "*) SOURCES="$SOURCES ssl_$task" ;; esac
done
python benchmarks/ssl_low_label.py pretrain $COMMON --out "$STUDY" --sources $SOURCES \
    --pretrain_steps 250 --epoch_steps 50 --pretrain_batch_size 32 --contra_momentum 0.976 --oracle_steps 250 \
    --parallel $(echo $SOURCES | wc -w) --deadline_s $((BUDGET * 6 / 10)) 2>&1 | tail -25
echo "pretrain done at ${SECONDS}s"
python benchmarks/ssl_low_label.py finetune $COMMON --out "$STUDY" --pretrained_dir "$STUDY" \
    --arms $ARM_LIST --smallest_only pretrained_sym --labelled ${LABELLED:-50 200} \
    --seeds 0 1 2 --finetune_epochs ${EPOCHS:-30 15} --finetune_batch_size 16 --mode_noise_std 0.02 --parallel 4 \
    --deadline_s $((BUDGET - SECONDS - 30)) 2>&1 | tail -25
echo "finetune done at ${SECONDS}s"
tar -czf "$OUT/low_label.tar.gz" -C "$STUDY" --exclude='*.ckpt' --exclude='*.pt' \
    $(cd "$STUDY" && ls | grep -v -e '\.ckpt$' -e '\.pt$')
