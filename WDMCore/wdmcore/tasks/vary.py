"""Variations of a real volume (SDEdit): diffuse it part of the way, then denoise with an unconditional model.

``strength`` in (0, 1] is the fraction of the diffusion the volume is pushed through: small values keep the
anatomy and change texture, 1 forgets the input. The model works at its own spacing: the volume is resampled
into the model's grid (its image shape at the card's spacing, centred on the volume, along its voxel axes; see
:mod:`~wdmcore.tasks.model_grid`), normalised like the model's training data ([0.1 %, 99.9 %] quantiles ->
[-1, 1], the quantiles of the image's voxels in view), and its coefficients are diffused with the seed's noise
to the timestep where the sampler takes over: with the fast solvers (default: the engine's default sampler and
step count), the highest of the sampler's ``steps`` timesteps at or below ``strength`` x (T - 1), and only the
calls from there down run; with ``sampler="ancestral"``, the step nearest ``strength`` of the ``steps``-step
respaced schedule. The change the model made (in the input's intensities) is interpolated back and added to
the input, so detail finer than the model's voxels stays the input's; at the input's own spacing the result
is the model's output itself. Voxels outside the model's field of view keep their values, and a ``warning``
event (or a logged warning) says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..backends import is_faithful, network_call, resolve_choice
from ..errors import ConfigError
from ..events import ProgressCallback, ProgressTracker, warn
from ..models.model import WDMModel
from ..samplers import DEFAULT_SPACING, Cancelled, default_calls, model_denoiser, run_sampler, solver_timesteps
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
from .inputs import cancel_check, quantile_minmax, read_input, require_task
from .model_grid import ModelGrid
from .samples import collect_draws, draws_per_batch, sample_seeds, samples_meta

log = logging.getLogger(__name__)


def vary(
    model: WDMModel | str | os.PathLike,
    image: Any,
    *,
    strength: float = 0.5,
    seed: int = 0,
    samples: int = 1,
    keep_samples: bool = False,
    sampler: str | None = None,
    steps: int | None = None,
    quality: str = "default",
    device: str | torch.device = "cpu",
    precision: str = "auto",
    backend: str = "auto",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
) -> GeneratedVolume:
    """A variation of ``image`` (path, (array, affine), array or GeneratedVolume) in its own grid.

    ``sampler``/``steps``/``quality``: as for :func:`~wdmcore.tasks.generate.generate` (default: the engine's fast
    sampler and its step count over the whole schedule, of which only those below the starting noise level run; a
    distilled student: its card's sampler and calls).
    ``backend``/``precision``: what runs the network, as for :func:`~wdmcore.tasks.generate.generate`.

    ``samples``: variations from seeds ``seed`` ... ``seed + samples - 1``, sampled together as memory allows; the
    result is their mean with the per-voxel ``std`` (and every draw with ``keep_samples``), see
    :mod:`wdmcore.tasks.samples`."""
    if not 0 < strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got {strength}.")
    seeds = sample_seeds(seed, samples)
    torch_device = resolve_device(device)
    resolve_choice(torch_device, backend, precision)  # names and this device's limits, before the model is read
    wdm = resolve_model(model, device=torch_device, on_progress=on_progress)
    require_task(wdm, "generate")
    if wdm.card.get("distilled") and steps is None:
        sampler, steps = wdm.sampling_defaults(sampler, steps, quality)
    sampler = sampler or DEFAULT_SAMPLER
    if steps is None:
        steps = min(default_calls(sampler, None, quality), wdm.diffusion.num_timesteps)
    img = read_input(image, "image")
    warn_outside_domain(wdm, [img], on_progress, "vary", at_model_spacing=True)
    grid = ModelGrid.centred(wdm, img.affine, img.array.shape)
    box = grid.covered()
    if any(s.stop - s.start < n for s, n in zip(box, img.array.shape, strict=True)):
        share = np.prod([s.stop - s.start for s in box]) / img.array.size
        warn(
            on_progress,
            log,
            f"the model sees {grid.describe()} of the image, {share:.0%} of its voxels; the rest lies outside its "
            "field of view and is left unchanged (crop the image to the region to vary, or use a model with a "
            "larger window).",
            task="vary",
            kind="field-of-view",
        )
    # The intensity range from the image's own voxels in view, not from the model's grid: an image much smaller
    # than the model's window fills little of it (the rest is its edge values).
    _, lo, hi = quantile_minmax(img.array[box], 0.001, 0.999, "the image")
    seen = np.clip(grid.sample(img.array), lo, hi)  # what the model is given, in the input's intensities
    scaled = (seen - lo) / (hi - lo)
    c = wdm.diffusion_config
    x0 = to_coefficients(torch.from_numpy((2 * scaled - 1).astype(np.float32))[None, None], c.lll_scale, c.high_scale)
    x0 = x0.to(wdm.device)
    check = cancel_check(cancel)
    if sampler == "ancestral":
        diffusion = wdm.sampling_diffusion(steps)
        start = max(1, round(strength * diffusion.num_timesteps)) - 1  # step index to start denoising from
        calls, timesteps = start + 1, None
    else:
        diffusion = wdm.diffusion
        if sampler not in DEFAULT_SPACING:
            raise ConfigError(f"unknown sampler {sampler!r}; choose ancestral or one of {', '.join(DEFAULT_SPACING)}.")
        full = wdm.distilled_timesteps(sampler, steps) or solver_timesteps(diffusion, steps, DEFAULT_SPACING[sampler])
        timesteps = [t for t in full if t <= strength * (diffusion.num_timesteps - 1)] or full[-1:]
        start, calls = timesteps[0], len(timesteps)
    faithful = is_faithful(sampler, steps, wdm.diffusion.num_timesteps)
    call = network_call(wdm.network, torch_device, backend=backend, precision=precision, faithful=faithful,
                        on_progress=on_progress)  # fmt: skip
    tracker = ProgressTracker(on_progress, "vary", total=calls * len(seeds), steps=calls, sampler=sampler)

    def to_input(coeffs: torch.Tensor) -> np.ndarray:
        """Coefficients on the model's grid -> the whole volume in the input's grid and intensities: the change
        the model made, interpolated, added to the input (detail finer than the model's voxels is the input's)."""
        generated = from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale)[0, 0].clamp(-1, 1).numpy()
        values = (generated.astype(np.float64) + 1) / 2 * (hi - lo) + lo
        whole = img.array.copy()
        whole[box] += grid.back(values - seen)
        return whole

    def draw(batch: list[int]) -> list[np.ndarray]:
        """The variations of one batch of seeds in the input's grid (the preview: the batch's first)."""

        def on_step(done: int, total: int, _x: torch.Tensor, pred: torch.Tensor) -> None:
            tracker.advance(len(batch))
            if on_preview is not None and (done % preview_every == 0 or done == total):
                on_preview(0, to_input(pred[:1]).astype(np.float32))

        noise = wdm.noise_source(batch)
        with torch.inference_mode():
            t = torch.full((len(batch),), start, dtype=torch.long, device=x0.device)
            x = diffusion.q_sample(x0, t, noise.initial(tuple(x0.shape[1:])).to(x0.device))
            if timesteps is None:
                x = _ancestral_from(call, diffusion, x, start, noise, on_step, check)
            else:
                x = run_sampler(
                    sampler, call, diffusion, x, noise, steps=calls, timesteps=timesteps, on_step=on_step,
                    cancel=check,
                )  # fmt: skip
        return [to_input(x[b : b + 1]) for b in range(len(batch))]

    per_batch = draws_per_batch(x0[0, 0].numel() * 8, len(seeds), torch_device)
    result, std, draws = collect_draws(draw, seeds, per_batch, keep_samples)
    meta = {
        "task": "vary",
        "model": wdm.card.get("name") or "unnamed",
        "image": img.source,
        "strength": strength,
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "denoising_steps": calls,
        "model_grid": grid.describe(),
        **call.choice.record(),
        **samples_meta(seeds),
    }
    return GeneratedVolume(array=result, affine=img.affine.copy(), seed=seed, meta=meta, std=std, draws=draws)


def _ancestral_from(network, diffusion, x: torch.Tensor, start: int, noise, on_step, check) -> torch.Tensor:
    """The respaced ancestral sampler from step index ``start`` of ``diffusion`` down to 0; ``network(x, t)``
    is the model's network call."""
    denoise = model_denoiser(network, diffusion)
    for done, i in enumerate(reversed(range(start + 1)), start=1):
        if check is not None and check():
            raise Cancelled("the variation was cancelled")
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = diffusion.p_sample(denoise(x, t), x, t, noise.step(x))
        x = out["sample"]
        on_step(done, start + 1, x, out["pred_xstart"])
    return x
