"""Evaluation benchmark: MedicalNet features (seconds per volume) and MS-SSIM (seconds per pair).

Run from the repository root::

    PYTHONPATH=WDMCore python benchmarks/bench_evaluation.py --device cpu \\
        --out benchmarks/results/evaluation_cpu.json

Timing does not depend on the weight values, so the network runs with MONAI's random initialisation (the
MedicalNet weights are not needed). Volumes pass one at a time, as in the evaluation protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from wdmcore.evaluation import MedicalNetFeatureExtractor, MSSSIMSettings, build_medicalnet_resnet50, ms_ssim


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_features(extractor: MedicalNetFeatureExtractor, size: int, repeats: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(size)
    volume = torch.rand(size, size, size, generator=g)
    for _ in range(warmup):
        extractor.features(volume)
    times = []
    for _ in range(repeats):
        _sync(extractor.device)
        start = time.perf_counter()
        extractor.features(volume)
        _sync(extractor.device)
        times.append(time.perf_counter() - start)
    return {"size": size, "repeats": repeats, "warmup": warmup, "s_per_volume": min(times), "all_s": times}


def time_ms_ssim(size: int, pairs: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(size, size, size, generator=g)
    b = torch.rand(size, size, size, generator=g)
    ms_ssim(a, b, MSSSIMSettings(), device)  # warm-up
    times = []
    for _ in range(pairs):
        _sync(device)
        start = time.perf_counter()
        ms_ssim(a, b, MSSSIMSettings(), device)
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"size": size, "pairs": pairs, "s_per_pair": min(times), "all_s": times}


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=2, help="timed volumes per size (minimum is reported)")
    parser.add_argument("--ms-ssim-size", type=int, default=128)
    parser.add_argument("--ms-ssim-pairs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    extractor = MedicalNetFeatureExtractor(build_medicalnet_resnet50().state_dict(), device=device)
    results = {"features": [], "ms_ssim": None}
    for size in args.sizes:
        # One warm-up pass per size on the first size only on CPU (a 256^3 pass is long); always on GPU.
        warmup = 1 if (device.type == "cuda" or size == args.sizes[0]) else 0
        results["features"].append(time_features(extractor, size, args.repeats, warmup))
        print(f"features {size}^3: {results['features'][-1]['s_per_volume']:.3f} s/volume", file=sys.stderr)
    results["ms_ssim"] = time_ms_ssim(args.ms_ssim_size, args.ms_ssim_pairs, device)
    print(f"MS-SSIM {args.ms_ssim_size}^3: {results['ms_ssim']['s_per_pair']:.3f} s/pair", file=sys.stderr)
    record = {
        "benchmark": "evaluation",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_evaluation.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(device),
        "device": str(device),
        "dtype": "float32",
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    if device.type == "cuda":
        record["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    text = json.dumps(record, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
