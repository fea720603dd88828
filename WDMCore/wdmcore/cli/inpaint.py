"""`wdm inpaint`: fill a masked region, e.g. ``wdm inpaint --model M --image X.nii.gz --mask Y.nii.gz --out Z``.

An inpainting model (fastWDM3D) runs as released; an unconditional model runs RePaint in wavelet space.
Outside the mask the output equals the input exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..limits import option_type
from .example_data import ExampleFormatter, example_epilog
from .task_options import add_common_options, run_task


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "inpaint",
        help="fill a masked region of a volume (fastWDM3D, or RePaint with any model)",
        description=(
            "Fill the region marked by the mask (non-zero voxels) of the image. The result is written in the "
            "image's grid; outside the mask it equals the image exactly."
        ),
        epilog=example_epilog("inpaint"),
        formatter_class=ExampleFormatter,
    )
    add_common_options(p, model_help="an inpainting or unconditional model: catalogue name or checkpoint file")
    p.add_argument("--image", type=Path, required=True, help="the volume to fill")
    p.add_argument("--mask", type=Path, required=True, help="the region to fill (non-zero inside), same grid")
    p.add_argument(
        "--steps",
        type=option_type("steps"),
        default=None,
        help="[inpainting model: its own steps (fastWDM3D: 2); unconditional model: 50 respaced ancestral steps]",
    )
    p.add_argument(
        "--resample",
        type=option_type("resample"),
        default=5,
        help="RePaint repetitions per step (unconditional models) [5]",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return run_task(
        args,
        "inpaint",
        {"--image": args.image, "--mask": args.mask},
        args.image,
        args.mask,
        steps=args.steps,
        resample=args.resample,
    )
