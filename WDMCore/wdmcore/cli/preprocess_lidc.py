"""`wdm preprocess-lidc`: LIDC-IDRI DICOM series to 1 mm NIfTI volumes, as the released code prepares them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..limits import option_type
from ..vocabulary import EXIT_OK, EXIT_USAGE
from .progress import add_progress_option, progress_display, report_error


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
    p.add_argument("--crop-size", type=option_type("image_size"), default=None, help=argparse.SUPPRESS)
    add_progress_option(p)
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; prints the report. Exit status 0 when at least one series was written (or existed;
    skipped series are listed in the report and counted in a warning), 2 when none could be used."""
    from ..data.lidc_dicom import CROP_SIZE, preprocess_lidc_dicom

    jsonl = getattr(args, "progress", "bar") == "jsonl"
    callback, close = progress_display(getattr(args, "progress", "bar"))
    try:
        report = preprocess_lidc_dicom(  # a DataError is reported by the `wdm` command (exit status 2)
            args.input_dir,
            args.output_dir,
            pad=args.pad,
            overwrite=args.overwrite,
            crop_size=args.crop_size or CROP_SIZE,
            progress=callback,
        )
    finally:
        close()
    print(report.to_text(), file=sys.stderr if jsonl else sys.stdout)  # stdout carries only events with jsonl
    if args.report is not None:
        report.save_json(args.report)
    if not report.done:
        report_error(jsonl, "DataError", "no series could be used; the report above says why for each")
        return EXIT_USAGE
    if report.skipped:
        print(f"wdm: warning: {len(report.skipped)} series skipped (see the report above)", file=sys.stderr)
    return EXIT_OK
