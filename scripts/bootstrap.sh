#!/usr/bin/env bash
# Create .venv (once) and install wdmcore into it with the CPU build of PyTorch when no torch is present.
# Usage: scripts/bootstrap.sh [extras]   e.g. scripts/bootstrap.sh test   or   scripts/bootstrap.sh io,eval
# Each step says what it installs before it starts; pip itself stays quiet (-q).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WDM_VENV:-$root/.venv}"
extras="${1:-}"
say() { echo "[setup] $*" >&2; }
# setuptools' editable build prints an information box about import precedence; it does not apply here (the
# package folder is WDMCore/wdmcore, not the working directory), so the build's warnings are silenced.
pip_quiet() { PYTHONWARNINGS=ignore "$py" -m pip install -q --disable-pip-version-check "$@"; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  python3 -m venv "$venv"
  py="$venv/bin/python"
  say "upgrading pip"
  pip_quiet --upgrade pip
fi
py="$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  # A plain `torch` requirement would pull a multi-GB CUDA build; the CPU wheel is enough here.
  say "installing PyTorch 2.13.0, CPU build (about a minute)"
  pip_quiet "torch==2.13.0"
fi
spec="$root/WDMCore"
[ -n "$extras" ] && spec="$spec[$extras]"
say "installing wdmcore${extras:+ with the extras [$extras]} (editable, from $root/WDMCore)"
pip_quiet -e "$spec"
say "ready: $venv"
