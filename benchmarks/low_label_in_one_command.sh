#!/usr/bin/env bash
# One backbone's low-label study (docs/LOW_LABEL.md) in one call of about ten minutes on one GPU: data, the
# pre-trainings (the scratch fine-tunes run beside a single one: they need none), then every other fine-tune that fits
# before the deadline, and the report.
#
#   bash benchmarks/low_label_in_one_command.sh OUT_DIR [BACKBONE [BUDGET_SECONDS]]
#
# OUT_DIR gets low_label.tar.gz (runs.csv, finetune_curves.csv, pretrain.json, pretrain_curves.csv, protocol.json,
# summary.md, gain_vs_labelled.png, failures.log if a run failed), the slim pre-trained checkpoints and the logs'
# tails.
# BACKBONE: QCNet (default) or ForecastMAE. BUDGET_SECONDS (default 540) bounds the whole call; fine-tunes that would
# end later are left for a repeat of the finetune step (docs/LOW_LABEL.md, Resuming). The pre-trainings are those
# the arms need: the target pool for pretrained / pretrained_sym, the supervised oracle for oracle, the one-task
# pre-trainings for their ablation arms (pretrained_contrastive, pretrained_reconstruction); the mixed-source arm
# needs the two-command form of docs/LOW_LABEL.md. ARMS (default "scratch pretrained pretrained_sym oracle"),
# LABELLED (default "50 200"), EPOCHS (default "30 15", one value or one per labelled size) and SEEDS (default
# "0 1 2") pick the fine-tunes; PRETRAIN_STEPS (default 250) and MOMENTUM (starting EMA momentum, default 0.976) the
# pre-training; PARALLEL (default 4: fits an 80 GB card with full-size QCNet) the fine-tunes sharing the card.
set -u
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
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
SOURCES=""
case " $ARM_LIST " in *" pretrained "*|*" pretrained_sym "*|*" pretrained_frozen "*) SOURCES="ssl_target" ;; esac
case " $ARM_LIST " in *" oracle "*) SOURCES="$SOURCES oracle" ;; esac
for task in contrastive reconstruction; do
    case " $ARM_LIST " in *" pretrained_$task "*) SOURCES="$SOURCES ssl_$task" ;; esac
done
OTHER_ARMS=$(echo " $ARM_LIST " | sed 's/ scratch / /g')
FINETUNE="python benchmarks/ssl_low_label.py finetune $COMMON --out $STUDY --pretrained_dir $STUDY
          --smallest_only pretrained_sym --labelled ${LABELLED:-50 200} --seeds ${SEEDS:-0 1 2}
          --finetune_epochs ${EPOCHS:-30 15} --finetune_batch_size 16 --mode_noise_std 0.02"
PARALLEL=${PARALLEL:-4}
PRETRAIN_PID=""
if [ -n "$SOURCES" ]; then
    python benchmarks/ssl_low_label.py pretrain $COMMON --out "$STUDY" --sources $SOURCES \
        --pretrain_steps ${PRETRAIN_STEPS:-250} --epoch_steps 50 --pretrain_batch_size 32 \
        --contra_momentum ${MOMENTUM:-0.976} --oracle_steps ${PRETRAIN_STEPS:-250} \
        --parallel $(echo $SOURCES | wc -w) --deadline_s $((BUDGET * 6 / 10)) > "$OUT/pretrain.log" 2>&1 &
    PRETRAIN_PID=$!
fi
SCRATCH_PID=""
# The scratch arm needs no pre-training: beside a single pre-training it starts once the data are ready and shares
# the card with it. Two pre-trainings at once (e.g. the target pool and the oracle) fill an 80 GB card on their own
# (~49 + 25 GiB for full-size QCNet), so then the scratch arm waits and runs with the other arms.
if [ $(echo $SOURCES | wc -w) -gt 1 ]; then
    case " $ARM_LIST " in *" scratch "*) OTHER_ARMS="scratch $OTHER_ARMS" ;; esac
else case " $ARM_LIST " in *" scratch "*)
    while [ -n "$PRETRAIN_PID" ] && kill -0 $PRETRAIN_PID 2>/dev/null \
          && ! grep -q "^data ready" "$OUT/pretrain.log" 2>/dev/null; do sleep 2; done
    $FINETUNE --arms scratch --parallel $(( PARALLEL > 1 ? PARALLEL - 1 : 1 )) \
        --deadline_s $((BUDGET - SECONDS - 30)) --no_report > "$OUT/finetune_scratch.log" 2>&1 &
    SCRATCH_PID=$! ;;
esac
fi
if [ -n "$PRETRAIN_PID" ]; then
    wait $PRETRAIN_PID
    tail -25 "$OUT/pretrain.log"
fi
echo "pretrain done at ${SECONDS}s"
if [ -n "$(echo $OTHER_ARMS)" ]; then
    $FINETUNE --arms $OTHER_ARMS --parallel $PARALLEL --deadline_s $((BUDGET - SECONDS - 30)) --no_report 2>&1 | tail -25
fi
[ -n "$SCRATCH_PID" ] && wait $SCRATCH_PID
[ -n "$SCRATCH_PID" ] && tail -15 "$OUT/finetune_scratch.log"
python benchmarks/ssl_low_label.py report --out "$STUDY" 2>&1 | tail -10
echo "finetune done at ${SECONDS}s"
# the slim pre-trained checkpoints too (each ~5-15 MiB), so that a later call can run the fine-tunes left over
# (carry them into the pretrained dir, docs/LOW_LABEL.md, Resuming)
[ -n "$SOURCES" ] && cp "$STUDY"/*.ckpt "$OUT"/ 2>/dev/null
tar -czf "$OUT/low_label.tar.gz" -C "$STUDY" --exclude='*.ckpt' --exclude='*.pt' \
    $(cd "$STUDY" && ls | grep -v -e '\.ckpt$' -e '\.pt$')
