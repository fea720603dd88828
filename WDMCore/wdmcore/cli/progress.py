"""The ``--progress`` option of the hub commands and how they report a failure."""

from __future__ import annotations

import argparse
import sys

from ..errors import WDMError
from ..events import ProgressCallback, emit


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("bar", "jsonl", "none"),
        default=argparse.SUPPRESS,  # keep a value the main parser may have set
        help="progress display: a bar (default), JSON lines on stdout, or nothing",
    )


def progress_mode(args: argparse.Namespace) -> str:
    return getattr(args, "progress", None) or "bar"


def fail(exc: WDMError, callback: ProgressCallback | None) -> int:
    if callback is not None:
        emit(callback, "error", kind=type(exc).__name__, message=str(exc))
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 1
