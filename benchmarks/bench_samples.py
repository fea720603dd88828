"""Several draws, one answer: is the uncertainty map worth it? Measured on held-out paired phantoms.

    PYTHONPATH=WDMCore python benchmarks/bench_samples.py                       # 4 phantoms, N up to 16
    PYTHONPATH=WDMCore python benchmarks/bench_samples.py --num 2 --picture docs/images/task_samples.png

Test data: items 0 ... num-1 of ``paired_phantom(32, --seed, i)`` (seed 777; the demo models were trained on
seed 0), in the phantom frame (7.5 mm voxels). Synthesis: ``t1`` from ``t2``, ``flair``, ``pd`` with
``demo_phantom_synthesize_32`` (its defaults); inpainting: ``t1`` inside the phantom's lesion mask (the image
given voided, mask set to 0) with ``demo_phantom_inpaint_32`` (its 2 steps).

Per case, one run with ``samples=16, keep_samples=True`` (draw i from seed ``case_seed + i``); the mean of N
draws is the mean of the first N kept draws, which is what ``samples=N`` returns (the draws do not depend on how
many are sampled together; Testing/test_task_samples.py checks it). Reported per N in 1, 4, 8, 16:

* (a) Spearman correlation, per volume, between the std map and the absolute error of the mean against the
  truth: synthesis over the whole volume and over the head (voxels where the truth or the mean is non-zero: the
  background is 0 in both, and its ties would inflate the correlation); inpainting inside the mask;
* (b) SSIM and PSNR of the mean of N against the truth (and of the single draw 0), scored as ``wdm evaluate``
  does (:func:`wdmcore.evaluation.paired.paired_metrics`; inpainting inside the mask, with the challenge PSNR
  and PSNR with range 1);
* (c) CPU seconds per case of a run with ``samples=1`` and with ``samples=16``.

``--picture PATH`` writes one PNG: input, truth, mean, |error|, std (middle axial slice) of the first case of
each task, with matplotlib. Prints a Markdown table; writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import wdmcore
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import phantom_affine
from wdmcore.evaluation.paired import paired_metrics
from wdmcore.tasks.generate import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 32
SOURCES = ("t2", "flair", "pd")
COUNTS = (1, 4, 8, 16)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    value = spearmanr(np.ravel(a), np.ravel(b))[0]
    return float(value) if np.isfinite(value) else float("nan")


def score(truth, draws, region, **metric_args) -> dict:
    """Per N: the metrics of the mean of the first N draws, and the std-error correlation inside ``region``."""
    out = {}
    for n in COUNTS:
        stack = np.stack(draws[:n]).astype(np.float64)
        mean = stack.mean(axis=0)
        std = stack.std(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
        error = np.abs(mean - truth)
        metrics = paired_metrics(mean.astype(np.float32), truth, **metric_args).to_dict()
        row = {"ssim": metrics["ssim"], "psnr": metrics["psnr"], "psnr_01": metrics["psnr_01"], "mse": metrics["mse"]}
        if n > 1:
            for name, inside in region.items():
                row[f"spearman_{name}"] = spearman(std[inside], error[inside])
        out[n] = row
    return out


def run_case(task, call, truth, region, metric_args):
    start = time.perf_counter()
    call(1)
    one_s = time.perf_counter() - start
    start = time.perf_counter()
    result = call(16)
    many_s = time.perf_counter() - start
    rows = score(truth, result.draws, region, **metric_args)
    return {"task": task, "seconds_samples_1": round(one_s, 3), "seconds_samples_16": round(many_s, 3),
            "by_n": rows}, result  # fmt: skip


def summary(cases: list[dict]) -> dict:
    by_n = {}
    for n in COUNTS:
        rows = [c["by_n"][n] for c in cases]
        by_n[n] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        by_n[n].update({f"{k}_min": float(np.min([r[k] for r in rows])) for k in rows[0] if k.startswith("spear")})
    return {
        "n_cases": len(cases),
        "by_n": by_n,
        "seconds_samples_1": float(np.mean([c["seconds_samples_1"] for c in cases])),
        "seconds_samples_16": float(np.mean([c["seconds_samples_16"] for c in cases])),
    }


def picture(path: Path, panels: list[tuple[str, int, list[tuple[str, np.ndarray]]]]) -> None:
    """One row per (title, axial slice index, [(name, volume), ...])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 5, figsize=(12.5, 2.8 * len(panels)))
    for row, (title, k, images) in zip(np.atleast_2d(axes), panels, strict=True):
        for ax, (name, image) in zip(row, images, strict=True):
            heat = name.startswith(("std", "|"))
            shown = ax.imshow(np.rot90(image[:, :, k]), cmap="magma" if heat else "gray")
            ax.set_title(f"{title}: {name} (slice {k})", fontsize=8)
            ax.axis("off")
            if heat:
                fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=4, help="held-out phantoms per task [4]")
    parser.add_argument("--seed", type=int, default=777, help="phantom seed of the test items [777; training: 0]")
    parser.add_argument("--skip", default="", help="comma list of tasks to leave out: synthesize,inpaint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--picture", type=Path, default=None, help="write the PNG of the first cases here")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    affine = phantom_affine(SIZE)
    record: dict = {
        "benchmark": "bench_samples",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_samples.py " + " ".join(sys.argv[1:]),
        "test_items": f"paired_phantom({SIZE}, {args.seed}, i), i < {args.num}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "wdmcore": wdmcore.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    panels = []
    if "synthesize" not in skip:
        model = resolve_model("demo_phantom_synthesize_32")
        cases = []
        for index in range(args.num):
            contrasts, _ = paired_phantom(SIZE, args.seed, index)
            truth = contrasts["t1"].astype(np.float64)
            inputs = {s: (contrasts[s], affine) for s in SOURCES}

            def call(n, inputs=inputs, index=index):
                return wdmcore.synthesize(model, inputs, seed=100 * index, samples=n, keep_samples=n > 1)

            case, result = run_case("synthesize", call, truth, {}, {})
            head = (truth > 0) | (result.array > 0)
            stack = np.stack(result.draws).astype(np.float64)
            for n in COUNTS[1:]:
                mean, std = stack[:n].mean(axis=0), stack[:n].std(axis=0, ddof=1)
                case["by_n"][n]["spearman_volume"] = spearman(std, np.abs(mean - truth))
                case["by_n"][n]["spearman_head"] = spearman(std[head], np.abs(mean - truth)[head])
            cases.append(case)
            print(json.dumps(case), flush=True)
            if index == 0:
                panels.append(("synthesis", SIZE // 2, [("input flair", contrasts["flair"]), ("truth t1", truth),
                                             ("mean of 16", result.array), ("|error|", np.abs(result.array - truth)),
                                             ("std", result.std)]))  # fmt: skip
        record["synthesize"] = {"model": model.card.get("name"), "cases": cases, "summary": summary(cases)}
    if "inpaint" not in skip:
        model = resolve_model("demo_phantom_inpaint_32")
        cases = []
        for index in range(args.num):
            contrasts, lesion = paired_phantom(SIZE, args.seed, index)
            truth = contrasts["t1"].astype(np.float64)
            voided = np.where(lesion, 0.0, truth)

            def call(n, voided=voided, lesion=lesion, index=index):
                mask = (lesion.astype(np.float32), affine)
                return wdmcore.inpaint(model, (voided, affine), mask, seed=100 * index, samples=n, keep_samples=n > 1)

            case, result = run_case("inpaint", call, truth, {"mask": lesion}, {"mask": lesion, "normalization": voided})
            cases.append(case)
            print(json.dumps(case), flush=True)
            if index == 0:
                k = int(np.argmax(lesion.sum(axis=(0, 1))))  # the axial slice with most of the lesion
                panels.append(("inpainting", k, [("input (voided)", voided), ("truth t1", truth),
                                              ("mean of 16", result.array), ("|error|", np.abs(result.array - truth)),
                                              ("std", result.std)]))  # fmt: skip
        record["inpaint"] = {"model": model.card.get("name"), "cases": cases, "summary": summary(cases)}

    print("\n| task | N | SSIM | PSNR (dB) | PSNR, range 1 (dB) | MSE | Spearman(std, abs error) |")
    print("|---|---|---|---|---|---|---|")
    for task in ("synthesize", "inpaint"):
        if task not in record:
            continue
        s = record[task]["summary"]
        for n in COUNTS:
            row = s["by_n"][n]
            rho = ", ".join(f"{k[9:]} {row[k]:.3f} (min {row[k + '_min']:.3f})" for k in row
                            if k.startswith("spearman") and not k.endswith("_min"))  # fmt: skip
            print(f"| {task} | {n} | {row['ssim']:.4f} | {row['psnr']:.2f} | {row['psnr_01']:.2f} | {row['mse']:.5f} "
                  f"| {rho} |")  # fmt: skip
        times = f"samples=1: {s['seconds_samples_1']:.2f} s; samples=16: {s['seconds_samples_16']:.2f} s"
        print(f"| {task} | time | {times} |")
    if args.picture is not None and panels:
        picture(args.picture, panels)
        record["picture"] = str(args.picture)
    output = args.output or RESULTS / f"bench_samples_{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
