"""Procedural 3-D head-like phantoms: a known distribution to train on and to check samples against.

A phantom is a set of nested, randomly sized, placed and rotated ellipsoids painted into a zero cube, in this
order (later ones overwrite earlier ones). Coordinates are normalised: the cube is [-1, 1]^3, voxel (i, j, k)
of an S^3 grid has its centre at ((2i + 1)/S - 1, (2j + 1)/S - 1, (2k + 1)/S - 1), so one seed gives the same
object at every size. All draws are uniform, U(a, b), and independent:

==============  ==========================================================================================
head            centre U(-0.05, 0.05) per axis; semi-axes (U(0.68, 0.78), U(0.80, 0.90), U(0.70, 0.80));
                rotation R = Rz(g) Ry(b) Rx(a), each angle U(-10, 10) degrees
skull shell     the head ellipsoid, intensity U(0.80, 1.00)
CSF             inside the skull: the head ellipsoid scaled by 1 - t, t = U(0.06, 0.10);
                intensity U(0.10, 0.20)
brain           the CSF ellipsoid scaled by U(0.90, 0.96); intensity U(0.45, 0.60)
ventricles (2)  mirror images across the head's mid-sagittal plane, in brain units (multiples of the
                brain's semi-axes, head frame): centre (+/-U(0.12, 0.20), U(-0.10, 0.10), U(0.00, 0.15)),
                semi-axes (U(0.08, 0.14), U(0.25, 0.40), U(0.10, 0.18)); CSF intensity
blobs           N uniform in {1, 2, 3, 4}; centre uniform in the ball of radius 0.6 (brain units),
                semi-axes U(0.06, 0.14) * U(0.7, 1.3) each (brain units), rotation angles
                U(-180, 180) degrees; intensity U(0.65, 0.95)
==============  ==========================================================================================

Background is exactly 0 and every head voxel is at least 0.10, so the foreground is the head ellipsoid; it
stays inside the cube (0.05 + 0.90 < 1), so the expected foreground fraction is
pi/6 * E[a_x] E[a_y] E[a_z] = pi/6 * 0.73 * 0.85 * 0.75 (:func:`expected_foreground_fraction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

HEAD_AXES = ((0.68, 0.78), (0.80, 0.90), (0.70, 0.80))
HEAD_CENTRE = (-0.05, 0.05)
HEAD_TILT_DEG = 10.0
SKULL_INTENSITY = (0.80, 1.00)
SKULL_THICKNESS = (0.06, 0.10)
CSF_INTENSITY = (0.10, 0.20)
BRAIN_SCALE = (0.90, 0.96)
BRAIN_INTENSITY = (0.45, 0.60)
VENTRICLE_CENTRE = ((0.12, 0.20), (-0.10, 0.10), (0.00, 0.15))
VENTRICLE_AXES = ((0.08, 0.14), (0.25, 0.40), (0.10, 0.18))
BLOB_COUNT = (1, 4)
BLOB_RADIUS = (0.06, 0.14)
BLOB_ASPECT = (0.7, 1.3)
BLOB_REGION = 0.6
BLOB_INTENSITY = (0.65, 0.95)
FOREGROUND_THRESHOLD = 0.05
TISSUE_SKULL, TISSUE_CSF, TISSUE_BRAIN, TISSUE_BLOB = 1, 2, 3, 4


def _rotation(angles_rad) -> np.ndarray:
    a, b, g = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(g), -math.sin(g), 0], [math.sin(g), math.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _paint(volume: np.ndarray, centre, axes, rotation: np.ndarray, value: float) -> None:
    """Set the voxels whose centres lie inside the ellipsoid to ``value`` (visits only its bounding box)."""
    size = volume.shape[0]
    centre = np.asarray(centre, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64)
    half = np.sqrt(((rotation * axes[None, :]) ** 2).sum(axis=1))  # world half-extent per axis
    lo = np.clip(np.floor(((centre - half) + 1) * size / 2 - 0.5).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(((centre + half) + 1) * size / 2 - 0.5).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return
    coords = [(2 * np.arange(lo[d], hi[d]) + 1) / size - 1 - centre[d] for d in range(3)]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    # Body-frame coordinates: R^T (p - c), divided by the semi-axes.
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape))
    for k in range(3):
        u = rotation[0, k] * x + rotation[1, k] * y + rotation[2, k] * z
        inside = inside + (u / axes[k]) ** 2
    region = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    region[inside <= 1.0] = value


def _u(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def generate_phantom(size: int, rng: np.random.Generator | int | None = None, *, seed: int | None = None) -> np.ndarray:
    """One head phantom, float32 (i, j, k) array of shape (size, size, size) with values in [0, 1].

    ``rng`` is a numpy Generator or an integer seed (``seed=`` is accepted as well); the same seed gives the
    same phantom. The distribution is described in the module docstring.
    """
    return _draw_phantom(size, rng, seed, labels=False)


def generate_tissue_labels(size: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """The tissue classes of the phantom :func:`generate_phantom` draws from the same ``rng`` (same anatomy):
    uint8 (size, size, size) with 0 background, 1 skull, 2 CSF (and ventricles), 3 brain, 4 blobs."""
    return _draw_phantom(size, rng, None, labels=True).astype(np.uint8)


def _draw_phantom(size, rng, seed, *, labels: bool) -> np.ndarray:
    # Every random number is drawn whether intensities or labels are painted, so both share the anatomy.
    if int(size) != size or size < 2:
        raise ConfigError(f"phantom size must be an integer >= 2, got {size!r}")
    size = int(size)
    if rng is None:
        rng = seed
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    vol = np.zeros((size, size, size), dtype=np.float32)

    centre = rng.uniform(*HEAD_CENTRE, size=3)
    head_axes = np.array([_u(rng, b) for b in HEAD_AXES])
    tilt = np.deg2rad(rng.uniform(-HEAD_TILT_DEG, HEAD_TILT_DEG, size=3))
    rot = _rotation(tilt)
    skull_value = _u(rng, SKULL_INTENSITY)
    thickness = _u(rng, SKULL_THICKNESS)
    csf_value = _u(rng, CSF_INTENSITY)
    brain_scale = _u(rng, BRAIN_SCALE)
    brain_value = _u(rng, BRAIN_INTENSITY)

    csf_axes = head_axes * (1.0 - thickness)
    brain_axes = csf_axes * brain_scale
    if labels:
        skull_value, csf_value, brain_value = TISSUE_SKULL, TISSUE_CSF, TISSUE_BRAIN
    _paint(vol, centre, head_axes, rot, skull_value)
    _paint(vol, centre, csf_axes, rot, csf_value)
    _paint(vol, centre, brain_axes, rot, brain_value)

    def to_world(p_brain_units):
        return centre + rot @ (np.asarray(p_brain_units) * brain_axes)

    v_centre = np.array([_u(rng, b) for b in VENTRICLE_CENTRE])
    v_axes = np.array([_u(rng, b) for b in VENTRICLE_AXES]) * brain_axes
    for side in (1.0, -1.0):
        _paint(vol, to_world(v_centre * [side, 1.0, 1.0]), v_axes, rot, csf_value)

    n_blobs = int(rng.integers(BLOB_COUNT[0], BLOB_COUNT[1] + 1))
    for _ in range(n_blobs):
        while True:
            p = rng.uniform(-BLOB_REGION, BLOB_REGION, size=3)
            if np.linalg.norm(p) <= BLOB_REGION:
                break
        radius = _u(rng, BLOB_RADIUS)
        aspect = rng.uniform(*BLOB_ASPECT, size=3)
        angles = np.deg2rad(rng.uniform(-180.0, 180.0, size=3))
        value = _u(rng, BLOB_INTENSITY)
        _paint(
            vol, to_world(p), radius * aspect * brain_axes, rot @ _rotation(angles), TISSUE_BLOB if labels else value
        )
    return vol


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of item ``index`` of a phantom batch/dataset with ``seed`` (independent of workers)."""
    return np.random.default_rng([int(seed), int(index)])


