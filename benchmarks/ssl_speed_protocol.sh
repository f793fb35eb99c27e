#!/usr/bin/env bash
# The SmartPretrain pre-training step on one machine: the official step and ours (plain, --speed fast) on the same
# card and the same real scenes, one process per configuration, each under its own time limit.
#
#   bash benchmarks/ssl_speed_protocol.sh OFFICIAL_REPO OUT_DIR [BUDGET_SECONDS [CONFIG ...]]
#
# OFFICIAL_REPO: a checkout of the official SmartPretrain code (run unmodified, never committed here; see
# benchmarks/bench_ssl_step.py for how to get it). OUT_DIR: one JSON report and one log per configuration.
# BUDGET_SECONDS (default 570) bounds the whole run. CONFIG names pick configurations (default: all, in this
# order): official_16 ours_16 graphs_16 fast_16 restart_16 official_32 ours_32 graphs_32 fast_32 (graphs: the
# CUDA-graph step over eager kernels, nothing compiled: quick to start). Named only: fast_bf16_16/32 (--speed fast
# under bf16-mixed); budget_16/32 (--speed fast with --compile_memory_budget MEMORY_BUDGET, default 0.6: the
# compiled backward recomputes more and keeps less); eager_launch_16/32 (the compiled pieces of --speed fast
# launched without CUDA graphs: with PROFILE_STEPS > 0 the report names the operators behind the kernels).
# The fast configurations share one inductor cache (COMPILE_CACHE_DIR, default
# /tmp/ssl_speed_protocol_compile_cache): restart_16 is fast_16 started again with the kernels the first run left
# there (its warmup_s is the warm-start time of a restarted run).
# STEPS (default 30) timed steps per configuration; PROFILE_STEPS (default 0) more steps under torch.profiler (kernel
# time per step and the largest kernels, in each JSON report). DATA_ROOT (default: the real scenes of tests/data) a
# folder of Argoverse 2 scenarios to cycle instead, e.g. heavy ones from
# `python -m datasets.synthetic --profile heavy --split train --num 8 --out data/heavy` (DATA_ROOT=data/heavy/train).
# Results go into docs/BENCHMARKS.md with the date, the card and the software versions.
set -u
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [ $# -lt 2 ]; then
    echo "error: ssl_speed_protocol.sh: needs OFFICIAL_REPO OUT_DIR (see --help)" >&2
    exit 2
fi
OFFICIAL=$1
OUT=$2
BUDGET=${3:-570}
shift $(($# < 3 ? $# : 3))
CONFIGS=" ${*:-official_16 ours_16 graphs_16 fast_16 restart_16 official_32 ours_32 graphs_32 fast_32} "
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR=${COMPILE_CACHE_DIR:-/tmp/ssl_speed_protocol_compile_cache}
BENCH="python benchmarks/bench_ssl_step.py --device cuda --steps ${STEPS:-30} --profile_steps ${PROFILE_STEPS:-0} --tf32 ${DATA_ROOT:+--data_root $DATA_ROOT}"

source "$(dirname "$0")/protocol_runner.sh"

for B in 16 32; do
    run official_$B 120 --impl official --official_repo "$OFFICIAL" --batch_size $B --warmup 5
    run ours_$B 120 --batch_size $B --warmup 5
    run graphs_$B 120 --speed fast --compile 0 --batch_size $B --warmup 5
    run fast_$B 330 --speed fast --batch_size $B --warmup 10
    run restart_$B 150 --speed fast --batch_size $B --warmup 10
    run fast_bf16_$B 330 --speed fast --precision bf16-mixed --batch_size $B --warmup 10
    # compiled, no CUDA graphs: with PROFILE_STEPS, the operator behind each kernel (a replay launches none)
    run eager_launch_$B 200 --speed fast --cuda_graphs 0 --batch_size $B --warmup 10
    run budget_$B 330 --speed fast --compile_memory_budget "${MEMORY_BUDGET:-0.6}" --batch_size $B --warmup 10
done
echo "total ${SECONDS}s"
