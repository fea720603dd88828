"""CPU options for one network call, side by side in one process: the plain fp32 call, channels-last-3d,
``torch.compile`` and bf16 autocast, each checked against the plain call.

    PYTHONPATH=WDMCore python benchmarks/bench_cpu_options.py                     # unet-128 at 128^3, 3 rounds
    PYTHONPATH=WDMCore python benchmarks/bench_cpu_options.py --rounds 2 --only plain,channels_last

The options run in alternation (round 1: every option once, round 2: again ...) so that a change in the
machine's load hits all of them alike; the figure per option is its median over the rounds and its ratio to
the plain call's median. Outputs are compared with the plain call's on the same input (max abs difference,
and whether it lies within the fixtures' forward tolerance 1e-5; bf16 is reported against its own, looser
expectation). Compile time is the first compiled call and is reported apart. Weights are random (time does
not depend on them); the network call is what a sampling step costs, apart from a few per cent. Writes JSON
to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from wdmcore.networks import build_network, preset_config, preset_image_size

RESULTS = Path(__file__).resolve().parent / "results"
OPTIONS = ("plain", "channels_last", "compile", "bf16")
FORWARD_TOLERANCE = 1e-5


def cpu_flags() -> list[str]:
    """The vector extensions that decide oneDNN's kernels (bf16 runs natively only with AVX512-BF16 or AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_bf16", "amx", "avx_vnni")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="unet-128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(OPTIONS), help=f"comma-separated subset of {', '.join(OPTIONS)}")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    options = [o for o in args.only.split(",") if o]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown options {unknown}; choose from {', '.join(OPTIONS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = build_network(preset_config(args.preset)).eval()
    grid = preset_image_size(args.preset) // 2
    x = torch.randn(1, 8, grid, grid, grid, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    print(f"{args.preset}: input [1, 8, {grid}^3], {args.threads} threads, options {options}", flush=True)

    compiled = torch.compile(network) if "compile" in options else None
    # Channels-last weights in a copy of their own, as generate() converts its network on CUDA; the plain call
    # keeps the contiguous weights.
    channels_last = (
        copy.deepcopy(network).to(memory_format=torch.channels_last_3d) if "channels_last" in options else None
    )
    calls = {
        "plain": lambda: network(x, t),
        "channels_last": lambda: channels_last(x.contiguous(memory_format=torch.channels_last_3d), t),
        "compile": lambda: compiled(x, t),
        "bf16": lambda: _bf16_call(network, x, t),
    }
    with torch.inference_mode():
        reference = None
        figures: dict[str, dict] = {name: {"times_s": []} for name in options}
        for name in options:  # warm-up round: first calls (allocations, compile) apart
            started = time.perf_counter()
            out = calls[name]().float()
            first = time.perf_counter() - started
            figures[name]["first_call_s"] = round(first, 2)
            if name == "plain":
                reference = out
            print(f"  {name}: first call {first:.2f} s", flush=True)
            figures[name]["output"] = out
        for name in options:
            out = figures[name].pop("output")
            if reference is not None:
                diff = (out - reference).abs().max().item()
                figures[name]["max_abs_diff_vs_plain"] = diff
                figures[name]["within_forward_tolerance"] = bool(diff <= FORWARD_TOLERANCE)
        for round_index in range(args.rounds):
            for name in options:
                started = time.perf_counter()
                calls[name]()
                figures[name]["times_s"].append(round(time.perf_counter() - started, 3))
            print(f"  round {round_index + 1}: " + ", ".join(f"{n} {figures[n]['times_s'][-1]:.2f} s" for n in options),
                  flush=True)  # fmt: skip
    plain = statistics.median(figures["plain"]["times_s"]) if "plain" in figures else None
    for name in options:
        median = statistics.median(figures[name]["times_s"])
        figures[name]["median_s"] = round(median, 3)
        if plain:
            figures[name]["speed_vs_plain"] = round(plain / median, 3)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "preset": args.preset,
        "input": [1, 8, grid, grid, grid],
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "load_average": os.getloadavg(),
        "options": figures,
    }
    print("\n| option | median s per call | speed vs plain | first call s | max abs diff vs plain |")
    print("|---|---|---|---|---|")
    for name in options:
        f = figures[name]
        print(f"| {name} | {f['median_s']:.2f} | {f.get('speed_vs_plain', '–')} | {f['first_call_s']:.1f} | "
              f"{f.get('max_abs_diff_vs_plain', float('nan')):.2e} |")  # fmt: skip
    output = args.output or RESULTS / f"bench_cpu_options_{args.preset}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"-> {output}")
    return 0


def _bf16_call(network: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return network(x, t)


if __name__ == "__main__":
    sys.exit(main())
