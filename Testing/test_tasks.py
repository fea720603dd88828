"""synthesize / inpaint / vary: released preprocessing (fixtures), geometry round trips, the outside-the-mask
identity, and clear errors for bad inputs."""

import numpy as np
import pytest
import torch
from conftest import load_reference

import wdmcore
from wdmcore.errors import ConfigError, DataError, InputShapeError
from wdmcore.models.checkpoints import save_model_file
from wdmcore.networks import NetworkConfig, build_network
from wdmcore.samplers import Cancelled
from wdmcore.tasks.inpaint import component_windows, fast_normalise, pad_widths
from wdmcore.tasks.inputs import fit_axis, from_grid, read_inputs, to_grid
from wdmcore.tasks.synthesize import finish_image
from wdmcore.wavelets import from_coefficients, to_coefficients

OBLIQUE = np.array(
    [[0.0, -1.2, 0.3, 10.0], [0.9, 0.0, 0.1, -20.0], [0.1, 0.2, 2.5, 5.0], [0, 0, 0, 1]], dtype=np.float64
)


@pytest.fixture(scope="module")
def cwdm_tiny(reference_dir):
    config = load_reference("cwdm/cwdm_sampling.pt")["config"]
    return wdmcore.load_model(reference_dir / "cwdm/cwdm_unet_tiny_state_dict.pt", official_args=config)


@pytest.fixture(scope="module")
def fast_tiny(reference_dir):
    config = load_reference("fastwdm3d/fastwdm3d_sampling.pt")["config"]
    return wdmcore.load_model(
        reference_dir / "fastwdm3d/fastwdm3d_unet_tiny_state_dict.pt", official_args={**config, "image_size": 16}
    )


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    torch.manual_seed(0)
    network = build_network(NetworkConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4))
    for p in network.parameters():
        p.data += 0.05 * torch.randn_like(p)
    path = save_model_file(
        tmp_path_factory.mktemp("m") / "u.safetensors", network, {"image_size": 16, "diffusion": {"steps": 100}}
    )
    return wdmcore.load_model(path)


def _get(ref, path):
    """A fixture entry by its path, whether the file stores it flat ("a/b") or nested ({"a": {"b": ...}})."""
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        key = "/".join(parts[:i])
        if key in ref:
            return ref[key] if i == len(parts) else _get(ref[key], "/".join(parts[i:]))
    raise KeyError(path)


def _brats_case(fields):
    array = np.repeat(np.repeat(np.repeat(fields.numpy(), 16, 0), 16, 1), 5, 2).astype(np.int16).astype(np.float64)
    return array


def test_fit_axis_reproduces_the_released_brats_grid():
    assert fit_axis(240, 32) == (224, 8, 0) and fit_axis(155, 32) == (160, 0, 5) and fit_axis(64, 32) == (64, 0, 0)
    a = np.random.default_rng(0).random((240, 240, 155))
    fits = [fit_axis(n, 32) for n in a.shape]
    grid = to_grid(a, fits)
    assert grid.shape == (224, 224, 160) and np.array_equal(grid[..., :155], a[8:232, 8:232])
    back = from_grid(grid, fits, a.shape)
    assert np.array_equal(back[8:232, 8:232], a[8:232, 8:232]) and back[:8].max() == 0


