"""The `wdm` command. Each sub-command lives in its own module of this package, which provides
``add_parser(subparsers)`` (registering ``handler=run`` as a default) and ``run(args) -> int``.

Building the parser imports no PyTorch or numpy (``add_parser`` uses only :mod:`wdmcore.vocabulary`; heavy
modules are imported inside ``run``), so that ``wdm --help`` and ``wdm --version`` answer at once.
Exit status: :mod:`wdmcore.vocabulary`'s ``EXIT_*`` codes, listed in docs/cli.md."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from .. import hugepages
from ..errors import WDMError
from ..interrupts import Terminated
from ..version import __version__
from ..vocabulary import EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY, EXIT_TERMINATED, EXIT_UNEXPECTED, EXIT_USAGE
from .progress import report_error

# Modules that contribute sub-commands, in the order `wdm --help` lists them.
COMMAND_MODULES = (
    "wdmcore.cli.sample",
    "wdmcore.cli.synthesize",
    "wdmcore.cli.inpaint",
    "wdmcore.cli.vary",
    "wdmcore.cli.example_data",
    "wdmcore.cli.train",
    "wdmcore.cli.distill",
    "wdmcore.cli.evaluate",
    "wdmcore.cli.models",
    "wdmcore.cli.download",
    "wdmcore.cli.import_model",
    "wdmcore.cli.inspect",
    "wdmcore.cli.preprocess_lidc",
    "wdmcore.cli.summarize",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wdm",
        description="3-D wavelet diffusion models for medical volumes: generate, train, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"wdm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    hugepages.enable_for_this_process()  # before any large tensor exists
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    jsonl = getattr(args, "progress", None) == "jsonl"
    try:
        return int(args.handler(args) or 0)
    except WDMError as exc:
        report_error(jsonl, type(exc).__name__, str(exc))
        return EXIT_OUT_OF_MEMORY if isinstance(exc, MemoryError) else EXIT_USAGE
    except KeyboardInterrupt:
        report_error(jsonl, "Interrupted", "stopped by the user")
        return EXIT_INTERRUPTED
    except Terminated:
        report_error(jsonl, "Terminated", "stopped by SIGTERM; finished files were kept, temporary files removed")
        return EXIT_TERMINATED
    except MemoryError:
        report_error(jsonl, "OutOfMemory", OUT_OF_MEMORY)
        return EXIT_OUT_OF_MEMORY
    except Exception as exc:
        # PyTorch's device out-of-memory errors are RuntimeErrors (torch.OutOfMemoryError), not MemoryError.
        if type(exc).__name__ == "OutOfMemoryError":
            report_error(jsonl, "OutOfMemory", f"{OUT_OF_MEMORY} ({_first_line(exc)})")
            return EXIT_OUT_OF_MEMORY
        if not jsonl:
            raise  # a bug: the traceback is the most useful report on a terminal
        # A program reading the events (the Slicer modules) gets one structured error, the traceback as detail.
        detail = traceback.format_exc()
        print(detail, file=sys.stderr, flush=True)
        report_error(jsonl, type(exc).__name__, f"unexpected error: {_first_line(exc)}", detail=detail)
        return EXIT_UNEXPECTED


OUT_OF_MEMORY = (
    "out of memory: use a smaller batch size or image size, bf16 precision or a smaller model "
    "(when training, --activation-checkpointing also saves memory)"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
