"""Fast samplers (diffusers schedulers) and generate(): exactness checks, seeds, batches, cancel, previews,
precision and errors, on tiny networks."""

import threading

import numpy as np
import pytest
import torch

import wdmcore
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.errors import CheckpointError, ConfigError, OutOfMemoryError
from wdmcore.hub import load_catalogue
from wdmcore.models.model import WDMModel
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.samplers import (
    Cancelled,
    NoiseSource,
    ddim,
    diffusers_scheduler,
    dpmpp_2m,
    model_denoiser,
    scheduler_loop,
    unipc,
)
from wdmcore.tasks.generate import GeneratedVolume, generate

TINY = NetworkConfig("unet", model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4)


def tiny_model(image_size: int = 16, seed: int = 0, card: dict | None = None) -> WDMModel:
    """A tiny U-Net with non-zero weights (a fresh network outputs exactly zero)."""
    torch.manual_seed(seed)
    network = build_network(TINY)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0.0, 0.1)
    return WDMModel(network, {"name": "tiny", "image_size": image_size, **(card or {})})


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_diffusers_ddim_matches_our_ddim(model):
    full = model.diffusion
    spaced = full.respaced("ddim10")
    assert spaced.timestep_map.tolist() == list(range(0, 1000, 100))
    x = NoiseSource([5], "cpu").initial((8, 8, 8, 8))
    with torch.inference_mode():
        ours = ddim(model_denoiser(model.network, spaced), spaced, x)
        seen = []

        def record(done, total, x, pred_x0):
            seen.append(done)

        theirs = scheduler_loop("ddim", model_denoiser(model.network, full), full, x, steps=10, on_step=record)
    assert seen == list(range(1, 11))
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert (theirs - ours).abs().max() < 1e-4 and ours.abs().max() > 0.1


def _gaussian_denoiser(diffusion: Diffusion, s: float):
    """The exact x0 = E[x0 | x_t] for data x0 ~ N(0, s^2 I): a linear map of x_t."""
    abar = torch.from_numpy(diffusion.alphas_cumprod)

    def denoise(x, t):
        a = abar[t].float().view(-1, 1, 1, 1, 1)
        return a.sqrt() * s**2 / (a * s**2 + 1 - a) * x

    return denoise


def test_solvers_converge_to_the_probability_flow_solution():
    # For Gaussian data the probability-flow ODE is solved exactly by x_0 = s * x_T / sqrt(abar_T s^2 + 1 - abar_T).
    s = 0.5
    diffusion = Diffusion(DiffusionConfig(clip_denoised=False))
    x_T = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    abar_T = float(diffusion.alphas_cumprod[-1])
    exact = s * x_T / np.sqrt(abar_T * s**2 + 1 - abar_T)

    def relative_error(name, steps):
        if name == "ddim":  # runs on a respaced diffusion and stops at t = 0 (abar_0 = 1 - 1e-4, not 1)
            spaced = diffusion.respaced(steps)
            result = ddim(_gaussian_denoiser(spaced, s), spaced, x_T)
        else:
            solver = {"dpm++2m": dpmpp_2m, "unipc": unipc}[name]
            result = solver(_gaussian_denoiser(diffusion, s), diffusion, x_T, steps=steps)
        return ((result - exact).abs().max() / exact.abs().max()).item()

    at50 = {name: relative_error(name, 50) for name in ("dpm++2m", "unipc", "ddim")}
    assert at50["dpm++2m"] < 2e-3 and at50["unipc"] < 1e-2
    assert at50["ddim"] > 5 * max(at50["dpm++2m"], at50["unipc"])  # first order vs. second order
    for name, error in at50.items():
        assert relative_error(name, 200) < error / 2