def test_cwdm_preprocessing_and_postprocessing_match_the_released_run(cwdm_tiny):
    ref = load_reference("cwdm/cwdm_preprocessing_e2e.pt")
    case = "case0"
    volumes = {
        s: (_brats_case(_get(ref, f"{case}/lowres_fields/{s}")), np.diag([-1.0, -1, 1, 1]))
        for s in ("t1c", "t2w", "t2f")
    }
    # The tiny network's grid multiple is 8; the released network's is 32: fit with the released one.
    inputs = read_inputs(volumes, ["t1c", "t2w", "t2f"], "synthesize")
    import wdmcore.tasks.synthesize as synth

    cond, prepared, fits = _prepare_with_multiple(cwdm_tiny, inputs, 32)
    assert prepared[0].shape == (224, 224, 160)
    for name, p in zip(("t1c", "t2w", "t2f"), prepared, strict=True):
        stats = _get(ref, f"{case}/{name}/stats")
        assert p.min() == stats["min"] and p.max() == stats["max"]
        assert abs(float(p.astype(np.float64).sum()) - stats["sum"]) < 1e-6 * stats["sum"]
        assert int(np.count_nonzero(p)) == stats["count_nonzero"]
        np.testing.assert_allclose(p[::8, ::8, ::8], _get(ref, f"{case}/{name}/strided_8_8_8").numpy(), atol=1e-6)
    np.testing.assert_allclose(
        cond[0, :, ::16, ::16, ::16].numpy(), _get(ref, f"{case}/cond_strided_16").numpy(), atol=1e-6
    )
    # The released run: seed 42, the loader's int64 draw, then the initial noise.
    noise = cwdm_tiny.noise_source([42]).initial((8, 112, 112, 80))
    assert torch.equal(noise.flatten()[:32], _get(ref, f"{case}/initial_noise_first_32"))
    # Post-processing of the stand-in loop output (coefficients of 1.2 target - 0.1) as sample.py does it.
    target = to_grid(
        synth.quantile_minmax(_brats_case(_get(ref, f"{case}/lowres_fields/t1n")), 0.001, 0.999, "t1n")[0].astype(
            np.float32
        ),
        fits,
    )
    standin = to_coefficients(torch.from_numpy(1.2 * target - 0.1)[None, None])
    image = finish_image(cwdm_tiny, standin, prepared[0], "brain-mask")[..., :155]
    assert int((image == 0).sum()) == _get(ref, f"{case}/sample_count_exact_0")
    assert int((image == 1).sum()) == _get(ref, f"{case}/sample_count_exact_1")
    np.testing.assert_allclose(image[::8, ::8, ::8], _get(ref, f"{case}/sample_strided_8_8_8").numpy(), atol=1e-5)


