"""Geometry of generated volumes and the files they are written to (NIfTI, NRRD, JSON sidecar).

Arrays are in NIfTI index order (i, j, k) and carry a 4x4 voxel-to-RAS affine (millimetres). The affine comes
from the model card through :func:`card_geometry`, the one place that turns a card into an affine:

* ``affine`` (4x4, voxel-to-RAS) if the card has one;
* otherwise ``spacing_mm`` (3 values), ``direction`` (3x3, RAS; ``direction[r][c]`` is the R/A/S component
  ``r`` of voxel axis ``c``, i.e. the normalised columns of the affine) and ``origin_mm`` (RAS position of the
  centre of voxel (0, 0, 0));
* these keys are read from the card itself or from a nested ``"geometry"`` object (top-level values win);
* a missing or null ``direction`` means "unknown": the voxel axes i, j, k are then laid along R, A, S;
  a missing ``origin_mm`` means "unknown": the volume is then centred on the RAS origin; a missing
  ``spacing_mm`` means 1 mm. Whenever something is unknown, :attr:`Geometry.known` is False and
  :attr:`Geometry.notes` says what was assumed;
* with a ``reference_affine`` (the affine of a training-set volume) and a card that states
  ``source_voxel_of_output_voxel`` (``scale``, ``offset``: output voxel p is source voxel ``scale * p +
  offset``), the output is placed in that volume's frame: ``reference_affine @ [diag(scale) | offset]``.

NRRD files (through SimpleITK) are in LPS, NIfTI in RAS; :func:`ras_to_lps` does the one conversion
(x and y change sign, in the direction and in the origin).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, NonFiniteError

FORMATS = ("nii.gz", "nii", "nrrd")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where an output grid lies: voxel-to-RAS affine, whether the card states it, and what was assumed."""

    affine: np.ndarray
    known: bool
    notes: str

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def _vector(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, float(arr))
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ConfigError(f"model card {name} must be 3 finite numbers, got {value!r}; fix the model card.")
    return arr