def phantom_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` phantoms, float32 [n, size, size, size] in [0, 1]; item i equals PhantomDataset item i."""
    return np.stack([generate_phantom(size, item_rng(seed, i)) for i in range(n)])


def phantom_affine(size: int, fov_mm: float = 240.0) -> np.ndarray:
    """Voxel-to-RAS affine of a phantom: isotropic ``fov_mm / size`` voxels, cube centred on the origin."""
    sp = fov_mm / size
    affine = np.diag([sp, sp, sp, 1.0])
    affine[:3, 3] = -fov_mm / 2 + sp / 2
    return affine


class PhantomDataset(Dataset):
    """``length`` phantoms for training: item i is (float32 tensor [1, S, S, S] in [-1, 1], i).

    Items are generated on the fly from ``(seed, i)``, so they are the same in every epoch and worker.
    ``output_range01=True`` leaves them in [0, 1].
    """

    def __init__(self, length: int, size: int, seed: int = 0, output_range01: bool = False):
        if length < 1:
            raise ConfigError(f"PhantomDataset length must be >= 1, got {length}")
        if size % 2:
            raise ConfigError(f"size {size} is odd; the Haar transform needs an even size (e.g. 32, 64, 128)")
        self.length, self.size, self.seed, self.output_range01 = (
            int(length),
            int(size),
            int(seed),
            output_range01,
        )
        self.affine = phantom_affine(self.size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        vol = generate_phantom(self.size, item_rng(self.seed, index))
        if not self.output_range01:
            vol = vol * np.float32(2.0) - np.float32(1.0)
        return torch.from_numpy(vol).unsqueeze(0), index


# ------------------------------------------------------------------------------------ reference statistics


def expected_foreground_fraction() -> float:
    """Expected fraction of the cube covered by the head (voxels > 0), from the documented distribution."""
    means = [(lo + hi) / 2 for lo, hi in HEAD_AXES]
    return math.pi / 6 * means[0] * means[1] * means[2]


def _as_batch(volumes) -> np.ndarray:
    if isinstance(volumes, torch.Tensor):
        volumes = volumes.detach().cpu().numpy()
    arr = np.asarray(volumes, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim == 5 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 4:
        raise ConfigError(f"expected volumes [N, S, S, S] (or [N, 1, S, S, S]) in [0, 1], got shape {arr.shape}")
    return arr


def intensity_histogram(volumes, bins: int = 20, foreground_only: bool = False) -> np.ndarray:
    """Normalised histogram (sums to 1) of the values of ``volumes`` (in [0, 1]) over ``bins`` equal bins.

    ``volumes``: [N, S, S, S] or [N, 1, S, S, S] array/tensor, or one volume. Values outside [0, 1] are
    counted in the end bins. ``foreground_only`` counts only voxels above 0.05.
    """
    arr = _as_batch(volumes)
    values = arr[arr > FOREGROUND_THRESHOLD] if foreground_only else arr.ravel()
    values = np.clip(values, 0.0, 1.0)
    hist, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    total = hist.sum()
    return hist / total if total else hist.astype(np.float64)


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Earth mover's (Wasserstein-1) distance between two histograms on [0, 1] with equal bins."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ConfigError(f"histograms differ in length ({p.shape} vs {q.shape}); use the same bins")
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / p.size)


@dataclass
class PhantomStatistics:
    """Statistics of a set of [0, 1] volumes, comparable with those of phantoms."""

    count: int
    foreground_fraction: float
    foreground_mean: float
    histogram: np.ndarray

    def distance(self, other: PhantomStatistics) -> float:
        """A single number: histogram distance plus the foreground-fraction difference."""
        return histogram_distance(self.histogram, other.histogram) + abs(
            self.foreground_fraction - other.foreground_fraction
        )


def volume_statistics(volumes, bins: int = 20) -> PhantomStatistics:
    """Foreground fraction (voxels > 0.05), mean foreground value and value histogram of [0, 1] volumes."""
    arr = _as_batch(volumes)
    fg = arr > FOREGROUND_THRESHOLD
    return PhantomStatistics(
        count=arr.shape[0],
        foreground_fraction=float(fg.mean()),
        foreground_mean=float(arr[fg].mean()) if fg.any() else 0.0,
        histogram=intensity_histogram(arr, bins),
    )


def reference_statistics(size: int, n: int = 16, seed: int = 12345, bins: int = 20) -> PhantomStatistics:
    """Statistics of ``n`` phantoms (seed 12345 by default, apart from typical training seeds)."""
    return volume_statistics(phantom_batch(n, size, seed), bins)