@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc", "ddim", "ancestral"])
def test_generate_seeds_batches_range_and_meta(model, sampler):
    together = generate(model, 3, seed=11, sampler=sampler, steps=2, batch_size=2)
    assert [v.seed for v in together] == [11, 12, 13]
    one = together[0]
    assert isinstance(one, GeneratedVolume) and one.array.shape == (16, 16, 16) and one.array.dtype == np.float32
    assert one.array.min() >= 0.0 and one.array.max() <= 1.0 and one.array.std() > 0.01
    assert one.meta["sampler"] == sampler and one.meta["steps"] == 2 and one.meta["seed"] == 11
    assert one.meta["wdmcore_version"] == wdmcore.__version__ and one.meta["precision"] == "fp32"
    assert one.meta["geometry_known"] is False
    # Sample i depends only on seed + i, not on the batch it was drawn in.
    alone = generate(model, 1, seed=12, sampler=sampler, steps=2)[0]
    np.testing.assert_allclose(alone.array, together[1].array, atol=1e-5, rtol=0)
    assert np.abs(together[0].array - together[1].array).max() > 0.01


def test_fast_samplers_differ_from_each_other_but_agree_at_many_steps(model):
    a = generate(model, 1, seed=2, sampler="dpm++2m", steps=20)[0].array
    b = generate(model, 1, seed=2, sampler="unipc", steps=20)[0].array
    c = generate(model, 1, seed=2, sampler="dpm++2m", steps=3)[0].array
    assert np.abs(a - b).mean() < np.abs(a - c).mean()


def test_generate_geometry_and_intensity_from_the_card():
    card = {
        "spacing_mm": [2.0, 2.0, 3.0],
        "intensity": {"range": [-1000.0, 1000.0], "meaning": "HU"},
        "geometry": {"known": True},
        "direction": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "origin_mm": [10.0, 20.0, 30.0],
    }
    volume = generate(tiny_model(card=card), 1, steps=2)[0]
    assert volume.meta["geometry_known"] is True and volume.meta["intensity"] == "HU"
    np.testing.assert_array_equal(volume.affine, [[2, 0, 0, 10], [0, 2, 0, 20], [0, 0, 3, 30], [0, 0, 0, 1]])
    assert volume.array.min() >= -1000 and volume.array.max() <= 1000 and volume.array.max() - volume.array.min() > 20


def test_generate_from_a_file_path(tmp_path, model):
    path = model.save(tmp_path / "tiny.safetensors")
    from_file = generate(str(path), 1, seed=4, steps=3)[0]
    np.testing.assert_array_equal(from_file.array, generate(model, 1, seed=4, steps=3)[0].array)
    assert from_file.meta["model"] == "tiny"
    with pytest.raises(CheckpointError, match="not found.*or a model name from `wdm models`"):
        generate(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="unknown model"):
        generate("no_such_model")


def test_cancel_stops_within_one_step(model):
    event = threading.Event()
    progress = []

    def on_progress(e):
        progress.append(e["done"])
        if e["done"] == 2:
            event.set()

    with pytest.raises(Cancelled):
        generate(model, 1, steps=10, cancel=event, on_progress=on_progress)
    assert progress == [1, 2]
    with pytest.raises(Cancelled):
        generate(model, 1, sampler="ancestral", steps=10, cancel=lambda: True)


def test_progress_and_previews(model):
    events, previews = [], []
    volumes = generate(
        model,
        3,
        steps=5,
        batch_size=2,
        on_progress=events.append,
        on_preview=lambda i, img: previews.append((i, img)),
        preview_every=2,
    )
    assert [e["done"] for e in events] == [2, 4, 6, 8, 10, 11, 12, 13, 14, 15]
    assert events[-1]["total"] == 15 and events[-1]["task"] == "sample"
    # Steps 2, 4 and the last (5) for each of the two batches: indices 0, 1 then 2.
    assert [i for i, _ in previews] == [0, 1] * 3 + [2] * 3
    last_of_0 = [img for i, img in previews if i == 0][-1]
    assert last_of_0.shape == (16, 16, 16) and last_of_0.dtype == np.float32
    # The last x0 estimate of the solvers' final step is the output itself.
    np.testing.assert_allclose(last_of_0, volumes[0].array, atol=1e-5)


