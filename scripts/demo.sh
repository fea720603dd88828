#!/usr/bin/env bash
# Install wdmcore into .venv (CPU PyTorch, file-format and evaluation extras) and generate one volume with the
# bundled demo model, offline, into ./wdm_samples. Arguments are passed to `wdm sample` (see docs/generation.md).
# Running it again replaces its own earlier output in ./wdm_samples; with your own --out, existing files are
# refused as `wdm sample` always does (add --overwrite to replace them).
# WDM_VENV: the virtual environment [.venv]; WDM_DEMO_OUT: the output folder [./wdm_samples];
# WDM_SKIP_SETUP=1: use the environment as it is (no pip).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${WDM_VENV:-$root/.venv}"
if [ "${WDM_SKIP_SETUP:-0}" != 1 ]; then
  bash "$root/scripts/bootstrap.sh" io,eval
fi
own_out=(--out "${WDM_DEMO_OUT:-$root/wdm_samples}" --overwrite)
for arg in "$@"; do
  case "$arg" in --out | --out=*) own_out=() ;; esac
done
echo "[demo] generating with the bundled demo model (a phantom model for trying the tool, not a medical one)" >&2
"$venv/bin/wdm" sample ${own_out[@]+"${own_out[@]}"} "$@"
