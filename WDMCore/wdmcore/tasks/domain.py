"""Does the input look like the data the model was made for? One warning when it clearly does not.

The model's card says what it was trained on (``modality``: a synthetic phantom, MRI, CT; its voxel spacing);
the input says what it is (its spacing from its affine, its intensity range). The task still runs: the
warning (a ``warning`` event, or a logged warning without a callback; see :func:`wdmcore.events.warn`) tells
the user why the result may be poor. What counts as clearly different:

* a phantom model (the bundled ``demo_phantom_*``): always said, whatever the input: it is not a medical model;
* spacing: for a task on the input's own voxels (synthesis, fastWDM3D inpainting), a voxel size off the
  card's by more than a factor 1.5 along an axis; for a task that resamples into the model's grid (variations,
  RePaint), an input coarser than the model by that factor (the model then sees an interpolated, blurrier
  image), or an image smaller than half the model's window along every axis (the model then sees mostly the
  image's edge values around it). Not checked for a bare array (its geometry is unknown);
* intensity: an input that looks like CT in Hounsfield units (1 % of its voxels at or below -500) given to a
  model whose card names another modality (MRI, a phantom).
"""

from __future__ import annotations

import logging

import numpy as np

from ..events import ProgressCallback, warn
from ..models.model import WDMModel
from .inputs import InputVolume
from .model_grid import mm_text, model_spacing, voxel_spacing

log = logging.getLogger(__name__)

SPACING_FACTOR = 1.5
SMALL_IN_WINDOW = 0.5  # an image smaller than half the model's window along every axis
CT_AIR_HU = -500.0
CT_AIR_SHARE = 0.01


def is_phantom_model(wdm: WDMModel) -> bool:
    return "phantom" in str(wdm.card.get("modality") or "").lower()


def looks_like_ct(array: np.ndarray) -> bool:
    """At least 1 % of the voxels at or below -500 (air in Hounsfield units); MR intensities are not negative."""
    values = array.ravel()
    step = max(1, values.size // 1_000_000)  # a strided sample is plenty for a 1 % quantile
    return bool(np.quantile(values[::step], CT_AIR_SHARE) <= CT_AIR_HU)


def domain_notes(wdm: WDMModel, volumes: list[InputVolume], *, at_model_spacing: bool) -> list[str]:
    """The ways the inputs clearly differ from the model's training data, one sentence each (empty: none)."""
    name = wdm.card.get("name") or "this model"
    modality = str(wdm.card.get("modality") or "")
    notes = []
    if is_phantom_model(wdm):
        notes.append(
            f"{name} is a demonstration model trained on synthetic phantoms, not a medical model: on real scans "
            "its output shows how the tool works, not plausible anatomy"
        )
    spacing = model_spacing(wdm)
    first = volumes[0]
    if spacing is not None and first.source != "array":
        own = voxel_spacing(first.affine)
        factor = own / spacing
        shown = f"the image's voxels are {mm_text(own)} mm and the model's {mm_text(spacing)} mm"
        if at_model_spacing:
            if np.any(factor > SPACING_FACTOR):
                notes.append(f"{shown}: the image is interpolated up to the model's grid, so it looks blurrier to it")
            extent, window = np.asarray(first.array.shape) * own, np.asarray(wdm.image_shape) * spacing
            if np.all(extent < SMALL_IN_WINDOW * window):
                notes.append(
                    f"the image covers {' x '.join(f'{v:g}' for v in np.round(extent, 1))} mm of the model's "
                    f"{' x '.join(f'{v:g}' for v in np.round(window, 1))} mm window, so the model sees mostly its "
                    "edge values around it"
                )
        elif np.any((factor > SPACING_FACTOR) | (factor < 1 / SPACING_FACTOR)):
            notes.append(
                f"{shown}: the model sees anatomy at another scale; resample the image to {mm_text(spacing)} mm"
            )
    if modality and "ct" not in modality.lower().split():
        ct = [v.name for v in volumes if looks_like_ct(v.array)]
        if ct:
            notes.append(
                f"{', '.join(repr(n) for n in ct)} looks like CT in Hounsfield units (1 % of its voxels at or below "
                f"{CT_AIR_HU:g}), but the model was made for {modality}"
            )
    return notes


def warn_outside_domain(
    wdm: WDMModel, volumes: list[InputVolume], on_progress: ProgressCallback | None, task: str, *, at_model_spacing
) -> None:
    """One warning (see the module doc) when the inputs clearly differ from what the model was made for."""
    notes = domain_notes(wdm, volumes, at_model_spacing=at_model_spacing)
    if notes:
        warn(on_progress, log, "; ".join(notes) + ".", task=task, kind="domain")


BACKGROUND_SHARE = 0.05  # of the range from the minimum to the 99.9 % quantile
SHELL_VOXELS = 2


def mask_in_background(image: np.ndarray, inside: np.ndarray) -> bool:
    """Every voxel of the mask and of a shell of 2 voxels around it is background (within 5 % of the image's
    range above its minimum): the mask lies in air, not on the object. (The shell keeps a voided lesion, set
    to the minimum inside the object, from counting as air.)"""
    from scipy import ndimage

    low = float(image.min())
    level = low + BACKGROUND_SHARE * (float(np.quantile(image, 0.999)) - low)
    idx = np.argwhere(inside)
    box = tuple(  # the mask's bounding box and the shell's margin: dilating the whole volume costs seconds
        slice(max(int(a) - SHELL_VOXELS, 0), int(b) + SHELL_VOXELS + 1)
        for a, b in zip(idx.min(axis=0), idx.max(axis=0), strict=True)
    )
    region = ndimage.binary_dilation(inside[box], iterations=SHELL_VOXELS)
    return bool(np.all(image[box][region] <= level))


def warn_mask_in_background(
    image: InputVolume, mask: InputVolume, inside: np.ndarray, on_progress: ProgressCallback | None
) -> None:
    if mask_in_background(image.array, inside):
        warn(
            on_progress,
            log,
            f"the mask {mask.source} lies in the image's background (every voxel in and around it is near the "
            "image's minimum): there is no object there to fill; check that the mask belongs to this image.",
            task="inpaint",
            kind="mask-in-background",
        )
