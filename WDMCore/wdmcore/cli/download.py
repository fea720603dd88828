"""`wdm download`: fetch a released model into the cache and verify its SHA-256."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import WDMError
from ..events import emit, jsonl_writer
from .progress import add_progress_option, fail, progress_mode


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "download",
        help="download a released model into the cache",
        description="Download a model of the catalogue into the cache and verify its SHA-256.",
    )
    p.add_argument("name", help="model name (see `wdm models`)")
    p.add_argument(
        "--force",
        action="store_true",
        help="download again even if cached; a file whose SHA-256 differs from the one recorded before is accepted "
        "with a warning naming both digests (without --force it is refused)",
    )
    p.add_argument("--hub-url", default=None, help="base URL of a mirror of https://huggingface.co")
    add_progress_option(p)
    p.set_defaults(handler=run_download)


def run_download(args: argparse.Namespace) -> int:
    """`wdm download NAME`: fetch into the cache with a progress bar (or JSON lines); print the path."""
    from .. import hub  # pooch and requests: only when the command runs

    mode = progress_mode(args)
    callback = jsonl_writer() if mode == "jsonl" else None
    try:
        path = hub.fetch(
            args.name,
            on_progress=callback,
            progressbar=mode == "bar",
            base_url=getattr(args, "hub_url", None),
            force=getattr(args, "force", False),
        )
    except WDMError as exc:
        return fail(exc, callback)
    if callback is not None:
        emit(callback, "result", model=args.name, path=str(path))
    else:
        print(path)
    return 0
