"""LIDC-IDRI DICOM series to the 1 mm, 256^3, [0, 1] NIfTI volumes the released LIDC models were trained on.

The voxel values follow the released script: resample to 1 mm with ``scipy.ndimage.zoom`` (cubic spline,
order 3, mode "nearest", factors = voxel size / 1 mm), centre crop to 256^3 (start (n - 256) // 2), values
below -1000 HU set to -1000, upper clip at the 0.999 quantile, min-max to [0, 1]. Unlike the released script
this never deletes or modifies its input, reports every series it could not use (with the reason), offers
padding (``pad=True``, with -1000 HU) for scans smaller than 256 mm along an axis, keeps every series of a
patient apart (``<output>/<PatientID>/<SeriesInstanceUID>/processed.nii.gz``) and writes the real affine of
the series (its orientation, the resampled voxel size and the crop/pad offset) instead of an identity.

The series is read with SimpleITK (slices sorted by position, rescale slope/intercept applied); its array is
kept in DICOM order (i = column index, along a row; j = row index; k = slice, by position) rather than
the axis order dicom2nifti would choose.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..events import ProgressCallback, ProgressTracker, emit
from ..volumes.reading import sitk_affine
from .preprocess import crop_or_pad, scaling

log = logging.getLogger(__name__)

CROP_SIZE = 256
HU_FLOOR = -1000.0
UPPER_QUANTILE = 0.999
OUTPUT_NAME = "processed.nii.gz"


@dataclass
class SeriesResult:
    """What happened to one DICOM series: status "done", "exists" or "skipped"."""

    series_uid: str
    patient_id: str
    folder: str
    status: str
    reason: str = ""
    output: str | None = None
    shape_1mm: tuple[int, int, int] | None = None


@dataclass
class LidcReport:
    """The outcome of :func:`preprocess_lidc_dicom` for every series found."""

    results: list[SeriesResult] = field(default_factory=list)

    @property
    def done(self) -> list[SeriesResult]:
        return [r for r in self.results if r.status in ("done", "exists")]

    @property
    def skipped(self) -> list[SeriesResult]:
        return [r for r in self.results if r.status == "skipped"]

    def to_dict(self) -> dict:
        return {
            "done": len(self.done),
            "skipped": len(self.skipped),
            "results": [asdict(r) for r in self.results],
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def to_text(self) -> str:
        lines = [f"{len(self.done)} series written, {len(self.skipped)} skipped"]
        for r in self.results:
            what = r.output if r.status != "skipped" else r.reason
            lines.append(f"  [{r.status}] {r.patient_id} {r.series_uid} ({r.folder}): {what}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()) or "unknown"


def find_series(input_dir: str | Path) -> list[tuple[Path, str, list[str]]]:
    """All DICOM series below ``input_dir``: (folder, SeriesInstanceUID, sorted file names)."""
    import SimpleITK as sitk

    input_dir = Path(input_dir)
    found = []
    # ITK warns on stderr about every folder without a series ("No Series were found"); folders without DICOM
    # files are normal here (patient and study folders), and an input without any series gets one clear error.
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for folder, dirs, files_here in os.walk(input_dir):
            dirs.sort()
            if not files_here:
                continue
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ():
                files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
                if files:
                    found.append((Path(folder), uid, files))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    return found


def _tag(reader, index: int, key: str, default: str = "") -> str:
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else default


def resample_to_1mm(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.ndimage.zoom`` (order 3, mode "nearest") with factors = voxel size / 1 mm, as released.

    zoom maps the first and last voxel centres onto each other, so output voxel q is input index
    q * (n - 1) / (n' - 1): the exact new voxel size is spacing * (n - 1) / (n' - 1), 1 mm up to rounding
    of the shape; the affine records it exactly.
    """
    from scipy import ndimage

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    out = ndimage.zoom(array, spacing / 1.0, order=3, mode="nearest")
    n_in, n_out = np.asarray(array.shape, float), np.asarray(out.shape, float)
    step = np.where(n_out > 1, (n_in - 1) / np.maximum(n_out - 1, 1), 1.0)
    return out, affine @ scaling(step, 0.0)


