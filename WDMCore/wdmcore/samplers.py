"""Samplers: short functions over a denoiser (x_t, step index) -> x0 prediction in coefficient space.

* :func:`ancestral` is the released 1000-step sampler, step for step (and with a respaced
  :class:`~wdmcore.diffusion.Diffusion` the k-step ancestral sampler the released code could not run).
* :func:`ddim` is deterministic DDIM (eta = 0, as released) or stochastic with eta > 0.

Random numbers follow the released recipe so that CPU runs reproduce it bit for bit: each output sample i
has its own generator seeded with ``seed + i``; the initial noise is drawn on the CPU generator (then moved to
the device), and one normal draw of the sample's shape follows every network call, on the device's generator.
With batch size 1 (how the released samples were made) this is exactly the released recipe; with larger
batches a sample still depends only on its own seed, never on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .diffusion import Diffusion
from .errors import WDMError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (done, total, x, pred_x0)
CancelCheck = Callable[[], bool]


class Cancelled(WDMError):
    """Raised inside a sampling loop when the caller asked to stop."""


class NoiseSource:
    """Per-sample random streams: sample i of a batch draws from generators seeded with ``seeds[i]``."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cpu = [torch.Generator().manual_seed(int(s)) for s in seeds]
        if self.device.type == "cpu":
            self.on_device = self.cpu
        else:
            self.on_device = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def initial(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T for the batch: one [1, *shape] draw per sample on its CPU generator."""
        return torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in self.cpu]).to(self.device)

    def step(self, like: torch.Tensor) -> torch.Tensor:
        """The per-step noise, shaped like the batch ``like``."""
        return torch.cat(
            [
                torch.randn((1, *like.shape[1:]), generator=g, device=self.device, dtype=like.dtype)
                for g in self.on_device
            ]
        )


def model_denoiser(network: torch.nn.Module, diffusion: Diffusion) -> Denoiser:
    """Wrap a network so that it is called with the original timesteps of a (possibly respaced) diffusion."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return network(x, diffusion.model_timesteps(t)).float()

    return denoise


def _check_cancel(cancel: CancelCheck | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("sampling was cancelled")


def ancestral(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Ancestral sampling over every step of ``diffusion`` (T-1 ... 0), starting from x_T = ``x``."""
    total = diffusion.num_timesteps
    for done, i in enumerate(reversed(range(total)), start=1):
        _check_cancel(cancel)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        model_output = denoise(x, t)
        out = diffusion.p_sample(model_output, x, t, noise.step(x))
        x = out["sample"]
        if on_step is not None:
            on_step(done, total, x, out["pred_xstart"])
    return x


def ddim(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    eta: float = 0.0,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """DDIM over every step of ``diffusion`` using the image-space-clipped x0 prediction."""
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 needs a noise source")
    total = diffusion.num_timesteps
    for done, i in enumerate(reversed(range(total)), start=1):
        _check_cancel(cancel)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        model_output = denoise(x, t)
        pred_x0 = diffusion.clip_x0(model_output) if diffusion.config.clip_denoised else model_output
        x = diffusion.ddim_step(pred_x0, x, t, eta=eta, noise=noise.step(x) if eta > 0 else None)
        if on_step is not None:
            on_step(done, total, x, pred_x0)
    return x


SAMPLERS = {"ancestral": ancestral, "ddim": ddim}
