#!/usr/bin/env bash
# Creates (once) the virtual environment .venv and installs what is missing.
# - An existing torch (e.g. a CUDA build) of the calling python is reused through
#   --system-site-packages and never reinstalled.
# - With no torch at all, torch==${TORCH_VERSION:-2.13.0} is installed (CPU wheel where one is on disk).
# - No compiler is needed: torch-cluster is optional and used only when importable.
# Usage: source scripts/setup_env.sh   (exports PY=<venv python>)
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
BASE_PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  if "$BASE_PY" -c "import torch" >/dev/null 2>&1; then
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha1sum | cut -c1-40)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing torch==${TORCH_VERSION:-2.13.0}"
    "$PY" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
  fi
  echo "[setup] installing requirements (a minute on a fresh machine)"
  "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" 2>&1 | grep -v "is ignored: it is neither" || true
  "$PY" -c "import torch, torch_geometric, pytorch_lightning, av2, pandas, pyarrow, matplotlib" \
    || { echo "[setup] ERROR: dependencies failed to import after install" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PY
