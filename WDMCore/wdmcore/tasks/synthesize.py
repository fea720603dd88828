"""Missing-contrast synthesis with a conditional model (cWDM): given volumes -> the missing one, in their grid.

>>> from wdmcore.tasks.synthesize import synthesize
>>> out = synthesize("cwdm_t1n", {"t1c": "c.nii.gz", "t2w": "w.nii.gz", "t2f": "f.nii.gz"}, seed=42)
>>> out.save("t1n_synth.nii.gz")

Preprocessing as released (``preprocessing.kind`` ``cwdm-brats``): each input is clipped to its [0.1 %, 99.9 %]
quantiles (whole volume), min-max scaled to [0, 1], and fitted to the network grid (a multiple of 2^levels per
axis: padded at the end when that is the smaller change, else cropped centred; BraTS 240 x 240 x 155 ->
224 x 224 x 160 exactly as released). The conditioning is the inputs' coefficients (LLL/3) in the card's order.
After sampling (seeded as the released script, including its data loader's extra int64 draw), the image is
clamped to [0, 1], set to 0 where the first input is 0 (the released brain mask), and put back into the input
grid (padding removed; cropped borders are 0). Intensities stay in the normalised [0, 1] range: the absolute
scale of a missing MR contrast is unknown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..events import ProgressCallback, ProgressTracker
from ..models.model import WDMModel
from ..wavelets import from_coefficients, to_coefficients
from .generate import DEFAULT_STEPS, Cancel, GeneratedVolume, PreviewCallback, resolve_device, resolve_model
from .inputs import cancel_check, fit_axis, from_grid, quantile_minmax, read_inputs, require_task, to_grid

CWDM_QUANTILES = (0.001, 0.999)
ANCESTRAL_STEPS = 50  # default steps of the ancestral sampler for synthesis


def prepare_condition(model: WDMModel, volumes: Mapping[str, Any]) -> tuple[torch.Tensor, list[np.ndarray], list]:
    """(conditioning coefficients [1, 8k, ...], the preprocessed inputs on the network grid, the grid fits)."""
    first = next(iter(volumes.values()))
    multiple = 2 * model.network.config.downsampling_factor
    fits = [fit_axis(n, multiple) for n in first.array.shape]
    prepared = []
    for volume in volumes.values():
        scaled, _, _ = quantile_minmax(volume.array, *CWDM_QUANTILES, what=f"input {volume.name!r}")
        prepared.append(to_grid(scaled.astype(np.float32), fits))
    c = model.diffusion_config
    packs = [
        to_coefficients(torch.from_numpy(np.ascontiguousarray(p))[None, None], c.lll_scale, c.high_scale)
        for p in prepared
    ]
    return torch.cat(packs, dim=1), prepared, fits


def finish_image(model: WDMModel, coeffs: torch.Tensor, first_prepared: np.ndarray) -> np.ndarray:
    """Coefficients -> image on the network grid, clamped to [0, 1] and masked by the first input (released)."""
    c = model.diffusion_config
    image = from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale)[0, 0].numpy()
    image = np.clip(image, 0.0, 1.0)
    image[first_prepared == 0] = 0.0
    return image


def synthesize(
    model: WDMModel | str | os.PathLike,
    inputs: Mapping[str, Any],
    *,
    seed: int = 0,
    sampler: str = "ancestral",
    steps: int | None = None,
    device: str | torch.device = "cpu",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
) -> GeneratedVolume:
    """Synthesise the model's output contrast from ``inputs`` (card input name -> volume: path, (array, affine),
    array or GeneratedVolume). All inputs must share one grid; the result is in that grid.

    ``sampler``/``steps``: as for :func:`~wdmcore.tasks.generate.generate` (default 50 respaced ancestral
    steps; ``steps=1000`` with ``"ancestral"`` is the released sampler)."""
    torch_device = resolve_device(device)
    wdm = resolve_model(model, device=torch_device, on_progress=on_progress)
    require_task(wdm, "synthesize")
    if steps is None:  # the ancestral sampler respaced to 50 steps (1000: the released one); others: their default
        steps = ANCESTRAL_STEPS if sampler == "ancestral" else DEFAULT_STEPS.get(sampler, ANCESTRAL_STEPS)
    steps = int(steps)
    volumes = read_inputs(inputs, wdm.input_names, "synthesize")
    first = next(iter(volumes.values()))
    condition, prepared, fits = prepare_condition(wdm, volumes)
    tracker = ProgressTracker(on_progress, "synthesize", total=steps, sampler=sampler, steps=steps)

    def on_step(done: int, total: int, _x: torch.Tensor, pred: torch.Tensor) -> None:
        tracker.advance(1)
        if on_preview is not None and (done % preview_every == 0 or done == total):
            grid = finish_image(wdm, pred, prepared[0])
            on_preview(0, from_grid(grid, fits, first.array.shape).astype(np.float32))

    coeffs = wdm.sample_coefficients(
        [seed], sampler=sampler, steps=steps, condition=condition, on_step=on_step, cancel=cancel_check(cancel)
    )
    image = from_grid(finish_image(wdm, coeffs, prepared[0]), fits, first.array.shape).astype(np.float32)
    output = wdm.card.get("output")
    meta = {
        "task": "synthesize",
        "model": wdm.card.get("name") or "unnamed",
        "inputs": {name: v.source for name, v in volumes.items()},
        "output": output if isinstance(output, (str, dict)) else None,
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "intensity": "[0, 1]: quantile-clipped, min-max scaled (as the model's training data); 0 outside the brain",
    }
    return GeneratedVolume(array=image, affine=first.affine.copy(), seed=seed, meta=meta)
