"""The bundled demo models at few network calls against the spread of their 25-call samples.

    PYTHONPATH=WDMCore python benchmarks/bench_few_calls.py --seeds 4 --threads 2

For generation (demo_phantom_64), synthesis (demo_phantom_synthesize_32, inputs from ``wdm example-data``) and
variation (demo_phantom_64 on the example head, strength 0.5), each seed's volume is measured: mean, std and the
high-band energy (mean square of the seven high-pass Haar bands). A step count passes when the mean of each
measure over the seeds lies within the range the first ``--calls`` entry's volumes (25 by default) span over the
same seeds. Each row also gives the seconds per volume (``--backend``/``--precision``, default auto).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    parser.add_argument("--tasks", default="generate,synthesize,vary", help="comma-separated [all three]")
    parser.add_argument("--backend", default="auto", help="auto, torch or openvino [auto]")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 [auto]")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "bench_few_calls.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calls = [int(c) for c in args.calls.split(",")]
    examples = example_volumes()
    synth = resolve_model("demo_phantom_synthesize_32")
    inputs = {name: examples[f"{name}.nii.gz"] for name in synth.input_names}
    head = examples["head.nii.gz"]
    run_on = {"backend": args.backend, "precision": args.precision}
    runs = {
        "generate": lambda seed, n: generate("demo_phantom_64", 1, seed=seed, steps=n, **run_on)[0].array,
        "synthesize": lambda seed, n: synthesize(synth, inputs, seed=seed, steps=n, **run_on).array,
        "vary": lambda seed, n: vary("demo_phantom_64", head, strength=0.5, seed=seed, steps=n, **run_on).array,
    }
    runs = {task: runs[task] for task in args.tasks.split(",")}
    command = "PYTHONPATH=WDMCore python benchmarks/bench_few_calls.py " + " ".join(sys.argv[1:])
    record = {"command": command, "tasks": {}}
    for task, run in runs.items():
        table, seconds = {}, {}
        for n in calls:
            started = time.perf_counter()
            table[n] = [measures(run(seed, n)) for seed in range(args.seeds)]
            seconds[n] = (time.perf_counter() - started) / args.seeds
        reference = table[calls[0]]
        rows = {}
        for n, values in table.items():
            row = {}
            for key in ("mean", "std", "high_band_energy"):
                spread = [v[key] for v in reference]
                mean = float(np.mean([v[key] for v in values]))
                row[key] = {"mean": round(mean, 5), "within_25_call_range": min(spread) <= mean <= max(spread)}
            row["seconds_per_volume"] = round(seconds[n], 3)
            rows[n] = row
            print(task, n, json.dumps(row), flush=True)
        spread = {
            k: [round(min(v[k] for v in reference), 5), round(max(v[k] for v in reference), 5)]
            for k in ("mean", "std", "high_band_energy")
        }
        record["tasks"][task] = {"range_at_25": spread, "calls": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
