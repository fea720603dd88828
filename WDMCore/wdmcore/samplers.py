"""Samplers: short functions over a denoiser (x_t, timestep) -> x0 prediction in coefficient space.

* :func:`ancestral` is the released sampler, step for step: with 1000 steps it is the paper's sampler (kept for
  fidelity; the released-code fixtures test it). With a respaced :class:`~wdmcore.diffusion.Diffusion` it is the
  k-step ancestral sampler the released code could not run; below a few hundred steps its "fixed large"
  variance adds more noise at the last steps than the network was trained to remove.
* :func:`dpmpp_2m` (DPM-Solver++ 2M), :func:`dpmpp_2m_sde` (its SDE variant) and :func:`unipc` (UniPC, bh2, order
  2 or 3; :func:`run_sampler` runs order 3) are fast solvers over the full 1000-step schedule on integer
  timesteps from :func:`solver_timesteps`: spaced in log-SNR (by default short steps near the data, long
  ones through the noise) all the way down to t = 0, whose x0 prediction is the result.
* :func:`ddim` is DDIM (eta = 0 as released, or stochastic with eta > 0) over a respaced diffusion; through
  :func:`run_sampler` it runs on the same kind of spacing down to t = 0.

Every update uses the network's x0 prediction clipped in image space (:meth:`Diffusion.clip_x0`), as the
released sampler does. ``Testing/test_samplers_exact.py`` checks every sampler against an exact denoiser (a
textured Gaussian mixture, where E[x0 | x_t] is closed form); ``Testing/test_generate.py`` checks the solvers
step for step against the ``diffusers`` schedulers (:func:`diffusers_scheduler`, imported only there).

Every sampler has the same signature: ``(denoise, diffusion, x_T, noise, *, steps=..., on_step=, cancel=)``.
:func:`run_sampler` picks the diffusion and spacing for a sampler name and is what
:class:`~wdmcore.models.model.WDMModel` and :mod:`wdmcore.tasks.generate` call.

Random numbers follow the released recipe so that CPU runs reproduce it (within 1e-4; last bits depend on
the CPU's vector instructions): each output sample i
has its own generator seeded with ``seed + i``; the initial noise is drawn on the CPU generator (then moved to
the device), and one normal draw of the sample's shape follows every network call of a stochastic sampler, on
the device's generator. With batch size 1 (how the released samples were made) this is exactly the released
recipe; with larger batches a sample still depends only on its own seed, never on the batch it was drawn in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .diffusion import Diffusion, space_timesteps
from .errors import ConfigError, WDMError
from .vocabulary import DEFAULT_SAMPLER, DEFAULT_STEPS, PREVIEW_SAMPLER, PREVIEW_STEPS, QUALITIES

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (done, total, x, pred_x0)
CancelCheck = Callable[[], bool]


class Cancelled(WDMError):
    """Raised inside a sampling loop when the caller asked to stop."""


class NoiseSource:
    """Per-sample random streams: sample i of a batch draws from generators seeded with ``seeds[i]``.

    ``int64_draws`` skips that many int64 draws on each CPU stream before the initial noise: cWDM's released
    sampler seeds once and then creates its data loader iterator, which draws one int64 (the workers' base
    seed) from the same generator before the noise.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", int64_draws: int = 0):
        self.device = torch.device(device)
        self.cpu = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for g in self.cpu:
            for _ in range(int64_draws):
                torch.empty((), dtype=torch.int64).random_(generator=g)
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


def model_denoiser(network: torch.nn.Module, diffusion: Diffusion, condition: torch.Tensor | None = None) -> Denoiser:
    """Wrap a network so that it is called with the original timesteps of a (possibly respaced) diffusion.

    With ``condition`` (conditioning coefficients [B, C, ...], never noised) the network sees
    ``cat([x_t, condition])`` on the channel axis, as the conditional members of the family do."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if condition is not None:
            x = torch.cat([x, condition.to(x.dtype)], dim=1)
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


# -- timestep spacings for the fast solvers --------------------------------------------------------------------

SPACINGS = ("logsnr-sqrt", "logsnr", "karras", "quadratic", "uniform", "linspace")


def log_snr(diffusion: Diffusion) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) for every timestep of ``diffusion`` (float64, decreasing in t)."""
    abar = diffusion.alphas_cumprod
    return 0.5 * (np.log(abar) - np.log1p(-abar))


