"""The bundled demo models at few network calls against the spread of their 25-call samples.

    PYTHONPATH=WDMCore python benchmarks/bench_few_calls.py --seeds 4 --threads 2

For generation (demo_phantom_64), synthesis (demo_phantom_synthesize_32, inputs from ``wdm example-data``) and
variation (demo_phantom_64 on the example head, strength 0.5), each seed's volume is measured: mean, std and the
high-band energy (mean square of the seven high-pass Haar bands). A step count passes when the mean of each
measure over the seeds lies within the range the 25-call volumes span over the same seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from wdmcore.tasks.examples import example_volumes
from wdmcore.tasks.generate import generate, resolve_model
from wdmcore.tasks.synthesize import synthesize
from wdmcore.tasks.vary import vary
from wdmcore.wavelets import to_coefficients


def measures(volume: np.ndarray) -> dict[str, float]:
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    bands = to_coefficients(x)
    energy = bands[:, 1:].pow(2).mean().item()
    return {"mean": float(volume.mean()), "std": float(volume.std()), "high_band_energy": energy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--calls", default="25,10,8,6,5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "bench_few_calls.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calls = [int(c) for c in args.calls.split(",")]
    examples = example_volumes()
    synth = resolve_model("demo_phantom_synthesize_32")
    inputs = {name: examples[f"{name}.nii.gz"] for name in synth.input_names}
    head = examples["head.nii.gz"]
    runs = {
        "generate": lambda seed, n: generate("demo_phantom_64", 1, seed=seed, steps=n)[0].array,
        "synthesize": lambda seed, n: synthesize(synth, inputs, seed=seed, steps=n).array,
        "vary": lambda seed, n: vary("demo_phantom_64", head, strength=0.5, seed=seed, steps=n).array,
    }
    command = "PYTHONPATH=WDMCore python benchmarks/bench_few_calls.py " + " ".join(sys.argv[1:])
    record = {"command": command, "tasks": {}}
    for task, run in runs.items():
        table = {n: [measures(run(seed, n)) for seed in range(args.seeds)] for n in calls}
        reference = table[calls[0]]
        rows = {}
        for n, values in table.items():
            row = {}
            for key in ("mean", "std", "high_band_energy"):
                spread = [v[key] for v in reference]
                mean = float(np.mean([v[key] for v in values]))
                row[key] = {"mean": round(mean, 5), "within_25_call_range": min(spread) <= mean <= max(spread)}
            rows[n] = row
            print(task, n, json.dumps(row), flush=True)
        spread = {k: [round(min(v[k] for v in reference), 5), round(max(v[k] for v in reference), 5)] for k in row}
        record["tasks"][task] = {"range_at_25": spread, "calls": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