def card_geometry(card: dict[str, Any], shape: Sequence[int], reference_affine: np.ndarray | None = None) -> Geometry:
    """The voxel-to-RAS affine of an output of ``shape`` (i, j, k) from a model card (see the module doc)."""
    shape = np.asarray(shape, dtype=np.float64)
    nested = card.get("geometry") if isinstance(card.get("geometry"), dict) else {}
    keys = ("affine", "spacing_mm", "direction", "origin_mm", "source_voxel_of_output_voxel")
    geo = {**nested, **{k: card[k] for k in keys if card.get(k) is not None}}
    declared_unknown = nested.get("known") is False and not any(card.get(k) is not None for k in keys[:1] + keys[2:4])

    if reference_affine is not None:
        mapping = geo.get("source_voxel_of_output_voxel")
        if not isinstance(mapping, dict) or "scale" not in mapping or "offset" not in mapping:
            raise ConfigError(
                "a reference affine was given but the model card does not say which source voxel each output "
                "voxel comes from (source_voxel_of_output_voxel with scale and offset); generate without it."
            )
        ref = np.asarray(reference_affine, dtype=np.float64)
        if ref.shape != (4, 4):
            raise ConfigError(f"the reference affine must be 4x4, got shape {ref.shape}.")
        index_map = np.eye(4)
        index_map[:3, :3] = np.diag(_vector(mapping["scale"], "source_voxel_of_output_voxel.scale"))
        index_map[:3, 3] = _vector(mapping["offset"], "source_voxel_of_output_voxel.offset")
        return Geometry(ref @ index_map, True, "placed in the frame of the given reference volume")

    if geo.get("affine") is not None:
        affine = np.asarray(geo["affine"], dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ConfigError(f"model card affine must be an invertible 4x4 matrix, got {geo['affine']!r}.")
        return Geometry(affine, not declared_unknown, "affine from the model card")

    notes = []
    if geo.get("spacing_mm") is not None:
        spacing = _vector(geo["spacing_mm"], "spacing_mm")
        if np.any(spacing <= 0):
            raise ConfigError(f"model card spacing_mm must be positive, got {geo['spacing_mm']!r}.")
    else:
        spacing = np.ones(3)
        notes.append("spacing not stated: 1 mm assumed")
    if geo.get("direction") is not None:
        direction = np.asarray(geo["direction"], dtype=np.float64)
        if direction.shape != (3, 3) or abs(np.linalg.det(direction)) < 1e-6:
            raise ConfigError(f"model card direction must be an invertible 3x3 matrix, got {geo['direction']!r}.")
        direction = direction / np.linalg.norm(direction, axis=0)
    else:
        direction = np.eye(3)
        notes.append("orientation unknown: axes i, j, k drawn along R, A, S")
    linear = direction * spacing
    if geo.get("origin_mm") is not None:
        origin = _vector(geo["origin_mm"], "origin_mm")
    else:
        origin = -linear @ ((shape - 1) / 2)
        notes.append("position unknown: volume centred on the origin")
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    known = not notes and not declared_unknown
    return Geometry(affine, known, "; ".join(notes) if notes else "spacing, orientation and origin from the model card")


# ------------------------------------------------------------------------------------------------ conversions


def decompose_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing [3], direction [3, 3] with unit columns, origin [3]) of a voxel-to-world affine."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return spacing, affine[:3, :3] / spacing, affine[:3, 3].copy()


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A voxel-to-RAS affine as voxel-to-LPS (the same matrix with the x and y rows negated); its own inverse."""
    out = np.asarray(affine, dtype=np.float64).copy()
    out[:3] = _RAS_TO_LPS @ out[:3]
    return out


# ------------------------------------------------------------------------------------------------------ files


def _optional(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"writing this file format needs the {module} package: install it with `pip install 'wdmcore[io]'`."
        ) from None


def split_format(path: str | os.PathLike) -> tuple[Path, str]:
    """(path, format) where format is "nii.gz", "nii" or "nrrd", read from the file name."""
    path = Path(path)
    name = path.name.lower()
    for fmt in FORMATS:
        if name.endswith("." + fmt):
            return path, fmt
    raise ConfigError(f"cannot tell the file format of {path.name!r}: end the name with .nii.gz, .nii or .nrrd.")


def sidecar_path(path: str | os.PathLike) -> Path:
    """``sample.nii.gz`` -> ``sample.json`` (next to the volume)."""
    path, fmt = split_format(path)
    return path.with_name(path.name[: -len(fmt) - 1] + ".json")


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, dtype: str = "float32", description: str = ""
) -> Path:
    """Write an (i, j, k) array with its voxel-to-RAS affine (qform and sform, code 1 = scanner).

    ``dtype="int16"`` stores 16-bit integers with the NIfTI slope/intercept chosen by nibabel (readers that
    apply the scaling get the values back to within (max - min) / 65535). Without nibabel (3D Slicer's Python
    has SimpleITK but not nibabel) float32 files are written through SimpleITK with the same geometry."""
    if dtype not in ("float32", "int16"):
        raise ConfigError(f"unsupported output dtype {dtype!r}; use 'float32' or 'int16'.")
    try:
        import nibabel as nib
    except ImportError:
        if dtype != "float32":
            raise ConfigError("int16 NIfTI output needs nibabel: `pip install 'wdmcore[io]'`.") from None
        return _write_with_simpleitk(array, affine, path, {"descrip": description[:79]} if description else None)
    data = np.asarray(array, dtype=np.float32)
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    if dtype == "int16":
        image.set_data_dtype(np.int16)
    path = Path(path)
    nib.save(image, str(path))
    return path


def _write_with_simpleitk(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, metadata: dict[str, str] | None
) -> Path:
    """Write an (i, j, k) float32 array through SimpleITK (LPS internally; NIfTI files come out in RAS)."""
    sitk = _optional("SimpleITK")
    data = np.asarray(array, dtype=np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # SimpleITK arrays are (k, j, i)
    spacing, direction, origin = decompose_affine(ras_to_lps(affine))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.ravel()])  # row-major; column c = direction of axis c
    image.SetOrigin([float(v) for v in origin])
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    path = Path(path)
    sitk.WriteImage(image, str(path), True)
    return path


def save_nrrd(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write an (i, j, k) float32 array as compressed NRRD (LPS space) through SimpleITK."""
    return _write_with_simpleitk(array, affine, path, metadata)


