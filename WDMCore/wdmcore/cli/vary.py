"""`wdm vary`: an SDEdit variation of a volume, e.g. ``wdm vary --model M --image X.nii.gz --strength 0.3 --out Z``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..limits import option_type
from ..vocabulary import DEFAULT_SAMPLER, DEFAULT_STEPS, QUALITIES, SAMPLER_NAMES
from .example_data import ExampleFormatter, example_epilog
from .task_options import add_common_options, run_task


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "vary",
        help="make a variation of a volume with an unconditional model (SDEdit)",
        description=(
            "Diffuse the volume part of the way (--strength: 0 keeps it, 1 forgets it) and denoise it again with "
            "an unconditional model at its own voxel spacing; written in the input's grid."
        ),
        epilog=example_epilog("vary"),
        formatter_class=ExampleFormatter,
    )
    add_common_options(p, model_help="an unconditional model: catalogue name or checkpoint file")
    p.add_argument("--image", type=Path, required=True, help="the volume to vary")
    p.add_argument("--strength", type=option_type("strength"), default=0.5, help="how far to diffuse, in (0, 1] [0.5]")
    p.add_argument(
        "--sampler", choices=SAMPLER_NAMES, default=None, help=f"[{DEFAULT_SAMPLER}; a distilled student: its card's]"
    )
    p.add_argument(
        "--steps",
        type=option_type("steps"),
        default=None,
        help=f"network calls over the whole schedule, of which those below --strength run "
        f"[{DEFAULT_STEPS[DEFAULT_SAMPLER]} for {DEFAULT_SAMPLER}; the sampler's default otherwise]",
    )
    p.add_argument(
        "--quality",
        choices=QUALITIES,
        default="default",
        help="how many calls when --steps is not given: default, or preview (UniPC with fewer calls, "
        "for a quick look) [default]",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return run_task(
        args,
        "vary",
        {"--image": args.image},
        args.image,
        strength=args.strength,
        sampler=args.sampler,
        steps=args.steps,
        quality=args.quality,
    )
