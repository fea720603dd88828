"""The command line: options, the parts in order with their time budgets, and the run that records each part
in turn (a part that fails records its error and the next one runs)."""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import torch

from . import __doc__ as SUITE_DESCRIPTION
from . import conditional, correctness, ddp, environment, flops, generation, released, training
from .measuring import device_name, free_memory
from .recording import Part, Recorder, part_status, say
from .suite import REPO, Suite

# The parts in the order they run.
RUNNERS = {
    "env": environment.run,
    "flops": flops.run,
    "correctness": correctness.run,
    "gen128": lambda suite, part: generation.run(suite, part, "unet-128"),
    "gen256": lambda suite, part: generation.run(suite, part, "unet-256"),
    "train": training.run,
    "ddp": ddp.run,
    "released": released.run,
    "conditional": conditional.run,
}
PARTS = list(RUNNERS)
# Seconds per part at --budget-scale 1 (about 8 minutes in all on one GPU when every part uses its budget).
BUDGETS = {"env": 20, "flops": 15, "correctness": 45, "gen128": 100, "gen256": 100, "train": 100, "ddp": 30,
           "released": 30, "conditional": 30}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=SUITE_DESCRIPTION.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and sizes: the CPU dry run for CI")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts ({', '.join(PARTS)}); "
                        "'generation' means gen128,gen256")  # fmt: skip
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the JSON and .md")
    parser.add_argument("--released", help="folder holding a copy of the released wdm-3d code (guided_diffusion/)")
    parser.add_argument(
        "--reference", help="folder of the reference fixtures (default: $WDM_REFERENCE_DIR, Testing/reference)"
    )
    args = parser.parse_args(argv)
    parts = []
    for item in args.parts.split(","):
        item = item.strip()
        expanded = ["gen128", "gen256"] if item == "generation" else [item]
        for part in expanded:
            if part not in PARTS:
                parser.error(f"unknown part {part!r}; choose from {', '.join(PARTS)} or 'generation'")
            if part not in parts:
                parts.append(part)
    args.part_list = parts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        say("CUDA was requested but PyTorch sees no GPU; run with --device cpu --tiny for the dry run")
        return 2
    if device.type == "cpu" and args.tiny:
        # The dry run shares small CI machines: one thread is steadier than threads fighting for cores.
        torch.set_num_threads(1)
    import wdmcore

    say(f"wdmcore {wdmcore.__version__} from {Path(wdmcore.__file__).parent}; device {device}; parts {args.part_list}")
    recorder = Recorder(args.out, device_name(device), args.tiny, args.budget_scale, cleanup=free_memory)
    suite = Suite(args, device, recorder)
    global_deadline = time.monotonic() + args.budget_scale * sum(BUDGETS[p] for p in args.part_list) + 30
    for name in args.part_list:
        part = Part(name, BUDGETS[name] * args.budget_scale, recorder, global_deadline)
        say(f"== {name} (budget {part.budget_s:.0f} s)")
        try:
            RUNNERS[name](suite, part)
        except Exception as exc:  # recorded; the next part runs
            part.record["status"] = f"error: {type(exc).__name__}: {exc}"[:400]
            part.record["traceback"] = traceback.format_exc(limit=8)[-3000:]
            say(f"{name}: {part.record['status']}")
        else:
            if part.record["status"] == "running":
                part.record["status"] = part_status(part.record["rows"])
        part.record["elapsed_s"] = round(time.monotonic() - part.started, 1)
        free_memory()
        recorder.write()
    say(f"done: {recorder.json_path} and {recorder.md_path}")
    return 0
