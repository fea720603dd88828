"""Finding and reading the volumes an evaluation compares.

A *reader* is any callable ``path -> numpy array`` (3-D, values in [0, 1]). Readers may carry a ``config``
attribute (a JSON-able dict describing what they do); it becomes part of the key of the real-set statistics
cache, so that statistics computed with one preprocessing are never reused for another.

:class:`NiftiReader` reads a NIfTI file as it is (``get_fdata`` in the file's index order, no reorientation,
no resampling, no intensity change), which is how WDM's evaluation reads generated samples and what fits real
volumes already preprocessed to [0, 1]. It reads the NRRD files ``wdm sample --format nrrd`` writes (and
MetaImage files) into the same (i, j, k) order, so a folder may mix the formats.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputShapeError
from .dependencies import import_optional

VolumeReader = Callable[[Path], np.ndarray]
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES  # every format `wdm sample` writes, and MetaImage
FORMATS = ("nifti", "brats", "lidc")


def list_volumes(directory: str | Path, suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> list[Path]:
    """The volume files directly inside ``directory`` (not recursive), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory. Pass a folder that contains the volumes.")
    files = sorted(p for p in directory.iterdir() if p.is_file() and any(p.name.lower().endswith(s) for s in suffixes))
    if not files:
        raise ConfigError(
            f"No volume files ({', '.join(suffixes)}) found directly in {directory}. "
            "Put the volumes in that folder (sub-folders are not searched)."
        )
    return files


class NiftiReader:
    """Read a volume as stored, as float32 [i, j, k]; trailing singleton axes are dropped. Every format goes
    through :func:`wdmcore.volumes.reading.load_volume`, which checks the header against the file's size and
    the free memory before allocating, and refuses images that are not single 3-D volumes."""

    config: dict[str, Any] = {"reader": "nifti", "preprocessing": "none (values as stored)"}

    def __call__(self, path: Path) -> np.ndarray:
        from ..volumes.reading import load_volume

        if not any(Path(path).name.lower().endswith(s) for s in ITK_SUFFIXES):
            import_optional("nibabel", "Reading NIfTI files")  # a clear message with the pip command
        # load_volume bounds the file (its header against its size and the free memory) before allocating.
        array, _ = load_volume(path, dtype=np.float32)
        return self._check(path, np.asarray(array, dtype=np.float32))

    @staticmethod
    def _check(path: Path, volume: np.ndarray) -> np.ndarray:
        while volume.ndim > 3 and volume.shape[-1] == 1:
            volume = volume[..., 0]
        if volume.ndim != 3:
            raise InputShapeError(
                f"{path} holds an array of shape {volume.shape}; the evaluation needs one 3-D scalar volume per file."
            )
        return volume


def reader_config(reader: VolumeReader) -> dict[str, Any]:
    """The description of a reader used in cache keys (its ``config`` attribute, else its qualified name)."""
    config = getattr(reader, "config", None)
    if isinstance(config, dict):
        return dict(config)
    name = getattr(reader, "__qualname__", type(reader).__qualname__)
    return {"reader": f"{getattr(reader, '__module__', '?')}.{name}"}


class PresetReader:
    """Real volumes through the training preprocessing of a released preset, without the final 2x - 1
    (values in [0, 1]), as the released evaluation reads them."""

    def __init__(self, preset: str, size: int = 128):
        from ..data import PreprocessConfig

        self.preprocess_config = PreprocessConfig(preset=preset, size=size, output_range01=True)
        self.config = {"reader": preset, "size": size, "preprocessing": f"{preset} preset, [0, 1]"}

    def __call__(self, path: Path) -> np.ndarray:
        from ..data import Case, preprocess

        case = Case(id=Path(path).name, path=Path(path), format=self.preprocess_config.preset)
        return preprocess(case, self.preprocess_config).array


def reader_for_format(name: str, size: int = 128) -> VolumeReader:
    """The reader of real volumes for ``--format``: ``nifti`` reads files as stored (already in [0, 1]);
    ``brats`` and ``lidc`` apply the released training preprocessing without the final 2x - 1."""
    if name == "nifti":
        return NiftiReader()
    if name in ("brats", "lidc"):
        return PresetReader(name, size)
    raise ConfigError(f"Unknown volume format {name!r}; choose one of {', '.join(FORMATS)}.")


def real_volume_files(directory: str | Path, name: str) -> list[Path]:
    """The real volumes: NIfTI files in the folder, or the cases of a BraTS / LIDC-IDRI dataset root."""
    if name == "nifti":
        return list_volumes(directory)
    from ..data import discover

    return [case.path for case in discover(directory, format=name)]
