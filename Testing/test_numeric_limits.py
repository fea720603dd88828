"""One table of allowed numeric values (``wdmcore.limits``): every numeric option of every `wdm` command is
checked against it while the command line is read (exit 2, a message naming the option, its range and the value
given, before any model is loaded); the training configuration checks config-file values against the same rows."""

from __future__ import annotations

import argparse
import math

import pytest

from wdmcore.cli.main import build_parser, main
from wdmcore.errors import ConfigError
from wdmcore.limits import LIMITS, checked, problem
from wdmcore.vocabulary import MAX_SEED

TASK = {
    "vary": ["vary", "--model", "m", "--image", "x.nii.gz", "--out", "y.nii.gz"],
    "synthesize": ["synthesize", "--model", "m", "--t2", "x.nii.gz", "--out", "y.nii.gz"],
    "inpaint": ["inpaint", "--model", "m", "--image", "x.nii.gz", "--mask", "z.nii.gz", "--out", "y.nii.gz"],
    "sample": ["sample", "--model", "m"],
    "train": ["train", "--out", "run"],
    "evaluate": ["evaluate", "--fake", "f", "--real", "r"],
}
SEED_RANGE = f"a whole number from 0 to {MAX_SEED}"
REFUSED = [
    ("vary", "--seed", "-1", SEED_RANGE),
    ("vary", "--seed", str(2**64), SEED_RANGE),
    ("synthesize", "--seed", "-1", SEED_RANGE),
    ("inpaint", "--seed", str(2**64), SEED_RANGE),
    ("sample", "--seed", "-5", SEED_RANGE),
    ("train", "--seed", str(2**64), SEED_RANGE),
    ("evaluate", "--seed", "-1", SEED_RANGE),
    ("train", "--lr", "inf", "a number in (0, 1]"),
    ("train", "--lr", "nan", "a number in (0, 1]"),
    ("train", "--lr", "0", "a number in (0, 1]"),
    ("train", "--grad-clip", "inf", "a finite number above 0"),
    ("train", "--weight-decay", "-1", "a finite number of at least 0"),
    ("train", "--adam-eps", "nan", "a number in (0, 1]"),
    ("train", "--ema-rate", "1", "a number in [0, 1)"),
    ("train", "--image-size", "0", "a whole number from 8 to 1024"),
    ("train", "--batch-size", "0", "a whole number from 1 to 4096"),
    ("train", "--max-steps", "1.5", "a whole number from 1 to 1000000000"),
    ("train", "--spacing", "0", "a number in (0, 100]"),
    ("train", "--spacing", "inf", "a number in (0, 100]"),
    ("train", "--dropout", "2", "a number in [0, 1)"),
    ("train", "--model-channels", "0", "a whole number from 1 to 4096"),
    ("vary", "--strength", "0", "a number in (0, 1]"),
    ("vary", "--strength", "nan", "a number in (0, 1]"),
    ("vary", "--strength", "1.5", "a number in (0, 1]"),
    ("vary", "--steps", "0", "a whole number from 1 to 100000"),
    ("synthesize", "--steps", "many", "a whole number from 1 to 100000"),
    ("inpaint", "--resample", "0", "a whole number from 1 to 1000"),
    ("inpaint", "--preview-every", "-1", "a whole number from 0 to 100000"),
    ("sample", "--num", "1e30", "a whole number from 1 to 100000"),
    ("sample", "--batch-size", "0", "a whole number from 1 to 4096"),
    ("evaluate", "--kid-subsets", "0", "a whole number from 1 to 100000"),
]


@pytest.mark.parametrize(("command", "option", "value", "allowed"), REFUSED, ids=[" ".join(r[:3]) for r in REFUSED])
def test_a_refused_value_exits_2_naming_the_option_its_range_and_the_value(command, option, value, allowed, capsys):
    with pytest.raises(SystemExit) as info:
        main([*TASK[command], option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert f"error: argument {option}: must be {allowed}, got {value!r}" in err, err
    assert "Traceback" not in err


def test_the_adam_betas_are_checked_each():
    with pytest.raises(SystemExit) as info:
        main([*TASK["train"], "--adam-betas", "0.9", "1"])
    assert info.value.code == 2


def test_the_bounds_themselves_are_allowed():
    parser = build_parser()
    args = parser.parse_args([*TASK["vary"], "--seed", str(MAX_SEED), "--strength", "1", "--steps", "1"])
    assert (args.seed, args.strength, args.steps) == (MAX_SEED, 1.0, 1)
    args = parser.parse_args([*TASK["train"], "--lr", "1e-5", "--seed", "0", "--preview-interval", "0"])
    assert (args.train_lr, args.train_seed, args.train_preview_interval) == (1e-5, 0, 0)


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_numeric_option_of_every_command_reads_the_table():
    unchecked = []
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.type in (int, float) and not action.choices:  # a closed list of numbers needs no range
                unchecked.append(f"wdm {name} {action.option_strings[0]}")
            elif getattr(action.type, "__name__", "") in LIMITS:
                assert action.type.__module__ == "wdmcore.limits"
    assert unchecked == []


@pytest.mark.parametrize(
    ("name", "value"),
    [("seed", -1), ("seed", 2**64), ("seed", True), ("seed", 1.5), ("seed", "3"), ("seed", None), ("seed", [1]),
     ("lr", math.inf), ("lr", math.nan), ("strength", 0), ("steps", 0.0), ("preview_every", -1), ("count", {})],
)  # fmt: skip
def test_the_table_refuses_every_kind_of_wrong_value(name, value):
    message = problem(name, value, f"'{name}'")
    assert message is not None and message.startswith(f"'{name}' must be ") and message.endswith(f"got {value!r}")
    with pytest.raises(ConfigError, match=f"'{name}' must be"):
        checked(name, value, f"'{name}'")


def test_whole_numbers_given_as_floats_become_ints():
    assert checked("seed", 3.0) == 3 and isinstance(checked("seed", 3.0), int)
    assert checked("strength", 1) == 1.0 and isinstance(checked("strength", 1), float)
