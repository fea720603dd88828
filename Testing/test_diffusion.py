"""The diffusion process and samplers against the released code's numbers."""

import numpy as np
import pytest
import torch
from conftest import load_reference

from wdmcore.diffusion import Diffusion, DiffusionConfig, space_timesteps
from wdmcore.errors import ConfigError
from wdmcore.networks import from_official_args
from wdmcore.samplers import Cancelled, NoiseSource, ancestral, ddim, model_denoiser
from wdmcore.wavelets import from_coefficients

SCHEDULE_NAMES = {
    "betas": "betas",
    "alphas_cumprod": "alphas_cumprod",
    "alphas_cumprod_prev": "alphas_cumprod_prev",
    "alphas_cumprod_next": "alphas_cumprod_next",
    "sqrt_alphas_cumprod": "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod": "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod": "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod": "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod": "sqrt_recipm1_alphas_cumprod",
    "posterior_variance": "posterior_variance",
    "posterior_log_variance_clipped": "posterior_log_variance_clipped",
    "posterior_mean_coef1": "posterior_mean_coef1",
    "posterior_mean_coef2": "posterior_mean_coef2",
    "p_sample_variance_fixed_large": "variance_fixed_large",
    "p_sample_log_variance_fixed_large": "log_variance_fixed_large",
}


@pytest.fixture(scope="module")
def ref():
    return load_reference("diffusion_linear_1000.pt")


@pytest.fixture(scope="module")
def tiny_unet():
    fixture = load_reference("unet_tiny_additive.pt")
    network = from_official_args(fixture["config"]).eval()
    network.load_state_dict(load_reference("unet_tiny_additive_state_dict.pt"), strict=True)
    return network


# The schedules are float64 arrays built with log/sqrt/cumprod, whose last bits depend on the CPU's vector
# instructions (numpy's and libm's log): compare to well below float32 resolution, never bit for bit.
SCHEDULE_TOLERANCE = {"rtol": 1e-12, "atol": 1e-15}


def test_schedule_arrays_match_released(ref):
    diffusion = Diffusion()
    for fixture_name, attribute in SCHEDULE_NAMES.items():
        np.testing.assert_allclose(
            getattr(diffusion, attribute), ref[f"schedule/{fixture_name}"].numpy(), **SCHEDULE_TOLERANCE
        )
    np.testing.assert_allclose(DiffusionConfig().betas(), ref["schedule/betas_linspace"].numpy(), **SCHEDULE_TOLERANCE)
    assert torch.equal(diffusion.timestep_map, ref["timestep_map"])


@pytest.mark.parametrize("case", ["a", "b"])
@pytest.mark.parametrize("clip", ["clip", "noclip"])
def test_p_mean_variance_and_p_sample(ref, case, clip):
    x_t, model_output = ref["p_mean_variance/x_t"], ref["p_mean_variance/model_output"]
    t = ref[f"p_mean_variance_{case}/t"]
    diffusion = Diffusion()
    assert torch.equal(diffusion.model_timesteps(t), ref[f"p_mean_variance_{case}/timesteps_seen_by_model"])
    out = diffusion.p_mean_variance(model_output, x_t, t, clip=clip == "clip")
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        torch.testing.assert_close(out[key], ref[f"p_mean_variance_{case}/{clip}/{key}"], atol=1e-5, rtol=0)
    if clip == "clip":
        noise = ref[f"p_mean_variance_{case}/p_sample_noise"]
        generator = torch.Generator().manual_seed(int(ref[f"p_mean_variance_{case}/p_sample_seed"]))
        assert torch.equal(torch.randn(x_t.shape, generator=generator), noise)
        sample = diffusion.p_sample(model_output, x_t, t, noise)["sample"]
        torch.testing.assert_close(sample, ref[f"p_mean_variance_{case}/p_sample/sample"], atol=1e-5, rtol=0)


def test_last_step_returns_clipped_x0(ref):
    diffusion = Diffusion()
    x_t, model_output = ref["p_mean_variance/x_t"], ref["p_mean_variance/model_output"]
    t = torch.zeros(2, dtype=torch.long)
    out = diffusion.p_sample(model_output, x_t, t, torch.randn_like(x_t))
    assert torch.equal(out["sample"], out["pred_xstart"])
    image = from_coefficients(out["sample"])
    assert image.min() >= -1 - 1e-6 and image.max() <= 1 + 1e-6


