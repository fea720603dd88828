"""Data pipeline: discover datasets, preprocess volumes (released presets and a general pipeline), cache
them memory-mapped, and serve them to the trainer as a torch Dataset. See ``docs/data.md``.

Volumes are arrays in NIfTI index order (i, j, k) with a 4x4 voxel-to-RAS affine. NIfTI/NRRD/DICOM readers
(nibabel, SimpleITK, scipy) are imported only when used.
"""

from ..volumes.reading import VOLUME_SUFFIXES, load_volume, read_header
from . import phantoms
from .cache import PreprocessCache, cache_key
from .dataset import VolumeDataset
from .discovery import BRATS_SEQUENCES, Case, detect_format, discover
from .lidc_dicom import LidcReport, preprocess_lidc_dicom
from .phantoms import PhantomDataset, generate_phantom, phantom_batch
from .preprocess import PreparedVolume, PreprocessConfig, SourceInfo, preprocess
from .summary import CaseSummary, DatasetSummary, SkippedFile, summarize

__all__ = [
    "BRATS_SEQUENCES",
    "VOLUME_SUFFIXES",
    "Case",
    "CaseSummary",
    "DatasetSummary",
    "LidcReport",
    "PhantomDataset",
    "PreparedVolume",
    "PreprocessCache",
    "PreprocessConfig",
    "SkippedFile",
    "SourceInfo",
    "VolumeDataset",
    "cache_key",
    "detect_format",
    "discover",
    "generate_phantom",
    "load_volume",
    "phantom_batch",
    "phantoms",
    "preprocess",
    "preprocess_lidc_dicom",
    "read_header",
    "summarize",
]
