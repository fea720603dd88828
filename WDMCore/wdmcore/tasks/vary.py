"""Variations of a real volume (SDEdit): diffuse it part of the way, then denoise with an unconditional model.

``strength`` in (0, 1] is the fraction of the diffusion the volume is pushed through: small values keep the
anatomy and change texture, 1 forgets the input. A crop of the model's size (centred; padded by edge values
when the volume is smaller) is normalised like the model's training data ([0.1 %, 99.9 %] quantiles ->
[-1, 1]), its coefficients are diffused to the step nearest ``strength`` with the seed's noise, and the
respaced ancestral sampler takes it back to step 0. The result replaces the crop in the input grid (mapped
back to the input's intensities); voxels outside the crop keep their values.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..events import ProgressCallback, ProgressTracker
from ..models.model import WDMModel
from ..samplers import Cancelled
from ..wavelets import from_coefficients, to_coefficients
from .generate import Cancel, GeneratedVolume, PreviewCallback, resolve_device, resolve_model
from .inputs import cancel_check, quantile_minmax, read_input, require_task


def centred_window(shape: tuple[int, ...], size: int) -> tuple[tuple[slice, ...], list[tuple[int, int]]]:
    window = tuple(slice(max((n - size) // 2, 0), max((n - size) // 2, 0) + min(n, size)) for n in shape)
    pads = [(0, max(size - n, 0)) for n in shape]
    return window, pads


def vary(
    model: WDMModel | str | os.PathLike,
    image: Any,
    *,
    strength: float = 0.5,
    seed: int = 0,
    steps: int = 50,
    device: str | torch.device = "cpu",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
) -> GeneratedVolume:
    """A variation of ``image`` (path, (array, affine), array or GeneratedVolume) in its own grid."""
    if not 0 < strength <= 1:
        raise ConfigError(f"strength must be in (0, 1], got {strength}.")
    torch_device = resolve_device(device)
    wdm = resolve_model(model, device=torch_device, on_progress=on_progress)
    require_task(wdm, "generate")
    img = read_input(image, "image")
    size = wdm.image_size
    window, pads = centred_window(img.array.shape, size)
    crop = np.pad(img.array[window], pads, mode="edge")
    scaled, lo, hi = quantile_minmax(crop, 0.001, 0.999, "the image")
    c = wdm.diffusion_config
    x0 = to_coefficients(torch.from_numpy((2 * scaled - 1).astype(np.float32))[None, None], c.lll_scale, c.high_scale)
    x0 = x0.to(wdm.device)
    diffusion = wdm.sampling_diffusion(steps)
    start = max(1, round(strength * diffusion.num_timesteps)) - 1  # step index to start denoising from
    noise = wdm.noise_source([seed])
    t = torch.full((1,), start, dtype=torch.long, device=x0.device)
    check = cancel_check(cancel)
    tracker = ProgressTracker(on_progress, "vary", total=start + 1, steps=start + 1)
    core = tuple(slice(0, s.stop - s.start) for s in window)

    def to_input(coeffs: torch.Tensor) -> np.ndarray:
        """Coefficients of the crop -> the whole volume in the input's grid and intensities."""
        generated = from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale)[0, 0].clamp(-1, 1).numpy()
        values = (generated.astype(np.float64) + 1) / 2 * (hi - lo) + lo
        whole = img.array.copy()
        whole[window] = values[core]
        return whole

    with torch.inference_mode():
        x = diffusion.q_sample(x0, t, noise.initial(tuple(x0.shape[1:])).to(x0.device))
        for done, i in enumerate(reversed(range(start + 1)), start=1):
            if check is not None and check():
                raise Cancelled("the variation was cancelled")
            t = torch.full((1,), i, dtype=torch.long, device=x.device)
            out = diffusion.p_sample(wdm.network(x, diffusion.model_timesteps(t)).float(), x, t, noise.step(x))
            x = out["sample"]
            tracker.advance(1)
            if on_preview is not None and (done % preview_every == 0 or i == 0):
                on_preview(0, to_input(out["pred_xstart"]).astype(np.float32))
    result = to_input(x)
    meta = {
        "task": "vary",
        "model": wdm.card.get("name") or "unnamed",
        "image": img.source,
        "strength": strength,
        "seed": seed,
        "steps": steps,
        "denoising_steps": start + 1,
    }
    return GeneratedVolume(array=result.astype(np.float32), affine=img.affine.copy(), seed=seed, meta=meta)
