"""Every sampler against an exact denoiser: a textured Gaussian mixture in coefficient space.

Each sample is one of K component means (the smooth structure) plus Gaussian texture with a known standard
deviation per coefficient. Under the forward process x_t = a x0 + s noise (a^2 + s^2 = 1) the posterior mean
E[x0 | x_t] is closed form: each component's likelihood of x_t is Gaussian (mean a mu_k, variance
a^2 tau^2 + s^2), and given the component the posterior mean is linear in x_t. A sampler that blurs (ends too
early, first order on huge steps) shrinks the texture; one that adds too much noise inflates it. The measures:

* the texture ratio: the standard deviation of (sample - nearest component mean) / tau, 1 for the true
  distribution (its own sampling error over 64 x 1024 coefficients is ~0.3 %);
* the component frequencies: how often each component is nearest, against the true weights.

Run this file to print the table of texture ratios against steps (``python Testing/test_samplers_exact.py``).
"""

from __future__ import annotations

import sys

import pytest
import torch

from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.samplers import NoiseSource, run_sampler
from wdmcore.vocabulary import DEFAULT_SAMPLER, DEFAULT_STEPS, PREVIEW_SAMPLER, PREVIEW_STEPS
from wdmcore.wavelets import from_coefficients

SHAPE = (8, 2, 2, 2)  # coefficients of a 4^3 image: 64 per sample
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


