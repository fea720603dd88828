"""`wdm preprocess-lidc`: LIDC-IDRI DICOM series to 1 mm NIfTI volumes, as the released code prepares them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.lidc_dicom import CROP_SIZE, preprocess_lidc_dicom
from ..errors import DataError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``preprocess-lidc`` on an argparse sub-parser collection; returns the new parser."""
    p = subparsers.add_parser(
        "preprocess-lidc",
        help="convert LIDC-IDRI DICOM series to 1 mm, 256^3 [0,1] NIfTI volumes (released preprocessing)",
        description=(
            "Convert every CT series below INPUT_DIR into "
            "OUTPUT_DIR/<PatientID>/<SeriesUID>/processed.nii.gz "
            "as the released LIDC preprocessing does (1 mm cubic resampling, centre crop to 256^3, "
            "HU < -1000 -> -1000, clip at the 0.999 quantile, min-max to [0,1]), with a real affine. "
            "Inputs are never modified; series that cannot be used are reported."
        ),
    )
    p.add_argument("input_dir", type=Path, help="folder with the LIDC-IDRI DICOM files (searched recursively)")
    p.add_argument("output_dir", type=Path, help="folder for the processed volumes")
    p.add_argument("--pad", action="store_true", help="pad scans smaller than 256 mm with air instead of skipping")
    p.add_argument("--overwrite", action="store_true", help="redo series whose output already exists")
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON to this file")
    p.add_argument("--crop-size", type=int, default=CROP_SIZE, help=argparse.SUPPRESS)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; prints the report. Exit status 0 if every series was written (or existed),
    1 if some were skipped, 2 if none could be used."""
    callback = getattr(args, "progress_callback", None)
    try:
        report = preprocess_lidc_dicom(
            args.input_dir,
            args.output_dir,
            pad=args.pad,
            overwrite=args.overwrite,
            crop_size=args.crop_size,
            progress=callback,
        )
    except DataError as exc:
        print(f"error: {exc}")
        return 2
    print(report.to_text())
    if args.report is not None:
        report.save_json(args.report)
    if not report.done:
        return 2
    return 1 if report.skipped else 0
