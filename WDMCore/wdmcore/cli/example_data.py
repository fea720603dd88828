"""`wdm example-data DIR`: example inputs for every task (synthesis, inpainting, variations) and a README.txt
with the commands that run the bundled demo models on them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# The --help epilogue of the task commands: an example on the files `wdm example-data` writes.
EXAMPLE_EPILOG = "example, on the files `wdm example-data DIR` writes (run inside DIR):\n  {}"


def example_epilog(task: str) -> str:
    """The --help epilogue of a task command: its example commands on the files `wdm example-data` writes."""
    from ..tasks.examples import EXAMPLE_COMMANDS

    return EXAMPLE_EPILOG.format("\n  ".join(EXAMPLE_COMMANDS[task]))


class ExampleFormatter(argparse.HelpFormatter):
    """Wraps the description as usual but keeps an example epilogue's lines as written (commands to paste)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "example-data",
        help="write example inputs for synthesize, inpaint and vary (phantoms for the bundled demo models)",
        description=(
            "Write phantom volumes (NIfTI, with their geometry) for every task into DIR: paired contrasts for "
            "synthesis, an image with a lesion mask for inpainting, a head to vary; and DIR/README.txt with the "
            "commands that run the bundled demo models on them."
        ),
        epilog="example:\n  wdm example-data wdm_examples && cd wdm_examples && cat README.txt",
        formatter_class=ExampleFormatter,
    )
    p.add_argument("folder", type=Path, metavar="DIR", help="the folder to write into (created if needed)")
    p.add_argument("--overwrite", action="store_true", help="replace example files that already exist in DIR")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..tasks.examples import write_example_data

    for path in write_example_data(args.folder, overwrite=args.overwrite):
        print(path)
    print(f"the commands to run on them: {args.folder / 'README.txt'}")
    return 0
