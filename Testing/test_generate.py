"""Fast samplers and generate(): our solvers against the diffusers schedulers and a closed-form ODE solution,
seeds, batches, cancel, previews, precision and errors, on tiny networks."""

import threading

import numpy as np
import pytest
import torch

import wdmcore
from wdmcore.backends import native_bf16
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.errors import CheckpointError, ConfigError, OutOfMemoryError
from wdmcore.hub import load_catalogue
from wdmcore.models.model import WDMModel
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.samplers import (
    SPACINGS,
    Cancelled,
    NoiseSource,
    ddim,
    dpmpp_2m,
    dpmpp_2m_sde,
    log_snr,
    model_denoiser,
    run_sampler,
    scheduler_loop,
    solver_timesteps,
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


def test_solvers_converge_to_the_probability_flow_solution_at_their_order():
    # Gaussian data: the probability-flow ODE maps x_T linearly to x at t = 0, and the final x0 estimate there is
    # linear too. The target is exactly what a solver with no discretisation error returns, so the errors must
    # fall as the solver's order says (no cancellation between a trajectory error and the final shrink). Measured
    # on evenly spaced log-SNR steps: the default few-call spacing packs its steps near t = 0, where rounding to
    # integer timesteps, not the order, sets the error from 50 calls on.
    s = 0.5
    diffusion = Diffusion(DiffusionConfig(clip_denoised=False))
    x_T = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    a_T, a_0 = float(diffusion.alphas_cumprod[-1]), float(diffusion.alphas_cumprod[0])
    at_0 = x_T * np.sqrt(a_0 * s**2 + 1 - a_0) / np.sqrt(a_T * s**2 + 1 - a_T)
    exact = np.sqrt(a_0) * s**2 / (a_0 * s**2 + 1 - a_0) * at_0

    def relative_error(name, steps):
        denoise = _gaussian_denoiser(diffusion, s)
        result = run_sampler(name, denoise, diffusion, x_T, NoiseSource([0, 1]), steps=steps, spacing="logsnr")
        return ((result - exact).abs().max() / exact.abs().max()).item()

    errors = {name: [relative_error(name, n) for n in (25, 50, 100)] for name in ("dpm++2m", "unipc", "ddim")}
    assert errors["dpm++2m"][1] < 3e-3 and errors["unipc"][1] < 1e-3 and errors["ddim"][1] < 0.06
    for coarse, fine in zip(errors["dpm++2m"], errors["dpm++2m"][1:], strict=False):
        assert 3.5 < coarse / fine < 5, errors  # second order: 4x less per doubling
    assert errors["unipc"][0] / errors["unipc"][1] > 5, errors  # the corrector raises the order
    for coarse, fine in zip(errors["ddim"], errors["ddim"][1:], strict=False):
        assert 1.7 < coarse / fine < 2.3, errors  # first order


@pytest.mark.parametrize("name", ["dpm++2m", "unipc"])
@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_our_solvers_match_diffusers_on_its_spacing(model, name, steps):
    # On diffusers' own "linspace" spacing the two implementations must agree step for step.
    full = model.diffusion
    x = NoiseSource([3]).initial((8, 8, 8, 8))
    ours, theirs = [], []
    with torch.inference_mode():
        denoise = model_denoiser(model.network, full)
        solver = {"dpm++2m": dpmpp_2m, "unipc": unipc}[name]
        solver(denoise, full, x, steps=steps, spacing="linspace", on_step=lambda d, t, x, p: ours.append(x.clone()))
        scheduler_loop(name, denoise, full, x, steps=steps, on_step=lambda d, t, x, p: theirs.append(x.clone()))
    assert len(ours) == steps
    torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++2m-sde"])
def test_our_dpm_solvers_match_diffusers_on_our_timesteps(model, name):
    full = model.diffusion
    x = NoiseSource([4]).initial((8, 8, 8, 8))
    timesteps = solver_timesteps(full, 12, "logsnr")
    with torch.inference_mode():
        denoise = model_denoiser(model.network, full)
        solver = {"dpm++2m": dpmpp_2m, "dpm++2m-sde": dpmpp_2m_sde}[name]
        ours = solver(denoise, full, x, NoiseSource([4]), steps=12)
        theirs = scheduler_loop(name, denoise, full, x, timesteps=timesteps, noise=NoiseSource([4]))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert ours.abs().max() > 0.1


@pytest.mark.parametrize("sampler", ["unipc", "dpm++2m", "dpm++2m-sde", "ddim", "ancestral"])
def test_generate_seeds_batches_range_and_meta(model, sampler):
    # PyTorch fp32 on every CPU: what is exact here is the samplers' and seeds' arithmetic (on a CPU with native
    # bf16, auto would run bf16, whose batch-2 and batch-1 kernels differ in the last bits; test_backends.py
    # holds auto's volumes to fp32's).
    exact = {"backend": "torch", "precision": "fp32"}
    together = generate(model, 3, seed=11, sampler=sampler, steps=2, batch_size=2, **exact)
    assert [v.seed for v in together] == [11, 12, 13]
    one = together[0]
    assert isinstance(one, GeneratedVolume) and one.array.shape == (16, 16, 16) and one.array.dtype == np.float32
    assert one.array.min() >= 0.0 and one.array.max() <= 1.0 and one.array.std() > 0.01
    assert one.meta["sampler"] == sampler and one.meta["steps"] == 2 and one.meta["seed"] == 11
    assert one.meta["wdmcore_version"] == wdmcore.__version__ and one.meta["precision"] == "fp32"
    assert one.meta["geometry_known"] is False
    # Sample i depends only on seed + i, not on the batch it was drawn in.
    alone = generate(model, 1, seed=12, sampler=sampler, steps=2, **exact)[0]
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


@pytest.mark.skipif(not native_bf16(), reason="bf16 on the CPU is refused without native bf16 (AVX-512 BF16, AMX)")
def test_bf16_autocast_path_stays_close_to_fp32(model):
    fp32 = generate(model, 1, seed=1, steps=2)[0]
    bf16 = generate(model, 1, seed=1, steps=2, precision="bf16", backend="torch")[0]
    assert bf16.array.dtype == np.float32 and bf16.meta["precision"] == "bf16"
    difference = np.abs(bf16.array - fp32.array)
    assert 0 < difference.max() < 0.1 and difference.mean() < 0.01


def test_out_of_memory_becomes_a_wdm_error(model, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model.network, "forward", exhausted)
    with pytest.raises(OutOfMemoryError, match="smaller batch size") as info:
        # PyTorch: on a CPU with native bf16, auto would run this network's cached OpenVINO conversion instead
        generate(model, 1, steps=2, backend="torch")
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


@pytest.mark.parametrize("spacing", SPACINGS)
def test_solver_timesteps_are_distinct_and_reach_t0(spacing):
    diffusion = Diffusion()
    for steps in [*range(1, 60), *range(60, 990, 37), *range(990, 1000)]:
        timesteps = solver_timesteps(diffusion, steps, spacing)
        assert len(set(timesteps)) == steps and timesteps == sorted(timesteps, reverse=True), steps
        assert timesteps[0] == 999 and min(timesteps) >= 0, steps
        if spacing != "linspace" and steps > 1:
            assert timesteps[-1] == 0, steps
    if spacing != "linspace":
        assert solver_timesteps(diffusion, 1000, spacing) == list(range(999, -1, -1))
    with pytest.raises(ConfigError, match="steps"):
        solver_timesteps(diffusion, 1001, spacing)
    with pytest.raises(ConfigError, match="full schedule"):
        solver_timesteps(diffusion.respaced(10), 5, spacing)
    # logSNR spacing: equal steps in lambda, up to the rounding to integer timesteps near t = 0.
    lam = log_snr(diffusion)[solver_timesteps(diffusion, 25, "logsnr")]
    np.testing.assert_allclose(np.diff(lam)[:15], (lam[-1] - lam[0]) / 24, rtol=0.05)


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
