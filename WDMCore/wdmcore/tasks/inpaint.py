"""Inpainting: fill a masked region of a volume; outside the mask the output equals the input exactly.

Two ways, chosen by the model's card:

* an ``inpaint`` model (fastWDM3D) as released: the image is voided (mask set to the image minimum), clipped
  to its [0.5 %, 99.5 %] quantiles and scaled to [-1, 1]; volume and mask (-1 outside, +1 inside) are padded
  with -1, centred, to at least 256 voxels per axis (BraTS 240 x 240 x 155 -> 256^3 at [8:248, 8:248, 50:205]);
  for each 26-connected component of the mask a crop of ``image_size`` voxels around its centroid is sampled
  in the released T = 2 steps (one seed per case; components in label order draw from the same stream), the
  crop output is pasted onto the component's voxels, and the result is mapped to the input's intensities by
  the released rescaling to the [0.5, 99.5] percentiles of the voided image. Unlike the release (which
  re-quantises every voxel of the volume), voxels outside the mask keep their input values exactly.
* a ``generate`` model (any unconditional WDM): RePaint in wavelet space. A crop of the model's size around
  the mask is normalised like the model's training data ([0.1 %, 99.9 %] quantiles of the image's voxels in
  the crop -> [-1, 1]); at every step the known part (coefficients whose 2x2x2 block lies wholly outside the
  mask) is replaced by the input diffused to that step, and each step is repeated ``resample`` times
  (x_{t-1} -> x_t -> x_{t-1}) so that the generated part agrees with the known one. A model whose card
  states its voxel spacing works at that spacing: when the input's differs, a window of the model's size and
  spacing (along the input's voxel axes, centred on the mask) is resampled from the input, filled there, and
  the filled region interpolated back into the input's grid (:mod:`~wdmcore.tasks.model_grid`, shared with
  variations).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..backends import is_faithful, network_call, resolve_choice
from ..errors import ConfigError
from ..events import ProgressCallback, ProgressTracker
from ..models.model import WDMModel
from ..samplers import Cancelled
from ..wavelets import dwt3, from_coefficients, to_coefficients
from .domain import warn_mask_in_background, warn_outside_domain
from .generate import Cancel, GeneratedVolume, PreviewCallback, resolve_device, resolve_model
from .inputs import binary_mask, cancel_check, check_same_grid, quantile_minmax, read_input
from .model_grid import ModelGrid, voxel_spacing
from .samples import collect_draws, sample_seeds, samples_meta

FAST_QUANTILES = (0.005, 0.995)
FAST_PADDED = 256


# -- fastWDM3D ----------------------------------------------------------------------------------------------


def fast_normalise(voided: np.ndarray) -> np.ndarray:
    """The released normalisation of the voided t1n, in float32 as released: quantile clip, then
    2 (x - min) / (max - min) - 1 evaluated in that order."""
    x = voided.astype(np.float32)
    low, high = np.quantile(x, FAST_QUANTILES)
    x = np.clip(x, low, high)
    lo, hi = x.min(), x.max()
    if hi <= lo:
        raise ConfigError("the image is constant outside the mask: there is nothing to inpaint from.")
    return (x - lo) * np.float32(2) / (hi - lo) - np.float32(1)


def pad_widths(shape: tuple[int, ...], size: int, padded: int = FAST_PADDED) -> list[tuple[int, int]]:
    """Centred padding (floor before) to at least max(padded, size) voxels per axis."""
    target = max(padded, size)
    return [((max(target, n) - n) // 2, max(target, n) - n - (max(target, n) - n) // 2) for n in shape]


def component_windows(inside: np.ndarray, size: int) -> list[tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]]:
    """(component mask, start, end) per 26-connected component in label order; the window of ``size`` voxels
    is centred on the truncated centroid and shifted inside the volume as released."""
    from scipy import ndimage

    labels, count = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
    windows = []
    for label in range(1, count + 1):
        component = labels == label
        centroid = np.argwhere(component).mean(axis=0).astype(np.int64)
        start, end = [], []
        for c, n in zip(centroid, inside.shape, strict=True):
            s = int(c) - size // 2
            if s < 0:
                s = 0
            elif s + size > n:
                s = n - size
            start.append(s)
            end.append(s + size)
        windows.append((component, tuple(start), tuple(end)))
    return windows


def _inpaint_fast(wdm: WDMModel, call, image: np.ndarray, inside: np.ndarray, seed: int, steps: int, on_step, cancel):
    size = wdm.image_size
    c = wdm.diffusion_config
    voided = image.copy()
    voided[inside] = image.min()
    padded = (wdm.card.get("preprocessing") or {}).get("padded", FAST_PADDED)
    pads = pad_widths(image.shape, size, max(padded) if isinstance(padded, list) else int(padded))
    volume = np.pad(fast_normalise(voided), pads, constant_values=-1.0)
    mask = np.pad(inside, pads, constant_values=False)
    full01 = (volume.astype(np.float32) + 1) / 2
    # Back to the input's intensities as released: min-max, then to the voided image's [0.5, 99.5] percentiles.
    reference = voided.copy()
    reference[inside] = 0
    low, high = np.percentile(reference, [0.5, 99.5])
    unpad = tuple(slice(a, a + n) for (a, _), n in zip(pads, image.shape, strict=True))

    def to_input(padded01: np.ndarray) -> np.ndarray:
        scaled = (padded01 - padded01.min()) / (padded01.max() - padded01.min())
        return scaled[unpad].astype(np.float64) * (high - low) + low

    noise = wdm.noise_source([seed])
    for component, start, end in component_windows(mask, size):
        window = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
        crop = torch.from_numpy(np.ascontiguousarray(volume[window]))[None, None]
        mask_crop = torch.from_numpy(np.where(component[window], 1.0, -1.0).astype(np.float32))[None, None]
        condition = torch.cat(
            [
                to_coefficients(crop, c.lll_scale, c.high_scale).clamp(-1, 1),
                to_coefficients(mask_crop, c.lll_scale, c.high_scale).clamp(-1, 1),
            ],
            dim=1,
        ).to(wdm.device)
        x = noise.initial((8, *(s // 2 for s in crop.shape[2:])))
        from ..samplers import run_sampler

        def paste(coeffs: torch.Tensor, base=full01, component=component, window=window) -> np.ndarray:
            """The whole padded volume in [0, 1] with this component's crop output pasted onto its voxels."""
            crop01 = (from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale).clamp(-1, 1) + 1) / 2
            pasted = base.copy()
            pasted[window] = crop01[0, 0].numpy()
            result = base.copy()
            result[component] = pasted[component]
            return result

        def step(done, total, _x, pred, paste=paste):
            on_step(done, total, lambda: to_input(paste(pred)))

        coeffs = run_sampler(
            "ancestral", call, wdm.diffusion, x, noise, steps=steps, cancel=cancel,
            on_step=None if on_step is None else step,
            condition=condition,
        )  # fmt: skip
        full01 = paste(coeffs)
    return to_input(full01)


