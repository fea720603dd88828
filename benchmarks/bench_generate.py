"""CPU (or GPU) time to generate one volume: per-step time of generate() measured over a few steps, times the
number of steps.

    PYTHONPATH=WDMCore python benchmarks/bench_generate.py                       # unet-128, random weights
    PYTHONPATH=WDMCore python benchmarks/bench_generate.py --model demo_phantom_64 --full

A run of ``generate()`` is cancelled after ``--measure + 1`` steps; the first step (warm-up: allocations, lazy
imports) is reported apart and left out of the per-step time. Weights do not change the time, so the released
presets are timed with random weights. ``--full`` also times a complete generation with the default sampler.
Writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import wdmcore
from wdmcore.models.model import WDMModel
from wdmcore.networks import build_network, preset_config, preset_image_size
from wdmcore.samplers import Cancelled
from wdmcore.tasks.generate import DEFAULT_SAMPLER, DEFAULT_STEPS, generate, resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def per_step_times(
    model: WDMModel, sampler: str, steps: int, measure: int, device: str, precision: str, backend: str
) -> list[float]:
    stamps = [time.perf_counter()]

    def on_progress(event):
        stamps.append(time.perf_counter())

    def cancel():
        return len(stamps) > measure + 1

    with contextlib.suppress(Cancelled):
        generate(model, 1, sampler=sampler, steps=steps, device=device, precision=precision, backend=backend,
                 on_progress=on_progress, cancel=cancel)  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet-128", help="a preset (random weights), catalogue name or file")
    parser.add_argument(
        "--samplers",
        default=f"{DEFAULT_SAMPLER}:{DEFAULT_STEPS[DEFAULT_SAMPLER]},ancestral:1000,dpm++2m:25",
        help="SAMPLER[:STEPS],... (steps default per sampler); a volume's time is the step time x STEPS",
    )
    parser.add_argument("--measure", type=int, default=3, help="steps measured per sampler (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="auto, fp32, bf16 or fp16 [fp32]")
    parser.add_argument("--backend", default="torch", help="auto, torch or openvino (the CPU) [torch]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--full", action="store_true", help="also time one complete default generation")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model in ("unet-128", "unet-256", "wavunet-128", "wavunet-256"):
        torch.manual_seed(0)
        network = build_network(preset_config(args.model))
        card = {"name": f"{args.model} (random weights)", "image_size": preset_image_size(args.model)}
        model = WDMModel(network, card)
    else:
        model = resolve_model(args.model, device=args.device)

    record = {
        "benchmark": "bench_generate",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_generate.py " + " ".join(sys.argv[1:]),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "model": model.card.get("name"),
        "image_size": model.image_size,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "device": args.device,
        "precision": args.precision,
        "backend": args.backend,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "wdmcore": wdmcore.__version__,
        "load_average_before": os.getloadavg(),
        "samplers": {},
    }
    for entry in args.samplers.split(","):
        sampler, _, steps = entry.partition(":")
        steps = int(steps) if steps else DEFAULT_STEPS[sampler]
        times = per_step_times(model, sampler, steps, args.measure, args.device, args.precision, args.backend)
        step_s = statistics.median(times[1:])
        record["samplers"][f"{sampler}:{steps}"] = {
            "steps": steps,
            "warmup_step_s": round(times[0], 3),
            "step_s": [round(t, 3) for t in times[1:]],
            "median_step_s": round(step_s, 3),
            "estimate_one_volume_s": round(step_s * steps, 1),
        }
        print(f"{sampler}: {step_s:.3f} s/step x {steps} steps = {step_s * steps:.1f} s per volume", flush=True)
    # The bare network forward (what the released code's CPU baseline measured), in the same process, so that the
    # sampler's overhead reads as a ratio that does not depend on how busy the machine is.
    half = model.image_size // 2
    x = torch.randn(1, 8, half, half, half, device=args.device)
    t = torch.full((1,), 500, device=args.device)
    forwards = []
    with torch.inference_mode():
        for _ in range(args.measure):
            start = time.perf_counter()
            model.network(x, t)
            forwards.append(time.perf_counter() - start)
    record["bare_forward_s"] = [round(f, 3) for f in forwards]
    record["median_bare_forward_s"] = round(statistics.median(forwards), 3)
    for entry in record["samplers"].values():
        entry["step_over_bare_forward"] = round(entry["median_step_s"] / record["median_bare_forward_s"], 3)
    print(f"bare forward: {record['median_bare_forward_s']} s", flush=True)
    if args.full:
        start = time.perf_counter()
        generate(model, 1, device=args.device, precision=args.precision, backend=args.backend)
        record["full_default_generation_s"] = round(time.perf_counter() - start, 2)
        print(f"complete default generation ({DEFAULT_SAMPLER}, {DEFAULT_STEPS[DEFAULT_SAMPLER]} steps): "
              f"{record['full_default_generation_s']} s")  # fmt: skip
    record["load_average_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    name = args.model.replace("/", "_").replace(".safetensors", "")
    suffix = "" if args.backend == "torch" else f"_{args.backend}"
    output = args.output or RESULTS / f"bench_generate_{name}_{args.device}_{args.precision}{suffix}.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