class TexturedMixture:
    """K Gaussian components with shared per-coefficient texture std ``tau`` and closed-form E[x0 | x_t]."""

    def __init__(self, diffusion: Diffusion, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        k = len(WEIGHTS)
        # Smooth structure: large low-pass (LLL) means, small high-band means; texture finer than the structure,
        # and finer than sigma(t = 40) ~ 0.14 where the old solvers stopped. Images stay inside [-1, 1], so the
        # image-space clip of the samplers never changes an exact x0 estimate.
        scale = torch.tensor([0.4] + [0.1] * 7, dtype=torch.float64).view(1, 8, 1, 1, 1)
        self.means = (2 * torch.rand((k, *SHAPE), generator=g, dtype=torch.float64) - 1) * scale
        self.tau = torch.tensor([0.08] + [0.03] * 7, dtype=torch.float64).view(8, 1, 1, 1).expand(SHAPE)
        self.abar = torch.from_numpy(diffusion.alphas_cumprod)

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(WEIGHTS, n, replacement=True, generator=g)
        texture = torch.randn((n, *SHAPE), generator=g, dtype=torch.float64) * self.tau
        return (self.means[labels] + texture).float(), labels

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] at original timesteps ``t`` (what a perfectly trained network predicts)."""
        x = x.double()
        a2 = self.abar[t].view(-1, 1, 1, 1, 1)
        a = a2.sqrt()
        variance = a2 * self.tau**2 + (1 - a2)  # [N, *SHAPE]
        centred = x.unsqueeze(1) - a.unsqueeze(1) * self.means.unsqueeze(0)  # [N, K, *SHAPE]
        log_lik = -0.5 * (centred**2 / variance.unsqueeze(1)).flatten(2).sum(-1) + WEIGHTS.log()
        responsibility = torch.softmax(log_lik, dim=1).view(-1, len(WEIGHTS), *([1] * len(SHAPE)))
        gain = (a * self.tau**2 / variance).unsqueeze(1)
        posterior = self.means.unsqueeze(0) + gain * centred
        return (responsibility * posterior).sum(1).float()

    def measure(self, samples: torch.Tensor) -> dict[str, float]:
        """Texture ratio (all bands, and the seven high bands alone) and the largest frequency error."""
        x = samples.double()
        z = (x.unsqueeze(1) - self.means.unsqueeze(0)) / self.tau
        labels = z.pow(2).flatten(2).sum(-1).argmin(1)
        residual = z[torch.arange(len(x)), labels]
        frequencies = torch.bincount(labels, minlength=len(WEIGHTS)).double() / len(x)
        return {
            "texture_ratio": residual.pow(2).mean().sqrt().item(),
            "high_band_ratio": residual[:, 1:].pow(2).mean().sqrt().item(),
            "frequency_error": (frequencies - WEIGHTS).abs().max().item(),
        }


DIFFUSION = Diffusion(DiffusionConfig())
MIXTURE = TexturedMixture(DIFFUSION)


def run(sampler: str, steps: int, n: int = 1024, spacing: str | None = None, seed: int = 0) -> dict[str, float]:
    noise = NoiseSource(range(seed, seed + n))
    x = noise.initial(SHAPE)
    with torch.inference_mode():
        samples = run_sampler(sampler, MIXTURE.denoise, DIFFUSION, x, noise, steps=steps, spacing=spacing)
    return MIXTURE.measure(samples)


# Every sampler but the paper's at its default step count (wdmcore.vocabulary.DEFAULT_STEPS), UniPC at 25 (what the
# default was) and DPM-Solver++ at 12. The Preview setting has its own, wider band below.
FAST = [(name, DEFAULT_STEPS[name]) for name in ("unipc", "dpm++2m", "dpm++2m-sde", "ddim")]
FAST += [("unipc", 25), ("dpm++2m", 12)]


def test_the_default_and_the_preview_are_few_calls():
    assert DEFAULT_STEPS[DEFAULT_SAMPLER] <= 10 and PREVIEW_STEPS <= 6


def test_the_preview_keeps_the_texture_within_15_percent():
    measured = run(PREVIEW_SAMPLER, PREVIEW_STEPS)
    assert 0.85 <= measured["texture_ratio"] <= 1.15 and 0.85 <= measured["high_band_ratio"] <= 1.15, measured
    assert measured["frequency_error"] < 0.04, measured


def test_the_default_few_call_solver_is_what_reaches_the_texture():
    # The same calls on the spacing and the order the solver had before fall short: the test can tell.
    noise = NoiseSource(range(1024))
    from wdmcore.samplers import unipc

    with torch.inference_mode():
        old = unipc(MIXTURE.denoise, DIFFUSION, noise.initial(SHAPE), noise, steps=PREVIEW_STEPS, spacing="logsnr")
    assert MIXTURE.measure(old)["high_band_ratio"] < 0.8


@pytest.mark.parametrize("steps", [DEFAULT_STEPS[DEFAULT_SAMPLER], PREVIEW_STEPS])
def test_the_conditional_path_reaches_the_texture(steps):
    # A task network sees [x_t, condition] (run_sampler's ``condition``, the synthesis path). Conditioned on the
    # component, the exact denoiser is one Gaussian component's posterior mean; the samples must then carry the
    # true texture around their own component's mean.
    n = 512
    labels = torch.multinomial(WEIGHTS, n, replacement=True, generator=torch.Generator().manual_seed(5))
    condition = torch.nn.functional.one_hot(labels, len(WEIGHTS)).float().view(n, len(WEIGHTS), 1, 1, 1)
    condition = condition.expand(n, len(WEIGHTS), *SHAPE[1:])
    abar = MIXTURE.abar

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_t, which = x[:, :8].double(), x[:, 8:, 0, 0, 0].argmax(1)
        a2 = abar[t].view(-1, 1, 1, 1, 1)
        mean = MIXTURE.means[which]
        return (mean + a2.sqrt() * MIXTURE.tau**2 / (a2 * MIXTURE.tau**2 + 1 - a2) * (x_t - a2.sqrt() * mean)).float()

    noise = NoiseSource(range(n))
    with torch.inference_mode():
        samples = run_sampler(
            DEFAULT_SAMPLER, denoise, DIFFUSION, noise.initial(SHAPE), noise, steps=steps, condition=condition
        )
    residual = (samples.double() - MIXTURE.means[labels]) / MIXTURE.tau
    low, high = (0.9, 1.1) if steps == DEFAULT_STEPS[DEFAULT_SAMPLER] else (0.85, 1.15)
    assert low <= residual.pow(2).mean().sqrt().item() <= high
    assert low <= residual[:, 1:].pow(2).mean().sqrt().item() <= high


def test_the_mixture_is_what_it_claims():
    data, labels = MIXTURE.sample(4096, seed=1)
    truth = MIXTURE.measure(data)
    assert abs(truth["texture_ratio"] - 1) < 0.01 and abs(truth["high_band_ratio"] - 1) < 0.01
    assert truth["frequency_error"] < 0.02
    assert from_coefficients(data).abs().max() < 0.99  # the image-space clip never acts on the data
    # The denoiser is exact: at t = 0 it returns nearly the clean sample; its average over fresh noise at a
    # high noise level is the posterior mean, whose mean over the data is the data mean.
    t = torch.zeros(len(data), dtype=torch.long)
    clean = MIXTURE.denoise(DIFFUSION.q_sample(data, t, torch.randn_like(data)), t)
    assert (clean - data).pow(2).mean().sqrt() < 0.011
    t = torch.full((len(data),), 700, dtype=torch.long)
    noisy = DIFFUSION.q_sample(data, t, torch.randn(data.shape, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(MIXTURE.denoise(noisy, t).mean(0), data.mean(0), atol=0.01, rtol=0)


@pytest.mark.parametrize(("sampler", "steps"), FAST)
def test_fast_samplers_reach_the_true_texture_and_weights(sampler, steps):
    measured = run(sampler, steps)
    assert 0.9 <= measured["texture_ratio"] <= 1.1, measured
    assert 0.9 <= measured["high_band_ratio"] <= 1.1, measured
    assert measured["frequency_error"] < 0.04, measured


def test_the_papers_sampler_reaches_it_too():
    # 64 samples (per-sample random streams make 1000 steps slow): 4096 coefficients, ~1 % sampling error.
    measured = run("ancestral", 1000, n=64)
    assert 0.95 <= measured["texture_ratio"] <= 1.05 and 0.95 <= measured["high_band_ratio"] <= 1.05, measured


def test_the_test_sees_blur_and_noise():
    # The solvers as they were (diffusers' "linspace" spacing: the last call at t = 999/steps, then a jump to
    # noise level 0) blur the texture away; DDIM on evenly spread steps blurs it; the respaced ancestral
    # sampler at 25 steps adds noise the denoiser never removes.
    for sampler in ("dpm++2m", "unipc"):
        assert run(sampler, 25, n=256, spacing="linspace")["high_band_ratio"] < 0.5
    assert run("ddim", 25, n=256, spacing="uniform")["high_band_ratio"] < 0.8
    assert run("ancestral", 25, n=256)["texture_ratio"] > 2


def table(step_counts=(10, 12, 15, 25, 50)) -> None:
    rows = [
        ("dpm++2m", "logsnr"),
        ("dpm++2m", "karras"),
        ("dpm++2m", "linspace"),
        ("unipc", "logsnr"),
        ("unipc", "karras"),
        ("unipc", "linspace"),
        ("dpm++2m-sde", "logsnr"),
        ("dpm++2m-sde", "karras"),
        ("ddim", "logsnr"),
        ("ddim", "quadratic"),
        ("ddim", "uniform"),
        ("ancestral", None),
    ]
    print("| sampler | spacing | " + " | ".join(str(s) for s in step_counts) + " |")
    print("|---|---|" + "---|" * len(step_counts))
    for sampler, spacing in rows:
        cells = []
        for steps in step_counts:
            m = run(sampler, steps, spacing=spacing)
            cells.append(f"{m['texture_ratio']:.3f} / {m['high_band_ratio']:.3f} / {m['frequency_error']:.3f}")
        print(f"| {sampler} | {spacing or 'released'} | " + " | ".join(cells) + " |", flush=True)
    m = run("ancestral", 1000)
    print(
        f"| ancestral | released | 1000 steps: {m['texture_ratio']:.3f} / {m['high_band_ratio']:.3f} / "
        f"{m['frequency_error']:.3f} |"
    )


def few_call_table(step_counts=(4, 5, 6, 8, 10)) -> None:
    """UniPC of order 2 and 3 and DPM-Solver++ 2M on each spacing at few calls: texture / high-band ratio."""
    from wdmcore.samplers import SPACINGS, dpmpp_2m, unipc

    print("| solver | spacing | " + " | ".join(str(s) for s in step_counts) + " |")
    print("|---|---|" + "---|" * len(step_counts))
    solvers = {
        "unipc-3": lambda *a, **k: unipc(*a, order=3, **k),
        "unipc-2": lambda *a, **k: unipc(*a, order=2, **k),
        "dpm++2m": dpmpp_2m,
    }
    for spacing in (s for s in SPACINGS if s != "linspace"):
        for name, solver in solvers.items():
            cells = []
            for steps in step_counts:
                noise = NoiseSource(range(1024))
                with torch.inference_mode():
                    out = solver(MIXTURE.denoise, DIFFUSION, noise.initial(SHAPE), noise, steps=steps, spacing=spacing)
                m = MIXTURE.measure(out)
                cells.append(f"{m['texture_ratio']:.3f} / {m['high_band_ratio']:.3f}")
            print(f"| {name} | {spacing} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1:2] == ["few-calls"]:
        few_call_table()
    else:
        table(tuple(int(s) for s in sys.argv[1].split(",")) if len(sys.argv) > 1 else (10, 12, 15, 25, 50))
