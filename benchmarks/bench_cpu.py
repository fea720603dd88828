"""Seconds per network call on this CPU for every backend x precision it can run, side by side in one process.

    PYTHONPATH=WDMCore python benchmarks/bench_cpu.py --json benchmarks/results/bench_cpu_HOST.json
    PYTHONPATH=WDMCore python benchmarks/bench_cpu.py --grid 32 --rounds 1          # a quick check that it runs

Networks (random weights, every parameter drawn from a seeded normal; time does not depend on the values):
unet-128 at its 64^3 coefficient grid (one call of a 128^3 volume), the cWDM network (cwdm-224) at its
112 x 112 x 80 grid and the fastWDM3D network (fastwdm3d-128) at 64^3; ``--grid N`` runs all of them at N^3.
Choices: torch-fp32 always; torch-bf16 and openvino-bf16 where the CPU has native bf16; openvino-fp32 where
OpenVINO is installed; ``auto`` is what :func:`wdmcore.backends.resolve_choice` picks here (its figure is that
choice's; for fastWDM3D, whose default is its released two steps, the faithful choice, PyTorch fp32). They run in
alternation (round 1: each once, round 2: again ...) so that a change in the machine's load hits all alike; the
figure is the median over the rounds. The first call of each choice (the OpenVINO conversion and compilation, in a
fresh cache) is reported apart, and every output is compared with torch-fp32 on the same input (relative RMS).
Seconds per volume = seconds per call x the default calls, read from wdmcore.samplers.DEFAULT_STEPS at run time
(fastWDM3D: its released diffusion steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

NETWORKS = {"unet-128": (64, 64, 64), "cwdm-224": (112, 112, 80), "fastwdm3d-128": (64, 64, 64)}
FASTWDM3D_CALLS = 2  # the released fastWDM3D diffusion: T = 2, one call per step


def available_choices() -> list[tuple[str, str]]:
    from wdmcore.backends import choice, cpu

    pairs = [("torch", "fp32")]
    if cpu.native_bf16():
        pairs.append(("torch", "bf16"))
    if choice.openvino_installed():
        pairs.append(("openvino", "fp32"))
        if cpu.native_bf16() and choice.openvino_bf16():
            pairs.append(("openvino", "bf16"))
    return pairs


def random_network(preset: str) -> torch.nn.Module:
    from wdmcore.networks import build_network, preset_config

    network = build_network(preset_config(preset)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return network


def default_calls(preset: str) -> int:
    from wdmcore import samplers, vocabulary

    if preset.startswith("fastwdm3d"):
        return FASTWDM3D_CALLS
    # The engine's default sampler and its calls, read now: samplers' own table where it has one.
    steps = getattr(samplers, "DEFAULT_STEPS", vocabulary.DEFAULT_STEPS)
    return int(steps[getattr(samplers, "DEFAULT_SAMPLER", vocabulary.DEFAULT_SAMPLER)])


def bench_network(preset: str, grid: tuple[int, ...], rounds: int, threads: int) -> dict:
    from wdmcore.backends import network_call, resolve_choice

    network = random_network(preset)
    in_channels = network.config.in_channels
    x = torch.randn(1, in_channels, *grid, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    cpu = torch.device("cpu")
    calls, first_s, outputs = {}, {}, {}
    with torch.inference_mode():
        for backend, precision in available_choices():
            name = f"{backend}-{precision}"
            call = network_call(network, cpu, backend=backend, precision=precision, threads=threads)
            started = time.perf_counter()
            outputs[name] = call(x, t)  # conversion, compilation, first-call allocations
            first_s[name] = round(time.perf_counter() - started, 3)
            calls[name] = call
            print(f"  {preset} {name}: first call {first_s[name]:.2f} s (ran as {call.choice.name})", file=sys.stderr)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for r in range(rounds):
            for name, call in calls.items():
                started = time.perf_counter()
                call(x, t)
                times[name].append(time.perf_counter() - started)
                print(f"  {preset} round {r + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    seconds = {name: round(statistics.median(values), 3) for name, values in times.items()}
    # fastWDM3D's default calls are its released schedule, the faithful path, which auto keeps in PyTorch fp32
    auto = resolve_choice(cpu, threads=threads, faithful=preset.startswith("fastwdm3d")).name
    if auto in seconds:
        seconds["auto"] = seconds[auto]
    reference = outputs["torch-fp32"]
    per_volume = default_calls(preset)
    return {
        "grid": list(grid),
        "volume": [2 * s for s in grid],
        "seconds_per_call": seconds,
        "seconds_per_call_all_rounds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "first_call_s": first_s,
        "relative_rms_vs_torch_fp32": {
            name: float((out - reference).norm() / reference.norm()) for name, out in outputs.items()
        },
        "auto_is": auto,
        "default_calls": per_volume,
        "seconds_per_volume_at_default_calls": {name: round(s * per_volume, 1) for name, s in seconds.items()},
    }


def main() -> int:
    from wdmcore.backends import configure_threads, default_threads, reported_flags

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated of {', '.join(NETWORKS)}")
    parser.add_argument("--grid", type=int, help="run every network at N^3 (a quick check) instead of its own grid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads(), help="[all physical cores]")
    parser.add_argument("--json", type=Path, help="write the record to this file")
    args = parser.parse_args()
    presets = [n for n in args.networks.split(",") if n]
    unknown = sorted(set(presets) - set(NETWORKS))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {', '.join(NETWORKS)}")
    threads = configure_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-cache-") as cache:
        os.environ["WDM_CACHE_DIR"] = cache  # a fresh OpenVINO cache: first_call_s includes the conversion
        networks = {}
        for preset in presets:
            grid = (args.grid,) * 3 if args.grid else NETWORKS[preset]
            networks[preset] = bench_network(preset, grid, args.rounds, threads)
    import importlib.metadata

    try:
        openvino_version = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        openvino_version = None
    record = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": reported_flags(),
        "threads": threads,
        "torch": torch.__version__,
        "openvino": openvino_version,
        "rounds": args.rounds,
        "quick_grid": args.grid,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "networks": networks,
    }
    text = json.dumps(record, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
