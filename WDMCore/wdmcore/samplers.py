"""Samplers: short functions over a denoiser (x_t, step index) -> x0 prediction in coefficient space.

* :func:`ancestral` is the released 1000-step sampler, step for step (and with a respaced
  :class:`~wdmcore.diffusion.Diffusion` the k-step ancestral sampler the released code could not run).
* :func:`ddim` is deterministic DDIM (eta = 0, as released) or stochastic with eta > 0.
* :func:`dpmpp_2m` (DPM-Solver++ 2M) and :func:`unipc` (UniPC, B(h) = bh2) are fast deterministic ODE solvers
  from the ``diffusers`` schedulers, run on the full 1000-step schedule with any number of steps. The network's
  x0 prediction is clipped in image space (:meth:`Diffusion.clip_x0`) before every solver update, as in the
  released sampler.

Every sampler has the same signature: ``(denoise, diffusion, x_T, noise, *, steps=..., on_step=, cancel=)``.
:func:`run_sampler` picks the right diffusion (respaced for ancestral and DDIM, the full one for the
``diffusers`` solvers) and is what :class:`~wdmcore.models.model.WDMModel` and :mod:`wdmcore.tasks.generate` call.

Random numbers follow the released recipe so that CPU runs reproduce it (within 1e-4; last bits depend on
the CPU's vector instructions): each output sample i
has its own generator seeded with ``seed + i``; the initial noise is drawn on the CPU generator (then moved to
the device), and one normal draw of the sample's shape follows every network call, on the device's generator.
With batch size 1 (how the released samples were made) this is exactly the released recipe; with larger
batches a sample still depends only on its own seed, never on the batch it was drawn in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .diffusion import Diffusion
from .errors import ConfigError, WDMError

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


# -- diffusers solvers -----------------------------------------------------------------------------------------


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "the 'dpm++2m' and 'unipc' samplers need the diffusers package: install it with "
            "`pip install 'diffusers>=0.30'`, or use the 'ddim' or 'ancestral' sampler."
        ) from None
    return diffusers


def diffusers_scheduler(name: str, diffusion: Diffusion):
    """A ``diffusers`` scheduler for the model's training schedule with x0 ("sample") prediction.

    ``name``: ``"dpm++2m"`` (DPMSolverMultistepScheduler, dpmsolver++, order 2), ``"unipc"``
    (UniPCMultistepScheduler) or ``"ddim"`` (DDIMScheduler, eta 0; only used to cross-check :func:`ddim`).
    The betas are the diffusion's own float64 linear schedule; no thresholding, no sample clipping (the image
    space clip is applied to the x0 prediction before each step instead).
    """
    diffusers = _import_diffusers()
    config = diffusion.config
    common = {
        "num_train_timesteps": config.steps,
        "trained_betas": config.betas(),
        "prediction_type": "sample",
        "thresholding": False,
    }
    if name == "dpm++2m":
        return diffusers.DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
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
    raise ConfigError(f"no diffusers scheduler called {name!r}; choose 'dpm++2m', 'unipc' or 'ddim'.")


def scheduler_loop(
    scheduler_name: str,
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    *,
    steps: int,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """Run a ``diffusers`` scheduler for ``steps`` network calls over the full (unrespaced) ``diffusion``.

    ``denoise`` receives the original timesteps (0 ... T-1). The update runs in fp32.
    """
    if diffusion.num_timesteps != diffusion.config.steps:
        raise ConfigError("the diffusers samplers run on the full schedule, not on a respaced diffusion.")
    # The schedulers' evenly spread ("linspace") timesteps repeat one timestep at T steps: T - 1 at most.
    if not 1 <= steps < diffusion.num_timesteps:
        raise ConfigError(
            f"the {scheduler_name} sampler takes between 1 and {diffusion.num_timesteps - 1} steps, got {steps}; "
            "for the full schedule use the 'ancestral' sampler."
        )
    scheduler = diffusers_scheduler(scheduler_name, diffusion)
    scheduler.set_timesteps(steps)
    x = x.float()
    timesteps = scheduler.timesteps.tolist()
    for done, timestep in enumerate(timesteps, start=1):
        _check_cancel(cancel)
        t = torch.full((x.shape[0],), int(timestep), dtype=torch.long, device=x.device)
        model_output = denoise(x, t).float()
        pred_x0 = diffusion.clip_x0(model_output) if diffusion.config.clip_denoised else model_output
        x = scheduler.step(pred_x0, int(timestep), x, return_dict=False)[0].float()
        if on_step is not None:
            on_step(done, len(timesteps), x, pred_x0)
    return x


def dpmpp_2m(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    steps: int = 25,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """DPM-Solver++ (2M, multistep, second order) with ``steps`` network calls; deterministic given x_T."""
    return scheduler_loop("dpm++2m", denoise, diffusion, x, steps=steps, on_step=on_step, cancel=cancel)


def unipc(
    denoise: Denoiser,
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource | None = None,
    *,
    steps: int = 25,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """UniPC (predictor-corrector, order 2, bh2) with ``steps`` network calls; deterministic given x_T."""
    return scheduler_loop("unipc", denoise, diffusion, x, steps=steps, on_step=on_step, cancel=cancel)


SAMPLERS = {"ancestral": ancestral, "ddim": ddim, "dpm++2m": dpmpp_2m, "unipc": unipc}
RESPACED_SAMPLERS = ("ancestral", "ddim")  # run on a respaced diffusion: one network call per kept timestep


def run_sampler(
    sampler: str,
    network: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    diffusion: Diffusion,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    steps: int,
    eta: float = 0.0,
    on_step: StepCallback | None = None,
    cancel: CancelCheck | None = None,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from x_T with ``steps`` network calls. ``network(x, t)`` takes original timesteps;
    ``diffusion`` is the model's full diffusion; ``condition`` is concatenated after x_t at every call."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ConfigError(f"steps must be between 1 and {diffusion.num_timesteps}, got {steps}.")
    if sampler in RESPACED_SAMPLERS:
        used = diffusion if steps == diffusion.num_timesteps else diffusion.respaced(steps)
        kwargs = {"eta": eta} if sampler == "ddim" else {}
    else:
        used, kwargs = diffusion, {"steps": steps}
    denoise = model_denoiser(network, used, condition)
    return SAMPLERS[sampler](denoise, used, x, noise, on_step=on_step, cancel=cancel, **kwargs)
