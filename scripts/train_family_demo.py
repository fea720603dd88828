"""Train a small conditional demo model on paired phantoms, on a CPU: synthesis (cWDM-like) or inpainting
(fastWDM3D-like).

    PYTHONPATH=WDMCore python scripts/train_family_demo.py --task synthesize --size 32 --steps 20000 --out runs/synth
    PYTHONPATH=WDMCore python scripts/train_family_demo.py --task inpaint --size 32 --steps 20000 --out runs/inpaint
    PYTHONPATH=WDMCore python scripts/train_family_demo.py --task synthesize --steps 20 --out /tmp/x   # speed check

synthesize: the "t1" contrast of wdmcore.data.contrasts from "t2", "flair" and "pd" (network input 8 + 24
channels, concatenating skips, linear schedule over 1000 steps, x0 clipped to [0, 1], images in [0, 1] as
cWDM trains). inpaint: the "t1" contrast inside a lesion-like mask from the voided image and the mask (8 + 16
channels, additive skips, VP schedule with T = 2, every sub-band / sqrt 8, images normalised as fastWDM3D does
(quantile clip 0.005/0.995, min-max to [-1, 1], the same function the task uses)),
trained on the whole phantom (no crop: the phantom is the crop). Both use the paper's per-band MSE on the
coefficients, AdamW and an EMA of the weights; the result is a .safetensors file with the card the tasks need.
--minutes ends the run early by wall-clock time; the model file is rewritten every --save-every steps and at
the end, and a line with the mean loss is printed every --save-every steps, so a long run can be watched and cut.
At the end the script prints the steps per second it measured. --init-from continues from an earlier trained
file (its steps are added to the card's count); --device cuda and --workers N (processes that make the phantom
batches ahead) train on a GPU.

    PYTHONPATH=WDMCore python scripts/train_family_demo.py --task synthesize --publish runs/synth/FILE.safetensors

--publish copies a trained file into wdmcore/assets/ and writes its catalogue entry (bundled, with SHA-256, size
and the card's task, inputs and output) into wdmcore/hub/models.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from train_demo_model import PACKAGE, _catalogue_text, continued_history  # the same folder: one catalogue writer

from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import phantom_affine
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.models.checkpoints import read_model_file, save_model_file
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.tasks.inpaint import fast_normalise
from wdmcore.training.ema import EMA
from wdmcore.wavelets import to_coefficients

SQRT8 = math.sqrt(8.0)
SOURCES = ("t2", "flair", "pd")
TARGET = "t1"


def task_setup(task: str, channels: int):
    if task == "synthesize":
        network = NetworkConfig(
            model_channels=channels, channel_mult=(1, 2, 2), num_res_blocks=1, num_groups=8,
            in_channels=8 + 8 * len(SOURCES), additive_skips=False,
        )  # fmt: skip
        diffusion = DiffusionConfig(steps=1000, clip_min=0.0, clip_max=1.0)
    else:
        network = NetworkConfig(
            model_channels=channels, channel_mult=(1, 2, 2), num_res_blocks=1, num_groups=8, in_channels=24,
            additive_skips=True,
        )  # fmt: skip
        diffusion = DiffusionConfig(steps=2, schedule="vp", lll_scale=SQRT8, high_scale=SQRT8)
    return network, diffusion


def batch(task: str, size: int, seed: int, indices: list[int], diffusion: DiffusionConfig):
    """(target images [B, 1, S, S, S], condition coefficients) for phantom items ``indices``."""
    targets, conditions = [], []
    for index in indices:
        contrasts, mask = paired_phantom(size, seed, index)
        if task == "synthesize":
            target = torch.from_numpy(contrasts[TARGET])[None, None]
            packs = [to_coefficients(torch.from_numpy(contrasts[s])[None, None]) for s in SOURCES]
        else:
            # As fastWDM3D trains and as the task normalises at inference: quantile clip, min-max to [-1, 1].
            image = fast_normalise(contrasts[TARGET]).astype(np.float32)
            voided = np.where(mask, -1.0, image).astype(np.float32)
            target = torch.from_numpy(image)[None, None]
            mask_image = torch.from_numpy(np.where(mask, 1.0, -1.0).astype(np.float32))[None, None]
            s = diffusion.lll_scale
            packs = [to_coefficients(torch.from_numpy(voided)[None, None], s, s), to_coefficients(mask_image, s, s)]
        targets.append(target)
        conditions.append(torch.cat(packs, dim=1))
    return torch.cat(targets), torch.cat(conditions)


def card(task: str, size: int, steps: int, items: int, batch_size: int, history: str | None = None) -> dict:
    training = {"step": steps, "data": f"{items} paired phantoms (wdmcore.data.contrasts)", "batch_size": batch_size}
    if history:
        training["history"] = history  # how the steps were made, when a run continued an earlier one
    base = {
        "name": f"demo_phantom_{task}_{size}",
        "task": task,
        "image_size": size,
        "geometry": {"affine": phantom_affine(size).tolist(), "known": True},
        "training": training,
    }
    if task == "synthesize":
        base["inputs"] = [{"name": s, "meaning": f"phantom contrast {s}"} for s in SOURCES]
        base["output"] = {"name": TARGET, "meaning": "phantom contrast t1"}
        base["preprocessing"] = {"kind": "cwdm-brats"}
        base["intensity"] = {"range": [0.0, 1.0], "meaning": "phantom contrast intensities"}
    else:
        base["inputs"] = [{"name": "image", "meaning": "phantom t1 with the region to fill"},
                          {"name": "mask", "meaning": "region to fill"}]  # fmt: skip
        base["output"] = {"name": TARGET, "meaning": "phantom t1 with the masked region filled"}
        base["preprocessing"] = {"kind": "fastwdm3d-brats", "padded": [size, size, size]}
    return base


def publish(task: str, model_file: Path) -> Path:
    tensors, model_card = read_model_file(model_file)
    name = model_card["name"]
    target = PACKAGE / "assets" / f"{name}.safetensors"
    shutil.copyfile(model_file, target)
    data = target.read_bytes()
    size = int(model_card["image_size"])
    spacing = float(np.asarray(model_card["geometry"]["affine"])[0, 0])
    what = ("synthesises the phantom contrast t1 from t2, flair and pd" if task == "synthesize"
            else "fills a masked region of a phantom t1 volume")  # fmt: skip
    entry = {
        "name": name,
        "description": f"Small demonstration model bundled with wdmcore: {what}, at {size}^3; runs on a CPU in "
        "seconds. Not a medical model.",
        "preset": None,
        "source": {"kind": "bundled", "path": f"assets/{name}.safetensors"},
        "format": "safetensors",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "approx_size_bytes": len(data),
        "license": "MIT",
        "license_url": None,
        "citation": None,
        "card": {
            "task": task,
            "modality": "synthetic phantom",
            "dataset": "procedurally generated paired phantoms (wdmcore.data.contrasts)",
            "inputs": model_card["inputs"],
            "output": model_card["output"],
            "image_size": [size, size, size],
            "spacing_mm": [spacing, spacing, spacing],
            "parameters": sum(t.numel() for t in tensors.values()),
            "training": {
                "steps": model_card["training"]["step"],
                "data": model_card["training"]["data"],
                **{k: model_card["training"][k] for k in ("batch_size", "history") if k in model_card["training"]},
                "script": "scripts/train_family_demo.py",
            },  # fmt: skip
            "note": "The network configuration and full model card are stored in the file's own metadata.",
        },
    }
    catalogue_path = PACKAGE / "hub" / "models.json"
    catalogue = json.loads(catalogue_path.read_text(encoding="utf-8"))
    models = [m for m in catalogue["models"] if m["name"] != name]
    after = next((i + 1 for i, m in enumerate(models) if m["name"] == "demo_phantom_64"), len(models))
    models.insert(after if task == "synthesize" else after + 1, entry)
    catalogue["models"] = models
    catalogue_path.write_text(_catalogue_text(catalogue), encoding="utf-8")
    print(f"published {name} (step {model_card['training']['step']}): {target} ({len(data)} bytes)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("synthesize", "inpaint"), required=True)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--items", type=int, default=2000, help="distinct training phantoms")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for the trained model file (required to train)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much wall-clock time")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--publish", type=Path, help="only publish this trained file (see above)")
    parser.add_argument("--init-from", type=Path, help="continue from this trained file (weights and step count)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="processes making batches ahead (default 0)")
    args = parser.parse_args()
    if args.publish:
        publish(args.task, args.publish)
        return
    if args.out is None:
        parser.error("--out is required to train")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    network_config, diffusion_config = task_setup(args.task, args.channels)
    device = torch.device(args.device)
    network = build_network(network_config).train()
    earlier_steps, history = 0, None
    if args.init_from is not None:
        tensors, earlier_card = read_model_file(args.init_from)
        network.load_state_dict(tensors)
        earlier_steps = int(earlier_card["training"]["step"])
        history = earlier_card["training"].get("history") or f"{earlier_steps} steps"
    network.to(device)
    ema = EMA(network, args.ema, warmup=True)  # the trainer's EMA, warm-up included
    diffusion = Diffusion(diffusion_config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    deadline = None if args.minutes is None else started + 60 * args.minutes
    losses: list[float] = []
    done = 0

    def save(steps: int) -> Path:
        made = continued_history(history, steps, args.batch_size, args.device) if history else None
        full_card = {**card(args.task, args.size, earlier_steps + steps, args.items, args.batch_size, made),
                     "diffusion": diffusion_config.to_dict()}  # fmt: skip
        return save_model_file(args.out / f"demo_phantom_{args.task}_{args.size}.safetensors", ema.network, full_card)

    # Each step's phantoms and timesteps are drawn here, in order, so that a run is the same with or without workers.
    def draws():
        for _ in range(args.steps):
            indices = rng.integers(0, args.items, size=args.batch_size).tolist()
            yield indices, torch.from_numpy(rng.integers(0, diffusion.num_timesteps, size=args.batch_size))

    plan = draws()
    # Spawned, not forked: a child forked after torch has started its thread pool can hang in its first operation.
    pool = None
    if args.workers > 0:
        pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=torch.set_num_threads, initargs=(1,))  # fmt: skip
    ahead: list = []

    def next_batch():
        if pool is None:
            indices, t = next(plan)
            return (*batch(args.task, args.size, args.seed, indices, diffusion_config), t)
        while len(ahead) < 2 * args.workers and (drawn := next(plan, None)) is not None:
            ahead.append((pool.submit(batch, args.task, args.size, args.seed, drawn[0], diffusion_config), drawn[1]))
        future, t = ahead.pop(0)
        return (*future.result(), t)

    for _ in range(args.steps):
        images, condition, t = (x.to(device, non_blocking=True) for x in next_batch())
        loss, _ = diffusion.training_loss(network, images, t, condition=condition)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(network)
        done += 1
        losses.append(loss.item())
        if done % args.save_every == 0:
            save(done)
            elapsed = time.perf_counter() - started
            print(f"step {done}: mean loss {np.mean(losses):.5f}, {elapsed / done:.3f} s/step", flush=True)
            losses.clear()
        if deadline is not None and time.perf_counter() > deadline:
            break
    if pool is not None:
        pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - started
    path = save(done)
    parameters = sum(p.numel() for p in network.parameters())
    print(
        f"{args.task}: {done} steps of batch {args.batch_size} at {args.size}^3 in {elapsed:.1f} s "
        f"({elapsed / done:.3f} s/step, {parameters:,} parameters, {path.stat().st_size / 1e6:.1f} MB) -> {path}"
    )


if __name__ == "__main__":
    main()