def process_series_array(
    hu: np.ndarray, affine: np.ndarray, *, crop_size: int = CROP_SIZE, pad: bool = False, name: str = "series"
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The released LIDC intensity and geometry steps on an (i, j, k) HU array with its affine.

    Returns (volume in [0, 1] float32 of shape crop_size^3, its affine, the 1 mm shape before cropping).
    Raises :class:`DataError` when the scan is smaller than ``crop_size`` mm along an axis and ``pad`` is off.
    """
    resampled, aff = resample_to_1mm(np.asarray(hu, dtype=np.float64), affine)
    shape_1mm = tuple(int(n) for n in resampled.shape)
    small = [f"axis {a}: {n} mm" for a, n in enumerate(shape_1mm) if n < crop_size]
    if small and not pad:
        raise DataError(
            f"{name}: the scan is smaller than {crop_size} mm ({', '.join(small)}); "
            "use pad=True (--pad) to pad it with air (-1000 HU)"
        )
    start = np.asarray([(n - crop_size) // 2 for n in shape_1mm])
    if small:
        # Pad with air; crop_or_pad fills with zeros, so shift the values to put air at zero meanwhile.
        shifted, aff = crop_or_pad(resampled - HU_FLOOR, aff, crop_size, start)
        cropped = shifted.astype(np.float64) + HU_FLOOR
    else:
        sl = tuple(slice(s, s + crop_size) for s in start)
        cropped = resampled[sl]
        aff = aff @ np.block([[np.eye(3), start[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
    cropped = np.array(cropped, dtype=np.float64)
    cropped[cropped < HU_FLOOR] = HU_FLOOR
    upper = np.quantile(cropped, UPPER_QUANTILE)
    cropped = np.clip(cropped, None, upper)
    lo, hi = cropped.min(), cropped.max()
    if not hi > lo:
        raise DataError(f"{name}: the scan is constant after clipping; it carries no image")
    out = ((cropped - lo) / (hi - lo)).astype(np.float32)
    return out, aff, shape_1mm


def preprocess_lidc_dicom(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    pad: bool = False,
    overwrite: bool = False,
    crop_size: int = CROP_SIZE,
    progress: ProgressCallback | None = None,
) -> LidcReport:
    """Write each CT series in ``input_dir`` as ``<output_dir>/<PatientID>/<SeriesUID>/processed.nii.gz``

    Inputs are only read. Series that are not CT, have fewer than two slices, cannot be read, or are smaller
    than ``crop_size`` mm along an axis (unless ``pad``) are skipped and listed in the report with the reason.
    Existing outputs are kept (status "exists") unless ``overwrite``. ``crop_size`` is 256 for the released
    models; smaller values are for tests and quick looks. Raises :class:`DataError` if ``input_dir`` holds no
    DICOM series at all.
    """
    import nibabel as nib
    import SimpleITK as sitk

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: not a folder; give the folder that holds the LIDC-IDRI DICOM files")
    series = find_series(input_dir)
    if not series:
        raise DataError(f"{input_dir}: no DICOM series found (searched all subfolders); check the path")
    report = LidcReport()
    tracker = ProgressTracker(progress, "preprocess-lidc", total=len(series))
    for folder, uid, files in series:
        rel = str(folder.relative_to(input_dir)) if folder != input_dir else "."
        result = SeriesResult(series_uid=uid, patient_id="", folder=rel, status="skipped")
        try:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            reader.LoadPrivateTagsOn()
            image = reader.Execute()
            result.patient_id = _tag(reader, 0, "0010|0020") or folder.parts[-1]
            modality = _tag(reader, 0, "0008|0060").upper()
            if modality and modality != "CT":
                raise DataError(f"modality is {modality}, not CT")
            if image.GetDimension() != 3 or image.GetSize()[2] < 2 or len(files) < 2:
                raise DataError("single image, not a 3-D series")
            if image.GetNumberOfComponentsPerPixel() != 1:
                raise DataError("multi-component pixels; expected grey-value CT")
            out_path = output_dir / _safe_name(result.patient_id) / _safe_name(uid) / OUTPUT_NAME
            result.output = str(out_path)
            if out_path.exists() and not overwrite:
                result.status = "exists"
                result.reason = "output already exists (use overwrite=True / --overwrite to redo it)"
            else:
                hu = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
                volume, affine, shape_1mm = process_series_array(
                    hu, sitk_affine(image), crop_size=crop_size, pad=pad, name=f"series {uid}"
                )
                result.shape_1mm = shape_1mm
                out_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = out_path.with_name(f".{OUTPUT_NAME}.tmp-{os.getpid()}.nii.gz")
                nib.save(nib.Nifti1Image(volume, affine), str(tmp))
                os.replace(tmp, out_path)
                result.status = "done"
                emit(progress, "result", path=str(out_path))
        except DataError as exc:
            result.status, result.reason = "skipped", str(exc)
        except Exception as exc:  # unreadable or inconsistent DICOM: report it, go on with the next series
            result.status, result.reason = "skipped", f"cannot read the series ({type(exc).__name__}: {exc})"
        if result.status == "skipped":
            log.warning("skipped series %s in %s: %s", uid, rel, result.reason)
        report.results.append(result)
        tracker.advance(series=uid, status=result.status)
    return report


# ------------------------------------------------------------------------------------- CLI sub-command
