#!/usr/bin/env bash
# Create .venv (once) and install wdmcore into it with the CPU build of PyTorch when no torch is present.
# Usage: scripts/bootstrap.sh [extra ...]   e.g. scripts/bootstrap.sh test
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WDM_VENV:-$root/.venv}"
extras="${1:-}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
py="$venv/bin/python"
if ! "$py" -c "import torch" 2>/dev/null; then
  # A plain `torch` requirement would pull a multi-GB CUDA build; the CPU wheel is enough here.
  "$py" -m pip install -q "torch==2.13.0"
fi
spec="$root/WDMCore"
[ -n "$extras" ] && spec="$spec[$extras]"
"$py" -m pip install -q -e "$spec"
