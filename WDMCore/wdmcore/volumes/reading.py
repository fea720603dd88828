"""Reading volume files into (array, affine) pairs.

Every reader returns the voxel array in NIfTI index order (i, j, k) and a 4x4 voxel-to-RAS affine, whatever
the file format. NIfTI files are read with nibabel (exactly what ``get_fdata`` gives, no reorientation);
NRRD/MetaImage files with SimpleITK, whose (k, j, i) arrays are transposed and whose LPS geometry is turned
into RAS. Both libraries are imported only when a file needs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputShapeError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_suffix(path: str | Path) -> str | None:
    """The volume suffix of ``path`` (``.nii.gz``, ``.nrrd``, ...) or None if it is not a volume file."""
    name = Path(path).name.lower()
    for suffix in (".nii.gz",) + tuple(s for s in VOLUME_SUFFIXES if s != ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(name: str) -> str:
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a volume file, read without decoding the voxels."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return affine_spacing(self.affine)


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along i, j, k (mm): the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _need_nibabel():
    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading NIfTI files needs nibabel; install it with `pip install nibabel` (or `pip install wdmcore[io]`)"
        ) from exc
    return nibabel


def _need_sitk():
    try:
        import SimpleITK
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading NRRD/MetaImage/DICOM files needs SimpleITK; install it with `pip install SimpleITK` "
            "(or `pip install wdmcore[io]`)"
        ) from exc
    return SimpleITK


def sitk_affine(image) -> np.ndarray:
    """Voxel-to-RAS affine of a 3-D SimpleITK image (or file reader), for its array as (i, j, k)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def read_header(path: str | Path) -> VolumeHeader:
    """Shape and affine of a volume file. Raises :class:`DataError` if the file cannot be read."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: not a volume file; supported endings are {', '.join(VOLUME_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path or rerun discovery")
    try:
        if suffix in NIFTI_SUFFIXES:
            nib = _need_nibabel()
            img = nib.load(str(path))
            return VolumeHeader(path, tuple(int(n) for n in img.shape), np.asarray(img.affine, np.float64))
        sitk = _need_sitk()
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        shape = tuple(int(n) for n in reader.GetSize())
        if reader.GetNumberOfComponents() > 1:
            shape = shape + (int(reader.GetNumberOfComponents()),)
        affine = sitk_affine(reader) if reader.GetDimension() == 3 else np.eye(4)
        return VolumeHeader(path, shape, affine)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the file header ({type(exc).__name__}: {exc})") from exc


def check_3d(shape: tuple[int, ...], path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape, after dropping trailing singleton axes; raises :class:`InputShapeError` otherwise."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputShapeError(
            f"{path}: is a {len(dims)}-D image (shape {tuple(shape)}); only single 3-D volumes can be used. "
            "Split it into 3-D volumes (one file per time point or channel) first"
        )
    if len(dims) < 3 or min(dims) == 1:
        raise InputShapeError(
            f"{path}: is a 2-D image (shape {tuple(shape)}); the models need 3-D volumes. "
            "Remove it from the folder or list"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


MIN_AXIS_VOXELS = 8  # fewer voxels along an axis than this is not a volume a 3-D model can learn from
MAX_VOXELS = 1 << 30  # a header claiming more (e.g. 10000^3) is damaged or not a single medical volume


def check_usable_header(header: VolumeHeader, path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape of a volume whose header can be trained on; :class:`DataError` saying why not otherwise.

    The one header check shared by training (files that fail it never count, not even for the ``fit`` spacing)
    and ``wdm summarize``: a single 3-D volume, at least 8 voxels per axis, at most 2^30 voxels, and an affine
    that is finite with non-zero spacing and an invertible orientation."""
    shape = check_3d(header.shape, path)
    if min(shape) < MIN_AXIS_VOXELS:
        raise InputShapeError(
            f"{path}: is only {'x'.join(map(str, shape))} voxels; a volume needs at least {MIN_AXIS_VOXELS} "
            "voxels along every axis. Remove it from the folder or list"
        )
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise DataError(
            f"{path}: its header claims {'x'.join(map(str, shape))} voxels, more than the {MAX_VOXELS} a volume "
            "may have; the file is damaged or not a single medical volume. Remove it"
        )
    affine = np.asarray(header.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataError(f"{path}: its affine (voxel-to-world matrix) holds NaN or infinite values; fix the header")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(spacing < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-12 * float(np.prod(spacing)):
        raise DataError(
            f"{path}: its voxel spacing {tuple(round(float(s), 6) for s in spacing)} mm has a zero, or its "
            "orientation is singular; fix the header (pixdim / spacing) or remove it"
        )
    return shape


def check_usable_voxels(data: np.ndarray) -> None:
    """Content that can be trained on: finite numbers, not one constant value (e.g. all zeros)."""
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(f"{int((~finite).sum())} voxel(s) are NaN or infinite; fix the file or remove it")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise DataError(f"every voxel has the value {lo:g}: the volume is constant and carries no image; remove it")


def reason_without_path(reason: str, path: str | Path) -> str:
    """A message without a leading "PATH: ", for listings that already show the path."""
    prefix = f"{path}: "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


def load_volume(path: str | Path, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D volume file: (array in (i, j, k) order as ``dtype``, 4x4 voxel-to-RAS affine).

    NIfTI: the array is nibabel's ``get_fdata`` (scaling applied, no reorientation), as the released
    preprocessing reads it. Raises :class:`DataError` for unreadable files and :class:`InputShapeError`
    for images that are not 3-D.
    """
    path = Path(path)
    header = read_header(path)
    shape = check_3d(header.shape, path)
    suffix = volume_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            nib = _need_nibabel()
            img = nib.load(str(path))
            data = np.asarray(img.get_fdata(dtype=dtype))
            affine = np.asarray(img.affine, dtype=np.float64)
        else:
            sitk = _need_sitk()
            image = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(dtype, copy=False)
            affine = sitk_affine(image)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the voxel data ({type(exc).__name__}: {exc})") from exc
    data = data.reshape(shape)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: contains NaN or infinite values; fix or remove the file")
    return data, affine