# -- RePaint with an unconditional model -----------------------------------------------------------------------


def _repaint(wdm, call, image, affine, inside, seed, steps, resample, on_step, cancel):
    """RePaint on the model's grid (:class:`~wdmcore.tasks.model_grid.ModelGrid`) around the mask's bounding box:
    the input's own voxels when its spacing is the model's (or the card states none), else a window of the
    model's shape and spacing resampled from the input (linear, edge values beyond the volume; the mask marks
    every model voxel that touches a masked input voxel). The filled values are interpolated back at the
    masked voxels."""
    idx = np.argwhere(inside)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    grid = ModelGrid.around(wdm, affine, image.shape, lo, hi)
    if np.any((hi - lo + 1) > np.asarray(grid.shape) * grid.ratio + 1e-6):
        own = voxel_spacing(affine)
        raise ConfigError(
            f"the mask spans {tuple(round(float(v), 1) for v in (hi - lo + 1) * own)} mm, more than the model's "
            f"window of {grid.describe()}; split the mask, or use a model with a larger window."
        )
    crop = grid.sample(image)
    crop_inside = grid.sample(inside.astype(np.float64), outside=0.0) > 0
    box = grid.covered()
    # The intensity range from the image's voxels in view (as for variations): an image much smaller than the
    # model's window fills little of it.
    _, lo, hi = quantile_minmax(image[box], 0.001, 0.999, "the image around the mask")

    def paste(values: np.ndarray) -> np.ndarray:
        out = image.copy()
        filled = out[box]
        filled[inside[box]] = grid.back(values)[inside[box]]  # the mask lies inside the window (checked above)
        return out

    on_crop_step = _whole(on_step, paste)
    return paste(_repaint_crop(wdm, call, crop, crop_inside, seed, steps, resample, on_crop_step, cancel, (lo, hi)))


