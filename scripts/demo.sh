#!/usr/bin/env bash
# Install wdmcore into .venv (CPU PyTorch, file-format extras) and generate one volume with the bundled demo
# model, offline, into ./wdm_samples. Arguments are passed to `wdm sample` (see docs/generation.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WDM_VENV:-$root/.venv}"
bash "$root/scripts/bootstrap.sh" io
"$venv/bin/wdm" sample "$@"
