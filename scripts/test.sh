#!/usr/bin/env bash
# Install everything the tests need into .venv, lint, and run the whole test suite on the CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/bootstrap.sh" test
venv="${WDM_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/ruff" check WDMCore WaveletDiffusionCommon WaveletDiffusion WaveletDiffusionTraining Testing benchmarks scripts
"$venv/bin/ruff" format --check WDMCore WaveletDiffusionCommon WaveletDiffusion WaveletDiffusionTraining Testing benchmarks scripts
"$venv/bin/python" -m pytest Testing -q "$@"
