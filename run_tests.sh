#!/usr/bin/env bash
# Installs what is missing (see scripts/setup_env.sh) and runs the whole test suite.
# Extra arguments are passed to pytest, e.g. `bash run_tests.sh -k metrics -x`.
set -e
cd "$(dirname "$0")"
source scripts/setup_env.sh
# One intra-op thread per test process: the suite runs tiny models, where thread hand-offs cost more than they
# gain (measured ~4x less CPU time on the 2-core CI machine). Override by exporting OMP_NUM_THREADS.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest "$@"
