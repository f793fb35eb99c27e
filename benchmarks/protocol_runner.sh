# Sourced by the speed protocols (qcnet_speed_protocol.sh, ssl_speed_protocol.sh): runs one named configuration
# under its own time limit and within what is left of the whole budget.
# Needs BUDGET (seconds for the whole protocol), CONFIGS (" name name ... ": the configurations to run), OUT, and
# BENCH (the benchmark command that `run` extends with a configuration's flags).

# name | seconds at most | command (its --report goes to OUT/<name>.json, its output to OUT/<name>.log)
run_command() {
    local name=$1 limit=$2
    shift 2
    case "$CONFIGS" in *" $name "*) ;; *) return ;; esac
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "[$name] skipped: ${left}s of the budget left"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[$name] at most ${limit}s: $*"
    timeout "$limit" "$@" --report "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    echo "[$name] exit $? after ${SECONDS}s"
    grep -E '^batch|^training step|Error' "$OUT/$name.log" || tail -n 3 "$OUT/$name.log"
}

# name | seconds at most | flags of the benchmark command $BENCH
run() {
    local name=$1 limit=$2
    shift 2
    run_command "$name" "$limit" $BENCH "$@"
}
