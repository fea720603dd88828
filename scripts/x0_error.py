"""How well a phantom model denoises: RMSE of its x0 prediction at a few timesteps, on fresh phantoms.

    PYTHONPATH=WDMCore python scripts/x0_error.py                          # the bundled demo model
    PYTHONPATH=WDMCore python scripts/x0_error.py --model runs/demo/model_0020000.safetensors --timesteps 0,10,100

A trained denoiser's error falls well below the noise in x_t as t goes to 0; printed next to it for comparison.
The error is in coefficient space (what the network predicts), over all eight bands.
"""

from __future__ import annotations

import argparse
import math

import torch

from wdmcore.data.phantoms import phantom_batch
from wdmcore.tasks.generate import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo_phantom_64")
    parser.add_argument("--num", type=int, default=8, help="fresh phantoms (seed 12345) [8]")
    parser.add_argument("--timesteps", default="0,10,100,500")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    images = torch.from_numpy(phantom_batch(args.num, model.image_size, 12345))[:, None] * 2 - 1
    generator = torch.Generator().manual_seed(0)
    print("| timestep t | noise std in x_t | x0 RMSE |\n|---|---|---|")
    with torch.inference_mode():
        for step in (int(s) for s in args.timesteps.split(",")):
            t = torch.full((args.num,), step, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator)
            x_t, target = model.diffusion.training_inputs(images, t, noise)
            rmse = (model.network(x_t, t).float() - target).pow(2).mean().sqrt().item()
            noise_std = math.sqrt(1 - model.diffusion.alphas_cumprod[step])
            print(f"| {step} | {noise_std:.3f} | {rmse:.3f} |")


if __name__ == "__main__":
    main()
