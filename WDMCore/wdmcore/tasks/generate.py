"""Model + settings -> generated volumes with intensities and geometry.

>>> from wdmcore.tasks.generate import generate
>>> volumes = generate("demo_phantom_64", 2, seed=0)             # default fast sampler
>>> volumes[0].array.shape, volumes[0].affine                     # (64, 64, 64) in (i, j, k), voxel-to-RAS
>>> volumes[0].save("out/sample_0.nii.gz")                        # + out/sample_0.json

Sample i is drawn from seed ``seed + i`` alone: the same seed gives the same volume whatever the batch size.
``backend``/``precision`` choose what runs the network (:mod:`wdmcore.backends`): ``auto`` is the fastest choice
the quality tests accept on this device and CPU (PyTorch fp32 for the released ancestral sampler). On CUDA,
``precision="bf16"`` or ``"fp16"`` runs the network under autocast (GroupNorm, the image-space x0 clip and the
sampler update stay in fp32), ``compile=True`` wraps it in :func:`torch.compile` and uses the channels-last-3d
layout.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backends import is_faithful, network_call, resolve_choice
from ..devices import resolve_device
from ..errors import ConfigError, NonFiniteError, OutOfMemoryError
from ..events import ProgressCallback, ProgressTracker
from ..loading import load_model
from ..models.model import WDMModel
from ..samplers import SAMPLERS, Cancelled, NoiseSource, default_calls, run_sampler
from ..vocabulary import (  # noqa: F401 - defaults kept with the names `wdm` shares (no torch); re-exported
    DEFAULT_MODEL,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_SEED,
    PREVIEW_SAMPLER,
    PREVIEW_STEPS,
)
from ..volumes.writing import Geometry, card_geometry, save_volume
from ..wavelets import from_coefficients
from .inputs import cancel_check

log = logging.getLogger(__name__)

PreviewCallback = Callable[[int, np.ndarray], None]
Cancel = Callable[[], bool] | threading.Event


@dataclass
class GeneratedVolume:
    """One generated volume: ``array`` float32 in NIfTI index order (i, j, k) in the card's intensity range,
    ``affine`` 4x4 voxel-to-RAS (mm), the ``seed`` it was drawn from and a ``meta`` record.

    A task result of several draws (``samples=N``, see :mod:`wdmcore.tasks.samples`) is one too: ``array`` is
    the mean of the draws (seeds ``seed`` ... ``seed + N - 1``), ``std`` their per-voxel standard deviation and
    ``draws`` every draw when they were kept; both None for a single draw."""

    array: np.ndarray
    affine: np.ndarray
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)
    std: np.ndarray | None = None
    draws: list[np.ndarray] | None = None

    def save(
        self, path: str | os.PathLike, *, dtype: str = "float32", sidecar: bool = True, overwrite: bool = True
    ) -> Path:
        """Write as ``.nii.gz``/``.nii``/``.nrrd`` (from the name) plus a ``.json`` sidecar with ``meta``,
        atomically; with ``overwrite=False`` an existing file is an error."""
        return save_volume(self.array, self.affine, path, self.meta, dtype=dtype, sidecar=sidecar, overwrite=overwrite)


# --------------------------------------------------------------------------------------------- model, device


def resolve_model(
    model: WDMModel | str | os.PathLike,
    *,
    preset: str | None = None,
    device: str | torch.device = "cpu",
    on_progress: ProgressCallback | None = None,
) -> WDMModel:
    """A :class:`WDMModel` from a model object, a checkpoint path or a catalogue name (fetched if needed)."""
    if isinstance(model, WDMModel):
        return model.to(device)
    return load_model(model, preset=preset, device=device, on_progress=on_progress)


def _intensity(card: dict[str, Any]) -> tuple[float, float, str]:
    info = card.get("intensity")
    if isinstance(info, dict):
        low, high = info.get("range") or (0.0, 1.0)
        return float(low), float(high), str(info.get("meaning", ""))
    return 0.0, 1.0, str(info or "[0, 1] (the network's [-1, 1] mapped by (x + 1) / 2)")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _report_step(
    tracker: ProgressTracker,
    to_output: Callable[[torch.Tensor], np.ndarray],
    on_preview: PreviewCallback | None,
    preview_every: int,
    first_index: int,
    count: int,
    done: int,
    total: int,
    x: torch.Tensor,
    pred_x0: torch.Tensor,
) -> None:
    tracker.advance(count, volume=first_index)
    if on_preview is not None and (done % preview_every == 0 or done == total):
        for b, image in enumerate(to_output(pred_x0)):
            on_preview(first_index + b, image)


def _check_finite(coeffs: torch.Tensor, seeds: list[int], wdm: WDMModel) -> None:
    # Checked before the clamp to the output range, which would keep NaN and hide infinities.
    if bool(torch.isfinite(coeffs).all()):
        return
    raise NonFiniteError(
        f"generating the volume(s) of seed(s) {', '.join(map(str, seeds))} produced NaN or infinite values, so "
        "nothing was written. The model's weights or its card's diffusion settings (beta_start, beta_end, "
        f"lll_scale: {wdm.diffusion_config.to_dict()}) do not make a working sampler; check the model card, "
        "or use another checkpoint."
    )


# -------------------------------------------------------------------------------------------------- generate


def generate(
    model: WDMModel | str | os.PathLike = DEFAULT_MODEL,
    num: int = 1,
    *,
    seed: int = 0,
    sampler: str | None = None,
    steps: int | None = None,
    quality: str = "default",
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    backend: str = "auto",
    cancel: Cancel | None = None,
    on_progress: ProgressCallback | None = None,
    on_preview: PreviewCallback | None = None,
    preview_every: int = 5,
    compile: bool = False,
    preset: str | None = None,
    reference_affine: np.ndarray | None = None,
    on_volume: Callable[[GeneratedVolume], None] | None = None,
    progress: bool = False,
) -> list[GeneratedVolume]:
    """Generate ``num`` volumes.

    Args:
        model: a :class:`WDMModel`, a checkpoint path (``.pt`` released format, ``.safetensors`` ours) or a
            catalogue name (``wdm models``; downloaded and verified on first use).
        num: how many volumes; volume i is drawn from seed ``seed + i`` (independent of ``batch_size``).
        sampler: ``"unipc"`` (default; a distilled student's default is its card's sampler), ``"dpm++2m"``,
            ``"dpm++2m-sde"``, ``"ddim"`` (fast solvers on log-SNR
            spacing down to t = 0) or ``"ancestral"`` (the paper's sampler; with 1000 steps exactly the
            released one, respaced below that).
        steps: network evaluations per volume; default per sampler (:data:`DEFAULT_STEPS`: 10 for unipc, 1000
            for ancestral; a student's card's calls for the sampler it was distilled for, see :mod:`wdmcore.distill`).
        quality: ``"default"``, or ``"preview"`` for a quick look (UniPC, :data:`PREVIEW_STEPS` = 6 calls); used
            when ``steps`` is not given.
        batch_size: volumes sampled together (memory vs. speed; the results do not change).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` (CUDA, or a CPU with native bf16) or ``"fp16"`` (CUDA).
        backend: ``"auto"``, ``"torch"`` or ``"openvino"`` (CPU; converted once per weights and grid, cached).
        cancel: a callable returning True, or a :class:`threading.Event`; checked before every step, then
            :class:`~wdmcore.samplers.Cancelled` is raised.
        on_progress: receives ``{"event": "progress", "task": "sample", "done", "total", "eta_s", ...}`` after
            every step (``total`` = num x steps).
        on_preview: ``on_preview(index, x0_image)`` every ``preview_every`` steps and at the last step, with the
            current x0 estimate of volume ``index`` as an (i, j, k) float32 array in the output intensity range.
        compile: wrap the network in :func:`torch.compile` (pays off for many volumes; first call is slow).
        preset: the network preset of a ``.pt`` file whose preset cannot be detected.
        reference_affine: for cards stating ``source_voxel_of_output_voxel``, the affine of a training-set
            volume to place the outputs in its frame (see :func:`wdmcore.volumes.writing.card_geometry`).
        on_volume: called with each :class:`GeneratedVolume` as soon as its batch is done (to write it at
            once: volumes finished before an error, a cancel or a signal are then kept).
        progress: show a progress bar on stderr (of the download too, if the model is fetched first).

    Returns one :class:`GeneratedVolume` per seed, in order. Raises :class:`OutOfMemoryError` when the device
    runs out of memory, :class:`Cancelled` when cancelled, :class:`ConfigError` for invalid settings.
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if num < 1 or batch_size < 1:
        raise ConfigError("num and batch_size must be at least 1.")
    if preview_every < 1:
        raise ConfigError("preview_every must be at least 1.")
    if not 0 <= int(seed) <= MAX_SEED - (num - 1):
        raise ConfigError(
            f"seed must lie between 0 and {MAX_SEED - (num - 1)} (seed + i for {num} volumes), got {seed}."
        )
    default_calls(sampler or DEFAULT_SAMPLER, steps, quality)  # the quality and steps, before the model is read
    if progress:
        from ..progressbar import ProgressBars, combine

        with ProgressBars() as bars:
            return generate(model, num, seed=seed, sampler=sampler, steps=steps, quality=quality,
                            batch_size=batch_size,
                            device=device, precision=precision, backend=backend, cancel=cancel,
                            on_progress=combine(on_progress, bars),
                            on_preview=on_preview, preview_every=preview_every, compile=compile, preset=preset,
                            reference_affine=reference_affine, on_volume=on_volume)  # fmt: skip
    torch_device = resolve_device(device)
    resolve_choice(torch_device, backend, precision)  # names and this device's limits, before the model is read
    wdm = resolve_model(model, preset=preset, device=torch_device, on_progress=on_progress)
    if wdm.task != "generate":
        raise ConfigError(
            f"this is a {wdm.task} model: it needs inputs ({', '.join(wdm.input_names)}); use `wdm {wdm.task}` or "
            f"wdmcore.{wdm.task}() instead of generating with it."
        )
    sampler, steps = wdm.sampling_defaults(sampler, steps, quality)
    if not 1 <= steps <= wdm.diffusion.num_timesteps:
        raise ConfigError(f"steps must be between 1 and {wdm.diffusion.num_timesteps}, got {steps}.")
    check_cancel = cancel_check(cancel)

    size = wdm.image_size
    geometry: Geometry = card_geometry(wdm.card, (size, size, size), reference_affine)
    low, high, meaning = _intensity(wdm.card)
    lll_scale = wdm.diffusion_config.lll_scale

    def to_output(coeffs: torch.Tensor) -> np.ndarray:
        image = from_coefficients(coeffs.float(), lll_scale)[:, 0].clamp(-1, 1)
        return (low + (high - low) * (image + 1) / 2).cpu().numpy().astype(np.float32, copy=False)

    from ..version import __version__

    base_meta = {
        "model": wdm.card.get("name") or "unnamed",
        "sampler": sampler,
        "steps": steps,
        "device": str(torch_device),
        "wdmcore_version": __version__,
        "image_size": size,
        "intensity": meaning,
        "intensity_range": [low, high],
        "geometry_known": geometry.known,
        "geometry_notes": geometry.notes,
    }

    network = wdm.network
    # Measured on an H200 at batch 1 (benchmarks/results/gpu_suite_nvidia-h200_20261126-003859.md): eager bf16
    # runs faster in the default layout (20.8 vs 23.7 ms per step at 128^3, 121 vs 172 ms at 256^3), while the
    # compiled network was timed in channels-last-3d (12.8 ms at 128^3), so only the compiled path uses it.
    channels_last = compile and torch_device.type == "cuda"
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)  # in place: the weights' values are unchanged
    if compile:
        network = torch.compile(network)
    faithful = is_faithful(sampler, steps, wdm.diffusion.num_timesteps)
    call = network_call(network, torch_device, backend=backend, precision=precision, faithful=faithful,
                        channels_last=channels_last, on_progress=on_progress)  # fmt: skip
    tracker = ProgressTracker(on_progress, "sample", total=num * steps, sampler=sampler, steps=steps)
    half = size // 2
    results: list[GeneratedVolume] = []
    started = time.perf_counter()
    for start in range(0, num, batch_size):
        seeds = [seed + i for i in range(start, min(num, start + batch_size))]

        on_step = functools.partial(_report_step, tracker, to_output, on_preview, preview_every, start, len(seeds))
        try:
            with torch.inference_mode():
                noise = NoiseSource(seeds, torch_device)
                x = noise.initial((wdm.network.config.in_channels, half, half, half))
                coeffs = run_sampler(
                    sampler,
                    call,
                    wdm.diffusion,
                    x,
                    noise,
                    steps=steps,
                    on_step=on_step,
                    cancel=check_cancel,
                    timesteps=wdm.distilled_timesteps(sampler, steps),
                )
                _check_finite(coeffs, seeds, wdm)
                arrays = to_output(coeffs)
        except Cancelled:
            raise
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            if torch_device.type == "cuda":
                torch.cuda.empty_cache()
            raise OutOfMemoryError(
                f"out of memory on {torch_device} while generating {len(seeds)} volume(s) of {size}^3 at once. "
                "Use a smaller batch size (1 needs the least memory), precision 'bf16' or 'fp16' on a GPU, or "
                "generate on the CPU (device 'cpu'), which is slower but limited only by RAM."
            ) from exc
        for s, array in zip(seeds, arrays, strict=True):
            meta = {**base_meta, **call.choice.record(), "seed": s}
            volume = GeneratedVolume(array=array, affine=geometry.affine.copy(), seed=s, meta=meta)
            results.append(volume)
            if on_volume is not None:
                on_volume(volume)
    log.info("generated %d volume(s) in %.1f s", num, time.perf_counter() - started)
    return results
