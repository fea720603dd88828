"""Train the bundled demo model (demo_phantom_64) on synthetic phantoms, on a CPU or a GPU.

    PYTHONPATH=WDMCore python scripts/train_demo_model.py --out runs/demo --minutes 50
    PYTHONPATH=WDMCore python scripts/train_demo_model.py --out runs/demo --minutes 20 --resume   # continue
    PYTHONPATH=WDMCore python scripts/train_demo_model.py --out runs/demo2 --minutes 90 --init-from demo_phantom_64

On a GPU, a larger batch and data workers keep it busy (fp32; the model is used in fp32 on CPUs):

    PYTHONPATH=WDMCore python scripts/train_demo_model.py --out runs/gpu --minutes 3 --device cuda \
        --batch-size 16 --workers 8 --init-from demo_phantom_64

--init-from starts a new run from the weights of an earlier demo model (a model file or catalogue name); the
steps it had are added to the published step count. The run stops by itself after --minutes of wall-clock time
(or on SIGTERM/SIGINT) with a checkpoint; the last model_<step>.safetensors of the run folder holds the EMA
weights and the card of the demo model.
Publish it with --publish (copies it to wdmcore/assets/ and records its SHA-256 and size in models.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from wdmcore import load_model
from wdmcore.data.phantoms import PhantomDataset, phantom_affine
from wdmcore.events import jsonl_writer
from wdmcore.models.checkpoints import read_model_file, save_model_file
from wdmcore.training import TrainConfig, list_checkpoints, train

PACKAGE = Path(__file__).resolve().parents[1] / "WDMCore" / "wdmcore"
SIZE = 64
INIT_RECORD = "initialised_from.json"  # in the run folder: the model a run started from and its steps

DEMO_CONFIG = TrainConfig(
    preset=None,
    network={"architecture": "unet", "model_channels": 16, "channel_mult": [1, 2, 4, 4], "num_res_blocks": 1,
             "num_groups": 8, "additive_skips": True},
    image_size=SIZE,
    lr=3e-4,
    lr_warmup_steps=100,
    low_noise_share=0.5,  # the low-noise end, where fine detail is kept, is what a short training lacks
    grad_clip=1.0,
    batch_size=2,
    max_steps=1_000_000,  # ended by --minutes
    ema_rate=0.999,
    checkpoint_interval=100,
    keep_last=2,
    preview_interval=500,
    preview_steps=20,
    log_interval=10,
    seed=0,
    name="demo_phantom_64",
    description="synthetic phantoms, for trying the tool offline; not a medical model",
    data_description="procedurally generated head phantoms (wdmcore.data.phantoms, 10000 phantoms, seed 0), 64^3",
    geometry={"spacing_mm": [240.0 / SIZE] * 3, "affine": phantom_affine(SIZE).tolist(), "known": True,
              "frame": "phantom frame: 240 mm cube centred on the origin (wdmcore.data.phantoms.phantom_affine)"},
    intensity={"range": [0.0, 1.0], "meaning": "phantom units: background 0, CSF 0.1-0.2, brain 0.45-0.6, "
               "blobs 0.65-0.95, skull 0.8-1.0", "units": None},
)  # fmt: skip


def _catalogue_text(catalogue: dict) -> str:
    """JSON with two-space indents and short lists of numbers on one line, as models.json is written."""
    text = json.dumps(catalogue, indent=2, ensure_ascii=False) + "\n"
    number = r"(?:-?[\d.]+(?:e-?\d+)?|null)"
    return re.sub(
        rf"\[\s*({number}(?:,\s*{number})*)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )


def continued_history(earlier: str, steps: int, batch_size: int, device: str, low_noise_share: float = 0.0) -> str:
    """A model card's training history with one more run appended (both training scripts write it so)."""
    where = "a CPU" if device == "cpu" else "a GPU"
    share = f" with low-noise share {low_noise_share:g}" if low_noise_share else ""
    return f"{earlier}, then {steps} steps of batch {batch_size} on {where}{share}"


