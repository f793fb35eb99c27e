#!/usr/bin/env bash
# Picks the python the tools run with and installs only what it cannot import, never a second torch.
#   - VENV=<dir> given: that virtual environment (created when missing).
#   - Else, when the calling python ($PYTHON, else python3) imports torch and is itself a virtual environment
#     (venv, virtualenv, uv): that python, as it is.
#   - Else the virtual environment .venv/ of the checkout (created when missing).
# A virtual environment created here from a python that imports torch (system, conda or another virtual
# environment) sees that python's packages (--system-site-packages plus a .pth file listing its site-packages), so
# its torch, e.g. a CUDA build, is used. torch==${TORCH_VERSION:-2.13.0} is installed only where no torch is
# importable at all; otherwise pip is constrained to the installed torch version and cannot replace it.
# When every module imports, pip is not called (offline machines start as they are).
# Usage: source scripts/setup_env.sh   (exports PY=<python>)
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PY="${PYTHON:-python3}"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements-dev.txt}"
command -v "$BASE_PY" >/dev/null 2>&1 || { echo "[setup] ERROR: no python: $BASE_PY (set PYTHON=...)" >&2; return 1 2>/dev/null || exit 1; }

# probe PYTHON: "<torch found 0|1> <virtual environment 0|1> <torch version or ->" without importing torch (seconds)
probe() {
  "$1" -c "import importlib.metadata as m, importlib.util as u, sys
t = u.find_spec('torch') is not None
print(int(t), int(sys.prefix != sys.base_prefix), m.version('torch') if t else '-')"
}
read -r base_has_torch base_is_venv base_torch < <(probe "$BASE_PY")

if [ -z "${VENV:-}" ] && [ "$base_has_torch" = 1 ] && [ "$base_is_venv" = 1 ]; then
  PY="$(command -v "$BASE_PY")"
  echo "[setup] using $PY (its torch $base_torch)"
else
  VENV="${VENV:-$ROOT/.venv}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    if [ "$base_has_torch" = 1 ]; then
      # no pip/setuptools of its own: they would shadow the calling python's (newer) ones, which its torch needs
      "$BASE_PY" -m venv --system-site-packages --without-pip "$VENV"
    else
      "$BASE_PY" -m venv "$VENV"
    fi
  fi
  PY="$VENV/bin/python"
  if [ "$base_has_torch" = 1 ] && [ "$(probe "$PY" | cut -d' ' -f1)" = 0 ]; then
    # A venv made from a python that is itself a virtual environment sees only the base installation's packages
    # (also with --system-site-packages): list the calling python's site-packages in a .pth file.
    echo "[setup] $VENV sees the packages of $BASE_PY (its torch $base_torch)"
    "$BASE_PY" -c "import site; print('\n'.join(site.getsitepackages() + [site.getusersitepackages()]))" \
      > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/calling_python_packages.pth"
  fi
fi

read -r has_torch _ torch_version < <(probe "$PY")
if [ "$has_torch" = 0 ]; then
  echo "[setup] no torch importable: installing torch==${TORCH_VERSION:-2.13.0}"
  "$PY" -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION:-2.13.0}"
  read -r has_torch _ torch_version < <(probe "$PY")
fi
MISSING=()
while IFS= read -r line; do MISSING+=("$line"); done < <("$PY" "$ROOT/scripts/missing_requirements.py" "$REQUIREMENTS")
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "[setup] installing what $PY cannot import: ${MISSING[*]}"
  "$PY" -m pip --version >/dev/null 2>&1 || "$PY" -m ensurepip -q
  PIN="$(mktemp)"
  echo "torch==$torch_version" > "$PIN"  # keeps the installed torch
  REGULAR=() NO_DEPS=()
  for requirement in "${MISSING[@]}"; do
    case "$requirement" in av2*) NO_DEPS+=("$requirement") ;; *) REGULAR+=("$requirement") ;; esac
  done
  status=0
  [ "${#REGULAR[@]}" -eq 0 ] || "$PY" -m pip install -q --disable-pip-version-check -c "$PIN" "${REGULAR[@]}" || status=$?
  # av2 without its declared PyAV dependency (see requirements.txt); what it imports is listed there
  [ "$status" != 0 ] || [ "${#NO_DEPS[@]}" -eq 0 ] \
    || "$PY" -m pip install -q --disable-pip-version-check --no-deps "${NO_DEPS[@]}" || status=$?
  rm -f "$PIN"
  STILL="$("$PY" "$ROOT/scripts/missing_requirements.py" "$REQUIREMENTS" | tr '\n' ' ')"
  if [ "$status" != 0 ] || [ -n "$STILL" ]; then
    echo "[setup] ERROR: could not install: ${STILL:-see the pip message above} (python: $PY)" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
export PY