def _whole(on_step, paste):
    """A crop's step callback that hands on the estimate of the whole output (``paste`` of the crop's)."""
    if on_step is None:
        return None
    return lambda done, total, crop_estimate: on_step(done, total, lambda: paste(crop_estimate()))


def _repaint_crop(wdm, call, crop, crop_inside, seed, steps, resample, on_step, cancel, intensity) -> np.ndarray:
    """RePaint of one crop of the model's size: the filled crop in the input's intensities (float64).
    ``call(x, t)``: the network call (:func:`wdmcore.backends.network_call`).
    ``intensity``: the (low, high) input values that become -1 and 1 (values beyond are clipped).
    ``on_step(done, total, estimate)``: ``estimate()`` is the current estimate of the crop, made on demand."""
    c = wdm.diffusion_config
    lo, hi = intensity
    scaled = (np.clip(crop, lo, hi) - lo) / (hi - lo)
    known_image = torch.from_numpy((2 * scaled - 1).astype(np.float32))[None, None].to(wdm.device)
    x0_known = to_coefficients(known_image, c.lll_scale, c.high_scale)
    blocks = dwt3(torch.from_numpy(crop_inside.astype(np.float32))[None, None])[:, 0]
    known = (blocks.abs() < 1e-6).to(wdm.device)  # LLL of a block is zero only when no voxel is masked

    def to_crop(coeffs: torch.Tensor) -> np.ndarray:
        """Coefficients -> the crop in the input's intensities (float64)."""
        generated = from_coefficients(coeffs.float().cpu(), c.lll_scale, c.high_scale)[0, 0].clamp(-1, 1).numpy()
        return (generated.astype(np.float64) + 1) / 2 * (hi - lo) + lo

    diffusion = wdm.sampling_diffusion(steps)
    noise = wdm.noise_source([seed])
    x = noise.initial((8, *x0_known.shape[2:]))
    total = diffusion.num_timesteps
    for done, i in enumerate(reversed(range(total)), start=1):
        for r in range(resample):
            if cancel is not None and cancel():
                raise Cancelled("inpainting was cancelled")
            t = torch.full((1,), i, dtype=torch.long, device=x.device)
            known_t = diffusion.q_sample(x0_known, t, noise.step(x)) if i > 0 else x0_known
            x = torch.where(known, known_t, x)
            out = diffusion.p_sample(call(x, diffusion.model_timesteps(t)), x, t, noise.step(x))
            x_prev = out["sample"]
            if r < resample - 1 and i > 0:
                # Jump back one step: x_t ~ q(x_t | x_{t-1}).
                beta = diffusion.extract("betas", t, x.dim())
                x = torch.sqrt(1 - beta) * x_prev + torch.sqrt(beta) * noise.step(x)
            else:
                x = x_prev
        if on_step is not None:
            on_step(done, total, lambda pred=out["pred_xstart"]: to_crop(torch.where(known, x0_known, pred)))
    return to_crop(torch.where(known, x0_known, x))


# -- the task ----------------------------------------------------------------------------------------------


