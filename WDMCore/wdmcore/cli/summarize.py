"""`wdm summarize`: what training will find in a dataset folder (layout, sizes, spacings, bad files)."""

from __future__ import annotations

import json

from ..vocabulary import DATA_LAYOUTS
from .progress import add_progress_option, progress_display

COMMAND_FORMATS = DATA_LAYOUTS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "summarize",
        help="what a dataset folder holds: layout, cases, sizes, spacings, intensities, unusable files",
        description="Summarize a dataset as `wdm train --data PATH` would find it: the detected layout, the number "
        "of usable volumes, their sizes, voxel spacings and intensity ranges, each file that cannot be used "
        "with the reason, and the files in formats wdm does not read (e.g. .mgz) with what to do about them.",
    )
    parser.add_argument("data", help="dataset folder, list file or volume file")
    parser.add_argument("--format", choices=COMMAND_FORMATS, default="auto", help="dataset layout (default auto)")
    parser.add_argument("--sequence", default="t1n", help="BraTS sequence (default t1n)")
    parser.add_argument(
        "--headers-only", action="store_true", help="read only the file headers (fast; no intensity ranges)"
    )
    add_progress_option(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    parser.set_defaults(handler=run_command)


def run_command(args) -> int:
    from ..data.summary import summarize_path

    progress, close = progress_display(args.progress)
    try:
        layout, summary = summarize_path(
            args.data, args.format, args.sequence, read_voxels=not args.headers_only, progress=progress
        )
    finally:
        close()
    if args.progress == "jsonl":
        progress({"event": "result", "format": layout, "summary": summary.to_dict(), "text": summary.to_text()})
    elif args.json:
        print(json.dumps({"format": layout, **summary.to_dict()}, indent=2))
    else:
        print(f"layout: {layout}")
        print(summary.to_text())
    return 0
