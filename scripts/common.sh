# Shared by the .sh launchers: picks the python and makes the synthetic default data on first use.
# PYTHON: .venv/bin/python when scripts/setup_env.sh made one, else python3 on PATH (e.g. an activated environment).
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

# ensure_synthetic ROOT: when ROOT is the synthetic default (data/synthetic) and has no train split yet, write
# SYNTHETIC_TRAIN / SYNTHETIC_VAL / SYNTHETIC_TEST scenarios in the Argoverse 2 layout (<split>/<scenario_id>/).
ensure_synthetic() {
    local root="$1"
    [ "$root" = "data/synthetic" ] || return 0
    local seed=0 split num
    for split in train val test; do
        case $split in
            train) num=${SYNTHETIC_TRAIN:-200} ;;
            val) num=${SYNTHETIC_VAL:-40} ;;
            test) num=${SYNTHETIC_TEST:-24} ;;
        esac
        if [ ! -d "$root/$split" ]; then
            echo "[synthetic default] writing $num $split scenarios to $root/$split"
            "$PYTHON" -m datasets.synthetic --out "$root" --split "$split" --num "$num" --seed "$seed" \
                --num_workers "$(nproc)"
        fi
        seed=$((seed + 1))
    done
}

# fast_args train|eval: FAST=1 (train.sh, val.sh, test.sh) passes --speed fast (every speed option, docs/PERFORMANCE.md)
# (CUDA GPUs only; the first steps compile for a few minutes); sets the array FAST_ARGS (empty for FAST=0).
fast_args() {
    FAST_ARGS=()
    case "${FAST:-0}" in
        0) return 0 ;;
        1) ;;
        *) echo "error: FAST must be 0 or 1, got '${FAST}'" >&2; exit 2 ;;
    esac
    FAST_ARGS=(--speed fast)
}
