"""Sample quality against the number of steps: each fast sampler at 10/25/50/100 steps against 1000-step
ancestral samples (the paper's sampler), next to the distance between two independent 1000-step sets.

    PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py                 # bundled demo model, 3 seeds
    PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py --model FILE --seeds 4

Measures, per sampler and step count, over ``--seeds`` volumes (seeds 0 ... N-1):

* ``rmse_same_seed``: mean over seeds of the RMSE to the 1000-step ancestral volume of the same seed (same x_T;
  the ancestral sampler adds noise at every step, so even an exact ODE solver does not reach 0 here; the
  ``ancestral_vs_ancestral`` row gives the RMSE between unrelated volumes for scale);
* ``hist_w1``: Wasserstein-1 distance between the intensity histograms (20 bins on [0, 1]) of the set and of
  the reference set (``wdmcore.data.phantoms.histogram_distance``);
* ``mean_diff``, ``std_diff``, ``fg_fraction_diff``: differences of voxel mean, standard deviation and
  foreground fraction (voxels > 0.05);
* ``phantom_distance``: ``PhantomStatistics.distance`` to 16 fresh training-distribution phantoms (demo model).

The baseline row ``ancestral<reference steps>_independent`` compares a second 1000-step set (seeds N ... 2N-1) with the
reference: differences below it are within sampling noise for this N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import wdmcore
from wdmcore.data.phantoms import histogram_distance, intensity_histogram, reference_statistics, volume_statistics
from wdmcore.tasks.generate import generate, resolve_model

RESULTS = Path(__file__).resolve().parent / "results"


def stack(volumes) -> np.ndarray:
    return np.stack([v.array for v in volumes])


def set_distance(a: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    fg_a, fg_r = (a > 0.05).mean(), (ref > 0.05).mean()
    return {
        "hist_w1": round(histogram_distance(intensity_histogram(a), intensity_histogram(ref)), 5),
        "mean_diff": round(float(abs(a.mean() - ref.mean())), 5),
        "std_diff": round(float(abs(a.std() - ref.std())), 5),
        "fg_fraction_diff": round(float(abs(fg_a - fg_r)), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom_64")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", default="ddim,dpm++2m,unipc")
    parser.add_argument("--steps", default="10,25,50,100")
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: all seeds in one batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    n = args.seeds
    batch = args.batch_size or n

    def run(sampler: str, steps: int, seed: int):
        start = time.perf_counter()
        volumes = generate(model, n, seed=seed, sampler=sampler, steps=steps, batch_size=batch)
        return stack(volumes), time.perf_counter() - start

    phantoms = reference_statistics(model.image_size, n=16)
    # Both 1000-step sets in one batch: seeds 0..N-1 (the reference) and N..2N-1 (an independent set).
    start = time.perf_counter()
    both = stack(generate(model, 2 * n, seed=0, sampler="ancestral", steps=args.reference_steps, batch_size=2 * n))
    ind_s = (time.perf_counter() - start) / 2
    reference, independent = both[:n], both[n:]
    print(f"reference: {2 * n} x ancestral {args.reference_steps} in {2 * ind_s:.0f} s", flush=True)
    rows = []

    def add(name: str, steps: int, volumes: np.ndarray, seconds: float, same_seeds: bool) -> None:
        rmse = np.sqrt(((volumes - reference) ** 2).mean(axis=(1, 2, 3))).mean()
        row = {
            "sampler": name,
            "steps": steps,
            "rmse_same_seed" if same_seeds else "rmse_unrelated": round(float(rmse), 5),
            **set_distance(volumes, reference),
            "phantom_distance": round(volume_statistics(volumes).distance(phantoms), 5),
            "seconds_per_volume": round(seconds / n, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    add(f"ancestral{args.reference_steps}_independent", args.reference_steps, independent, ind_s, same_seeds=False)
    rows[-1]["phantom_distance_reference"] = round(volume_statistics(reference).distance(phantoms), 5)
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            volumes, seconds = run(sampler, steps, 0)
            add(sampler, steps, volumes, seconds, same_seeds=True)

    record = {
        "benchmark": "bench_generate_quality",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py " + " ".join(sys.argv[1:]),
        "model": model.card.get("name"),
        "model_training_step": (model.card.get("training") or {}).get("step"),
        "image_size": model.image_size,
        "seeds": n,
        "reference": f"ancestral {args.reference_steps} steps, seeds 0..{n - 1}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "wdmcore": wdmcore.__version__,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / f"bench_generate_quality_{Path(str(args.model)).stem}.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