def solver_timesteps(diffusion: Diffusion, steps: int, spacing: str = "logsnr") -> list[int]:
    """``steps`` distinct integer timesteps of the full ``diffusion``, from T-1 down, one network call each.

    * ``"logsnr-sqrt"``: lambda = lambda(T-1) + (lambda(0) - lambda(T-1)) * sqrt(k / (steps - 1)): long log-SNR
      steps through the noise, short ones near t = 0 where the fine texture forms. Chosen for few calls with the
      exact-denoiser measurements in docs/generation.md (it beat log-SNR, time-uniform, Karras and tuned-end
      spacings from 5 to 10 calls and matches log-SNR from 25 on);
    * ``"logsnr"``: evenly spaced in log-SNR lambda from t = T-1 to t = 0 (the spacing of the DPM-Solver papers);
    * ``"karras"``: sigma = sqrt((1 - abar) / abar) spaced as in Karras et al. (rho = 7), sigma_max to sigma_min;
    * ``"quadratic"``: t = (T-1) * u**2 for u evenly spaced from 1 to 0 (denser near t = 0);
    * ``"uniform"``: evenly spread with the first and the last timestep (the released respacing);
    * ``"linspace"``: ``diffusers``' "linspace" spacing, which stops at t = (T-1)/steps. Kept only to measure
      the old behaviour: the solvers then jump from there straight to noise level 0 and blur the fine texture.

    All but ``"linspace"`` end at t = 0, from where the solvers take the x0 prediction as the result (a final
    denoise). Targets that round to the same integer timestep are pushed apart so that every call is distinct.
    """
    total = diffusion.num_timesteps
    if total != diffusion.config.steps:
        raise ConfigError("the fast solvers run on the full schedule, not on a respaced diffusion.")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    if not 1 <= steps <= total:
        raise ConfigError(f"steps must be between 1 and {total}, got {steps}.")
    if spacing == "linspace":
        if steps == total:
            raise ConfigError(f"the 'linspace' spacing takes at most {total - 1} steps, got {steps}.")
        return [int(t) for t in np.linspace(0, total - 1, steps + 1).round()[::-1][:-1]]
    if steps == 1:
        return [total - 1]
    if spacing == "uniform":
        return sorted(space_timesteps(total, steps), reverse=True)
    positions = np.arange(total, dtype=np.float64)
    if spacing == "quadratic":
        wanted = (total - 1) * np.linspace(1.0, 0.0, steps) ** 2
    else:
        lam = log_snr(diffusion)
        if spacing == "logsnr":
            targets = np.linspace(lam[-1], lam[0], steps)
        elif spacing == "logsnr-sqrt":
            targets = lam[-1] + (lam[0] - lam[-1]) * np.sqrt(np.linspace(0.0, 1.0, steps))
        else:  # karras: sigma = exp(-lambda), interpolated in sigma ** (1 / rho)
            rho = 7.0
            high, low = np.exp(-lam[-1]) ** (1 / rho), np.exp(-lam[0]) ** (1 / rho)
            targets = -rho * np.log(high + np.linspace(0.0, 1.0, steps) * (low - high))
        wanted = np.interp(targets, lam[::-1], positions[::-1])  # lambda falls with t: interpolate on t reversed
    chosen = np.round(wanted).astype(np.int64)
    # Strictly decreasing: at least one apart from the next call below, at most T-1-k for the k-th call.
    for k in range(steps - 2, -1, -1):
        chosen[k] = max(chosen[k], chosen[k + 1] + 1)
    chosen = np.minimum(chosen, total - 1 - np.arange(steps))
    return [int(t) for t in chosen]


def _levels(diffusion: Diffusion, timesteps: Sequence[int]) -> list[tuple[float, float, float]]:
    """(alpha, sigma, lambda) at each timestep, then (1, 0, inf): the noise-free end every solver reaches."""
    abar = diffusion.alphas_cumprod
    lam = log_snr(diffusion)
    levels = [(math.sqrt(abar[t]), math.sqrt(1.0 - abar[t]), float(lam[t])) for t in timesteps]
    return [*levels, (1.0, 0.0, math.inf)]


def _x0(denoise: Denoiser, diffusion: Diffusion, x: torch.Tensor, timestep: int) -> torch.Tensor:
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long, device=x.device)
    model_output = denoise(x, t).float()
    return diffusion.clip_x0(model_output) if diffusion.config.clip_denoised else model_output


