"""Paired phantom data for the conditional tasks: several "contrasts" of one anatomy, and lesion-like masks.

The anatomy is :func:`~wdmcore.data.phantoms.generate_tissue_labels` (the same head as
:func:`~wdmcore.data.phantoms.generate_phantom` for the same generator). Each contrast maps the tissue classes
to its own intensities, like MR sequences do (T1-like: bright skull, dark CSF; T2-like: bright CSF;
FLAIR-like: dark CSF, bright blobs; PD-like: flat), with a per-volume jitter of each class's intensity of
up to +/-``CONTRAST_JITTER``. Lesion-like masks are 1-2 random ellipsoids centred on brain voxels, clipped
to the brain and blobs: what inpainting must fill with plausible tissue.
"""

from __future__ import annotations

import numpy as np

from .phantoms import TISSUE_BLOB, TISSUE_BRAIN, generate_tissue_labels, item_rng

# Intensity of (background, skull, CSF, brain, blobs) per contrast.
CONTRASTS = {
    "t1": (0.0, 0.85, 0.15, 0.55, 0.75),
    "t2": (0.0, 0.35, 0.95, 0.45, 0.70),
    "flair": (0.0, 0.40, 0.08, 0.50, 0.95),
    "pd": (0.0, 0.55, 0.80, 0.68, 0.78),
}
CONTRAST_JITTER = 0.05
LESION_COUNT = (1, 2)
LESION_RADIUS = (0.10, 0.22)  # fraction of the cube's half-size


def render_contrasts(labels: np.ndarray, rng: np.random.Generator, names=tuple(CONTRASTS)) -> dict[str, np.ndarray]:
    """Float32 volumes in [0, 1], one per contrast name, of one tissue-label volume."""
    out = {}
    for name in names:
        values = np.array(CONTRASTS[name], dtype=np.float32)
        values[1:] += rng.uniform(-CONTRAST_JITTER, CONTRAST_JITTER, size=4).astype(np.float32)
        out[name] = np.clip(values, 0, 1)[labels]
    return out


def lesion_mask(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of 1-2 ellipsoids centred on brain voxels, restricted to brain and blobs (never empty)."""
    size = labels.shape[0]
    tissue = (labels == TISSUE_BRAIN) | (labels == TISSUE_BLOB)
    candidates = np.argwhere(tissue)
    grid = np.indices(labels.shape, dtype=np.float32)
    mask = np.zeros(labels.shape, dtype=bool)
    for _ in range(int(rng.integers(LESION_COUNT[0], LESION_COUNT[1] + 1))):
        centre = candidates[rng.integers(len(candidates))]
        radii = rng.uniform(*LESION_RADIUS, size=3) * size / 2
        inside = sum(((grid[d] - centre[d]) / radii[d]) ** 2 for d in range(3)) <= 1
        mask |= inside
    mask &= tissue
    if not mask.any():
        mask[tuple(candidates[0])] = True
    return mask


def paired_phantom(
    size: int, seed: int, index: int, names=tuple(CONTRASTS)
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(contrasts, lesion mask) of item ``index`` of a paired phantom set with ``seed`` (reproducible)."""
    rng = item_rng(seed, index)
    labels = generate_tissue_labels(size, rng)
    return render_contrasts(labels, rng, names), lesion_mask(labels, rng)
