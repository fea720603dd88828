"""Preview samples written during training: a NIfTI volume and a PNG of its three mid-slices, enlarged
(nearest neighbour) so that each slice is at least 256 pixels tall."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WDMError
from ..networks import DiffusionNetwork
from ..volumes.writing import save_nifti

log = logging.getLogger(__name__)


def write_png_gray(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a 2-D array with values in [0, 1] as an 8-bit grayscale PNG (no dependencies)."""
    import struct
    import zlib

    pixels = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def mid_slices(volume: np.ndarray) -> np.ndarray:
    """The three central slices of an (i, j, k) volume side by side (axial, coronal, sagittal), display up."""
    s0, s1, s2 = (d // 2 for d in volume.shape)
    views = [volume[:, :, s2].T[::-1], volume[:, s1, :].T[::-1], volume[s0, :, :].T[::-1]]
    height = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, height - v.shape[0]), (0, 2))) for v in views]
    return np.concatenate(padded, axis=1)


PREVIEW_MIN_PIXELS = 256  # each slice of the preview PNG is at least this tall, so a 32^3 preview is readable


def upscale_nearest(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` with every pixel repeated ``factor`` times along both axes (nearest neighbour: no new values)."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def preview_scale(shape: tuple[int, ...], min_pixels: int = PREVIEW_MIN_PIXELS) -> int:
    """The integer factor that makes the largest edge of a volume at least ``min_pixels`` on screen."""
    return max(1, -(-min_pixels // max(shape)))


def card_affine(card: dict[str, Any], size: int) -> np.ndarray:
    affine = card.get("geometry", {}).get("affine")
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    spacing = card.get("geometry", {}).get("spacing_mm", [1.0, 1.0, 1.0])
    return np.diag([*map(float, spacing), 1.0])


def write_preview(ema_network: DiffusionNetwork, card: dict[str, Any], path_stem: Path, steps: int) -> list[Path]:
    """Sample one volume (DDIM, seed 0) and save it as NIfTI (when nibabel is installed) and a PNG."""
    from ..models.model import WDMModel

    network = copy.deepcopy(ema_network).eval()
    model = WDMModel(network, card)
    volume = model.sample(1, seed=0, sampler="ddim", steps=steps)[0, 0].numpy()
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    png = path_stem.with_suffix(".png")
    write_png_gray(png, upscale_nearest(mid_slices(volume), preview_scale(volume.shape)))
    written.append(png)
    nii = path_stem.parent / (path_stem.name + ".nii.gz")
    try:
        # nibabel, or SimpleITK where nibabel is missing (3D Slicer's Python), which loads the preview as a volume.
        save_nifti(volume.astype(np.float32), card_affine(card, volume.shape[0]), nii)
    except WDMError as exc:
        log.info("preview saved as PNG only: %s", exc)
    else:
        written.append(nii)
    return written


# -- the loop -----------------------------------------------------------------------------------------------
