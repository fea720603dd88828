"""The WDM diffusion process in wavelet-coefficient space.

As released (see the reference facts §3-4): a linear beta schedule over 1000 steps, the network predicts x0
(coefficients), x0 predictions are clipped in *image* space, and ancestral sampling uses the "fixed large"
variance (beta_t, with the posterior variance at t = 0). Schedule arrays are float64; each per-timestep
coefficient is cast to float32 before it touches a tensor, so the arithmetic is fp32 as released.

The same class runs the other members of the family: cWDM (conditional, x0 clipped to [0, 1]) and
fastWDM3D (a variance-preserving schedule with T = 2 steps, every sub-band divided by sqrt 8).

A :class:`Diffusion` can be *respaced* to a subset of the original timesteps (fewer sampling steps); it then
maps its own step index back to the original timestep the network was trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .wavelets import RELEASED_LLL_SCALE, dwt3, from_coefficients, to_coefficients

SCHEDULES = ("linear", "vp")
VP_T_MIN = 1e-3  # the VP schedule's continuous time grid starts here (fastWDM3D)


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion settings that a model was trained with (part of a model card)."""

    steps: int = 1000
    schedule: str = "linear"  # "linear" (wdm-3d, cWDM) or "vp" (fastWDM3D)
    beta_start: float = 1e-4  # linear: for 1000 steps; scaled by 1000/steps like the released schedule
    beta_end: float = 0.02
    beta_min: float = 0.1  # vp only
    beta_max: float = 20.0  # vp only
    lll_scale: float = RELEASED_LLL_SCALE
    high_scale: float = 1.0  # divides the seven high bands of the coefficient representation
    clip_min: float = -1.0  # x0 predictions are clamped to [clip_min, clip_max] in image space
    clip_max: float = 1.0
    clip_denoised: bool = True

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"noise schedule {self.schedule!r} is not supported; use one of {', '.join(SCHEDULES)}.")
        if self.steps < 2:
            raise ConfigError(f"a diffusion needs at least 2 steps, got {self.steps}.")
        if not self.clip_min < self.clip_max:
            raise ConfigError(f"clip_min ({self.clip_min}) must be below clip_max ({self.clip_max}).")
        if self.schedule == "vp" and not 0 <= self.beta_min < self.beta_max:
            raise ConfigError(f"the vp schedule needs 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}.")
        betas = self.betas()
        # beta_t is a probability of noise per step: outside (0, 1) the schedule has no square roots (NaN).
        if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas < 1)):
            raise ConfigError(
                f"the noise schedule from beta_start={self.beta_start}, beta_end={self.beta_end} over {self.steps} "
                "steps leaves (0, 1); every beta must lie strictly between 0 and 1. Fix the model card's diffusion "
                "settings (the released models use beta_start 0.0001 and beta_end 0.02 for 1000 steps)."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def betas(self) -> np.ndarray:
        if self.schedule == "vp":
            return self._vp_betas()
        scale = 1000 / self.steps
        return np.linspace(scale * self.beta_start, scale * self.beta_end, self.steps, dtype=np.float64)

    def _vp_betas(self) -> np.ndarray:
        """Variance-preserving schedule on the grid s_k = (k/T)(1 - 1e-3) + 1e-3, k = 0..T:
        abar(s) = exp(-s^2 (beta_max - beta_min)/2 - s beta_min), beta_k = 1 - abar(s_k)/abar(s_{k-1})."""
        s = np.arange(self.steps + 1, dtype=np.float64) / self.steps * (1.0 - VP_T_MIN) + VP_T_MIN
        log_mean = -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min
        # Evaluated as 1 - (1 - exp(.)) like the released code (changes the last bits only).
        alpha_bar = 1.0 - (1.0 - np.exp(2.0 * log_mean))
        return 1.0 - alpha_bar[1:] / alpha_bar[:-1]


def space_timesteps(num_timesteps: int, spacing: str | int) -> list[int]:
    """Which original timesteps a respaced diffusion keeps, as the released code chooses them.

    ``spacing`` is a count (``50`` or ``"50"``: evenly spread, first and last included), a comma-separated
    list of counts per equal section (``"10,15,20"``), or ``"ddimN"`` (a constant integer stride giving N steps).
    """
    spacing = str(spacing).strip()
    if spacing.startswith("ddim"):
        wanted = int(spacing[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == wanted:
                return list(range(0, num_timesteps, stride))
        raise ConfigError(f"cannot take exactly {wanted} evenly strided steps out of {num_timesteps}.")
    try:
        counts = [int(c) for c in spacing.split(",") if c]
    except ValueError:
        raise ConfigError(f"cannot read step spacing {spacing!r}; use e.g. 50, '10,20' or 'ddim50'.") from None
    if counts == [1]:
        # One step must start from pure noise: keep the last timestep (the released rule would keep t = 0,
        # a network call that expects an almost clean input and returns noise).
        return [num_timesteps - 1]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, taken = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ConfigError(f"cannot take {count} steps from a section of {size} timesteps.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        # Accumulated (not multiplied) float stride: this is what decides rounding ties as released.
        position = 0.0
        for _ in range(count):
            taken.append(start + round(position))
            position += stride
        start += size
    return sorted(set(taken))


class Diffusion:
    """Schedule arrays and the per-step formulas (forward process, posterior, x0 clipping, loss)."""

    def __init__(self, config: DiffusionConfig = DiffusionConfig(), timesteps: Sequence[int] | None = None):
        self.config = config
        base_betas = config.betas()
        base_alphas_cumprod = np.cumprod(1.0 - base_betas, axis=0)
        kept = list(range(config.steps)) if timesteps is None else sorted(set(int(t) for t in timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= config.steps:
            raise ConfigError(f"timesteps must lie in [0, {config.steps - 1}].")
        # Re-derive the betas from the cumulative alphas at the kept steps (the released code always does this,
        # even when it keeps every step; it changes betas by at most ~2e-16).
        betas, last = [], 1.0
        for t in kept:
            betas.append(1.0 - base_alphas_cumprod[t] / last)
            last = base_alphas_cumprod[t]
        self.timestep_map = torch.tensor(kept, dtype=torch.int64)
        self._set_arrays(np.array(betas, dtype=np.float64))

    def _set_arrays(self, betas: np.ndarray) -> None:
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance at t = 0 (zero) is replaced by the one at t = 1; a one-step diffusion has no t = 1 and uses
        # its beta (the value only matters for likelihoods: no noise is added at t = 0).
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        # "Fixed large" variance used by the released sampler: beta_t, with the posterior variance at t = 0.
        self.variance_fixed_large = np.append(first, betas[1:])
        self.log_variance_fixed_large = np.log(self.variance_fixed_large)
        self._tensor_cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    def respaced(self, spacing: str | int) -> Diffusion:
        """A diffusion over a subset of this one's timesteps (only from a full, unrespaced diffusion)."""
        if self.num_timesteps != self.config.steps:
            raise ConfigError("respace the full diffusion, not an already respaced one.")
        return Diffusion(self.config, space_timesteps(self.num_timesteps, spacing))

    # -- per-timestep coefficients -------------------------------------------------------------------------

    def extract(self, name: str, t: torch.Tensor, ndim: int = 5) -> torch.Tensor:
        """Entry ``t`` of a float64 schedule array, cast to float32 and shaped [B, 1, 1, ...] for broadcasting."""
        key = (name, t.device)
        table = self._tensor_cache.get(key)
        if table is None:
            table = torch.from_numpy(getattr(self, name)).to(t.device)
            self._tensor_cache[key] = table
        values = table[t].float()
        return values.view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The original timesteps (0..steps-1) that the network expects for this diffusion's step indices."""
        return self.timestep_map.to(t.device)[t]

    # -- forward process and training loss ------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse x_start (coefficients) to step t: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start.dim()) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start.dim()) * noise
        )

    def training_inputs(
        self, image: torch.Tensor, t: torch.Tensor, noise_image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, target) for an image batch [B, 1, S, S, S] in [-1, 1].

        The target is the image's coefficient volume (LLL / lll_scale). The noise is standard normal noise in
        *image* space, Haar-transformed without any scaling (orthonormal, so it stays i.i.d. N(0, 1)).
        """
        x_start = to_coefficients(image, self.config.lll_scale, self.config.high_scale)
        noise = dwt3(noise_image)[:, :, 0]
        return self.q_sample(x_start, t, noise), x_start

    def training_loss(
        self,
        model: torch.nn.Module,
        image: torch.Tensor,
        t: torch.Tensor,
        noise_image: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's loss: mean over the eight sub-bands of their MSE between predicted and true x0.

        Returns (loss, per-band MSE [8]). ``t`` are step indices of this diffusion. ``condition`` (conditional
        models): coefficients concatenated after x_t, as cWDM trains.
        """
        if noise_image is None:
            noise_image = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
        # Under a caller's autocast only the network runs in reduced precision: the Haar transform is a matmul,
        # which autocast would otherwise run in bf16, rounding the target and the noise of every sample.
        with torch.autocast(image.device.type, enabled=False):
            x_t, target = self.training_inputs(image, t, noise_image)
            if condition is not None:
                x_t = torch.cat([x_t, condition.to(x_t.dtype)], dim=1)
        prediction = model(x_t, self.model_timesteps(t))
        with torch.autocast(image.device.type, enabled=False):
            per_band = (target - prediction.float()).pow(2).mean(dim=(2, 3, 4)).mean(dim=0)
        return per_band.mean(), per_band

    # -- reverse process ------------------------------------------------------------------------------------

    def clip_x0(self, pred_x0: torch.Tensor) -> torch.Tensor:
        """Clamp a predicted x0 to [clip_min, clip_max] in image space and return it as coefficients again."""
        c = self.config
        image = from_coefficients(pred_x0, c.lll_scale, c.high_scale).clamp(c.clip_min, c.clip_max)
        return to_coefficients(image, c.lll_scale, c.high_scale)

    def posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return (
            self.extract("posterior_mean_coef1", t, x_t.dim()) * x_start
            + self.extract("posterior_mean_coef2", t, x_t.dim()) * x_t
        )

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Mean, (fixed large) variance and the (clipped) x0 prediction of p(x_{t-1} | x_t)."""
        clip = self.config.clip_denoised if clip is None else clip
        pred_x0 = self.clip_x0(model_output) if clip else model_output
        shape = x_t.shape
        return {
            "mean": self.posterior_mean(pred_x0, x_t, t),
            "variance": self.extract("variance_fixed_large", t, x_t.dim()).expand(shape),
            "log_variance": self.extract("log_variance_fixed_large", t, x_t.dim()).expand(shape),
            "pred_xstart": pred_x0,
        }

    def p_sample(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        clip: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """One ancestral step: mean + [t != 0] * exp(log_variance / 2) * noise."""
        out = self.p_mean_variance(model_output, x_t, t, clip)
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_step(
        self,
        pred_x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DDIM step from an (already clipped) x0 prediction; eta = 0 is deterministic, as released."""
        eps = (self.extract("sqrt_recip_alphas_cumprod", t, x_t.dim()) * x_t - pred_x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t.dim()
        )
        alpha_bar = self.extract("alphas_cumprod", t, x_t.dim())
        alpha_bar_prev = self.extract("alphas_cumprod_prev", t, x_t.dim())
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean = pred_x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta == 0:
            return mean
        if noise is None:
            raise ValueError("a stochastic DDIM step (eta > 0) needs noise")
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * sigma * noise