def dpmpp_2m(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    steps: int = 25,
    spacing: str = "logsnr",
    sde: bool = False,
    timesteps: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """DPM-Solver++ 2M (data prediction, multistep, second order; first order at the first and last step).

    ``sde=True`` is SDE-DPM-Solver++ 2M: each step re-injects fresh noise (one draw per network call from
    ``noise``), which pulls the trajectory back toward the data distribution when the network's x0 estimate
    is off. The last call is at the lowest timestep of the spacing (t = 0 except for ``"linspace"``) and its x0
    prediction is the result. ``timesteps`` (decreasing, x at the first) replaces the spacing's ``steps``
    timesteps: how a partial run (SDEdit) starts from an intermediate noise level.
    """
    if sde and noise is None:
        raise ValueError("the SDE solver needs a noise source")
    timesteps = solver_timesteps(diffusion, steps, spacing) if timesteps is None else list(timesteps)
    levels = _levels(diffusion, timesteps)
    x = x.float()
    previous: tuple[torch.Tensor, float] | None = None
    for k, timestep in enumerate(timesteps):
        _check_cancel(cancel)
        x0 = _x0(denoise, diffusion, x, timestep)
        fresh = noise.step(x) if sde else None
        (_, sigma_s, lam_s), (alpha_t, sigma_t, lam_t) = levels[k], levels[k + 1]
        if sigma_t == 0.0:
            x = x0
        else:
            h = lam_t - lam_s
            estimate = x0 if previous is None else x0 + (x0 - previous[0]) * (h / (2.0 * (lam_s - previous[1])))
            if sde:
                x = (sigma_t / sigma_s * math.exp(-h)) * x - (alpha_t * math.expm1(-2.0 * h)) * estimate
                x = x + (sigma_t * math.sqrt(-math.expm1(-2.0 * h))) * fresh
            else:
                x = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * estimate
        previous = (x0, lam_s)
        if on_step is not None:
            on_step(k + 1, len(timesteps), x, x0)
    return x


def dpmpp_2m_sde(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    steps: int = 25,
    spacing: str = "logsnr",
    timesteps: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++ 2M (:func:`dpmpp_2m` with ``sde=True``)."""
    return dpmpp_2m(
        denoise, diffusion, x, noise, steps=steps, spacing=spacing, sde=True, timesteps=timesteps, on_step=on_step,
        cancel=cancel,
    )  # fmt: skip


def _unipc_b(h: float, order: int) -> list[float]:
    """The right-hand side of UniPC's order conditions (B(h) = e^-h - 1, "bh2") for a step of log-SNR length h:
    the scaled phi-functions of -h, one per order."""
    hh = -h
    b_h = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1.0
    factorial, b = 1.0, []
    for k in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1.0 / factorial
    return b


def _unipc_corrector_weights(h: float, ratios: Sequence[float]) -> list[float]:
    """UniPC's corrector weights rho for a step of log-SNR length ``h``.

    ``ratios``: (lambda_i - lambda_s0) / h of the earlier outputs whose differences enter the step (empty for
    first order). Solves the order conditions R rho = b, where R has rows r**k (r = the ratios and 1 for the
    new output); first order is the trapezoid weight 1/2.
    """
    if not ratios:
        return [0.5]
    order = len(ratios) + 1
    nodes = np.array([*ratios, 1.0])
    return [float(v) for v in np.linalg.solve(np.stack([nodes**k for k in range(order)]), np.array(_unipc_b(h, order)))]


def _unipc_predictor_weights(h: float, ratios: Sequence[float]) -> list[float]:
    """UniPC's predictor weights for the differences to ``len(ratios)`` earlier outputs: 1/2 at order 2 (the
    DPM-Solver++ 2M step), the order conditions without the new output above."""
    if len(ratios) == 1:
        return [0.5]
    order = len(ratios) + 1
    nodes = np.array(ratios)
    rows = np.stack([nodes**k for k in range(order - 1)])
    return [float(v) for v in np.linalg.solve(rows, np.array(_unipc_b(h, order)[:-1]))]


def unipc(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    steps: int = 25,
    spacing: str = "logsnr",
    order: int = 2,
    timesteps: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """UniPC (data prediction, B(h) = bh2): a multistep predictor of ``order`` (2: the DPM-Solver++ 2M step) plus
    a corrector that re-uses each new network output to refine the step that led to it, at no extra network
    call. Lower orders while too few outputs exist and towards the end (as ``diffusers``' lower_order_final).
    ``timesteps``: as for :func:`dpmpp_2m`."""
    timesteps = solver_timesteps(diffusion, steps, spacing) if timesteps is None else list(timesteps)
    levels = _levels(diffusion, timesteps)
    x = x.float()
    outputs: list[tuple[torch.Tensor, float]] = []  # (x0 prediction, lambda) of the previous calls, newest last
    last_x, last_order = x, 0
    for k, timestep in enumerate(timesteps):
        _check_cancel(cancel)
        x0 = _x0(denoise, diffusion, x, timestep)
        alpha_t, sigma_t, lam_t = levels[k]
        if outputs and levels[k + 1][1] != 0.0:  # the corrector cannot change the final x0 estimate
            m0, lam_0 = outputs[-1]
            sigma_0 = levels[k - 1][1]
            h = lam_t - lam_0
            earlier = outputs[-last_order:-1][::-1]  # the outputs before m0 that the predictor used, newest first
            ratios = [(lam_i - lam_0) / h for _, lam_i in earlier]
            rho = _unipc_corrector_weights(h, ratios)
            correction = rho[-1] * (x0 - m0)
            for weight, (m_i, _), r in zip(rho[:-1], earlier, ratios, strict=True):
                correction = correction + weight * (m_i - m0) / r
            x = (sigma_t / sigma_0) * last_x - (alpha_t * math.expm1(-h)) * (m0 + correction)
        outputs = [*outputs[-(order - 1) :], (x0, lam_t)] if order > 1 else [(x0, lam_t)]
        (_, sigma_s, lam_s), (alpha_n, sigma_n, lam_n) = levels[k], levels[k + 1]
        last_x = x
        if sigma_n == 0.0:
            x, last_order = x0, 1
        else:
            h = lam_n - lam_s
            last_order = min(order, len(outputs), len(timesteps) - k)
            estimate = x0
            if last_order > 1:
                earlier = outputs[-last_order:-1][::-1]
                ratios = [(lam_i - lam_s) / h for _, lam_i in earlier]
                for weight, (m_i, _), r in zip(_unipc_predictor_weights(h, ratios), earlier, ratios, strict=True):
                    estimate = estimate + weight * (m_i - x0) / r
            x = (sigma_n / sigma_s) * x - (alpha_n * math.expm1(-h)) * estimate
        if on_step is not None:
            on_step(k + 1, len(timesteps), x, x0)
    return x


# -- diffusers schedulers: independent implementations to cross-check ours -------------------------------------


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "the cross-check against the diffusers schedulers needs the diffusers package: install it with "
            "`pip install 'diffusers>=0.30'`. The samplers themselves do not need it."
        ) from None
    return diffusers


def diffusers_scheduler(name: str, diffusion: Diffusion):
    """A ``diffusers`` scheduler for the model's training schedule with x0 ("sample") prediction.

    ``name``: ``"dpm++2m"``, ``"dpm++2m-sde"`` (DPMSolverMultistepScheduler, order 2, midpoint), ``"unipc"``
    (UniPCMultistepScheduler, bh2) or ``"ddim"`` (DDIMScheduler, eta 0). The betas are the diffusion's own
    float64 schedule; no thresholding, no sample clipping, noise level 0 after the last step. Used by the tests
    to check our solvers step for step; the samplers do not import ``diffusers``.
    """
    diffusers = _import_diffusers()
    config = diffusion.config
    common = {
        "num_train_timesteps": config.steps,
        "trained_betas": config.betas(),
        "prediction_type": "sample",
        "thresholding": False,
    }
    if name in ("dpm++2m", "dpm++2m-sde"):
        return diffusers.DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++" if name == "dpm++2m" else "sde-dpmsolver++",
            solver_order=2,
            solver_type="midpoint",
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="linspace",
        )
    if name == "unipc":
        return diffusers.UniPCMultistepScheduler(
            **common,
            solver_order=2,
            predict_x0=True,
            solver_type="bh2",
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="linspace",
        )
    if name == "ddim":
        return diffusers.DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"
        )
    raise ConfigError(f"no diffusers scheduler called {name!r}; choose 'dpm++2m', 'dpm++2m-sde', 'unipc' or 'ddim'.")


def scheduler_loop(
    scheduler_name: str,
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    *,
    steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    noise: NoiseSource | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run a ``diffusers`` scheduler over the full ``diffusion``: ``steps`` calls on its own spacing, or the
    given ``timesteps`` (DPM-Solver++ only). The SDE variant draws one noise per call from ``noise``."""
    if diffusion.num_timesteps != diffusion.config.steps:
        raise ConfigError("the diffusers schedulers run on the full schedule, not on a respaced diffusion.")
    scheduler = diffusers_scheduler(scheduler_name, diffusion)
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=list(timesteps))
    else:
        scheduler.set_timesteps(steps)
    x = x.float()
    order = scheduler.timesteps.tolist()
    for done, timestep in enumerate(order, start=1):
        pred_x0 = _x0(denoise, diffusion, x, int(timestep))
        extra = {"variance_noise": noise.step(x)} if scheduler_name == "dpm++2m-sde" else {}
        x = scheduler.step(pred_x0, int(timestep), x, return_dict=False, **extra)[0].float()
        if on_step is not None:
            on_step(done, len(order), x, pred_x0)
    return x


SAMPLERS = {"ancestral": ancestral, "ddim": ddim, "dpm++2m": dpmpp_2m, "dpm++2m-sde": dpmpp_2m_sde, "unipc": unipc}
RESPACED_SAMPLERS = ("ancestral", "ddim")  # run on a respaced diffusion: one network call per kept timestep
# The spacing each sampler runs on unless told otherwise, and UniPC's order (chosen with the exact-denoiser
# measurements in docs/generation.md: third order on "logsnr-sqrt" reaches the texture with the fewest calls). The
# ancestral sampler always uses the released respacing.
DEFAULT_SPACING = {"ddim": "logsnr", "dpm++2m": "logsnr-sqrt", "dpm++2m-sde": "logsnr", "unipc": "logsnr-sqrt"}
UNIPC_ORDER = 3


def default_calls(sampler: str, steps: int | None, quality: str = "default") -> int:
    """The network calls to run: ``steps`` when given, else the ``quality`` level's count for ``sampler``
    (``"default"``: :data:`~wdmcore.vocabulary.DEFAULT_STEPS`; ``"preview"``: UniPC's
    :data:`~wdmcore.vocabulary.PREVIEW_STEPS`, measured for that sampler only)."""
    if quality not in QUALITIES:
        raise ConfigError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITIES)}.")
    if steps is not None:
        return int(steps)
    if quality == "preview":
        if sampler != PREVIEW_SAMPLER:
            raise ConfigError(
                f"the preview quality is measured for the {PREVIEW_SAMPLER} sampler only; leave the sampler out, "
                f"or give the number of steps for {sampler}."
            )
        return PREVIEW_STEPS
    return DEFAULT_STEPS.get(sampler, DEFAULT_STEPS[DEFAULT_SAMPLER])


