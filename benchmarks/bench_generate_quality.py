"""Sample quality of samplers and step counts, measured against fresh true phantoms with measures that see blur
and noise.

    PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py                 # bundled demo model, 4 seeds
    PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py --runs unipc:10,unipc:25 --seeds 8

Each run (``SAMPLER:STEPS``) generates ``--seeds`` volumes (seeds 0 ... N-1) and is compared with a set of
``--phantoms`` fresh phantoms of the training distribution (seed 12345, never trained on). Measures per set,
on the [0, 1] volumes:

* ``high_band_energy``: mean square of the seven high-pass Haar bands (one level), over that of the phantoms.
  Blur lowers it below 1; noise raises it above 1. Phantoms are piecewise constant, so their high bands are
  edges only;
* ``noise_sigma``: the noise level estimated from the finest (HHH) band, median(|HHH|) / 0.6745 (Donoho's
  robust estimator): ~0 for phantoms, the std of any white noise left in a volume;
* ``mean_map_rmse``, ``std_map_rmse``: the per-voxel mean and standard deviation across the set's volumes,
  compared (RMSE) with the same maps of the phantoms. The row ``phantoms (another set)`` gives their values
  for N fresh phantoms of another seed: with few volumes these maps are noisy, and that row is the floor;
* ``hist_w1``: Wasserstein-1 distance of the 20-bin intensity histograms; ``phantom_distance``:
  ``PhantomStatistics.distance`` (histogram distance + foreground-fraction difference).

``--reference-steps N`` (off by default: a 1000-step set costs 1000 calls per volume) adds the paper's sampler
with N steps as another run. Writes JSON to benchmarks/results/.
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
from wdmcore.data.phantoms import histogram_distance, intensity_histogram, phantom_batch, volume_statistics
from wdmcore.tasks.generate import generate, resolve_model
from wdmcore.wavelets import dwt3

RESULTS = Path(__file__).resolve().parent / "results"
PHANTOM_SEED = 12345
DEFAULT_RUNS = "unipc:10,unipc:25,dpm++2m:25,dpm++2m-sde:25,ddim:50,ancestral:50"


def haar_bands(volumes: np.ndarray) -> torch.Tensor:
    """One-level Haar bands [N, 8, S/2, S/2, S/2] of [0, 1] volumes [N, S, S, S] (orthonormal, band 0 = LLL)."""
    return dwt3(torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None])[:, :, 0]


def set_measures(volumes: np.ndarray) -> dict[str, float | np.ndarray]:
    bands = haar_bands(volumes)
    return {
        "high_band_energy": bands[:, 1:].pow(2).mean().item(),
        "noise_sigma": (bands[:, 7].abs().median() / 0.6745).item(),
        "mean_map": volumes.mean(axis=0),
        "std_map": volumes.std(axis=0),
        "statistics": volume_statistics(volumes),
        "histogram": intensity_histogram(volumes),
    }


def compare(measured: dict, truth: dict) -> dict[str, float]:
    return {
        "high_band_energy": round(measured["high_band_energy"] / truth["high_band_energy"], 4),
        "noise_sigma": round(measured["noise_sigma"], 5),
        "mean_map_rmse": round(float(np.sqrt(((measured["mean_map"] - truth["mean_map"]) ** 2).mean())), 5),
        "std_map_rmse": round(float(np.sqrt(((measured["std_map"] - truth["std_map"]) ** 2).mean())), 5),
        "hist_w1": round(histogram_distance(measured["histogram"], truth["histogram"]), 5),
        "phantom_distance": round(measured["statistics"].distance(truth["statistics"]), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom_64")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--phantoms", type=int, default=16)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"SAMPLER:STEPS list [{DEFAULT_RUNS}]")
    parser.add_argument("--reference-steps", type=int, default=0, help="also run ancestral with N steps [off]")
    parser.add_argument("--batch-size", type=int, default=None, help="default: all seeds in one batch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    n = args.seeds
    batch = args.batch_size or n
    size = model.image_size

    truth = set_measures(phantom_batch(args.phantoms, size, PHANTOM_SEED))
    rows = []

    def add(name: str, steps: int | None, volumes: np.ndarray, seconds: float | None) -> None:
        row = {"run": name, "steps": steps, **compare(set_measures(volumes), truth)}
        if seconds is not None:
            row["seconds_per_volume"] = round(seconds / len(volumes), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("phantoms (another set)", None, phantom_batch(n, size, PHANTOM_SEED + 1), None)
    runs = [tuple(r.split(":")) for r in args.runs.split(",") if r]
    if args.reference_steps:
        runs.append(("ancestral", str(args.reference_steps)))
    for sampler, steps in runs:
        start = time.perf_counter()
        volumes = generate(model, n, seed=0, sampler=sampler, steps=int(steps), batch_size=batch)
        add(sampler, int(steps), np.stack([v.array for v in volumes]), time.perf_counter() - start)

    record = {
        "benchmark": "bench_generate_quality",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_generate_quality.py " + " ".join(sys.argv[1:]),
        "model": model.card.get("name"),
        "model_training_step": (model.card.get("training") or {}).get("step"),
        "image_size": size,
        "seeds": n,
        "phantoms": f"{args.phantoms} fresh phantoms, seed {PHANTOM_SEED}",
        "phantom_high_band_energy": truth["high_band_energy"],
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