def publish(run_dir: Path) -> Path:
    step, model_file, _ = list_checkpoints(run_dir)[-1]
    target = PACKAGE / "assets" / "demo_phantom_64.safetensors"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(model_file, target)
    catalogue_path = PACKAGE / "hub" / "models.json"
    catalogue = json.loads(catalogue_path.read_text())
    for entry in catalogue["models"]:
        if entry["name"] == "demo_phantom_64":
            tensors, card = read_model_file(model_file)
            training = card["training"]
            earlier = json.loads(origin.read_text()) if (origin := run_dir / INIT_RECORD).is_file() else None
            if earlier:  # the file says how all its steps were made, so that a later run can continue the story
                training["history"] = continued_history(
                    earlier["history"],
                    training["step"],
                    training["batch_size"],
                    earlier.get("device", "cpu"),
                    training.get("low_noise_share", 0.0),
                )
                training["step"] += earlier["steps"]
                save_model_file(target, load_model(model_file).network, card)  # the same weights
            data = target.read_bytes()
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["size_bytes"] = len(data)
            entry["approx_size_bytes"] = len(data)
            entry["card"].update(
                {
                    "spacing_mm": card["geometry"]["spacing_mm"],
                    "intensity": card["intensity"],
                    "parameters": sum(t.numel() for t in tensors.values()),
                    "training": {
                        "steps": training["step"],
                        "batch_size": training["batch_size"],
                        **({"history": training["history"]} if "history" in training else {}),
                        **({"low_noise_share": training["low_noise_share"]} if "low_noise_share" in training else {}),
                        "optimizer": f"AdamW lr {DEMO_CONFIG.lr:g} ({DEMO_CONFIG.lr_warmup_steps} warm-up steps), "
                        f"gradient clipping {DEMO_CONFIG.grad_clip:g}, EMA {DEMO_CONFIG.ema_rate:g}",
                        "script": "scripts/train_demo_model.py",
                    },
                }
            )
    catalogue_path.write_text(_catalogue_text(catalogue))
    print(f"published step {step} of {run_dir}: {target} ({target.stat().st_size} bytes)")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--minutes", type=float, default=50.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--publish", action="store_true", help="only publish the run's last checkpoint")
    parser.add_argument("--init-from", help="start from this demo model's weights (a file or catalogue name)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=DEMO_CONFIG.batch_size)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes (default 0: in the loop)")
    parser.add_argument(
        "--low-noise-share",
        type=float,
        default=DEMO_CONFIG.low_noise_share,
        help=f"share of timesteps from the lowest 5 %% (default {DEMO_CONFIG.low_noise_share})",
    )
    args = parser.parse_args()
    if args.publish:
        publish(args.out)
        return 0
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    deadline = time.monotonic() + 60 * args.minutes
    requested = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: requested.append(True))
    initial_weights = None
    if args.init_from and not args.resume:
        earlier = load_model(args.init_from)
        initial_weights = earlier.network.state_dict()
        args.out.mkdir(parents=True, exist_ok=True)
        made = earlier.card["training"]
        history = made.get("history") or f"{made['step']} steps of batch {made.get('batch_size', '?')}"
        record = {"model": args.init_from, "steps": int(made["step"]), "history": history, "device": args.device}
        (args.out / INIT_RECORD).write_text(json.dumps(record) + "\n")
    # fp32 on every device: the demo model runs in fp32 on CPUs, and its low-noise denoising is what matters.
    # A GPU step takes milliseconds: checkpoints and previews every 100 / 500 steps would dominate it.
    every = 1 if args.device == "cpu" else 10
    config = dataclasses.replace(
        DEMO_CONFIG, device=args.device, precision="fp32", batch_size=args.batch_size, num_workers=args.workers,
        checkpoint_interval=DEMO_CONFIG.checkpoint_interval * every, low_noise_share=args.low_noise_share,
        preview_interval=DEMO_CONFIG.preview_interval * every,
    )  # fmt: skip
    result = train(
        config,
        PhantomDataset(10000, SIZE, seed=0),
        args.out,
        resume=args.resume,
        on_event=jsonl_writer(sys.stdout),
        stop=lambda: bool(requested) or time.monotonic() > deadline,
        initial_weights=initial_weights,
    )
    print(json.dumps({"model": str(result.model_path), "step": result.step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
