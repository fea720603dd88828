"""The ``--progress`` option every long command shares, and the one way the `wdm` command reports an error.

``--progress bar`` (default) draws tqdm bars on stderr, ``jsonl`` writes one JSON event per line on stdout
(for programs such as the Slicer modules), ``none`` shows nothing. Errors are printed as ``wdm: error: ...``
on stderr, or as one ``{"event": "error", ...}`` line with ``jsonl``; the exit status is one of
:mod:`wdmcore.vocabulary`'s ``EXIT_*`` codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..errors import WDMError
from ..events import ProgressCallback, emit
from ..vocabulary import EXIT_USAGE, PROGRESS_MODES


def _progress_mode(value: str) -> str:
    if value == "tqdm":  # the name `wdm train` used before all commands shared one vocabulary
        print("wdm: warning: --progress tqdm is deprecated; use --progress bar", file=sys.stderr)
        return "bar"
    if value not in PROGRESS_MODES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(PROGRESS_MODES)})")
    return value


def add_progress_option(parser: argparse.ArgumentParser, default: str | None = "bar") -> None:
    """``--progress bar|jsonl|none``; with ``default=None`` a value set elsewhere is kept."""
    parser.add_argument(
        "--progress",
        type=_progress_mode,
        metavar="{" + ",".join(PROGRESS_MODES) + "}",
        default=argparse.SUPPRESS if default is None else default,
        help="progress display: a bar on stderr, JSON lines on stdout, or nothing [bar]",
    )


def progress_mode(args: argparse.Namespace) -> str:
    return getattr(args, "progress", None) or "bar"


def progress_display(mode: str) -> tuple[ProgressCallback | None, Callable[[], None]]:
    """The progress callback of a ``--progress`` value and the function that ends its display."""
    if mode == "jsonl":
        from ..events import jsonl_writer

        return jsonl_writer(sys.stdout), lambda: None
    if mode == "bar":
        from ..progressbar import ProgressBars

        bars = ProgressBars(sys.stderr)
        return bars, bars.close
    return None, lambda: None


def report_error(jsonl: bool, kind: str, message: str, detail: str = "") -> None:
    """Print an error the one way the command does: a JSON ``error`` event, or ``wdm: error: ...`` on stderr."""
    if jsonl:
        event = {"event": "error", "kind": kind, "message": message}
        if detail:
            event["detail"] = detail
        print(json.dumps(event), flush=True)
    else:
        print(f"wdm: error: {message}", file=sys.stderr, flush=True)


def fail(exc: WDMError, callback: ProgressCallback | None) -> int:
    """Report a wdmcore error of a command (as an event when ``callback`` reports events); the exit status."""
    if callback is not None:
        emit(callback, "error", kind=type(exc).__name__, message=str(exc))
    else:
        report_error(False, type(exc).__name__, str(exc))
    return EXIT_USAGE
