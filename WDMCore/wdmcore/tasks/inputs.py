"""Reading and checking the volumes a task takes (shared by synthesize, inpaint and vary).

An input volume may be a file path, a ``(array, affine)`` pair, a ``{"array", "affine"}`` mapping, a bare 3-D
array (identity affine) or a :class:`~wdmcore.tasks.generate.GeneratedVolume`. All become :class:`InputVolume`
(float64 array in (i, j, k) order + 4x4 voxel-to-RAS affine), and the task's output is written in the grid of
its inputs: same shape, same affine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, InputShapeError

# Affines of inputs that should share one grid may differ by rounding in their headers.
AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class InputVolume:
    array: np.ndarray  # float64, (i, j, k)
    affine: np.ndarray  # 4x4 voxel-to-RAS, mm
    name: str
    source: str


def read_input(value: Any, name: str) -> InputVolume:
    """One input volume, whatever form it was given in (see the module doc)."""
    if isinstance(value, (str, os.PathLike)):
        from ..volumes.reading import load_volume

        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"input {name!r}: file {path} not found.")
        array, affine = load_volume(path)
        return _checked(array, affine, name, str(path))
    if hasattr(value, "array") and hasattr(value, "affine"):  # GeneratedVolume or alike
        return _checked(value.array, value.affine, name, "volume object")
    if isinstance(value, Mapping) and "array" in value:
        return _checked(value["array"], value.get("affine", np.eye(4)), name, "mapping")
    if isinstance(value, tuple) and len(value) == 2:
        return _checked(value[0], value[1], name, "(array, affine)")
    if isinstance(value, np.ndarray) or hasattr(value, "numpy"):
        return _checked(value, np.eye(4), name, "array")
    raise ConfigError(
        f"input {name!r}: give a file path, an (array, affine) pair, a 3-D array or a generated volume, "
        f"not {type(value).__name__}."
    )


def _checked(array: Any, affine: Any, name: str, source: str) -> InputVolume:
    array = np.asarray(array.numpy() if hasattr(array, "numpy") else array)
    if np.iscomplexobj(array):  # the cast below would drop the imaginary part without a word
        raise DataError(
            f"input {name!r} holds complex values ({array.dtype}); give a real-valued volume (its magnitude or "
            "real part)."
        )
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputShapeError(f"input {name!r} must be a 3-D volume, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise DataError(f"input {name!r} contains NaN or infinite values.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputShapeError(f"input {name!r}: the affine must be an invertible 4x4 matrix.")
    return InputVolume(array, affine, name, source)


def read_inputs(values: Mapping[str, Any], names: list[str], task: str) -> dict[str, InputVolume]:
    """The named inputs, all present, nothing extra, all on one grid."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{task} inputs must be a mapping of input name to volume ({', '.join(names)}).")
    missing = [n for n in names if n not in values]
    extra = [n for n in values if n not in names]
    if missing or extra:
        raise ConfigError(
            f"this model takes the inputs {', '.join(names)}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not used by it: {', '.join(map(str, extra))}" if extra else "")
            + "."
        )
    volumes = {n: read_input(values[n], n) for n in names}
    check_same_grid(list(volumes.values()))
    return volumes


def check_same_grid(volumes: list[InputVolume]) -> None:
    """Every input must share the first one's shape and affine (co-registered, same voxel grid)."""
    first = volumes[0]
    for other in volumes[1:]:
        if other.array.shape != first.array.shape:
            raise InputShapeError(
                f"inputs {first.name!r} {first.array.shape} and {other.name!r} {other.array.shape} differ in shape; "
                "resample them onto one grid (co-register) first."
            )
        if not np.allclose(other.affine, first.affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
            raise InputShapeError(
                f"inputs {first.name!r} and {other.name!r} have the same shape but different geometry (affine); "
                "resample them onto one grid (co-register) first."
            )


def binary_mask(mask: InputVolume) -> np.ndarray:
    """The region to fill (non-zero voxels), refusing an empty or a full mask."""
    inside = mask.array > 0.5
    count = int(inside.sum())
    if count == 0:
        raise DataError(f"the mask {mask.source} is empty: mark the region to fill with 1.")
    if count == inside.size:
        raise DataError(f"the mask {mask.source} covers the whole volume: nothing is left to condition on.")
    return inside


def require_task(model: Any, task: str) -> None:
    if model.task != task:
        hint = {"generate": "wdm sample / wdmcore.generate", "synthesize": "wdm synthesize", "inpaint": "wdm inpaint"}
        raise ConfigError(
            f"this model's task is {model.task!r}, not {task!r}; use {hint.get(model.task, model.task)} with it, "
            f"or a {task} model."
        )


def cancel_check(cancel: Callable[[], bool] | threading.Event | None) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if not callable(cancel):
        raise ConfigError("cancel must be a callable returning True to stop, or a threading.Event.")
    return cancel


def quantile_minmax(array: np.ndarray, low_q: float, high_q: float, what: str) -> tuple[np.ndarray, float, float]:
    """Clip to the [low_q, high_q] quantiles of the whole volume and scale to [0, 1] (the family's
    normalisation). Returns (scaled, low, high)."""
    low, high = np.quantile(array, [low_q, high_q])
    clipped = np.clip(array, low, high)
    lo, hi = clipped.min(), clipped.max()
    if hi <= lo:
        raise DataError(f"{what} is constant after clipping to its quantiles: there is no image to work with.")
    return (clipped - lo) / (hi - lo), float(lo), float(hi)


def fit_axis(n: int, multiple: int) -> tuple[int, int, int]:
    """How one axis of n voxels becomes a multiple of ``multiple``: (size, crop_before, pad_after).

    Pad at the end when that changes less than cropping, else crop centred: 155 -> 160 (pad 5), 240 -> 224
    (crop 8 from each side), as cWDM does for BraTS."""
    down = (n // multiple) * multiple
    up = -(-n // multiple) * multiple
    if down == n:
        return n, 0, 0
    if up - n < n - down or down == 0:
        return up, 0, up - n
    return down, (n - down) // 2, 0


def to_grid(array: np.ndarray, fits: list[tuple[int, int, int]], fill: float = 0.0) -> np.ndarray:
    """Apply :func:`fit_axis` results to an array (crop and/or pad with ``fill``)."""
    out = array
    for axis, (size, crop, pad) in enumerate(fits):
        index = [slice(None)] * 3
        if crop:
            index[axis] = slice(crop, crop + size)
            out = out[tuple(index)]
        if pad:
            widths = [(0, 0)] * 3
            widths[axis] = (0, pad)
            out = np.pad(out, widths, constant_values=fill)
    return out


def from_grid(
    array: np.ndarray, fits: list[tuple[int, int, int]], shape: tuple[int, ...], fill: float = 0.0
) -> np.ndarray:
    """Undo :func:`to_grid`: back to ``shape``; cropped borders get ``fill``."""
    out = np.full(shape, fill, dtype=array.dtype)
    src = [slice(0, size - pad) for size, _, pad in fits]
    dst = [slice(crop, crop + size - pad) for size, crop, pad in fits]
    out[tuple(dst)] = array[tuple(src)]
    return out
