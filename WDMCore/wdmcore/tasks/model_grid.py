"""The model's grid inside an input volume: where a model that works at its own voxel spacing sees the input, and
how values travel between the two grids (RePaint inpainting and variations share it).

The model's grid is its image shape at its spacing (the card's ``spacing_mm`` or geometry), laid along the
input's voxel axes: model voxel m along an axis lies at input index ``start + m * ratio``, where ``ratio`` is
the model's spacing over the input's (input voxels per model voxel). A model whose card states no spacing, or
whose spacing is the input's (within 0.1 %), works on the input's own voxels: ratio 1 and a whole-voxel start,
so going there and back copies values exactly. Values are interpolated linearly, one axis after the other
(exactly trilinear interpolation, without a coordinate array per voxel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.model import WDMModel

SAME_SPACING_RTOL = 1e-3


def model_spacing(wdm: WDMModel) -> np.ndarray | None:
    """The voxel spacing (mm) the model's card states (``spacing_mm`` or a geometry affine), else None."""
    from ..volumes.writing import card_geometry

    card = wdm.card
    nested = card.get("geometry") if isinstance(card.get("geometry"), dict) else {}
    if all(d.get(k) is None for d in (card, nested) for k in ("spacing_mm", "affine")):
        return None
    return card_geometry(card, wdm.image_shape).spacing


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """The voxel spacing (mm) of a voxel-to-RAS affine: the lengths of its columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


@dataclass(frozen=True)
class ModelGrid:
    start: np.ndarray  # input index of model voxel 0, per axis
    ratio: np.ndarray  # input voxels per model voxel, per axis
    shape: tuple[int, int, int]  # the model's image shape
    input_shape: tuple[int, int, int]
    spacing: np.ndarray  # the model's voxel spacing in mm (the input's when the card states none)

    @classmethod
    def around(cls, wdm: WDMModel, affine: np.ndarray, input_shape: tuple[int, ...], lo, hi) -> ModelGrid:
        """The model's grid centred on the input voxels ``lo``..``hi`` (inclusive index bounds), shifted to stay
        inside the volume; centred on the volume along an axis it covers whole."""
        own = voxel_spacing(affine)
        spacing = model_spacing(wdm)
        if spacing is None or np.allclose(own, spacing, rtol=SAME_SPACING_RTOL, atol=0):
            spacing, ratio = own, np.ones(3)
        else:
            ratio = np.asarray(spacing, dtype=np.float64) / own
        shape = np.asarray(wdm.image_shape, dtype=np.float64)
        span = (shape - 1) * ratio
        last = np.asarray(input_shape, dtype=np.float64) - 1
        centre = (np.asarray(lo, dtype=np.float64) + np.asarray(hi, dtype=np.float64)) / 2
        start = np.where(span <= last, np.clip(centre - span / 2, 0, last - span), last / 2 - span / 2)
        start = np.where(ratio == 1, np.floor(start), start)  # on the input's voxels: copy, never interpolate
        return cls(start, ratio, tuple(int(s) for s in shape), tuple(int(n) for n in input_shape), spacing)

    @classmethod
    def centred(cls, wdm: WDMModel, affine: np.ndarray, input_shape: tuple[int, ...]) -> ModelGrid:
        """The model's grid centred on the whole volume."""
        last = np.asarray(input_shape, dtype=np.float64) - 1
        return cls.around(wdm, affine, input_shape, np.zeros(3), last)

    def sample(self, volume: np.ndarray, outside: float | None = None) -> np.ndarray:
        """``volume`` (input grid) on the model's grid. Model voxels beyond the volume take its edge values, or
        ``outside`` when given."""
        out = np.asarray(volume, dtype=np.float64)
        for axis in range(3):
            positions = self.start[axis] + np.arange(self.shape[axis]) * self.ratio[axis]
            out = _linear_along(out, positions, axis, outside)
        return out

    def covered(self) -> tuple[slice, slice, slice]:
        """The box of input voxels whose centres lie in the model's field of view (its voxels' extent)."""
        box = []
        for axis in range(3):
            first = np.ceil(self.start[axis] - self.ratio[axis] / 2 - 1e-9)
            last = np.floor(self.start[axis] + (self.shape[axis] - 0.5) * self.ratio[axis] + 1e-9)
            box.append(slice(int(max(first, 0)), int(min(last, self.input_shape[axis] - 1)) + 1))
        return tuple(box)

    def back(self, values: np.ndarray) -> np.ndarray:
        """Model-grid ``values`` interpolated at the input voxels of :meth:`covered` (an array of that box's shape)."""
        out = np.asarray(values, dtype=np.float64)
        for axis, part in enumerate(self.covered()):
            positions = (np.arange(part.start, part.stop) - self.start[axis]) / self.ratio[axis]
            out = _linear_along(out, positions, axis, None)
        return out

    def describe(self) -> str:
        """The field of view in words, e.g. '64 x 64 x 64 voxels of 3.75 mm (240 x 240 x 240 mm)'."""
        fov = np.asarray(self.shape) * self.spacing
        return (
            f"{' x '.join(str(s) for s in self.shape)} voxels of {mm_text(self.spacing)} mm "
            f"({' x '.join(f'{v:g}' for v in np.round(fov, 1))} mm)"
        )


def mm_text(spacing: np.ndarray) -> str:
    """A spacing in words: '3.75' when isotropic, else '0.8 x 0.8 x 3'."""
    values = [f"{v:g}" for v in np.round(np.asarray(spacing, dtype=np.float64), 3)]
    return values[0] if len(set(values)) == 1 else " x ".join(values)


def _linear_along(array: np.ndarray, positions: np.ndarray, axis: int, outside: float | None) -> np.ndarray:
    """``array`` interpolated linearly at fractional ``positions`` along ``axis``; positions beyond the ends take
    the end values, or ``outside`` when given. A whole-number position returns the value there exactly."""
    n = array.shape[axis]
    p = np.clip(positions, 0, n - 1)
    low = np.minimum(np.floor(p).astype(np.int64), max(n - 2, 0))
    weight = p - low
    high = np.minimum(low + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    out = np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight
    if outside is not None:
        beyond = (positions < 0) | (positions > n - 1)
        if beyond.any():
            index = [slice(None)] * array.ndim
            index[axis] = beyond
            out[tuple(index)] = outside
    return out
