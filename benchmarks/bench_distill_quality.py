"""A distilled student against its teacher, and the teacher at the student's cost, on the CPU.

    PYTHONPATH=WDMCore python benchmarks/bench_distill_quality.py --student runs/student/student_4calls.safetensors

Methods, each run with ``--seeds`` seeds (the same seed is the same initial noise for every method):

* ``teacher``: the teacher with the engine's defaults (UniPC, 10 calls);
* ``student``: the student with its card's defaults (DDIM at the calls it was distilled for);
* ``teacher_<sampler>_<calls>``: the teacher at the student's number of calls (UniPC and DDIM): what the same
  cost gives without distillation.

Every method is scored against the teacher for the same seed (SSIM and PSNR, as ``wdm evaluate --task
synthesize`` scores a pair) and by the high-band energy (mean square of the seven high-pass Haar bands).

* **synthesize** students: on held-out paired phantoms (items 0 ... ``--num`` - 1 of ``paired_phantom(32,
  --seed, i)``; the demo models were trained on seed 0), also SSIM and PSNR against the true ``t1`` and the
  high-band energy relative to the true ``t1``'s. The teacher's *spread* of a score is the mean over items of its
  standard deviation across seeds. The student **passes** when its mean SSIM and PSNR against the truth are at
  least the teacher's minus twice that spread, and its mean high-band ratio lies within the range of the
  teacher's ratios over all items and seeds.
* **generate** students: also the volume's mean and standard deviation and the earth mover's distance of its
  intensity histogram to that of 16 fresh phantoms. The student **passes** when the mean of each measure over
  the seeds lies within the range the teacher's volumes span over the same seeds.

CPU seconds per volume on ``--threads`` threads. Prints a Markdown table; writes JSON to benchmarks/results/;
exits 1 when the student does not pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_few_calls import measures  # mean, std and high-band energy of a volume (this folder is on the path)

import wdmcore
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import histogram_distance, intensity_histogram, phantom_affine, phantom_batch
from wdmcore.evaluation.paired import paired_metrics
from wdmcore.tasks.generate import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "t1"


def high_band_energy(volume: np.ndarray) -> float:
    return measures(volume)["high_band_energy"]


def run_methods(methods: dict, run: Callable, seeds: int, seconds: dict, settings: dict) -> dict[str, list]:
    """method -> the volumes of seeds 0 ... seeds-1; the time of each call is appended to ``seconds``."""
    outputs = {}
    for name, (model, options) in methods.items():
        outputs[name] = []
        for seed in range(seeds):
            start = time.perf_counter()
            result = run(model, seed, options)
            seconds[name].append(time.perf_counter() - start)
            settings[name] = {"sampler": result.meta.get("sampler"), "steps": result.meta.get("steps")}
            outputs[name].append(result.array)
    return outputs


def against_teacher(outputs: dict[str, list]) -> dict[str, list[dict]]:
    scores = {}
    for name, volumes in outputs.items():
        scores[name] = []
        for seed, volume in enumerate(volumes):
            pair = paired_metrics(volume, outputs["teacher"][seed]).to_dict()
            scores[name].append({"ssim_vs_teacher": pair["ssim"], "psnr_vs_teacher": min(pair["psnr"], 99.0)})
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="the student's model file (or catalogue name)")
    parser.add_argument("--teacher", default=None, help="the teacher [the one the student's card names]")
    parser.add_argument("--num", type=int, default=4, help="held-out phantoms of a synthesis student [4]")
    parser.add_argument("--seeds", type=int, default=4, help="seeds (per phantom) [4]")
    parser.add_argument("--seed", type=int, default=777, help="phantom seed of the test items [777; training: 0]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student = resolve_model(args.student)
    distilled = student.card.get("distilled") or {}
    if not distilled:
        parser.error(f"{args.student} is not a distilled student (its card has no 'distilled' entry)")
    teacher = resolve_model(args.teacher or distilled["teacher"])
    task = teacher.card.get("task", "generate")
    calls = int(distilled["calls"])
    methods = {
        "teacher": (teacher, {}),
        "student": (student, {}),
        f"teacher_unipc_{calls}": (teacher, {"sampler": "unipc", "steps": calls}),
        f"teacher_ddim_{calls}": (teacher, {"sampler": "ddim", "steps": calls}),
    }
    common = {"device": "cpu", "backend": "torch"}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    settings: dict[str, dict] = {}
    scores: dict[str, list[dict]] = {name: [] for name in methods}  # method -> one dict per volume
    groups: list[list[int]] = []  # the volumes (indices into scores) of one phantom: a synthesis spread is per item
    if task == "synthesize":
        size = int(teacher.image_size)
        affine = phantom_affine(size)
        for index in range(args.num):
            contrasts, _ = paired_phantom(size, seed=args.seed, index=index)
            truth = contrasts[TARGET]
            truth_energy = high_band_energy(truth)
            inputs = {name: (contrasts[name], affine) for name in teacher.input_names}
            outputs = run_methods(methods, lambda m, seed, o, inputs=inputs: wdmcore.synthesize(
                m, inputs, seed=seed, **common, **o), args.seeds, seconds, settings)  # fmt: skip
            pairs = against_teacher(outputs)
            for name, volumes in outputs.items():
                for volume, pair in zip(volumes, pairs[name], strict=True):
                    truth_pair = paired_metrics(volume, truth).to_dict()
                    scores[name].append({"ssim": truth_pair["ssim"], "psnr": truth_pair["psnr"], **pair,
                                         "high_band_ratio": high_band_energy(volume) / truth_energy})  # fmt: skip
            groups.append(list(range(index * args.seeds, (index + 1) * args.seeds)))
            print(f"phantom {index + 1}/{args.num} done", file=sys.stderr, flush=True)
        keys = ("ssim", "psnr", "high_band_ratio", "ssim_vs_teacher", "psnr_vs_teacher")
    else:
        reference = intensity_histogram(phantom_batch(16, int(teacher.image_size), seed=12345))
        outputs = run_methods(methods, lambda m, seed, o: wdmcore.generate(m, 1, seed=seed, **common, **o)[0],
                              args.seeds, seconds, settings)  # fmt: skip
        pairs = against_teacher(outputs)
        for name, volumes in outputs.items():
            for volume, pair in zip(volumes, pairs[name], strict=True):
                scores[name].append({**measures(volume),
                                     "histogram_distance": histogram_distance(intensity_histogram(volume), reference),
                                     **pair})  # fmt: skip
        groups.append(list(range(args.seeds)))
        keys = ("mean", "std", "high_band_energy", "histogram_distance", "ssim_vs_teacher", "psnr_vs_teacher")

    def mean_of(name: str, key: str) -> float:
        return float(np.mean([s[key] for s in scores[name]]))

    rows = {}
    for name in methods:
        rows[name] = {key: round(mean_of(name, key), 5) for key in keys}
        rows[name]["seconds_per_volume"] = round(float(np.mean(seconds[name])), 3)
        rows[name].update(settings[name])
    teacher_values = {key: [s[key] for s in scores["teacher"]] for key in keys}
    if task == "synthesize":
        spread = {key: float(np.mean([np.std([scores["teacher"][i][key] for i in group], ddof=1) for group in groups]))
                  for key in ("ssim", "psnr")}  # fmt: skip
        checks = {key: rows["student"][key] >= rows["teacher"][key] - 2 * spread[key] for key in spread}
        ratios = teacher_values["high_band_ratio"]
        checks["high_band_ratio"] = min(ratios) <= rows["student"]["high_band_ratio"] <= max(ratios)
    else:
        spread = {key: [min(v), max(v)] for key, v in teacher_values.items() if not key.endswith("_vs_teacher")}
        checks = {key: low <= rows["student"][key] <= high for key, (low, high) in spread.items()}
    record = {
        "benchmark": "bench_distill_quality",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_distill_quality.py " + " ".join(sys.argv[1:]),
        "task": task,
        "student": {"name": student.card.get("name"), "distilled": distilled},
        "teacher": teacher.card.get("name"),
        "seeds": args.seeds,
        "test_items": f"paired_phantom(size, {args.seed}, i), i < {args.num}" if task == "synthesize" else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "wdmcore": wdmcore.__version__,
        "rows": rows,
        "teacher_spread": spread,
        "student_passes": checks,
        "scores": scores,
    }
    output = args.output or RESULTS / f"bench_distill_quality_{student.card.get('name') or 'student'}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1))
    print("| method | sampler, calls | " + " | ".join(keys) + " | CPU s / volume |")
    print("|---" * (len(keys) + 3) + "|")
    for name, row in rows.items():
        cells = " | ".join(str(row[key]) for key in keys)
        print(f"| {name} | {row['sampler']}, {row['steps']} | {cells} | {row['seconds_per_volume']} |")
    print(f"teacher spread: {spread}; student passes: {checks}; written to {output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