def test_bf16_autocast_path_stays_close_to_fp32(model):
    fp32 = generate(model, 1, seed=1, steps=2)[0]
    bf16 = generate(model, 1, seed=1, steps=2, precision="bf16")[0]
    assert bf16.array.dtype == np.float32 and bf16.meta["precision"] == "bf16"
    difference = np.abs(bf16.array - fp32.array)
    assert 0 < difference.max() < 0.1 and difference.mean() < 0.01


def test_out_of_memory_becomes_a_wdm_error(model, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.network, "forward", exhausted)
    with pytest.raises(OutOfMemoryError, match="smaller batch size") as info:
        generate(model, 1, steps=2)
    assert isinstance(info.value, wdmcore.WDMError)


def test_invalid_settings_are_refused(model):
    with pytest.raises(ConfigError, match="sampler"):
        generate(model, sampler="euler")
    with pytest.raises(ConfigError, match="precision"):
        generate(model, precision="int8")
    with pytest.raises(ConfigError, match="steps"):
        generate(model, steps=0)
    with pytest.raises(ConfigError, match="at least 1"):
        generate(model, num=0)


def test_catalogue_model_geometry_for_the_released_cards():
    # The catalogue cards of the released models give 2 mm spacing and no orientation: geometry unknown.
    from wdmcore.volumes.writing import card_geometry

    for name in ("brats_unet_128_1200k", "lidc-idri_unet_128_1200k"):
        geometry = card_geometry(load_catalogue().get(name).card, (128, 128, 128))
        np.testing.assert_allclose(geometry.spacing, [2, 2, 2])
        assert geometry.known is False and "orientation unknown" in geometry.notes
        np.testing.assert_allclose(geometry.affine[:3, :3] @ np.full(3, 63.5) + geometry.affine[:3, 3], 0, atol=1e-12)


@pytest.mark.parametrize("name", ["dpm++2m", "unipc"])
def test_solver_timesteps_are_distinct_for_every_step_count(name):
    diffusion = Diffusion()
    scheduler = diffusers_scheduler(name, diffusion)
    for steps in [*range(1, 60), *range(60, 990, 37), *range(990, 1000)]:
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.tolist()
        assert len(set(timesteps)) == steps and timesteps[0] == 999 and min(timesteps) >= 0, steps
    with pytest.raises(ConfigError, match="ancestral"):
        scheduler_loop(name, lambda x, t: x, diffusion, torch.zeros(1, 8, 2, 2, 2), steps=1000)


def test_python_api_progress_bar_is_opt_in(model, capsys):
    events = []
    model.sample(2, seed=0, steps=3, on_progress=events.append)
    assert capsys.readouterr().err == ""  # silent unless asked
    model.sample(2, seed=0, steps=3, on_progress=events.append, progress=True)
    err = capsys.readouterr().err
    assert "sample" in err and "6/6" in err
    assert [e["done"] for e in events] == [1, 2, 3, 4, 5, 6] * 2  # the caller's callback still gets every event
    generate(model, 1, steps=2, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_model_sample_values_are_exactly_within_0_and_1():
    from wdmcore.wavelets import from_coefficients

    model = tiny_model(seed=3)
    with torch.no_grad():
        for p in model.network.parameters():
            p.mul_(3.0)  # a network whose x0 estimates saturate, so samples reach both ends of the range
    coefficients = model.sample_coefficients([0, 1], sampler="ddim", steps=2)
    raw = (from_coefficients(coefficients, model.diffusion_config.lll_scale) + 1) / 2
    assert float(raw.min()) < 0.0 and float(raw.max()) > 1.0  # the inverse transform overshoots by rounding
    volumes = model.sample(2, seed=0, sampler="ddim", steps=2)
    assert float(volumes.min()) == 0.0 and float(volumes.max()) == 1.0
    torch.testing.assert_close(volumes, raw.clamp(0, 1), atol=1e-5, rtol=0)