def inpaint(
    model: WDMModel | str | os.PathLike,
    image: Any,
    mask: Any,
    *,
    seed: int = 0,
    samples: int = 1,
    keep_samples: bool = False,
    steps: int | None = None,
    resample: int = 5,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    backend: str = "auto",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
) -> GeneratedVolume:
    """Fill the region ``mask`` marks (non-zero voxels) in ``image`` (path, (array, affine), array or
    GeneratedVolume). The result is in the image's grid; outside the mask it equals the image exactly.

    ``steps``: an ``inpaint`` model runs its released 2 steps by default; an unconditional model runs
    ``steps`` respaced ancestral steps (default 50), each repeated ``resample`` times (RePaint).
    ``backend``/``precision``: what runs the network, as for :func:`~wdmcore.tasks.generate.generate` (``auto``
    is PyTorch fp32 for the released fastWDM3D steps).

    ``samples``: fills from seeds ``seed`` ... ``seed + samples - 1`` (one after the other: each runs its own
    windows); the result is their mean with the per-voxel ``std`` (0 outside the mask), and every draw with
    ``keep_samples``, see :mod:`wdmcore.tasks.samples`."""
    seeds = sample_seeds(seed, samples)
    torch_device = resolve_device(device)
    resolve_choice(torch_device, backend, precision)  # names and this device's limits, before the model is read
    wdm = resolve_model(model, device=torch_device, on_progress=on_progress)
    if wdm.task not in ("inpaint", "generate"):
        raise ConfigError(f"this model's task is {wdm.task!r}; inpainting needs an inpaint or a generate model.")
    img = read_input(image, "image")
    msk = read_input(mask, "mask")
    check_same_grid([img, msk])
    inside = binary_mask(msk)
    warn_mask_in_background(img, msk, inside, on_progress)
    if resample < 1:
        raise ConfigError(f"resample must be at least 1, got {resample}.")
    fast = wdm.task == "inpaint"
    warn_outside_domain(wdm, [img], on_progress, "inpaint", at_model_spacing=not fast)
    steps = (wdm.diffusion.num_timesteps if fast else 50) if steps is None else int(steps)
    if not 1 <= steps <= wdm.diffusion.num_timesteps:
        raise ConfigError(f"steps must be between 1 and {wdm.diffusion.num_timesteps}, got {steps}.")
    if fast:
        from scipy import ndimage

        passes = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))[1]  # one run per component
    else:
        passes = 1
    tracker = ProgressTracker(on_progress, "inpaint", total=steps * passes * len(seeds), steps=steps)

    def on_step(done: int, total: int, estimate) -> None:
        """``estimate()``: the current estimate of the whole output's values (input grid), computed on demand."""
        tracker.advance(1)
        if on_preview is not None and (done % preview_every == 0 or done == total):
            preview = img.array.copy()
            preview[inside] = estimate()[inside]
            on_preview(0, preview.astype(np.float32))

    check = cancel_check(cancel)
    faithful = is_faithful("ancestral", steps, wdm.diffusion.num_timesteps)
    call = network_call(wdm.network, torch_device, backend=backend, precision=precision, faithful=faithful,
                        on_progress=on_progress)  # fmt: skip

    def draw(batch: list[int]) -> list[np.ndarray]:
        filled = []
        for one in batch:
            with torch.inference_mode():
                if fast:
                    values = _inpaint_fast(wdm, call, img.array, inside, one, steps, on_step, check)
                else:
                    values = _repaint(wdm, call, img.array, img.affine, inside, one, steps, resample, on_step, check)
            result = img.array.copy()
            result[inside] = values[inside]  # outside the mask: the input, exactly (so the std is 0 there)
            filled.append(result)
        return filled

    mean, std, draws = collect_draws(draw, seeds, 1, keep_samples)
    meta = {
        "task": "inpaint",
        "method": "fastWDM3D (released)" if fast else f"RePaint in wavelet space, resample {resample}",
        "model": wdm.card.get("name") or "unnamed",
        "image": img.source,
        "mask": msk.source,
        "seed": seed,
        "steps": steps,
        "masked_voxels": int(inside.sum()),
        **call.choice.record(),
        **samples_meta(seeds),
    }
    return GeneratedVolume(array=mean, affine=img.affine.copy(), seed=seed, meta=meta, std=std, draws=draws)
