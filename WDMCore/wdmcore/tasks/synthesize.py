"""Missing-contrast synthesis with a conditional model (cWDM): given volumes -> the missing one, in their grid.

>>> from wdmcore.tasks.synthesize import synthesize
>>> out = synthesize("cwdm_t1n", {"t1c": "c.nii.gz", "t2w": "w.nii.gz", "t2f": "f.nii.gz"}, seed=42)
>>> out.save("t1n_synth.nii.gz")

Preprocessing as released (``preprocessing.kind`` ``cwdm-brats``): each input is clipped to its [0.1 %, 99.9 %]
quantiles (whole volume), min-max scaled to [0, 1], and fitted to the network grid (a multiple of 2^levels per
axis: padded at the end when that is the smaller change, else cropped centred; BraTS 240 x 240 x 155 ->
224 x 224 x 160 exactly as released). The conditioning is the inputs' coefficients (LLL/3) in the card's order.
After sampling (seeded as the released script, including its data loader's extra int64 draw), the image is
post-processed as the released ``sample_auto.py`` does it (values <= 0.04 set to 0; or, on request, as
``sample.py``: clamped to [0, 1] and set to 0 where the first input is 0) and put back into the input grid
(padding removed; cropped borders are 0). Intensities stay in the normalised [0, 1] range: the absolute
scale of a missing MR contrast is unknown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..backends import is_faithful, network_call, resolve_choice
from ..errors import ConfigError
from ..events import ProgressCallback, ProgressTracker
from ..models.model import WDMModel
from ..samplers import default_calls
from ..vocabulary import DEFAULT_SYNTHESIS_POSTPROCESS as DEFAULT_POSTPROCESS
from ..vocabulary import SYNTHESIS_POSTPROCESSING
from ..wavelets import from_coefficients, to_coefficients
from .domain import warn_outside_domain
from .generate import (
    DEFAULT_SAMPLER,
    Cancel,
    GeneratedVolume,
    PreviewCallback,
    resolve_device,
    resolve_model,
)
from .inputs import cancel_check, fit_axis, from_grid, quantile_minmax, read_inputs, require_task, to_grid
from .samples import collect_draws, draws_per_batch, sample_seeds, samples_meta

CWDM_QUANTILES = (0.001, 0.999)
# What happens to the sampled image (names in wdmcore.vocabulary, as the two released sampling scripts do it):
# "threshold": scripts/sample_auto.py, the script that fills in a case's missing sequence (the task here):
#   values <= 0.04 set to 0, no upper clamp, no brain mask;
# "brain-mask": scripts/sample.py, the evaluation script: clamped to [0, 1], 0 where the first input is 0;
# "none": the sampled image as it is (the sampler's x0 clip already keeps it within [0, 1]).
POSTPROCESSING = SYNTHESIS_POSTPROCESSING
AUTO_THRESHOLD = 0.04


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


def default_steps(model: WDMModel, sampler: str, quality: str = "default") -> int:
    """The sampler's number of network calls at ``quality``, at most the model's diffusion steps."""
    return min(default_calls(sampler, None, quality), model.diffusion.num_timesteps)


def finish_image(
    model: WDMModel, coeffs: torch.Tensor, first_prepared: np.ndarray, postprocess: str = DEFAULT_POSTPROCESS
) -> np.ndarray:
    """Coefficients -> image on the network grid, post-processed as one of the released scripts does it
    (see :data:`POSTPROCESSING`)."""
    if postprocess not in POSTPROCESSING:
        raise ConfigError(f"unknown post-processing {postprocess!r}; choose one of {', '.join(POSTPROCESSING)}.")
    c = model.diffusion_config
    image = from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale)[0, 0].numpy()
    if postprocess == "threshold":
        image = np.where(image <= AUTO_THRESHOLD, np.float32(0), image)
    elif postprocess == "brain-mask":
        image = np.clip(image, 0.0, 1.0)
        image[first_prepared == 0] = 0.0
    return image


def synthesize(
    model: WDMModel | str | os.PathLike,
    inputs: Mapping[str, Any],
    *,
    seed: int = 0,
    samples: int = 1,
    keep_samples: bool = False,
    sampler: str | None = None,
    steps: int | None = None,
    quality: str = "default",
    postprocess: str = DEFAULT_POSTPROCESS,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    backend: str = "auto",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
) -> GeneratedVolume:
    """Synthesise the model's output contrast from ``inputs`` (card input name -> volume: path, (array, affine),
    array or GeneratedVolume). All inputs must share one grid; the result is in that grid.

    ``sampler``/``steps``/``quality``: as for :func:`~wdmcore.tasks.generate.generate`: the engine's fast default
    (UniPC, 10 network calls; ``quality="preview"``: 6); ``sampler="ancestral", steps=1000`` is the released
    sampler. A model with fewer
    diffusion steps than the sampler's default runs all of them; a distilled student defaults to its card's sampler
    and calls.

    ``backend``/``precision``: what runs the network, as for :func:`~wdmcore.tasks.generate.generate`.

    ``postprocess``: ``"threshold"`` (default; the released ``sample_auto.py``: values <= 0.04 set to 0),
    ``"brain-mask"`` (the released ``sample.py``: clamp to [0, 1], 0 where the first input is 0) or ``"none"``.

    ``samples``: draws from seeds ``seed`` ... ``seed + samples - 1``, sampled together as memory allows; the
    result is their mean with the per-voxel ``std`` (and every draw with ``keep_samples``), see
    :mod:`wdmcore.tasks.samples`."""
    if postprocess not in POSTPROCESSING:
        raise ConfigError(f"unknown post-processing {postprocess!r}; choose one of {', '.join(POSTPROCESSING)}.")
    seeds = sample_seeds(seed, samples)
    torch_device = resolve_device(device)
    resolve_choice(torch_device, backend, precision)  # names and this device's limits, before the model is read
    wdm = resolve_model(model, device=torch_device, on_progress=on_progress)
    require_task(wdm, "synthesize")
    if wdm.card.get("distilled") and steps is None:
        sampler, steps = wdm.sampling_defaults(sampler, steps, quality)
    sampler = sampler or DEFAULT_SAMPLER
    steps = default_steps(wdm, sampler, quality) if steps is None else int(steps)
    volumes = read_inputs(inputs, wdm.input_names, "synthesize")
    warn_outside_domain(wdm, list(volumes.values()), on_progress, "synthesize", at_model_spacing=False)
    first = next(iter(volumes.values()))
    condition, prepared, fits = prepare_condition(wdm, volumes)
    tracker = ProgressTracker(on_progress, "synthesize", total=steps * len(seeds), sampler=sampler, steps=steps)
    faithful = is_faithful(sampler, steps, wdm.diffusion.num_timesteps)
    call = network_call(wdm.network, torch_device, backend=backend, precision=precision, faithful=faithful,
                        on_progress=on_progress)  # fmt: skip

    def draw(batch: list[int]) -> list[np.ndarray]:
        """The images of one batch of seeds in the inputs' grid (the preview: the batch's first draw)."""

        def on_step(done: int, total: int, _x: torch.Tensor, pred: torch.Tensor) -> None:
            tracker.advance(len(batch))
            if on_preview is not None and (done % preview_every == 0 or done == total):
                grid = finish_image(wdm, pred[:1], prepared[0], postprocess)
                on_preview(0, from_grid(grid, fits, first.array.shape).astype(np.float32))

        coeffs = wdm.sample_coefficients(
            batch, sampler=sampler, steps=steps, condition=condition, on_step=on_step, cancel=cancel_check(cancel),
            network=call,
        )  # fmt: skip
        return [
            from_grid(finish_image(wdm, coeffs[b : b + 1], prepared[0], postprocess), fits, first.array.shape)
            for b in range(len(batch))
        ]

    per_batch = draws_per_batch(condition[0, 0].numel() * 8, len(seeds), torch_device)
    image, std, draws = collect_draws(draw, seeds, per_batch, keep_samples)
    output = wdm.card.get("output")
    meta = {
        "task": "synthesize",
        "model": wdm.card.get("name") or "unnamed",
        "inputs": {name: v.source for name, v in volumes.items()},
        "output": output if isinstance(output, (str, dict)) else None,
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "postprocess": postprocess,
        **call.choice.record(),
        "intensity": "[0, 1]: quantile-clipped, min-max scaled (as the model's training data)",
        **samples_meta(seeds),
    }
    return GeneratedVolume(array=image, affine=first.affine.copy(), seed=seed, meta=meta, std=std, draws=draws)
