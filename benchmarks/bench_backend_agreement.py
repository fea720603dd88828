"""Whole volumes of a demo model through every CPU backend x precision against PyTorch fp32, for the same seeds.

    PYTHONPATH=WDMCore python benchmarks/bench_backend_agreement.py --seeds 4

Each choice this CPU runs (PyTorch bf16 and OpenVINO bf16 where it has native bf16; OpenVINO fp32 where OpenVINO is
installed) generates the same seeds with the engine's defaults (UniPC, 10 calls) as PyTorch fp32 does; the record
gives, per choice, the PSNR of each volume against PyTorch fp32's (intensities in [0, 1]) and the largest change of
the volumes' mean and standard deviation. For scale: the PSNR between two different seeds' fp32 volumes.
Writes JSON to benchmarks/results/ (or --output).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import wdmcore
from wdmcore.backends import reported_flags
from wdmcore.backends.choice import openvino_bf16, openvino_installed
from wdmcore.backends.cpu import native_bf16
from wdmcore.tasks.generate import generate, resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def choices() -> list[tuple[str, str]]:
    pairs = [("torch", "bf16")] if native_bf16() else []
    if openvino_installed():
        pairs.append(("openvino", "fp32"))
        if native_bf16() and openvino_bf16():
            pairs.append(("openvino", "bf16"))
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom_64")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    model = resolve_model(args.model)

    def volume(seed: int, backend: str, precision: str) -> np.ndarray:
        return generate(model, 1, seed=seed, backend=backend, precision=precision)[0].array

    references = [volume(seed, "torch", "fp32") for seed in range(args.seeds)]
    rows = {}
    for backend, precision in choices():
        outputs = [volume(seed, backend, precision) for seed in range(args.seeds)]
        rows[f"{backend}-{precision}"] = {
            "psnr_db": [round(psnr(o, r), 2) for o, r in zip(outputs, references, strict=True)],
            "max_mean_change": max(abs(float(o.mean() - r.mean())) for o, r in zip(outputs, references, strict=True)),
            "max_std_change": max(abs(float(o.std() - r.std())) for o, r in zip(outputs, references, strict=True)),
        }
        print(f"{backend}-{precision}: PSNR {rows[f'{backend}-{precision}']['psnr_db']} dB", flush=True)
    record = {
        "benchmark": "bench_backend_agreement",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_backend_agreement.py " + " ".join(sys.argv[1:]),
        "model": model.card.get("name"),
        "seeds": args.seeds,
        "cpu_flags": reported_flags(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "wdmcore": wdmcore.__version__,
        "two_seeds_fp32_psnr_db": round(psnr(references[1], references[0]), 2) if args.seeds > 1 else None,
        "against_torch_fp32": rows,
    }
    output = args.output or RESULTS / f"bench_backend_agreement_{record['model']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1) + "\n")
    print(f"two seeds differ by {record['two_seeds_fp32_psnr_db']} dB; written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
