"""Training-step benchmark on CPU: time and peak memory of one step, with and without activation checkpointing.

One step = the paper's loss (forward), backward and an AdamW update, as in ``wdmcore.training``. Each case runs
in a fresh process: one warm-up step, then ``--repeats`` timed steps (median reported); peak memory is the
process's peak RSS sampled every 5 ms during the timed steps, minus the RSS before the first step (so it includes
the AdamW state and gradients); ``saved_for_backward_mb`` counts the distinct tensors autograd keeps for the
backward pass of one loss (the activations that checkpointing avoids storing). Usage:

    python benchmarks/bench_training.py                     # reduced-size cases, 1 thread, writes benchmarks/results/
    python benchmarks/bench_training.py --cases unet128_full unet128_full_ckpt --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from memory import PeakRSS, rss_mb

ROOT = Path(__file__).resolve().parents[1]
# name: (preset, image size, batch size, activation checkpointing)
CASES = {
    "unet128_at64": ("unet-128", 64, 1, False),
    "unet128_at64_ckpt": ("unet-128", 64, 1, True),
    "unet128_full": ("unet-128", 128, 1, False),
    "unet128_full_ckpt": ("unet-128", 128, 1, True),
}
DEFAULT_CASES = ["unet128_at64", "unet128_at64_ckpt"]


def _saved_for_backward_mb(network, diffusion, image, generator) -> float:
    """Megabytes of distinct tensors the autograd graph keeps for the backward pass of one loss."""
    import torch

    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    t = torch.randint(0, diffusion.num_timesteps, (image.shape[0],), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = diffusion.training_loss(network, image, t, generator=generator)
    del loss
    return sum(seen.values()) / 2**20


def measure(name: str, repeats: int, threads: int) -> dict:
    import dataclasses

    import torch

    from wdmcore.diffusion import Diffusion
    from wdmcore.networks import build_network, preset_config

    torch.set_num_threads(threads)
    preset, size, batch, ckpt = CASES[name]
    config = dataclasses.replace(preset_config(preset), use_checkpoint=ckpt)
    torch.manual_seed(0)
    network = build_network(config).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-5)
    diffusion = Diffusion()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((batch, 1, size, size, size), generator=generator) * 2 - 1

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss, _ = diffusion.training_loss(network, image, t, generator=generator)
        loss.backward()
        optimizer.step()
        return float(loss)

    base = rss_mb()
    start = time.perf_counter()
    step()
    warmup_s = time.perf_counter() - start
    saved_mb = _saved_for_backward_mb(network, diffusion, image, generator)
    times = []
    with PeakRSS() as peak:
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {
        "case": name,
        "preset": preset,
        "image_size": size,
        "network_input": [batch, 8, size // 2, size // 2, size // 2],
        "batch_size": batch,
        "activation_checkpointing": ckpt,
        "parameters": sum(p.numel() for p in network.parameters()),
        "warmup_step_s": round(warmup_s, 3),
        "step_s_median": round(statistics.median(times), 3),
        "step_s_all": [round(t, 3) for t in times],
        "peak_rss_mb_above_start": round(peak.peak - base, 1),
        "saved_for_backward_mb": round(saved_mb, 1),
        "rss_mb_at_start": round(base, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=DEFAULT_CASES)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_cpu.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, args.threads)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "WDMCore"), "OMP_NUM_THREADS": str(args.threads)}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("cases", {})
    for name in args.cases:
        command = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats), "--threads",
                   str(args.threads)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        record = json.loads(done.stdout.strip().splitlines()[-1])
        record["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        results["cases"][name] = record
        print(json.dumps(record))
    import torch

    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "gpu": "none available for these measurements",
        "note": "shared 2-core machine: other jobs ran at the same time, so times are noisy (see load_average_after)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
