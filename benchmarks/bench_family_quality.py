"""Quality and CPU time of the task demo models on held-out paired phantoms, next to simple baselines.

    PYTHONPATH=WDMCore python benchmarks/bench_family_quality.py                      # bundled models, defaults
    PYTHONPATH=WDMCore python benchmarks/bench_family_quality.py --num 8 --threads 2 \\
        --synth-model runs/synth/demo_phantom_synthesize_32.safetensors \\
        --inpaint-model runs/inpaint/demo_phantom_inpaint_32.safetensors

Test data: items 0 ... N-1 of ``paired_phantom(32, --seed, i)`` (seed 777; the demo models were trained on
seed 0), in the phantom frame (7.5 mm voxels).

* **Synthesis** (``t1`` from ``t2``, ``flair``, ``pd``): ``wdmcore.synthesize`` with the model's defaults,
  scored as ``wdm evaluate --task synthesize`` does (SSIM, PSNR, MSE of the whole volume, both sides
  normalised with the reference's 0.5/99.5 percentiles). Baselines fitted by least squares on ``--fit`` training
  phantoms (seed 0): the best single source contrast mapped linearly to ``t1`` (a x + b), and a voxel-wise
  linear regression from all three sources.
* **Inpainting** (``t1`` inside the lesion mask; the image given voided, mask set to 0): scored as the BraTS
  inpainting challenge (``wdm evaluate --task inpaint``: inside the mask, normalised with the voided image's
  percentiles; the challenge's PSNR uses the reference's range inside the mask, infinite where the masked
  tissue is uniform, so PSNR with a fixed range of 1 is given too). Methods: the inpainting demo model (its 2
  steps); mean fill (the mask set to the mean of the non-masked foreground, what one can do without tissue
  labels; and, as a stronger reference, the mean of the non-masked brain and blobs from the phantom's labels);
  RePaint with the unconditional ``demo_phantom_64``, run through the task's resampling to the model's
  3.75 mm grid and back (the 32^3 phantom at 7.5 mm becomes the model's 64^3 window), with ``--repaint-steps``
  x ``--repaint-resample`` network calls on ``--repaint-num`` phantoms (default 10 x 2 on one phantom, to keep
  a run short; the task's default, 50 x 5, costs 250 calls of the 64^3 network per volume).
* **CPU time** per volume of each task with its default settings (synthesize, inpaint with each method, vary
  with ``demo_phantom_64`` at strength 0.5 on a 64^3 phantom), on ``--threads`` threads; RePaint's time is
  for the settings it ran with.

Prints one JSON line per row and a Markdown table; writes JSON to benchmarks/results/.
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
from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import TISSUE_BLOB, TISSUE_BRAIN, generate_tissue_labels, item_rng, phantom_affine
from wdmcore.evaluation.paired import paired_metrics
from wdmcore.tasks.generate import resolve_model

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("t2", "flair", "pd")
TARGET = "t1"
SIZE = 32
TRAIN_SEED = 0


def test_items(seed: int, num: int) -> list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
    """(contrasts, lesion mask, brain-and-blob mask) of held-out items 0 ... num-1."""
    items = []
    for index in range(num):
        contrasts, lesion = paired_phantom(SIZE, seed, index)
        labels = generate_tissue_labels(SIZE, item_rng(seed, index))  # the same anatomy paired_phantom drew
        items.append((contrasts, lesion, (labels == TISSUE_BRAIN) | (labels == TISSUE_BLOB)))
    return items


def fit_baselines(num: int) -> dict[str, dict]:
    """Least-squares maps to t1 on training phantoms: each single source (a x + b) and all three (w . x + b)."""
    xs = {s: [] for s in SOURCES}
    ys = []
    for index in range(num):
        contrasts, _ = paired_phantom(SIZE, TRAIN_SEED, index)
        for s in SOURCES:
            xs[s].append(contrasts[s].ravel())
        ys.append(contrasts[TARGET].ravel())
    y = np.concatenate(ys).astype(np.float64)
    fits = {}
    for s in SOURCES:
        design = np.stack([np.concatenate(xs[s]), np.ones_like(y)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        fits[s] = {"sources": [s], "coef": coef.tolist(), "train_mse": float(np.mean((design @ coef - y) ** 2))}
    design = np.stack([*(np.concatenate(xs[s]) for s in SOURCES), np.ones_like(y)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    best = min(SOURCES, key=lambda s: fits[s]["train_mse"])
    return {
        "best_single": {**fits[best], "all_single_train_mse": {s: fits[s]["train_mse"] for s in SOURCES}},
        "linear_3": {
            "sources": list(SOURCES),
            "coef": coef.tolist(),
            "train_mse": float(np.mean((design @ coef - y) ** 2)),
        },
    }


def apply_fit(fit: dict, contrasts: dict[str, np.ndarray]) -> np.ndarray:
    coef = fit["coef"]
    out = sum(c * contrasts[s].astype(np.float64) for c, s in zip(coef[:-1], fit["sources"], strict=True))
    return np.clip(out + coef[-1], 0.0, None)


def mean_fill(voided: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> np.ndarray:
    out = voided.copy()
    out[lesion] = voided[brain & ~lesion].mean()
    return out


def summarise(name: str, task: str, metrics: list[dict], seconds: list[float], extra: dict | None = None) -> dict:
    row = {"task": task, "method": name, "n": len(metrics)}
    for key in ("ssim", "psnr", "psnr_01", "mse"):
        values = np.array([m[key] for m in metrics])
        row[key] = round(float(values.mean()), 5)
        row[f"{key}_std"] = round(float(values.std()), 5)
    if seconds:
        row["seconds_per_volume"] = round(float(np.mean(seconds)), 2)
    row.update(extra or {})
    print(json.dumps(row), flush=True)
    return row


def timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synth-model", default="demo_phantom_synthesize_32")
    parser.add_argument("--inpaint-model", default="demo_phantom_inpaint_32")
    parser.add_argument("--repaint-model", default="demo_phantom_64")
    parser.add_argument("--num", type=int, default=4, help="held-out phantoms for synthesis and inpainting [4]")
    parser.add_argument("--seed", type=int, default=777, help="phantom seed of the test items [777; training: 0]")
    parser.add_argument("--fit", type=int, default=16, help="training phantoms the baselines are fitted on [16]")
    parser.add_argument("--repaint-num", type=int, default=1, help="phantoms inpainted by RePaint [1]")
    parser.add_argument("--repaint-steps", type=int, default=10, help="RePaint steps [10; the task's default: 50]")
    parser.add_argument("--repaint-resample", type=int, default=2, help="RePaint repetitions [2; default: 5]")
    parser.add_argument("--skip", default="", help="comma list of parts to leave out: synthesize,inpaint,repaint,vary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    affine = phantom_affine(SIZE)
    items = test_items(args.seed, max(args.num, args.repaint_num))
    rows: list[dict] = []
    record: dict = {
        "benchmark": "bench_family_quality",
        "command": "PYTHONPATH=WDMCore python benchmarks/bench_family_quality.py " + " ".join(sys.argv[1:]),
        "test_items": f"paired_phantom({SIZE}, {args.seed}, i), i < {args.num}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "wdmcore": wdmcore.__version__,
    }

    if "synthesize" not in skip:
        model = resolve_model(args.synth_model)
        record["synth_model"] = {
            "name": model.card.get("name"),
            "training_step": (model.card.get("training") or {}).get("step"),
        }
        baselines = fit_baselines(args.fit)
        record["baselines"] = baselines
        scores = {"model": [], "best_single": [], "linear_3": []}
        seconds, meta = [], {}
        for index, (contrasts, _, _) in enumerate(items[: args.num]):
            truth = contrasts[TARGET]
            inputs = {s: (contrasts[s], affine) for s in SOURCES}
            out, elapsed = timed(lambda inputs=inputs, index=index: wdmcore.synthesize(model, inputs, seed=index))
            seconds.append(elapsed)
            meta = out.meta
            scores["model"].append(paired_metrics(out.array, truth).to_dict())
            for name in ("best_single", "linear_3"):
                scores[name].append(paired_metrics(apply_fit(baselines[name], contrasts), truth).to_dict())
        settings = {"sampler": meta.get("sampler"), "steps": meta.get("steps"), "postprocess": meta.get("postprocess")}
        rows.append(summarise("synthesis model (defaults)", "synthesize", scores["model"], seconds, settings))
        single = baselines["best_single"]["sources"][0]
        rows.append(summarise(f"linear map of {single} (best single source)", "synthesize", scores["best_single"], []))
        rows.append(summarise("linear regression from t2, flair, pd", "synthesize", scores["linear_3"], []))

    if "inpaint" not in skip:
        model = resolve_model(args.inpaint_model)
        record["inpaint_model"] = {
            "name": model.card.get("name"),
            "training_step": (model.card.get("training") or {}).get("step"),
        }
        scores = {"model": [], "mean": [], "mean_tissue": []}
        seconds, mean_seconds = [], []
        for index, (contrasts, lesion, brain) in enumerate(items[: args.num]):
            truth = contrasts[TARGET].astype(np.float64)
            voided = np.where(lesion, 0.0, truth)
            out, elapsed = timed(
                lambda voided=voided, lesion=lesion, index=index: wdmcore.inpaint(
                    model, (voided, affine), (lesion.astype(np.float32), affine), seed=index
                )
            )
            seconds.append(elapsed)
            scores["model"].append(paired_metrics(out.array, truth, lesion, voided).to_dict())
            filled, elapsed = timed(lambda voided=voided, lesion=lesion: mean_fill(voided, lesion, voided > 0))
            mean_seconds.append(elapsed)
            scores["mean"].append(paired_metrics(filled, truth, lesion, voided).to_dict())
            filled = mean_fill(voided, lesion, brain)
            scores["mean_tissue"].append(paired_metrics(filled, truth, lesion, voided).to_dict())
        rows.append(summarise("inpainting model (its 2 steps)", "inpaint", scores["model"], seconds))
        rows.append(summarise("mean fill (non-masked foreground)", "inpaint", scores["mean"], mean_seconds))
        rows.append(
            summarise(
                "mean fill (non-masked brain and blobs: tissue labels known)", "inpaint", scores["mean_tissue"], []
            )
        )

    if "repaint" not in skip:
        model = resolve_model(args.repaint_model)
        record["repaint_model"] = {
            "name": model.card.get("name"),
            "training_step": (model.card.get("training") or {}).get("step"),
        }
        scores, seconds = [], []
        for index, (contrasts, lesion, _) in enumerate(items[: args.repaint_num]):
            truth = contrasts[TARGET].astype(np.float64)
            voided = np.where(lesion, 0.0, truth)
            out, elapsed = timed(
                lambda voided=voided, lesion=lesion, index=index: wdmcore.inpaint(
                    model,
                    (voided, affine),
                    (lesion.astype(np.float32), affine),
                    seed=index,
                    steps=args.repaint_steps,
                    resample=args.repaint_resample,
                )  # fmt: skip
            )
            seconds.append(elapsed)
            scores.append(paired_metrics(out.array, truth, lesion, voided).to_dict())
        settings = {
            "steps": args.repaint_steps,
            "resample": args.repaint_resample,
            "grid": "64^3 at 3.75 mm (resampled)",
        }
        rows.append(summarise("RePaint, demo_phantom_64", "inpaint", scores, seconds, settings))

    if "vary" not in skip:
        from wdmcore.data.phantoms import phantom_batch

        model = resolve_model(args.repaint_model)
        size = model.image_size
        phantom = phantom_batch(1, size, args.seed)[0]
        out, elapsed = timed(lambda: wdmcore.vary(model, (phantom, phantom_affine(size)), strength=0.5, seed=0))
        row = {"task": "vary", "method": f"SDEdit, {model.card.get('name')}, strength 0.5", "n": 1,
               "seconds_per_volume": round(elapsed, 2), "sampler": out.meta["sampler"],
               "network_calls": out.meta["denoising_steps"]}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)

    record["load_average_after"] = os.getloadavg()
    record["rows"] = rows
    print()
    print(markdown(rows, args.threads))
    print(f"load average after the run: {', '.join(f'{v:.1f}' for v in record['load_average_after'])}")
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / "bench_family_quality.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


def markdown(rows: list[dict], threads: int) -> str:
    lines = [
        f"| task | method | n | SSIM | PSNR (dB) | PSNR, range 1 (dB) | MSE | CPU s / volume ({threads} threads) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        quality = (
            [
                f"{r[k]:.4f}" if k == "ssim" else f"{r[k]:.3g}" if k == "mse" else f"{r[k]:.2f}"
                for k in ("ssim", "psnr", "psnr_01", "mse")
            ]
            if "ssim" in r
            else [""] * 4
        )
        seconds = f"{r['seconds_per_volume']:.2f}" if "seconds_per_volume" in r else ""
        lines.append(f"| {r['task']} | {r['method']} | {r['n']} | {' | '.join(quality)} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
