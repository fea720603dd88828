"""Measure how phantom-like the samples of a model are (used for the bundled demo model, docs/training.md).

    PYTHONPATH=WDMCore python scripts/check_demo_model.py [MODEL] [--num 8] [--sampler ddim --steps 50] [--png F]

Prints JSON: the statistics of the samples (foreground fraction, foreground mean, histogram distance and the
combined distance of wdmcore.data.phantoms) next to those of real phantoms, of an untrained network of the
same configuration and of uniform noise.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from wdmcore import WDMModel, load_model
from wdmcore.data.phantoms import histogram_distance, reference_statistics, volume_statistics
from wdmcore.networks import build_network

DEFAULT = "WDMCore/wdmcore/assets/demo_phantom_64.safetensors"


def describe(stats, reference) -> dict:
    return {
        "foreground_fraction": round(stats.foreground_fraction, 4),
        "foreground_mean": round(stats.foreground_mean, 4),
        "histogram_distance": round(histogram_distance(stats.histogram, reference.histogram), 4),
        "distance": round(stats.distance(reference), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=DEFAULT)
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--png", help="also write the samples' mid-slices (one row each) above 4 real phantoms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    size = model.image_size
    start = time.perf_counter()
    samples = model.sample(args.num, seed=args.seed, sampler=args.sampler, steps=args.steps, batch_size=args.num)
    seconds = time.perf_counter() - start
    reference = reference_statistics(size, n=16)
    torch.manual_seed(0)
    untrained = WDMModel(build_network(model.network.config), model.card)
    untrained_samples = untrained.sample(args.num, seed=args.seed, sampler="ddim", steps=10, batch_size=args.num)
    noise = torch.rand(args.num, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    result = {
        "model": args.model,
        "step": model.card.get("training", {}).get("step"),
        "sampler": f"{args.sampler} {args.steps} steps, {args.num} samples, seeds {args.seed}..",
        "sampling_s": round(seconds, 2),
        "reference_phantoms": describe(reference, reference),
        "samples": describe(volume_statistics(samples), reference),
        "untrained_network": describe(volume_statistics(untrained_samples), reference),
        "uniform_noise": describe(volume_statistics(noise), reference),
    }
    print(json.dumps(result, indent=2))
    if args.png:
        import numpy as np

        from wdmcore.data.phantoms import phantom_batch
        from wdmcore.training import mid_slices, write_png_gray

        rows = [mid_slices(v) for v in samples[:, 0].numpy()]
        rows.append(np.zeros_like(rows[0][:2]))
        rows += [mid_slices(v) for v in phantom_batch(4, size, seed=12345)]
        write_png_gray(args.png, np.concatenate(rows, axis=0))


if __name__ == "__main__":
    main()
