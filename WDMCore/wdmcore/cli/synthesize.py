"""`wdm synthesize`: a missing contrast from the given ones, e.g.
``wdm synthesize --model cwdm_t1n --t1c B.nii.gz --t2w C.nii.gz --t2f D.nii.gz --out t1n.nii.gz``.

The input options are the input names of the models' cards (the BraTS sequences t1n, t1c, t2w, t2f and any name
a catalogue card declares); ``--input NAME=PATH`` gives an input of any other name.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..limits import option_type
from ..vocabulary import (
    BRATS_SEQUENCES,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_SYNTHESIS_POSTPROCESS,
    QUALITIES,
    SAMPLER_NAMES,
    SYNTHESIS_POSTPROCESSING,
)
from .example_data import ExampleFormatter, example_epilog
from .task_options import add_common_options, run_task


def _catalogue_input_names() -> list[str]:
    try:
        from ..hub.catalogue import load_catalogue

        names = []
        for entry in load_catalogue().models:
            if entry.card.get("task") != "synthesize":
                continue
            for item in entry.card.get("inputs") or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    names.append(item["name"])
        return names
    except Exception:  # the options must exist even when the catalogue cannot be read
        return []


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synthesize",
        help="synthesise a missing contrast from the given ones (cWDM)",
        description=(
            "Synthesise the contrast a synthesis model produces from the inputs its card names (see `wdm models` "
            "and `wdm inspect`). All inputs must share one grid; the result is written in that grid."
        ),
        epilog=example_epilog("synthesize"),
        formatter_class=ExampleFormatter,
    )
    add_common_options(p, model_help="a synthesis model: catalogue name or checkpoint file")
    p.add_argument(
        "--sampler", choices=SAMPLER_NAMES, default=None, help=f"[{DEFAULT_SAMPLER}; a distilled student: its card's]"
    )
    p.add_argument(
        "--steps",
        type=option_type("steps"),
        default=None,
        help=f"network calls [{DEFAULT_STEPS[DEFAULT_SAMPLER]} for {DEFAULT_SAMPLER}; the sampler's default otherwise; "
        "--sampler ancestral --steps 1000 is the released sampler]",
    )
    p.add_argument(
        "--quality",
        choices=QUALITIES,
        default="default",
        help="how many calls when --steps is not given: default, or preview (UniPC with fewer calls, "
        "for a quick look) [default]",
    )
    p.add_argument(
        "--postprocess",
        choices=SYNTHESIS_POSTPROCESSING,
        default=DEFAULT_SYNTHESIS_POSTPROCESS,
        help="threshold: values <= 0.04 set to 0 (the released sample_auto.py); brain-mask: clamp to [0, 1] and 0 "
        f"where the first input is 0 (the released sample.py); none [{DEFAULT_SYNTHESIS_POSTPROCESS}]",
    )
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH", help="an input of any name")
    names = list(dict.fromkeys([*BRATS_SEQUENCES, *_catalogue_input_names()]))
    for name in names:
        p.add_argument(f"--{name}", dest=f"input_{name}", default=None, metavar="PATH", help=f"input {name!r}")
    p.set_defaults(handler=run, input_names=names)


def gather_inputs(args: argparse.Namespace) -> dict[str, str]:
    inputs = {n: getattr(args, f"input_{n}") for n in args.input_names if getattr(args, f"input_{n}") is not None}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--input {item!r}: write NAME=PATH, e.g. --input t1c=case-t1c.nii.gz.")
        inputs[name] = path
    return inputs


def run(args: argparse.Namespace) -> int:
    inputs = gather_inputs(args)
    if not inputs:
        raise ConfigError("give the model's inputs, e.g. --t1c A.nii.gz --t2w B.nii.gz --t2f C.nii.gz.")
    options = {f"--{name}" if name in args.input_names else f"--input {name}": path for name, path in inputs.items()}
    return run_task(
        args,
        "synthesize",
        options,
        inputs,
        sampler=args.sampler,
        steps=args.steps,
        quality=args.quality,
        postprocess=args.postprocess,
    )