def run_sampler(
    sampler: str,
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    steps: int,
    eta: float = 0.0,
    spacing: str | None = None,
    timesteps: Sequence[int] | None = None,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from x_T with ``steps`` network calls. ``network(x, t)`` takes original timesteps;
    ``diffusion`` is the model's full diffusion; ``spacing`` (not for ``ancestral``): one of :data:`SPACINGS`,
    default :data:`DEFAULT_SPACING`;
    ``timesteps`` (not for ``ancestral``): the decreasing original timesteps to call the network at, ``x`` being
    at the first (a partial run from an intermediate noise level, as SDEdit needs); replaces ``steps``/``spacing``;
    ``condition`` is concatenated after x_t at every call."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if timesteps is not None:
        timesteps = [int(t) for t in timesteps]
        if (
            not timesteps
            or any(a <= b for a, b in zip(timesteps[:-1], timesteps[1:], strict=True))
            or timesteps[-1] < 0
        ):
            raise ConfigError("timesteps must be distinct, decreasing and non-negative.")
        if timesteps[0] >= diffusion.num_timesteps or sampler == "ancestral":
            raise ConfigError("explicit timesteps are for the solvers, within the model's diffusion steps.")
        steps = len(timesteps)
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ConfigError(f"steps must be between 1 and {diffusion.num_timesteps}, got {steps}.")
    if sampler == "ancestral":
        if spacing is not None:
            raise ConfigError("the ancestral sampler always uses the released respacing; leave spacing unset.")
        used = diffusion if steps == diffusion.num_timesteps else diffusion.respaced(steps)
        kwargs = {}
    elif sampler == "ddim":
        kept = timesteps or solver_timesteps(diffusion, steps, spacing or DEFAULT_SPACING["ddim"])
        used = Diffusion(diffusion.config, kept)
        kwargs = {"eta": eta}
    else:
        used = diffusion
        kwargs = {"steps": steps, "spacing": spacing or DEFAULT_SPACING[sampler], "timesteps": timesteps}
        if sampler == "unipc":
            kwargs["order"] = UNIPC_ORDER
    denoise = model_denoiser(network, used, condition)
    return SAMPLERS[sampler](denoise, used, x, noise, on_step=on_step, cancel=cancel, **kwargs)
