"""How much memory a run needs, estimated before it starts, and the warning (with a remedy) when it does not fit.

The figures are the project's own CPU measurements (docs/training.md, docs/benchmarks.md), scaled by the number
of voxels, the batch and the precision; they are rough (within a factor of about 1.5), enough to warn before a
run that cannot fit rather than after an out-of-memory failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

# Parameters of the presets (docs/engine.md).
PARAMETERS = {"unet-128": 57.9e6, "unet-256": 83.2e6, "wavunet-128": 89.7e6, "wavunet-256": 125.5e6,
              "cwdm-224": 81.5e6, "fastwdm3d-128": 65.5e6}  # fmt: skip
PRESET_SIZE = {"unet-128": 128, "unet-256": 256, "wavunet-128": 128, "wavunet-256": 256, "cwdm-224": 224,
               "fastwdm3d-128": 128}  # fmt: skip
# cWDM works on the inputs' own grid, each axis fitted to a multiple of 2 x its network's downsampling factor.
FAMILY_MULTIPLE = {"cwdm-224": 32}
# One training step of unet-128 at 128^3, batch 1, fp32: 7.25 GB peak above start, of which 0.93 GB weights,
# gradients and AdamW state (docs/training.md) -> about 6.3 GB of activations for 128^3 voxels.
TRAIN_BYTES_PER_VOXEL = 6.3e9 / 128**3
# A unet-256 forward pass at 256^3, batch 1, fp32: 4.9 GB peak for the whole process (docs/benchmarks.md).
SAMPLE_BYTES_PER_VOXEL = 4.5e9 / 256**3
# bf16/fp16 autocast keeps activations in half precision (weights stay fp32).
HALF_PRECISIONS = ("bf16", "fp16")
GB = 1e9


def _activation_scale(precision: str) -> float:
    return 0.5 if precision in HALF_PRECISIONS else 1.0


def training_bytes(preset: str, image_size: int, batch_size: int, precision: str = "fp32") -> float:
    """Memory one training step needs: weights, gradients, AdamW state, and the activations kept for backward."""
    size = image_size or PRESET_SIZE.get(preset, 128)
    state = PARAMETERS.get(preset, PARAMETERS["unet-128"]) * 16
    return state + max(1, batch_size) * TRAIN_BYTES_PER_VOXEL * size**3 * _activation_scale(precision)


def sampling_bytes(
    preset: str, image_size: int, batch_size: int, precision: str = "fp32", voxels: float | None = None
) -> float:
    """Memory generation and the other tasks need: the weights and one batch's activations (no gradients) for
    ``voxels`` per volume (default: a cube of ``image_size``, or of the preset's size)."""
    size = image_size or PRESET_SIZE.get(preset, 128)
    weights = PARAMETERS.get(preset, PARAMETERS["unet-128"]) * 4
    voxels = size**3 if voxels is None else voxels
    return weights + max(1, batch_size) * SAMPLE_BYTES_PER_VOXEL * voxels * _activation_scale(precision)


def largest_batch(per_batch: callable, available: float, limit: int = 1024) -> int:  # type: ignore[valid-type]
    """The largest batch size whose estimate fits ``available`` bytes (0 when not even 1 fits)."""
    best = 0
    for batch in range(1, limit + 1):
        if per_batch(batch) > available:
            break
        best = batch
    return best


def warning(
    needed: float,
    available: float | None,
    device: str,
    *,
    remedies: list[str],
    margin: float = 0.9,
) -> str | None:
    """A message when ``needed`` bytes do not fit in ``margin`` of ``available`` (None: fits or unknown)."""
    if available is None or needed <= margin * available:
        return None
    where = "free GPU memory" if device.startswith(("cuda", "mps")) or device == "auto" else "available memory"
    text = (f"This run needs about {needed / GB:.1f} GB of memory; {device} has {available / GB:.1f} GB of {where}. "
            "It would probably fail with an out-of-memory error.")  # fmt: skip
    if remedies:
        text += " To make it fit: " + "; ".join(remedies) + "."
    return text


def available_ram() -> float | None:
    """Memory available to a new process on this machine (psutil), or None."""
    try:
        import psutil
    except ImportError:
        return None
    return float(psutil.virtual_memory().available)


# nvidia-smi runs on Slicer's GUI thread (before a training run starts): it may take seconds on a busy or
# sleeping GPU, so it gets a short timeout, and its answer (also "no answer") is kept for a while.
NVIDIA_SMI_TIMEOUT_S = 2.0
NVIDIA_SMI_CACHE_S = 30.0
_cuda_free_cache: dict[int, tuple[float, float | None]] = {}


def cuda_free_bytes(index: int = 0, timeout: float = NVIDIA_SMI_TIMEOUT_S) -> float | None:
    """Free memory of CUDA GPU ``index`` from nvidia-smi (Slicer's own process does not load torch), or None.
    At most ``timeout`` seconds; the answer is reused for :data:`NVIDIA_SMI_CACHE_S` seconds."""
    now = time.monotonic()
    cached = _cuda_free_cache.get(index)
    if cached is not None and now - cached[0] < NVIDIA_SMI_CACHE_S:
        return cached[1]
    free = _query_nvidia_smi(index, timeout)
    _cuda_free_cache[index] = (time.monotonic(), free)
    return free


def _query_nvidia_smi(index: int, timeout: float) -> float | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        result = subprocess.run(
            [exe, f"--id={index}", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=False,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0,
        )  # fmt: skip
        return float(result.stdout.strip().splitlines()[0]) * 2**20 if result.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None
