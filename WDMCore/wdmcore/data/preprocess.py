"""Preprocessing: the released BraTS and LIDC presets, reproduced exactly, and a general pipeline.

Every function here keeps the geometry: an array in (i, j, k) order travels with the 4x4 voxel-to-RAS affine
of its grid, and each step that changes the grid (placement, pooling, reorientation, resampling, crop/pad)
composes the affine with the index map of that step. See ``docs/data.md`` for what each preset does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, InputShapeError
from ..volumes.reading import affine_spacing, check_usable_voxels, load_volume
from .discovery import Case

log = logging.getLogger(__name__)

PRESETS = ("brats", "lidc", "general")
CROP_MODES = ("center", "foreground")
INTENSITY_MODES = ("mri", "ct")

# The released BraTS preset: a 240x240x155 volume goes into a zero 256^3 volume at this offset.
BRATS_INPUT_SHAPE = (240, 240, 155)
BRATS_OFFSET = (8, 8, 50)
BRATS_QUANTILES = (0.001, 0.999)
RELEASED_GRID = 256
LIDC_INPUT_SHAPE = (256, 256, 256)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume becomes a training cube.

    * ``preset``: ``"brats"`` or ``"lidc"`` reproduce the released preprocessing exactly (only ``size`` and
      ``output_range01`` apply); ``"general"`` runs the configurable pipeline below.
    * ``size``: edge of the output cube (128 or 256 for the presets; any even number for general). ``None``
      (general only) keeps the grid, which then must already be a cube of the same size for every case.
    * ``spacing``: general only; resample to this voxel size in mm (one number or three) or keep the grid
      (``None``).
    * ``crop``: general only; ``"center"`` crops/pads around the grid centre, ``"foreground"`` around the
      centre of the bounding box of voxels above ``foreground_threshold`` (after intensity scaling).
    * ``intensity``: general only; ``"mri"`` clips to the ``percentiles`` (in percent) of the whole volume and
      scales min-max to [0, 1]; ``"ct"`` clips to the fixed ``hu_window`` and maps it linearly to [0, 1].
    * ``output_range01``: True gives [0, 1] (for evaluation); False applies the final x -> 2x - 1 (training).
    """

    preset: str = "general"
    size: int | None = 128
    spacing: float | tuple[float, float, float] | None = None
    crop: str = "center"
    intensity: str = "mri"
    percentiles: tuple[float, float] = (0.1, 99.9)
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    foreground_threshold: float = 0.05
    output_range01: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preprocessing preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.size is not None:
            if int(self.size) != self.size or self.size < 2:
                raise ConfigError(f"size must be a positive even integer, got {self.size!r}")
            if self.size % 2:
                raise ConfigError(
                    f"size {self.size} is odd; the Haar transform halves every axis, so use an even size "
                    "(a multiple of 32 fits the released network layouts, e.g. 64, 128 or 256)"
                )
            object.__setattr__(self, "size", int(self.size))
        if self.preset in ("brats", "lidc"):
            if self.size not in (128, RELEASED_GRID):
                raise ConfigError(
                    f"the {self.preset} preset produces 128^3 or 256^3 volumes, got size={self.size}; "
                    "use preset='general' for other sizes"
                )
            if self.spacing is not None:
                raise ConfigError(
                    f"the {self.preset} preset reproduces the released preprocessing and has no spacing "
                    "option; use preset='general' to resample"
                )
        if self.spacing is not None:
            sp = (self.spacing,) * 3 if np.isscalar(self.spacing) else tuple(self.spacing)
            if len(sp) != 3 or any(float(s) <= 0 for s in sp):
                raise ConfigError(f"spacing must be a positive number or three of them (mm), got {self.spacing!r}")
            object.__setattr__(self, "spacing", tuple(float(s) for s in sp))
        if self.crop not in CROP_MODES:
            raise ConfigError(f"unknown crop mode {self.crop!r}; choose one of {', '.join(CROP_MODES)}")
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"unknown intensity mode {self.intensity!r}; choose one of {', '.join(INTENSITY_MODES)}")
        lo, hi = (float(v) for v in self.percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", (lo, hi))
        w0, w1 = (float(v) for v in self.hu_window)
        if not w0 < w1:
            raise ConfigError(f"hu_window must be (low, high) with low < high, got {self.hu_window!r}")
        object.__setattr__(self, "hu_window", (w0, w1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def geometry_and_intensity_fields(self) -> dict[str, Any]:
        """The fields that change the [0, 1] volume (everything except ``output_range01``)."""
        fields = self.to_dict()
        fields.pop("output_range01")
        if self.preset != "general":
            fields = {"preset": self.preset, "size": self.size}
        return fields


@dataclass
class SourceInfo:
    """Where a prepared volume came from and what was done to its intensities."""

    case_id: str
    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: list[list[float]]
    intensity_min: float
    intensity_max: float
    clip_low: float
    clip_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceInfo:
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        d["spacing"] = tuple(d["spacing"])
        return cls(**d)


@dataclass
class PreparedVolume:
    """A preprocessed volume: ``array`` (i, j, k) float32, ``affine`` 4x4 voxel-to-RAS of that grid."""

    array: np.ndarray
    affine: np.ndarray
    source: SourceInfo
    config: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return affine_spacing(self.affine)

    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.config.output_range01 else (-1.0, 1.0)

    def save_nifti(self, path: str | Path) -> Path:
        """Write the array with its affine as a NIfTI file (needs nibabel)."""
        import nibabel as nib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(self.array, dtype=np.float32), self.affine), str(path))
        return path


# --------------------------------------------------------------------------------------------- geometry


def translation(offset) -> np.ndarray:
    """Index map new -> old for a grid whose voxel 0 is old voxel ``offset``."""
    m = np.eye(4)
    m[:3, 3] = np.asarray(offset, dtype=np.float64)
    return m


def scaling(factor, shift) -> np.ndarray:
    """Index map new -> old: old = factor * new + shift (per axis)."""
    m = np.diag(list(np.broadcast_to(np.asarray(factor, dtype=np.float64), (3,))) + [1.0])
    m[:3, 3] = np.broadcast_to(np.asarray(shift, dtype=np.float64), (3,))
    return m


def avg_pool2(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AvgPool3d(2) in float32 (as released); output voxel q is the mean of old voxels 2q and 2q+1 per axis,
    so its centre is old index 2q + 0.5."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    pooled = F.avg_pool3d(t, kernel_size=2)[0, 0].numpy()
    return pooled, affine @ scaling(2.0, 0.5)


def ras_axes(affine: np.ndarray) -> tuple[list[int], list[bool]]:
    """(perm, flip): new axis w (R, A, S) is old axis perm[w], reversed where flip[w].

    Greedy: the array axis most aligned with some world axis picks first.
    """
    rot = affine[:3, :3] / np.maximum(np.linalg.norm(affine[:3, :3], axis=0), 1e-12)
    world_of_axis = [-1, -1, -1]
    used: set[int] = set()
    for axis in np.argsort(-np.abs(rot).max(axis=0)):
        candidates = [int(w) for w in np.argsort(-np.abs(rot[:, axis])) if int(w) not in used]
        world_of_axis[int(axis)] = candidates[0]
        used.add(candidates[0])
    perm = [world_of_axis.index(w) for w in range(3)]
    flip = [bool(rot[w, perm[w]] < 0) for w in range(3)]
    return perm, flip


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip array axes so that i, j, k point (as closely as possible) to R, A, S.

    Only axis permutations and flips: no interpolation. Oblique grids keep their obliqueness in the affine.
    """
    perm, flip = ras_axes(affine)
    if perm == [0, 1, 2] and not any(flip):
        return array, affine
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for w in range(3):
        old = perm[w]
        index_map[old, w] = -1.0 if flip[w] else 1.0
        if flip[w]:
            index_map[old, 3] = array.shape[old] - 1
    out = np.transpose(array, perm)
    flips = [w for w in range(3) if flip[w]]
    if flips:
        out = np.flip(out, axis=flips)
    return np.ascontiguousarray(out), affine @ index_map


def general_grid_shape(shape, affine: np.ndarray, config: PreprocessConfig) -> tuple[int, int, int]:
    """The shape the general pipeline gives a volume of ``shape`` and ``affine`` (without reading it)."""
    if config.size is not None:
        return (config.size,) * 3
    perm, _ = ras_axes(affine)
    shape = np.asarray([shape[p] for p in perm])
    if config.spacing is not None:
        old = np.asarray(affine_spacing(affine))[perm]
        shape = np.maximum(1, np.round(shape * old / np.asarray(config.spacing))).astype(int)
    return tuple(int(n) for n in shape)


def resample_to_spacing(array: np.ndarray, affine: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear resampling (torch, align_corners=False) to about ``spacing`` mm.

    The new shape per axis is round(n * old_spacing / spacing); output voxel q samples the old grid at index
    (q + 0.5) * n / n' - 0.5, so the grid keeps its physical extent and the true new spacing is
    old_spacing * n / n' (equal to ``spacing`` up to rounding of the shape).
    """
    old = np.asarray(affine_spacing(affine))
    target = np.asarray(spacing, dtype=np.float64)
    shape = np.asarray(array.shape)
    new_shape = np.maximum(1, np.round(shape * old / target)).astype(int)
    if np.array_equal(new_shape, shape):
        return array, affine
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=tuple(int(n) for n in new_shape), mode="trilinear", align_corners=False)
    ratio = shape / new_shape
    return out[0, 0].numpy(), affine @ scaling(ratio, (ratio - 1.0) / 2.0)


def crop_or_pad(array: np.ndarray, affine: np.ndarray, size: int, start) -> tuple[np.ndarray, np.ndarray]:
    """The ``size``^3 box whose voxel 0 is old voxel ``start`` (parts outside the old grid are zeros)."""
    start = np.asarray(start, dtype=int)
    out = np.zeros((size,) * 3, dtype=np.float32)
    src, dst = [], []
    for axis in range(3):
        lo = max(0, start[axis])
        hi = min(array.shape[axis], start[axis] + size)
        if hi <= lo:
            return out, affine @ translation(start)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start[axis], hi - start[axis]))
    out[tuple(dst)] = array[tuple(src)]
    return out, affine @ translation(start)


