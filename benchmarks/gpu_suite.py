"""One command that measures everything a GPU can tell us about wdmcore, and its CPU dry run.

    python benchmarks/gpu_suite.py                          # on a CUDA machine: the whole suite, ~8 minutes
    python benchmarks/gpu_suite.py --device cpu --tiny      # the dry run: same code paths, tiny sizes, < 1 min
    python benchmarks/gpu_suite.py --parts env,gen128 --budget-scale 0.5
    python benchmarks/gpu_suite.py --released /path/to/wdm-3d   # also time the released code, side by side

The suite's code is the package ``gpu_bench`` beside this file, one module per part (its docstring lists them);
this file only launches it, and needs nothing but PyTorch, numpy, safetensors, tqdm and ``wdmcore`` on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package beside this file, whatever the working directory and however this file was started.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpu_bench.recording import say  # noqa: E402  (imports no torch)

say("gpu_suite: starting (importing torch)")

from gpu_bench.cli import main  # noqa: E402  (imports torch: seconds, after the first progress line)

if __name__ == "__main__":
    sys.exit(main())
