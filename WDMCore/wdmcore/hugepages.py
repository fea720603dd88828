"""Transparent huge pages for PyTorch's CPU tensors, in the processes wdmcore starts itself.

A 3-D feature map at full resolution is hundreds of megabytes (64 channels x 128^3 floats = 512 MiB). Every
fresh one is page-faulted into memory 4 KiB at a time: a unet-256 forward pass on a CPU takes about 12 million
page faults, and the kernel time they cost is a large part of the pass (docs/benchmarks.md). PyTorch can back
its large CPU allocations with 2 MiB transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``: allocations aligned to
2 MiB and ``madvise(MADV_HUGEPAGE)``), which cuts the faults by a factor of about 20.

PyTorch reads the variable when its CPU allocator first needs it, so setting it at the start of ``wdm`` or of
the worker works even after ``import torch``. It is only set in processes wdmcore owns (the ``wdm`` command,
the Slicer worker), never on ``import wdmcore``: a library must not change how the host program allocates
memory. Users opt out with ``THP_MEM_ALLOC_ENABLE=0``; a kernel with THP disabled simply ignores the advice.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def enable_for_this_process() -> bool:
    """Ask PyTorch for huge pages unless the user chose otherwise; True when the setting is now on (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault(VARIABLE, "1")
    return os.environ[VARIABLE] == "1"