def center_start(shape, size: int) -> np.ndarray:
    """Start index of a centred box: (n - size) // 2 per axis (a crop like the released LIDC script when
    n >= size, symmetric padding with the extra voxel at the end when n < size)."""
    return np.asarray([(n - size) // 2 for n in shape], dtype=int)


def foreground_start(array: np.ndarray, size: int, threshold: float, path: str) -> np.ndarray:
    """Start index of a box centred on the bounding box of voxels above ``threshold``."""
    mask = array > threshold
    if not mask.any():
        log.warning("%s: no voxel above %.3g; foreground crop falls back to the centre", path, threshold)
        return center_start(array.shape, size)
    start = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo > size:
            log.warning(
                "%s: foreground spans %d voxels along axis %d, more than size %d; its edges are cut",
                path,
                hi - lo,
                axis,
                size,
            )
        start.append((lo + hi - size) // 2)
    return np.asarray(start, dtype=int)


# -------------------------------------------------------------------------------------------- intensity


def _minmax(clipped: np.ndarray, path: str) -> np.ndarray:
    lo, hi = clipped.min(), clipped.max()
    if not hi > lo:
        raise DataError(f"{path}: the volume is constant after clipping ({lo}); it carries no image, remove it")
    return (clipped - lo) / (hi - lo)


# ---------------------------------------------------------------------------------------------- presets


def _case_of(case: Case | str | Path) -> Case:
    if isinstance(case, Case):
        return case
    path = Path(case)
    return Case(id=path.name, path=path)


def _source(case: Case, data: np.ndarray, affine: np.ndarray, clip_low: float, clip_high: float) -> SourceInfo:
    return SourceInfo(
        case_id=case.id,
        path=str(case.path),
        shape=tuple(int(n) for n in data.shape),
        spacing=affine_spacing(affine),
        affine=np.asarray(affine).tolist(),
        intensity_min=float(data.min()),
        intensity_max=float(data.max()),
        clip_low=float(clip_low),
        clip_high=float(clip_high),
    )


def _prepare_brats(case: Case, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, SourceInfo]:
    data, affine = load_volume(case.path, np.float64)
    if data.shape != BRATS_INPUT_SHAPE:
        raise InputShapeError(
            f"{case.path}: the brats preset expects a BraTS 2023 volume of shape {BRATS_INPUT_SHAPE}, got "
            f"{data.shape}; use preset='general' with a size (and a spacing) for other volumes"
        )
    low = np.quantile(data, BRATS_QUANTILES[0])
    high = np.quantile(data, BRATS_QUANTILES[1])
    normalized = _minmax(np.clip(data, low, high), str(case.path))
    out = np.zeros((RELEASED_GRID,) * 3, dtype=np.float32)
    (i0, j0, k0), (ni, nj, nk) = BRATS_OFFSET, BRATS_INPUT_SHAPE
    out[i0 : i0 + ni, j0 : j0 + nj, k0 : k0 + nk] = normalized
    # Output voxel p is input voxel p - offset.
    out_affine = affine @ translation(-np.asarray(BRATS_OFFSET))
    if config.size == 128:
        out, out_affine = avg_pool2(out, out_affine)
    return out, out_affine, _source(case, data, affine, low, high)


def _prepare_lidc(case: Case, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, SourceInfo]:
    data, affine = load_volume(case.path, np.float64)
    if data.shape != LIDC_INPUT_SHAPE:
        raise InputShapeError(
            f"{case.path}: the lidc preset expects a 256^3 volume written by `wdm preprocess-lidc` (or the "
            f"released script), got {data.shape}; rerun the LIDC preprocessing or use preset='general'"
        )
    lo, hi = float(data.min()), float(data.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataError(
            f"{case.path}: values span [{lo:.4g}, {hi:.4g}], but a processed LIDC volume lies in [0, 1]; "
            "run `wdm preprocess-lidc` on the DICOM series, or use preset='general' with intensity='ct'"
        )
    out = data.astype(np.float32)
    out_affine = affine
    if config.size == 128:
        out, out_affine = avg_pool2(out, out_affine)
    return out, out_affine, _source(case, data, affine, lo, hi)


def _prepare_general(case: Case, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray, SourceInfo]:
    data, affine = load_volume(case.path, np.float32)
    path = str(case.path)
    try:
        check_usable_voxels(data)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    if config.intensity == "mri":
        low, high = np.percentile(data, config.percentiles)
        scaled = _minmax(np.clip(data, low, high), path)
    else:
        low, high = config.hu_window
        scaled = (np.clip(data, low, high) - low) / (high - low)
    source = _source(case, data, affine, low, high)
    del data
    arr, aff = reorient_to_ras(scaled.astype(np.float32, copy=False), affine)
    if config.spacing is not None:
        arr, aff = resample_to_spacing(arr, aff, config.spacing)
    if config.size is not None:
        if config.crop == "center":
            start = center_start(arr.shape, config.size)
        else:
            start = foreground_start(arr, config.size, config.foreground_threshold, path)
        arr, aff = crop_or_pad(arr, aff, config.size, start)
    return np.ascontiguousarray(arr, dtype=np.float32), aff, source


_PREPARERS = {"brats": _prepare_brats, "lidc": _prepare_lidc, "general": _prepare_general}


def finalize(array01: np.ndarray, output_range01: bool) -> np.ndarray:
    """The last step of every preset: x -> 2x - 1 in float32, unless ``output_range01``."""
    return array01 if output_range01 else array01 * np.float32(2.0) - np.float32(1.0)


def preprocess_01(case: Case | str | Path, config: PreprocessConfig) -> PreparedVolume:
    """Everything but the final 2x - 1: the [0, 1] volume (what the cache stores)."""
    case = _case_of(case)
    array, affine, source = _PREPARERS[config.preset](case, config)
    cfg01 = PreprocessConfig(**{**config.to_dict(), "output_range01": True})
    return PreparedVolume(array=array, affine=affine, source=source, config=cfg01)


def preprocess(case: Case | str | Path, config: PreprocessConfig | None = None) -> PreparedVolume:
    """Preprocess one case (or volume path) with ``config`` (default: general, 128^3, MRI intensities).

    Returns the float32 (i, j, k) array in [-1, 1] (or [0, 1] with ``output_range01``) and the affine of its
    grid. Raises :class:`DataError` for unreadable files and :class:`InputShapeError` for wrong shapes.
    """
    config = config if config is not None else PreprocessConfig()
    prepared = preprocess_01(case, config)
    prepared.array = finalize(prepared.array, config.output_range01)
    prepared.config = config
    return prepared