def _prepare_with_multiple(model, inputs, multiple):
    import wdmcore.tasks.synthesize as synth

    class _View:
        def __init__(self, m):
            self.diffusion_config = m.diffusion_config
            self.network = type("N", (), {"config": type("C", (), {"downsampling_factor": multiple // 2})()})()

    return synth.prepare_condition(_View(model), inputs)


def test_synthesize_returns_the_input_grid_for_an_oblique_non_cubic_input(cwdm_tiny):
    rng = np.random.default_rng(1)
    shape = (18, 13, 10)
    base = rng.random(shape) * 100
    inputs = {name: (base * (i + 1) + rng.random(shape), OBLIQUE) for i, name in enumerate(cwdm_tiny.input_names)}
    out = wdmcore.synthesize(cwdm_tiny, inputs, seed=3, sampler="ddim", steps=3)
    assert out.array.shape == shape and np.array_equal(out.affine, OBLIQUE)
    # [0, 1] up to the rounding of the inverse Haar transform (the released post-processing has no upper clamp)
    assert out.array.min() >= 0 and out.array.max() <= 1 + 1e-6 and out.meta["task"] == "synthesize"
    again = wdmcore.synthesize(cwdm_tiny, inputs, seed=3, sampler="ddim", steps=3)
    np.testing.assert_array_equal(out.array, again.array)


def test_synthesize_refuses_bad_inputs(cwdm_tiny, unconditional):
    good = np.random.default_rng(0).random((16, 16, 8))
    names = cwdm_tiny.input_names
    with pytest.raises(ConfigError, match="missing"):
        wdmcore.synthesize(cwdm_tiny, {names[0]: good}, steps=2)
    with pytest.raises(InputShapeError, match="differ in shape"):
        wdmcore.synthesize(cwdm_tiny, {names[0]: good, names[1]: good, names[2]: good[:, :, :6]}, steps=2)
    shifted = np.eye(4)
    shifted[0, 3] = 5
    with pytest.raises(InputShapeError, match="different geometry"):
        wdmcore.synthesize(cwdm_tiny, {names[0]: good, names[1]: good, names[2]: (good, shifted)}, steps=2)
    with pytest.raises(InputShapeError, match="3-D"):
        wdmcore.synthesize(cwdm_tiny, {n: good[0] for n in names}, steps=2)
    with pytest.raises(ConfigError, match="task is 'generate'"):
        wdmcore.synthesize(unconditional, {"x": good}, steps=2)


def test_fastwdm3d_loader_steps_match_the_released_run():
    ref = load_reference("fastwdm3d/fastwdm3d_inpainting_e2e.pt")
    for case in ("case0", "case1"):
        image = _brats_case(_get(ref, f"{case}/lowres_t1n"))
        inside = np.zeros(image.shape, dtype=bool)
        for i0, i1, j0, j1, k0, k1 in _get(ref, f"{case}/mask_boxes"):
            inside[i0:i1, j0:j1, k0:k1] = True
        image[inside] = 0  # the voided file
        pads = pad_widths(image.shape, 128)
        assert pads == [(8, 8), (8, 8), (50, 51)]
        volume = np.pad(fast_normalise(image), pads, constant_values=-1.0)
        np.testing.assert_allclose(
            volume[::16, ::16, ::16], _get(ref, f"{case}/loader_full_voided_strided_16").numpy(), atol=1e-6
        )
        windows = component_windows(np.pad(inside, pads), 128)
        assert len(windows) == _get(ref, f"{case}/num_components")
        assert [list(w[1]) for w in windows] == _get(ref, f"{case}/starts").tolist()
        assert [list(w[2]) for w in windows] == _get(ref, f"{case}/ends").tolist()


def test_inpaint_keeps_the_outside_exact_and_uses_the_input_grid(fast_tiny, unconditional):
    rng = np.random.default_rng(2)
    shape = (20, 18, 12)
    image = np.round(rng.random(shape) * 1000)
    mask = np.zeros(shape)
    mask[6:10, 5:9, 4:8] = 1
    for model, kwargs in ((fast_tiny, {}), (unconditional, {"steps": 4, "resample": 2})):
        out = wdmcore.inpaint(model, (image, OBLIQUE), (mask, OBLIQUE), seed=1, **kwargs)
        assert out.array.shape == shape and np.array_equal(out.affine, OBLIQUE)
        outside = mask == 0
        np.testing.assert_array_equal(out.array[outside], image[outside].astype(np.float32))
        assert np.isfinite(out.array).all() and not np.array_equal(out.array[~outside], image[~outside])


def test_inpaint_refuses_bad_masks(fast_tiny, cwdm_tiny):
    image = np.random.default_rng(0).random((16, 16, 16))
    with pytest.raises(DataError, match="empty"):
        wdmcore.inpaint(fast_tiny, image, np.zeros((16, 16, 16)))
    with pytest.raises(DataError, match="whole volume"):
        wdmcore.inpaint(fast_tiny, image, np.ones((16, 16, 16)))
    with pytest.raises(InputShapeError, match="differ in shape"):
        wdmcore.inpaint(fast_tiny, image, np.ones((16, 16, 8)))
    with pytest.raises(ConfigError, match="inpaint or a generate model"):
        wdmcore.inpaint(cwdm_tiny, image, (image > 0.5).astype(float))


def test_vary_changes_the_volume_more_with_more_strength(unconditional):
    rng = np.random.default_rng(4)
    image = rng.random((20, 16, 16)) * 50
    # The respaced ancestral sampler (the random test network's x0 estimate is no denoiser, so only the
    # stochastic sampler's noise makes the difference measurable here).
    weak = wdmcore.vary(unconditional, (image, OBLIQUE), strength=0.1, seed=0, sampler="ancestral", steps=10)
    strong = wdmcore.vary(unconditional, (image, OBLIQUE), strength=1.0, seed=0, sampler="ancestral", steps=10)
    assert weak.array.shape == image.shape and np.array_equal(weak.affine, OBLIQUE)
    assert np.abs(weak.array - image).mean() < np.abs(strong.array - image).mean()
    np.testing.assert_array_equal(weak.array[:2], image[:2].astype(np.float32))  # outside the 16^3 crop
    with pytest.raises(ConfigError, match="strength"):
        wdmcore.vary(unconditional, image, strength=0)


def test_cli_synthesize_inpaint_vary_write_results_in_the_input_grid(tmp_path, cwdm_tiny, fast_tiny, unconditional):
    from wdmcore.cli.main import main
    from wdmcore.models.families import cwdm_inputs
    from wdmcore.volumes.reading import load_volume
    from wdmcore.volumes.writing import save_nifti

    rng = np.random.default_rng(5)
    shape = (18, 16, 10)
    paths = {}
    for name in ("t1c", "t2w", "t2f", "image"):
        paths[name] = save_nifti((rng.random(shape) * 300).astype(np.float32), OBLIQUE, tmp_path / f"{name}.nii.gz")
    mask = np.zeros(shape, dtype=np.float32)
    mask[5:9, 5:9, 3:7] = 1
    paths["mask"] = save_nifti(mask, OBLIQUE, tmp_path / "mask.nii.gz")
    synth = cwdm_tiny.save(tmp_path / "cwdm.safetensors", inputs=cwdm_inputs("t1n"), name="cwdm_tiny")
    fast = fast_tiny.save(tmp_path / "fast.safetensors", name="fast_tiny")
    uncond = unconditional.save(tmp_path / "u.safetensors")
    common = ["--seed", "1", "--device", "cpu", "--progress", "none"]
    runs = [
        ["synthesize", "--model", str(synth), "--t1c", str(paths["t1c"]), "--t2w", str(paths["t2w"]),
         "--t2f", str(paths["t2f"]), "--steps", "2", "--out", str(tmp_path / "s.nii.gz")],
        ["inpaint", "--model", str(fast), "--image", str(paths["image"]), "--mask", str(paths["mask"]),
         "--out", str(tmp_path / "i.nii.gz")],
        ["vary", "--model", str(uncond), "--image", str(paths["image"]), "--strength", "0.2", "--steps", "5",
         "--out", str(tmp_path / "v.nii.gz")],
    ]  # fmt: skip
    for argv in runs:
        assert main(argv + common) == 0, argv[0]
        array, affine = load_volume(argv[argv.index("--out") + 1])
        assert array.shape == shape and np.allclose(affine, OBLIQUE, atol=1e-5)
    image, _ = load_volume(paths["image"])
    inpainted, _ = load_volume(tmp_path / "i.nii.gz")
    np.testing.assert_array_equal(inpainted[mask == 0], image[mask == 0])
    # A model used for the wrong task: one clear message, exit code 2.
    assert (
        main(["vary", "--model", str(fast), "--image", str(paths["image"]), "--out", str(tmp_path / "x.nii.gz")]) == 2
    )


def test_fastwdm3d_inpainting_reproduces_the_released_crops(reference_dir, monkeypatch):
    """Case 1 of the released end-to-end run (one component, 128^3 crop, tiny weights, seed 42 + 1): the crop's
    network input and output per step, the final coefficients and the crop in [0, 1]."""
    import wdmcore.tasks.inpaint as inpaint_module

    ref = load_reference("fastwdm3d/fastwdm3d_inpainting_e2e.pt")
    config = {**load_reference("fastwdm3d/fastwdm3d_sampling.pt")["config"], "image_size": 128}
    model = wdmcore.load_model(reference_dir / "fastwdm3d/fastwdm3d_unet_tiny_state_dict.pt", official_args=config)
    image = _brats_case(_get(ref, "case1/lowres_t1n"))
    inside = np.zeros(image.shape, dtype=bool)
    for i0, i1, j0, j1, k0, k1 in _get(ref, "case1/mask_boxes"):
        inside[i0:i1, j0:j1, k0:k1] = True
    image[inside] = 0
    calls = []
    from wdmcore import samplers

    real = samplers.run_sampler

    def recording(*args, **kwargs):
        calls.append((args[3].clone(), kwargs["condition"].clone()))
        out = real(*args, **kwargs)
        calls[-1] += (out.clone(),)
        return out

    monkeypatch.setattr(samplers, "run_sampler", recording)
    with torch.inference_mode():
        values = inpaint_module._inpaint_fast(
            model, model.network, image, inside, 43, 2, None, None
        )  # case 1: seed 42 + 1
    assert len(calls) == 1
    x_t, condition, final = calls[0]
    comp = "case1/comp0/"
    torch.testing.assert_close(x_t.flatten()[:32], _get(ref, comp + "initial_noise_first_32"), atol=0, rtol=0)
    torch.testing.assert_close(
        condition[0, :8, ::8, ::8, ::8],
        _get(ref, comp + "input_masked_dwt_strided_8"),
        atol=1e-6,
        rtol=0,
        check_dtype=False,
    )
    torch.testing.assert_close(
        final[0, :, ::8, ::8, ::8],
        _get(ref, comp + "final_coefficients_strided_8"),
        atol=1e-5,
        rtol=0,
        check_dtype=False,
    )
    scale = model.diffusion_config.lll_scale
    crop01 = (from_coefficients(final, scale, scale).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(
        crop01[0, 0, ::8, ::8, ::8], _get(ref, comp + "sample_crop_01_strided_8"), atol=1e-5, rtol=0, check_dtype=False
    )
    assert np.isfinite(values).all()


def test_generate_refuses_a_conditional_model(fast_tiny):
    with pytest.raises(ConfigError, match="inpaint model"):
        wdmcore.generate(fast_tiny, 1, steps=1)


def test_previews_are_the_whole_output_in_the_input_grid(fast_tiny, unconditional):
    rng = np.random.default_rng(5)
    shape = (20, 18, 12)
    image = np.round(rng.random(shape) * 1000)
    mask = np.zeros(shape)
    mask[6:10, 5:9, 4:8] = 1
    outside = mask == 0
    for model, kwargs in ((fast_tiny, {}), (unconditional, {"steps": 3, "resample": 1})):
        previews = []
        out = wdmcore.inpaint(model, (image, OBLIQUE), (mask, OBLIQUE), seed=1, preview_every=1,
                              on_preview=lambda i, a, seen=previews: seen.append(a), **kwargs)  # fmt: skip
        assert len(previews) == out.meta["steps"]
        for preview in previews:  # the input outside the mask, an estimate inside
            assert preview.shape == shape and np.isfinite(preview).all()
            np.testing.assert_array_equal(preview[outside], image[outside].astype(np.float32))
    previews = []
    out = wdmcore.vary(unconditional, (image, OBLIQUE), strength=0.5, steps=4, preview_every=1,
                       on_preview=lambda i, a: previews.append(a))  # fmt: skip
    # One preview per call run: only the calls below the strength's noise level (3 of the 4 timesteps of the
    # default spacing: 999 is above it).
    assert len(previews) == out.meta["denoising_steps"] == 3 and all(p.shape == shape for p in previews)
    assert abs(previews[0].mean() - image.mean()) < 0.5 * image.std()  # in the input's intensities, not [0, 1]


# -- defaults, post-processing, RePaint at the model's spacing -------------------------------------------------


def test_cwdm_postprocessing_matches_both_released_scripts(cwdm_tiny):
    """sample_auto.py (values <= 0.04 set to 0, no clamp, no mask: the default) and sample.py (clamp, brain
    mask by the first conditioning image) on the final coefficients of the released seeded run."""
    ref = load_reference("cwdm/cwdm_sampling.pt")
    first = ref[f"image_{ref['condition_order'][0]}"][0, 0].numpy()
    final = ref["final_coefficients"]
    auto = finish_image(cwdm_tiny, final, first)
    expected_auto = ref["final_image_sample_auto_py_threshold_only"].reshape(auto.shape).numpy()
    np.testing.assert_allclose(auto, expected_auto, atol=1e-5, rtol=0)
    assert (auto == 0).sum() == (expected_auto == 0).sum() > 0
    masked = finish_image(cwdm_tiny, final, first, "brain-mask")
    np.testing.assert_allclose(masked, ref["final_image_sample_py"].reshape(masked.shape).numpy(), atol=1e-5, rtol=0)
    raw = finish_image(cwdm_tiny, final, first, "none")
    np.testing.assert_allclose(raw, ref["final_image_before_clamp"].reshape(raw.shape).numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="post-processing"):
        finish_image(cwdm_tiny, final, first, "clip")


def test_cwdm_sample_auto_output_in_the_input_grid_matches_the_released_file(cwdm_tiny):
    """sample_auto.py end to end (t1c missing; stand-in loop returning 1.1 x the first input - 0.05): threshold,
    zero border, 240 x 240 x 155 in the input's grid. The released file is int16 with scale factors, hence 2e-5."""
    ref = load_reference("cwdm/cwdm_auto_e2e.pt")
    order = list(ref["condition_order"])
    volumes = {s: (_brats_case(_get(ref, f"lowres_fields/{s}")), np.diag([-1.0, -1, 1, 1])) for s in order}
    inputs = read_inputs(volumes, order, "synthesize")
    _, prepared, fits = _prepare_with_multiple(cwdm_tiny, inputs, 32)
    standin = to_coefficients(torch.from_numpy(1.1 * prepared[0] - 0.05)[None, None])
    image = from_grid(finish_image(cwdm_tiny, standin, prepared[0]), fits, (240, 240, 155))
    stats = _get(ref, "output_fdata_stats")
    assert list(image.shape) == stats["shape"] and int(np.count_nonzero(image)) == stats["count_nonzero"]
    assert abs(image.max() - stats["max"]) < 2e-5 and abs(image.astype(np.float64).mean() - stats["mean"]) < 2e-5
    np.testing.assert_allclose(image[::8, ::8, ::8], _get(ref, "output_fdata_strided_8_8_8").numpy(), atol=2e-5)
    assert np.abs(image[:8]).max() == 0 == np.abs(image[:, -8:]).max()


def test_synthesize_and_vary_default_to_the_fast_sampler_and_report_steps(cwdm_tiny, unconditional, one_thread):
    from wdmcore.progressbar import ProgressBars
    from wdmcore.vocabulary import DEFAULT_SAMPLER, DEFAULT_STEPS, PREVIEW_STEPS

    rng = np.random.default_rng(7)
    inputs = {name: rng.random((16, 16, 8)) for name in cwdm_tiny.input_names}
    events = []
    out = wdmcore.synthesize(cwdm_tiny, inputs, seed=1, on_progress=events.append)
    assert (out.meta["sampler"], out.meta["steps"]) == (DEFAULT_SAMPLER, DEFAULT_STEPS[DEFAULT_SAMPLER])
    assert out.meta["postprocess"] == "threshold"
    assert [e["done"] for e in events if e["event"] == "progress"] == list(range(1, DEFAULT_STEPS[DEFAULT_SAMPLER] + 1))
    # The released sampler stays one option away (stopped after its first step).
    seen = []
    with pytest.raises(Cancelled):
        wdmcore.synthesize(
            cwdm_tiny, inputs, sampler="ancestral", steps=1000, on_progress=seen.append, cancel=lambda: bool(seen)
        )
    assert (seen[0]["total"], seen[0]["sampler"]) == (1000, "ancestral")
    image = rng.random((20, 16, 16)) * 50
    varied = wdmcore.vary(unconditional, image, strength=0.5, seed=0)
    default = DEFAULT_STEPS[DEFAULT_SAMPLER]  # below the model's 100 diffusion steps
    assert varied.meta["sampler"] == DEFAULT_SAMPLER and varied.meta["steps"] == default
    assert 1 <= varied.meta["denoising_steps"] < default and varied.array.shape == image.shape
    # The preview quality: fewer calls for both tasks; refused for a sampler it was not measured with.
    assert wdmcore.vary(unconditional, image, strength=0.5, quality="preview").meta["steps"] == PREVIEW_STEPS
    events = []
    wdmcore.synthesize(cwdm_tiny, inputs, seed=1, quality="preview", on_progress=events.append)
    assert [e["done"] for e in events if e["event"] == "progress"] == list(range(1, PREVIEW_STEPS + 1))
    with pytest.raises(ConfigError, match="preview quality"):
        wdmcore.synthesize(cwdm_tiny, inputs, sampler="ddim", quality="preview")
    # Progress bars of the tasks count steps.
    import io

    bars = ProgressBars(io.StringIO())
    for task in ("synthesize", "inpaint", "vary"):
        bars({"event": "progress", "task": task, "done": 1, "total": 4})
        assert bars.bars[task].unit == "step", task
    bars.close()


def test_cli_task_defaults():
    from wdmcore.cli.main import build_parser

    # No sampler given: the task picks it (the engine's default, or a distilled student's card's).
    parser = build_parser()
    args = parser.parse_args(["synthesize", "--model", "m", "--out", "o.nii.gz"])
    assert (args.sampler, args.steps, args.postprocess) == (None, None, "threshold")
    args = parser.parse_args(["vary", "--model", "m", "--image", "x", "--out", "o.nii.gz"])
    assert (args.sampler, args.steps) == (None, None)


@pytest.fixture(scope="module")
def unconditional_2mm(tmp_path_factory):
    torch.manual_seed(1)
    network = build_network(NetworkConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4))
    for p in network.parameters():
        p.data += 0.05 * torch.randn_like(p)
    card = {"image_size": 16, "spacing_mm": [2.0, 2.0, 2.0], "diffusion": {"steps": 100}}
    return wdmcore.load_model(save_model_file(tmp_path_factory.mktemp("m") / "u2.safetensors", network, card))


def test_repaint_works_at_the_model_spacing_and_maps_back(unconditional_2mm, monkeypatch):
    import wdmcore.tasks.inpaint as inpaint_module

    shape = (40, 36, 14)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])  # the model's spacing is 2 mm
    affine[:3, 3] = (5.0, -3.0, 1.0)
    i, j, k = np.indices(shape, dtype=np.float64)
    image = 3 * i + 2 * j + 5 * k + 10  # linear: linear interpolation there and back is exact
    mask = np.zeros(shape)
    mask[12:20, 10:16, 5:8] = 1
    seen = {}
    real = inpaint_module._repaint_crop

    def identity(wdm, call, crop, crop_inside, *args):
        seen["crop"], seen["inside"] = crop, crop_inside
        seen["filled"] = real(wdm, call, crop, crop_inside, *args)
        return crop  # fill the mask with the resampled input itself

    monkeypatch.setattr(inpaint_module, "_repaint_crop", identity)
    out = wdmcore.inpaint(unconditional_2mm, (image, affine), (mask, affine), seed=2, steps=3, resample=1)
    assert seen["crop"].shape == (16, 16, 16)
    # The window holds the whole mask: 8 x 6 x 3 input voxels = 6.4 x 4.8 x 9 mm, about 3-5 model voxels a side.
    assert 3 * 3 * 4 <= seen["inside"].sum() <= 6 * 5 * 7
    assert np.isfinite(seen["filled"]).all() and seen["filled"].shape == (16, 16, 16)
    inside = mask > 0
    np.testing.assert_allclose(out.array[inside], image[inside], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(out.array[~inside], image[~inside].astype(np.float32))
    # With the real fill: the outside is still the input exactly, the inside is new, all in the input's grid.
    monkeypatch.setattr(inpaint_module, "_repaint_crop", real)
    filled = wdmcore.inpaint(unconditional_2mm, (image, affine), (mask, affine), seed=2, steps=3, resample=2)
    assert filled.array.shape == shape and np.array_equal(filled.affine, affine)
    np.testing.assert_array_equal(filled.array[~inside], image[~inside].astype(np.float32))
    assert not np.allclose(filled.array[inside], image[inside], atol=1.0)
    # A mask larger than the model's 32 mm window is refused with the sizes.
    big = np.zeros(shape)
    big[10:12, 10:12, 1:13] = 1  # 36 mm along the 3 mm axis
    with pytest.raises(ConfigError, match="mm, more than the model's window"):
        wdmcore.inpaint(unconditional_2mm, (image, affine), (big, affine), steps=2)


def test_solvers_take_explicit_timesteps_for_partial_runs():
    from wdmcore.diffusion import Diffusion, DiffusionConfig
    from wdmcore.samplers import DEFAULT_SPACING, NoiseSource, run_sampler, solver_timesteps

    diffusion = Diffusion(DiffusionConfig(steps=100))

    def network(x, t):  # a smooth stand-in denoiser
        return 0.5 * torch.tanh(x)

    x = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for sampler in ("unipc", "dpm++2m", "ddim"):
        full = solver_timesteps(diffusion, 10, DEFAULT_SPACING[sampler])
        a = run_sampler(sampler, network, diffusion, x, NoiseSource([0]), steps=10)
        b = run_sampler(sampler, network, diffusion, x, NoiseSource([0]), steps=1, timesteps=full)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        calls = []
        run_sampler(
            sampler, network, diffusion, x, NoiseSource([0]), steps=1, timesteps=full[4:],
            on_step=lambda done, total, *_, calls=calls: calls.append(total),
        )  # fmt: skip
        assert calls == [6] * 6
    with pytest.raises(ConfigError, match="decreasing"):
        run_sampler("unipc", network, diffusion, x, NoiseSource([0]), steps=1, timesteps=[3, 5])
    with pytest.raises(ConfigError, match="for the solvers"):
        run_sampler("ancestral", network, diffusion, x, NoiseSource([0]), steps=1, timesteps=[5, 3])
