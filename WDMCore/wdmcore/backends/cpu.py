"""What this CPU offers the network: its instruction-set flags, native bf16 arithmetic, and how many threads to
use (all physical cores this process may run on, never more)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

X86 = ("x86_64", "amd64", "i386", "i686")
# The x86 flags that mean bf16 arithmetic in hardware (AVX-512 BF16, AMX); without them PyTorch and OpenVINO
# emulate bf16, which is slower than fp32 (a bf16 call on an AVX2-only CPU did not finish in 5 minutes).
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The flags a benchmark record lists: what decides the backend and what explains its speed.
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "bf16", "asimd")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``flags`` on x86, ``Features`` on ARM); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def reported_flags() -> list[str]:
    """The flags of :data:`REPORTED_FLAGS` this CPU has (for benchmark records and ``wdm`` metadata)."""
    flags = cpu_flags()
    return [flag for flag in REPORTED_FLAGS if flag in flags]


@functools.cache
def native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware: AVX-512 BF16 or AMX on x86; on ARM the BF16 extension,
    as the kernel reports it or, where there is no /proc/cpuinfo (macOS), as PyTorch's oneDNN sees it."""
    machine = platform.machine().lower()
    flags = cpu_flags()
    if machine in X86:
        return any(flag in flags for flag in X86_BF16_FLAGS)
    if "bf16" in flags:
        return True
    if machine in ("arm64", "aarch64") and not flags:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def default_threads() -> int:
    """All physical cores this process may run on: psutil's physical core count (logical cores when psutil is
    absent), never more than the CPUs of the process's affinity mask (a container's or a ``taskset``'s share)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask to read
        allowed = cores
    return max(1, min(cores, allowed))


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's thread count (``None``: :func:`default_threads`) and return it. The OpenVINO backend uses
    the same count, and only one of the two computes at a time, so the cores are never oversubscribed."""
    count = default_threads() if threads is None else max(1, int(threads))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
