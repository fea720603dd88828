"""Several draws, one answer: the per-voxel mean and standard deviation of N draws of a task.

``synthesize``, ``inpaint`` and ``vary`` take ``samples=N``: draw i is made from seed ``seed + i`` alone (so the
draws do not depend on how many are sampled together), the result's ``array`` is their mean and its ``std`` the
per-voxel sample standard deviation (N - 1 in the denominator), both in the input's grid; with
``keep_samples=True`` its ``draws`` holds every draw. The statistics are accumulated as the draws arrive
(Welford's algorithm, in float64), so the N draws never sit in memory together unless they are kept.

Draws are sampled in batches that fit the device's free memory (:func:`draws_per_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..limits import checked
from ..vocabulary import MAX_SEED

# Peak bytes of sampling per voxel of the image, fp32, batch 1: a unet-256 forward pass at 256^3 took 4.9 GB for
# the whole process (docs/benchmarks.md; the Slicer module's memory estimate uses the same figure). The demo and
# released networks are no larger per voxel, so a batch chosen by it fits.
SAMPLE_BYTES_PER_VOXEL = 4.5e9 / 256**3
# The share of the free memory a batch of draws may take (the rest: the model, the inputs, the statistics).
MEMORY_SHARE = 0.5


def sample_seeds(seed: int, samples: int) -> list[int]:
    """The seeds of ``samples`` draws: ``seed``, ``seed + 1``, ... (ConfigError for a count or seed out of range)."""
    samples = int(checked("samples", samples))
    if not 0 <= int(seed) <= MAX_SEED - (samples - 1):
        raise ConfigError(
            f"seed must lie between 0 and {MAX_SEED - (samples - 1)} (seed + i for {samples} draws), got {seed}."
        )
    return [int(seed) + i for i in range(samples)]


class RunningMoments:
    """Per-voxel mean and variance of arrays added one at a time (Welford), in float64."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, array: np.ndarray) -> None:
        x = np.asarray(array, dtype=np.float64)
        if self._mean is None:
            self._mean = np.zeros_like(x)
            self._m2 = np.zeros_like(x)
        elif x.shape != self._mean.shape:
            raise ValueError(f"draw of shape {x.shape} after draws of shape {self._mean.shape}")
        self.count += 1
        delta = x - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (x - self._mean)

    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("no draw was added")
        return self._mean.copy()

    def std(self) -> np.ndarray:
        """The sample standard deviation (N - 1 in the denominator; 0 for a single draw)."""
        if self._m2 is None:
            raise ValueError("no draw was added")
        if self.count < 2:
            return np.zeros_like(self._m2)
        return np.sqrt(np.maximum(self._m2, 0.0) / (self.count - 1))


def draws_per_batch(voxels: int, samples: int, device: torch.device) -> int:
    """How many draws of ``voxels`` image voxels to sample together: all ``samples`` when they fit in
    :data:`MEMORY_SHARE` of the device's free memory (CUDA: the driver's figure; CPU: the memory this process
    may still take), else as many as fit, at least 1."""
    free: float | None = None
    if device.type == "cuda":
        try:
            free = float(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            free = None
    else:
        from ..volumes.reading import available_memory_bytes

        free = available_memory_bytes()
    if free is None:
        return 1
    per_draw = SAMPLE_BYTES_PER_VOXEL * max(1, int(voxels))
    return max(1, min(int(samples), int(MEMORY_SHARE * free // per_draw)))


def collect_draws(
    draw: Callable[[list[int]], Sequence[np.ndarray]], seeds: list[int], batch: int, keep: bool
) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray] | None]:
    """(mean, std, draws) of the draws ``draw(batch_seeds)`` returns, one array per seed, ``batch`` seeds at a time.

    With one seed the mean is that draw and std is None (a single draw has no spread); ``draws`` is None
    unless ``keep``. Arrays come back as float32."""
    moments = RunningMoments()
    kept: list[np.ndarray] = []
    for start in range(0, len(seeds), max(1, batch)):
        chunk = seeds[start : start + max(1, batch)]
        arrays = list(draw(chunk))
        if len(arrays) != len(chunk):
            raise ValueError(f"{len(arrays)} draws for {len(chunk)} seeds")
        for array in arrays:
            moments.add(array)
            if keep:
                kept.append(np.asarray(array, dtype=np.float32))
    std = moments.std().astype(np.float32) if moments.count > 1 else None
    return moments.mean().astype(np.float32), std, (kept if keep else None)


def samples_meta(seeds: list[int]) -> dict:
    """The sidecar fields of a result of several draws (none for a single draw: its ``seed`` says it all)."""
    if len(seeds) < 2:
        return {}
    return {
        "samples": len(seeds),
        "seeds": seeds,
        "statistic": "the mean of the draws; the uncertainty map is their per-voxel sample standard deviation",
    }