def save_volume(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    meta: dict[str, Any] | None = None,
    *,
    dtype: str = "float32",
    sidecar: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write a volume as NIfTI or NRRD (from the file name) and, unless ``sidecar`` is False, a JSON file
    with ``meta``, the affine and the spacing next to it. Returns the volume's path.

    Both files are written under temporary names in the same folder and renamed into place only when complete,
    so a full disk, an error or a signal never leaves a truncated file under the final name. With
    ``overwrite=False`` an existing volume or sidecar is an error (:class:`DataError` naming it)."""
    path, fmt = split_format(path)
    meta = dict(meta or {})
    if not np.all(np.isfinite(array)):
        raise NonFiniteError(
            f"refusing to write {path}: the volume holds NaN or infinite values (stored as int16 they would "
            "silently become zeros). The model or its settings produced them; nothing was written."
        )
    if fmt == "nrrd" and dtype != "float32":
        raise ConfigError("NRRD output is written as float32 only; use --format nii.gz for int16 files.")
    json_path = sidecar_path(path) if sidecar else None
    if not overwrite:
        for existing in (path, json_path):
            if existing is not None and (existing.exists() or existing.is_symlink()):
                raise DataError(
                    f"{existing} already exists and was left untouched; choose another output folder or prefix, "
                    "or pass --overwrite (overwrite=True) to replace it."
                )
    ensure_output_folder(path.parent)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    tmp_volume = path.with_name(f".{path.name[: -len(fmt) - 1]}.part{tag}.{fmt}")
    tmp_json = path.with_name(f".{path.name[: -len(fmt) - 1]}.part{tag}.json")
    try:
        if fmt == "nrrd":
            keys = ("model", "sampler", "steps", "seed", "geometry_known", "wdmcore_version")
            save_nrrd(array, affine, tmp_volume, metadata={f"wdm_{k}": str(meta[k]) for k in keys if k in meta})
        else:
            known = "geometry known" if meta.get("geometry_known", True) else "geometry unknown"
            description = f"wdm {meta.get('model', '')} seed {meta.get('seed', '')} {known}"
            save_nifti(array, affine, tmp_volume, dtype=dtype, description=description)
        if json_path is not None:
            spacing, _, _ = decompose_affine(affine)
            record = {
                **meta,
                "file": path.name,
                "format": fmt,
                "dtype": dtype,
                "shape": list(np.shape(array)),
                "array_axes": "i, j, k (NIfTI index order)",
                "affine_ras": np.asarray(affine, dtype=np.float64).tolist(),
                "spacing_mm": spacing.tolist(),
            }
            text = json.dumps(record, indent=2, default=_json_default) + "\n"
            with open(tmp_json, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_volume, path)
        if json_path is not None:
            os.replace(tmp_json, json_path)
    except (OSError, RuntimeError) as exc:  # SimpleITK reports write failures as RuntimeError
        raise DataError(f"cannot write {path}: {describe_os_error(exc)}. Nothing was left under that name.") from exc
    finally:
        tmp_volume.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    return path


def ensure_output_folder(folder: str | os.PathLike, *, create: bool = True) -> Path:
    """Check that files can be created in ``folder`` (creating it unless ``create`` is False); DataError if not.

    Called before any long computation, so that an unusable output location is reported at once. Without
    ``create`` a missing folder is fine when its nearest existing parent is a writable folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the output location {folder} is a file, not a folder; choose a folder.")
    if not create and not folder.exists():
        parent = folder.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise DataError(f"the output folder {folder} cannot be created: {parent} is a file. Choose a folder.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DataError(
                f"the output folder {folder} cannot be created: {parent} is not writable. Choose another folder."
            )
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".wdm-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(
            f"cannot write into the output folder {folder}: {describe_os_error(exc)}. Choose another folder."
        ) from exc
    return folder


def describe_os_error(exc: BaseException, folder: str | os.PathLike | None = None) -> str:
    """A short reason for a failed write, naming the common causes plainly. Libraries that wrap the OSError
    (torch.save raises RuntimeError) are looked through; with ``folder``, an almost full disk is named too."""
    if disk_is_full(exc, folder):
        return "the disk is full (no space left on the device); free some space or write elsewhere"
    if _errno(exc) in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the folder is read-only or belongs to someone else)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # in words: "[Errno 20] ..." means nothing to a user
    return str(exc) or type(exc).__name__


def _errno(exc: BaseException) -> int | None:
    errno_ = getattr(exc, "errno", None)
    cause = exc.__cause__ or exc.__context__
    if errno_ is None and isinstance(cause, OSError):
        errno_ = cause.errno
    return errno_


def disk_is_full(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether a write failed because the disk or the quota is full. Some writers lose the errno (numpy's
    "4096 requested and 992 written"): with ``folder``, an almost full disk there counts as the cause."""
    errno_ = _errno(exc)
    text = str(exc)
    full = errno_ in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota" in text.lower()
    if not full and errno_ is None and folder is not None:
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(folder).free < (16 << 20)
    return full


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
