"""wdm distill: turn a model into a student that samples in a few deterministic (DDIM) calls.

    wdm distill --teacher demo_phantom_64 --format phantoms --calls 4 --out runs/student
    wdm distill --teacher my_model.safetensors --data /data/brats --calls 4 --teacher-calls 16 --out runs/student
    wdm distill --resume --teacher my_model.safetensors --out runs/student

Progressive distillation: each round halves the calls, from --teacher-calls down to --calls (16 -> 8 -> 4: two
rounds of --steps-per-round steps). The data options are those of `wdm train` (the same discovery, preprocessing
and cache); a synthesize teacher takes paired phantoms (--format phantoms). The student is the model file
OUT/student_<N>calls.safetensors, whose card names the sampler and calls it samples with by default. --resume
continues the unfinished round (with the recorded data unless other data options are given); a stop file
OUT/round<r>_<calls>calls/STOP, SIGINT or SIGTERM end a round at a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..limits import option_type
from .progress import add_progress_option, progress_display
from .train import DATA_DEFAULTS, add_data_options

# (option, DistillConfig field, type, help)
_OPTIONS = [
    ("--steps-per-round", "steps_per_round", "max_steps", "optimiser steps of each halving round (default 2000)"),
    ("--lr", "lr", "lr", "AdamW learning rate (default 5e-5)"),
    ("--batch-size", "batch_size", "batch_size", "global batch size (default 4)"),
    ("--ema-rate", "ema_rate", "ema_rate", "EMA rate of the student's saved weights (default 0.999)"),
    ("--seed", "seed", "seed", "seed of the data order, noise levels and noise (default 0)"),
    ("--checkpoint-interval", "checkpoint_interval", "checkpoint_interval", "steps between checkpoints (default 500)"),
    ("--keep-last", "keep_last", "keep_last", "checkpoints kept per round (default 2)"),
    ("--log-interval", "log_interval", "log_interval", "steps between progress events (default 10)"),
    ("--num-workers", "num_workers", "num_workers", "DataLoader worker processes (default 0)"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "distill",
        help="distil a model into a student that samples in a few calls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--teacher", required=True, metavar="MODEL", help="model file or catalogue name to distil")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder: rounds and student")
    parser.add_argument(
        "--calls", type=option_type("calls"), default=4, help="the student's DDIM calls, a power of two [4]"
    )
    parser.add_argument(
        "--teacher-calls",
        type=option_type("calls"),
        default=16,
        help="the teacher's DDIM calls the rounds start from [16]",
    )
    parser.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    parser.add_argument("--name", help="model name written into the student's card")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (under torchrun one GPU per process) [auto]"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bf16 autocasts the student (refused on the CPU; the teacher runs fp32) [auto]",
    )
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard")
    add_progress_option(parser)
    add_data_options(parser)
    hyper = parser.add_argument_group("distillation")
    for option, name, limit, text in _OPTIONS:
        hyper.add_argument(option, dest=f"distill_{name}", type=option_type(limit), metavar=name.upper(), help=text)
    parser.set_defaults(handler=run)
    return parser


def _data_options(args: argparse.Namespace, recorded: dict[str, Any]) -> dict[str, Any]:
    given = {key[5:]: value for key, value in vars(args).items() if key.startswith("data_")}
    data = {**DATA_DEFAULTS, **{k: v for k, v in (recorded or {}).items() if k in DATA_DEFAULTS}, **given}
    if data["path"] is not None:
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def build_distill_dataset(teacher_card: dict[str, Any], data: dict[str, Any], train_config, out_dir: Path, on_event):
    """The data of a distillation: as `wdm train` reads it, or paired phantoms for a synthesize teacher."""
    from ..distill import PairedPhantomDataset
    from .train import build_dataset

    if teacher_card.get("task", "generate") == "synthesize":
        if data["format"] != "phantoms":
            raise ConfigError(
                "a synthesize teacher is distilled on paired data; the command reads paired phantoms "
                "(--format phantoms). For paired volumes of your own use wdmcore.distill.distill() with a dataset "
                "of (image, condition, index) items."
            )
        return PairedPhantomDataset(teacher_card, int(data["phantoms"]), int(data["phantom_seed"]))
    return build_dataset(train_config, data, out_dir, on_event)


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..distill import DistillConfig, check_calls, distill, resolve_teacher, round_config
    from ..training.loop import autocast_dtype
    from ..volumes.writing import ensure_output_folder

    check_calls(args.calls, args.teacher_calls)  # before the teacher is read
    autocast_dtype(args.precision, resolve_device(args.device))  # bf16 on the CPU is refused before any data
    out_dir = Path(args.out)
    ensure_output_folder(out_dir)
    recorded: dict[str, Any] = {}
    record = out_dir / "distill.json"
    if getattr(args, "resume", False) and record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot resume: {record} is unreadable ({exc}); start a new distillation.") from None
    fields = {key[8:]: value for key, value in vars(args).items() if key.startswith("distill_")}
    for key in ("steps_per_round", "lr", "batch_size", "ema_rate", "seed"):  # resume with the recorded settings
        if key not in fields and key in recorded:
            fields[key] = recorded[key]
    data = _data_options(args, recorded.get("data") or {})
    config = DistillConfig(calls=args.calls, teacher_calls=args.teacher_calls, device=args.device,
                           precision=args.precision, tensorboard=getattr(args, "tensorboard", True),
                           name=getattr(args, "name", None), data=data, **fields)  # fmt: skip
    _, teacher = resolve_teacher(args.teacher)
    on_event, close = progress_display(args.progress)
    requested: list[int] = []

    def request_stop(signum, _frame):
        requested.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    stop_signals = [signal.SIGTERM, signal.SIGINT, *([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])]
    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals}
    try:
        dataset = build_distill_dataset(teacher.card, data, round_config(config, teacher.card), out_dir, on_event)
        config.data["volumes"] = len(dataset)
        result = distill(args.teacher, dataset, out_dir, config, resume=getattr(args, "resume", False),
                         on_event=on_event, stop=lambda: bool(requested))  # fmt: skip
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close()
    if args.progress != "jsonl":
        if result.stopped:
            print(f"stopped in round {result.rounds_done + 1}; continue with --resume", file=sys.stderr)
        elif result.model_path is not None:
            print(f"student of {result.calls} calls: {result.model_path}")
    return 0
