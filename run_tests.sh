#!/usr/bin/env bash
# Installs what is missing (see scripts/setup_env.sh) and runs the whole test suite.
# Extra arguments are passed to pytest, e.g. `bash run_tests.sh -k metrics -x`.
set -e
cd "$(dirname "$0")"
source scripts/setup_env.sh
exec "$PY" -m pytest "$@"