def test_training_targets_and_loss(ref):
    diffusion = Diffusion()
    image, t, noise = ref["training/x_start"], ref["training/t"], ref["training/noise_image_space"]
    x_t, target = diffusion.training_inputs(image, t, noise)
    torch.testing.assert_close(target, ref["training/x_start_dwt"], atol=1e-5, rtol=0)
    torch.testing.assert_close(x_t, ref["training/x_t"], atol=1e-5, rtol=0)

    class Replay(torch.nn.Module):
        def forward(self, x, timesteps):
            assert torch.equal(timesteps, t)
            return ref["training/model_output"]

    loss, per_band = diffusion.training_loss(Replay(), image, t, noise)
    torch.testing.assert_close(per_band, ref["training/mse_wav"], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref["training/loss"], atol=1e-6, rtol=0)
    # Drawing the noise from the same seed inside gives the same loss (the released code draws it inside).
    seeded, _ = diffusion.training_loss(
        Replay(), image, t, generator=torch.Generator().manual_seed(int(ref["training/seed_before_call"]))
    )
    torch.testing.assert_close(seeded, ref["training/loss"], atol=1e-6, rtol=0)


def test_respacing_matches_released(ref):
    respaced = Diffusion().respaced(10)
    assert torch.equal(respaced.timestep_map, ref["respaced10/timestep_map"])
    np.testing.assert_allclose(respaced.betas, ref["respaced10/betas"].numpy(), **SCHEDULE_TOLERANCE)
    np.testing.assert_allclose(respaced.alphas_cumprod, ref["respaced10/alphas_cumprod"].numpy(), **SCHEDULE_TOLERANCE)
    np.testing.assert_allclose(
        respaced.variance_fixed_large, ref["respaced10/p_sample_variance_fixed_large"].numpy(), **SCHEDULE_TOLERANCE
    )


def test_space_timesteps_variants():
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(space_timesteps(1000, 25)) == 25 and space_timesteps(1000, 25)[-1] == 999
    assert len(space_timesteps(100, "10,20")) == 30
    with pytest.raises(ConfigError):
        space_timesteps(1000, "fast")
    with pytest.raises(ConfigError):
        space_timesteps(10, 11)


def _trajectory(sampler, network, diffusion, seed):
    noise = NoiseSource([seed])
    x = noise.initial((8, 8, 8, 8))
    samples, preds = [], []

    def on_step(done, total, x_now, pred):
        samples.append(x_now.clone())
        preds.append(pred.clone())

    with torch.no_grad():
        final = sampler(model_denoiser(network, diffusion), diffusion, x, noise, on_step=on_step)
    return x, final, torch.stack(samples), torch.stack(preds)


@pytest.mark.parametrize("name", ["ancestral", "ddim"])
def test_respaced_trajectories(ref, tiny_unet, name):
    seed = int(ref["respaced10/ancestral/seed"])
    x_T, final, samples, preds = _trajectory(
        {"ancestral": ancestral, "ddim": ddim}[name], tiny_unet, Diffusion().respaced(10), seed
    )
    assert torch.equal(x_T, ref["respaced10/ancestral/initial_noise"])
    torch.testing.assert_close(samples, ref[f"respaced10/{name}/samples_per_step"], atol=1e-4, rtol=0)
    torch.testing.assert_close(preds, ref[f"respaced10/{name}/pred_xstart_per_step"], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        (from_coefficients(final) + 1) / 2, ref[f"respaced10/{name}/final_image"], atol=1e-4, rtol=0
    )


def test_seeded_1000_step_run_reproduces_released(ref, tiny_unet, one_thread):
    diffusion = Diffusion()
    noise = NoiseSource([int(ref["full1000/seed"])])
    x = noise.initial((8, 8, 8, 8))
    assert torch.equal(x, ref["full1000/initial_noise"])
    kept = ref["full1000/kept_steps"].tolist()
    seen = {}

    def on_step(done, total, x_now, pred):
        if total - done in kept:
            seen[total - done] = (x_now.clone(), pred.clone())

    with torch.no_grad():
        final = ancestral(model_denoiser(tiny_unet, diffusion), diffusion, x, noise, on_step=on_step)
    for j, step in enumerate(kept):
        torch.testing.assert_close(seen[step][0], ref["full1000/samples_at_kept_steps"][j], atol=1e-4, rtol=0)
        torch.testing.assert_close(seen[step][1], ref["full1000/pred_xstart_at_kept_steps"][j], atol=1e-4, rtol=0)
    torch.testing.assert_close(final, ref["full1000/final_coefficients"], atol=1e-4, rtol=0)
    torch.testing.assert_close((from_coefficients(final) + 1) / 2, ref["full1000/final_image_01"], atol=1e-4, rtol=0)


def test_ddim_is_deterministic_and_cancellable(tiny_unet):
    diffusion = Diffusion().respaced(4)
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        a = ddim(model_denoiser(tiny_unet, diffusion), diffusion, x, NoiseSource([1]))
        b = ddim(model_denoiser(tiny_unet, diffusion), diffusion, x, NoiseSource([2]))
        assert torch.equal(a, b)
        calls = []

        def cancel():
            calls.append(1)
            return len(calls) > 2

        with pytest.raises(Cancelled):
            ancestral(model_denoiser(tiny_unet, diffusion), diffusion, x, NoiseSource([1]), cancel=cancel)
    assert len(calls) == 3
