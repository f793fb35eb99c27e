#!/usr/bin/env bash
# The QCNet speed comparison on one machine: the official step and ours (every speed option) on the
# same card, one process per configuration, each under its own time limit so a slow compile cannot eat the others.
#
#   bash benchmarks/qcnet_speed_protocol.sh SCENES_FILE OFFICIAL_REPO OUT_DIR [BUDGET_SECONDS [CONFIG ...]]
#
# SCENES_FILE: scenes saved by `python benchmarks/bench_qcnet_step.py --save_scenes F`; OFFICIAL_REPO: a checkout of
# the official QCNet code (run, never committed here); OUT_DIR: one JSON report and one log per configuration.
# BUDGET_SECONDS (default 570) bounds the whole run. The first compiled configuration fills the inductor cache
# (--compile_cache_dir COMPILE_CACHE_DIR, default /tmp/qcnet_speed_protocol_compile_cache; ~95 MB, too large to carry between machines), so
# later compiled ones on the same machine compile in less time; each compiled configuration still needs 2-7 minutes
# of warm-up on 16 cores (H200, 2026-12-03), so budget about 5 minutes per compiled configuration. CONFIG names pick
# configurations (default: all, in this order): official compiled_fp32 compiled_infer compiled_fp32_budget
# compiled_bf16 lightning. MEMORY_BUDGET (default 0.8) is compiled_fp32_budget's --compile_memory_budget. Results go
# into docs/BENCHMARKS.md with the date, the card and the software versions.
set -u
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [ $# -lt 3 ]; then
    echo "error: qcnet_speed_protocol.sh: needs SCENES_FILE OFFICIAL_REPO OUT_DIR (see --help)" >&2
    exit 2
fi
SCENES=$1
OFFICIAL=$2
OUT=$3
BUDGET=${4:-570}
shift $(($# < 4 ? $# : 4))
CONFIGS=" ${*:-official compiled_fp32 compiled_infer compiled_fp32_budget compiled_bf16 lightning} "
mkdir -p "$OUT"
CACHE=${COMPILE_CACHE_DIR:-/tmp/qcnet_speed_protocol_compile_cache}
BENCH="python benchmarks/bench_qcnet_step.py --device cuda --scenes_file $SCENES --steps 30"
COMPILED="--speed fast --compile_cache_dir $CACHE"

source "$(dirname "$0")/protocol_runner.sh"

run official 110 --impl official --official_repo "$OFFICIAL" --batch_sizes 32 4 --precision fp32 --mode train infer
run compiled_fp32 480 $COMPILED --prebuilt_graph --batch_sizes 32 4 --precision fp32 --mode train --profile 3
run compiled_infer 300 $COMPILED --compile_inference --prebuilt_graph --batch_sizes 4 32 --precision fp32 --mode infer
run compiled_fp32_budget 480 $COMPILED --prebuilt_graph --compile_memory_budget "${MEMORY_BUDGET:-0.8}" --batch_sizes 32 \
    --precision fp32 --mode train
run compiled_bf16 480 $COMPILED --prebuilt_graph --batch_sizes 32 4 --precision bf16-mixed --mode train
# The real loop: Lightning, loader workers building the graphs, varying batch sizes (synthetic AV2 scenes, needs av2).
run_command lightning 420 python benchmarks/cuda_graphs_training.py --work_dir /tmp/qcnet_speed_protocol_data \
    --num_train 640 --num_val 192 --batch_size 32 --epochs 2 --skip_eager_training --compile --build_graph_in_workers
echo "total ${SECONDS}s"
