"""How well a phantom model denoises: RMSE of its x0 prediction at a few timesteps, on fresh phantoms.

    PYTHONPATH=WDMCore python scripts/x0_error.py                          # the bundled demo model
    PYTHONPATH=WDMCore python scripts/x0_error.py --model runs/demo/model_0020000.safetensors --timesteps 0,10,100
    PYTHONPATH=WDMCore python scripts/x0_error.py --model demo_phantom_synthesize_32       # t = 0, 10, 100, 500
    PYTHONPATH=WDMCore python scripts/x0_error.py --model demo_phantom_inpaint_32          # T = 2: t = 0, 1

A trained denoiser's error falls well below the noise in x_t as t goes to 0; printed next to it for comparison.
The error is in coefficient space (what the network predicts), over all eight bands. Unconditional models are
scored on fresh phantoms (seed 12345); the task models (``task`` synthesize or inpaint in the card) on fresh
paired phantoms (seed 12345, never trained on) with their conditioning built as scripts/train_family_demo.py
builds it in training: the t2, flair and pd contrasts for synthesis, the voided t1 and the lesion mask for
inpainting. The default timesteps are 0, 10, 100, 500 (those below the model's step count; 0, 1 for T = 2).
"""

from __future__ import annotations

import argparse
import math

import torch

from wdmcore.data.phantoms import phantom_batch
from wdmcore.tasks.generate import resolve_model

FRESH_SEED = 12345


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom_64")
    parser.add_argument("--num", type=int, default=8, help=f"fresh phantoms (seed {FRESH_SEED}) [8]")
    parser.add_argument("--timesteps", default=None, help="comma list [0,10,100,500 below the model's T]")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    total = model.diffusion.num_timesteps
    if args.timesteps:
        steps = [int(s) for s in args.timesteps.split(",")]
    else:
        steps = [t for t in (0, 10, 100, 500) if t < total] + ([1] if total == 2 else [])
    condition = None
    if model.task in ("synthesize", "inpaint"):
        from train_family_demo import batch  # the same folder: the conditioning exactly as in training

        images, condition = batch(
            model.task, model.image_size, FRESH_SEED, list(range(args.num)), model.diffusion_config
        )
    else:
        images = torch.from_numpy(phantom_batch(args.num, model.image_size, FRESH_SEED))[:, None] * 2 - 1
    generator = torch.Generator().manual_seed(0)
    print(f"{model.card.get('name')} ({model.task}, training step {(model.card.get('training') or {}).get('step')})")
    print("| timestep t | noise std in x_t | x0 RMSE |\n|---|---|---|")
    with torch.inference_mode():
        for step in steps:
            t = torch.full((args.num,), step, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator)
            x_t, target = model.diffusion.training_inputs(images, t, noise)
            network_input = x_t if condition is None else torch.cat([x_t, condition], dim=1)
            rmse = (model.network(network_input, t).float() - target).pow(2).mean().sqrt().item()
            noise_std = math.sqrt(1 - model.diffusion.alphas_cumprod[step])
            print(f"| {step} | {noise_std:.3f} | {rmse:.3f} |")


if __name__ == "__main__":
    main()
