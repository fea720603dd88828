"""cWDM and fastWDM3D in the engine: networks (manifests, tiny forwards), diffusion (VP T=2 schedule), and
the public contract load_model(official_args=...) + sample_coefficients(condition=...) against the seeded
runs of the released code."""

import json

import numpy as np
import pytest
import torch
from conftest import load_reference

import wdmcore
from wdmcore.diffusion import Diffusion, DiffusionConfig
from wdmcore.errors import ConfigError, InputShapeError
from wdmcore.models.checkpoints import detect_preset
from wdmcore.models.families import cwdm_condition_order, detect_family
from wdmcore.networks import build_network, from_official_args, preset_config
from wdmcore.wavelets import from_coefficients, to_coefficients

FAMILY_MANIFESTS = {
    "cwdm-224": ("cwdm/cwdm_state_dict_manifest.json", "cwdm_unet_224"),
    "fastwdm3d-128": ("fastwdm3d/fastwdm3d_state_dict_manifest.json", "fastwdm3d_unet_128_T2"),
}
TINY = ["cwdm/cwdm_unet_tiny.pt", "cwdm/cwdm_unet_tiny_gn32.pt", "fastwdm3d/fastwdm3d_unet_tiny.pt"]


@pytest.mark.parametrize("preset", list(FAMILY_MANIFESTS))
def test_family_presets_reproduce_released_manifests(reference_dir, preset):
    file, name = FAMILY_MANIFESTS[preset]
    entry = json.loads((reference_dir / file).read_text(encoding="utf-8"))["configs"][name]
    with torch.device("meta"):
        network = build_network(preset_config(preset))
        from_args = from_official_args(entry["create_model_and_diffusion_kwargs"])
    state = network.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in entry["keys"]]
    assert [(k, v.shape) for k, v in from_args.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    assert len(state) == entry["state_dict_entries"]
    assert sum(p.numel() for p in network.parameters()) == entry["parameters"]
    # Preset detection from the keys and shapes alone (meta tensors: nothing allocated).
    assert detect_preset(state) == preset


@pytest.mark.parametrize("name", TINY)
def test_tiny_family_networks_match_released_forward(reference_dir, name):
    fixture = load_reference(name)
    network = from_official_args(fixture["config"]).eval()
    assert list(network.state_dict()) == list(fixture["state_dict"])
    network.load_state_dict(fixture["state_dict"], strict=True)
    captured = {}
    for block in fixture["intermediates_batch0"]:

        def hook(_module, _inputs, output, block=block):
            captured.setdefault(block, output[:1].detach().clone())

        network.get_submodule(block).register_forward_hook(hook)
    with torch.no_grad():
        output = network(fixture["x_t"], fixture["timesteps"])
    torch.testing.assert_close(output, fixture["output"], atol=1e-5, rtol=0)
    for block, expected in fixture["intermediates_batch0"].items():
        torch.testing.assert_close(captured[block], expected, atol=1e-5, rtol=0, msg=f"block {block}")


def test_vp_schedule_matches_released_float64_arrays(reference_dir):
    schedule = load_reference("fastwdm3d/fastwdm3d_sampling.pt")["schedule"]
    diffusion = Diffusion(DiffusionConfig(steps=2, schedule="vp", beta_min=0.1, beta_max=20.0))
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance", "posterior_mean_coef1",
                 "posterior_mean_coef2", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):  # fmt: skip
        np.testing.assert_allclose(getattr(diffusion, name), schedule[name], rtol=0, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(diffusion.log_variance_fixed_large, schedule["fixed_large_log_variance"], atol=1e-14)
    assert diffusion.timestep_map.tolist() == schedule["timestep_map"]


def test_official_args_choose_the_family_and_its_diffusion(reference_dir):
    fast = load_reference("fastwdm3d/fastwdm3d_sampling.pt")["config"]
    cwdm = load_reference("cwdm/cwdm_sampling.pt")["config"]
    assert detect_family(fast) == "fastwdm3d" and detect_family(cwdm) == "cwdm" and detect_family({}) == "wdm"
    model = wdmcore.load_model(reference_dir / "fastwdm3d/fastwdm3d_unet_tiny_state_dict.pt", official_args=fast)
    assert model.task == "inpaint" and model.diffusion.num_timesteps == 2
    assert model.diffusion_config.schedule == "vp" and model.diffusion_config.beta_max == 20.0
    assert model.input_names == ["image", "mask"] and model.condition_channels == 16
    model = wdmcore.load_model(reference_dir / "cwdm/cwdm_unet_tiny_state_dict.pt", official_args=cwdm)
    assert model.task == "synthesize" and model.condition_channels == 24
    assert (model.diffusion_config.clip_min, model.diffusion_config.clip_max) == (0.0, 1.0)
    assert model.card["sampling"] == {"int64_draws_before_noise": 1}
    with pytest.raises(ConfigError, match="family='cwdm' or 'fastwdm3d'"):
        wdmcore.load_model(reference_dir / "cwdm/cwdm_unet_tiny_state_dict.pt", official_args=cwdm, family="wdm")
    with pytest.raises(ConfigError, match="unknown model family"):
        wdmcore.load_model(reference_dir / "cwdm/cwdm_unet_tiny_state_dict.pt", official_args=cwdm, family="x")


def test_cwdm_condition_order_is_released():
    assert cwdm_condition_order("t1n") == ["t1c", "t2w", "t2f"]
    assert cwdm_condition_order("t1c") == ["t1n", "t2w", "t2f"]
    assert cwdm_condition_order("t2f") == ["t1n", "t1c", "t2w"]


def test_fastwdm3d_seeded_two_step_run_reproduces_released(reference_dir):
    ref = load_reference("fastwdm3d/fastwdm3d_sampling.pt")
    model = wdmcore.load_model(
        reference_dir / "fastwdm3d/fastwdm3d_unet_tiny_state_dict.pt", official_args=ref["config"]
    )
    scale = model.diffusion_config.lll_scale
    image_pack = to_coefficients(ref["voided_crop"], scale, scale).clamp(-1, 1)
    mask_pack = to_coefficients(ref["mask_crop"], scale, scale).clamp(-1, 1)
    torch.testing.assert_close(image_pack, ref["input_masked_dwt"], atol=1e-6, rtol=0)
    torch.testing.assert_close(mask_pack, ref["mask_dwt"], atol=1e-6, rtol=0)
    seen = []
    final = model.sample_coefficients(
        [int(ref["seed"])],
        condition=torch.cat([ref["input_masked_dwt"], ref["mask_dwt"]], dim=1),
        on_step=lambda done, total, x, pred: seen.append((x.clone(), pred.clone())),
    )
    assert len(seen) == 2
    for j in range(2):
        torch.testing.assert_close(seen[j][0], ref["sample_per_step"][j], atol=1e-5, rtol=0)
        torch.testing.assert_close(seen[j][1], ref["pred_xstart_per_step"][j], atol=1e-5, rtol=0)
    torch.testing.assert_close(final, ref["final_coefficients"], atol=1e-5, rtol=0)
    crop = (from_coefficients(final, scale, scale).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(crop[0, 0], ref["final_crop_01"], atol=1e-5, rtol=0)


def test_conditional_models_refuse_missing_or_wrong_conditions(reference_dir):
    ref = load_reference("fastwdm3d/fastwdm3d_sampling.pt")
    model = wdmcore.load_model(
        reference_dir / "fastwdm3d/fastwdm3d_unet_tiny_state_dict.pt", official_args=ref["config"]
    )
    with pytest.raises(ConfigError, match="needs its conditioning"):
        model.sample_coefficients([1])
    with pytest.raises(InputShapeError, match="condition must be"):
        model.sample_coefficients([1], condition=torch.zeros(1, 8, 8, 8, 8))
    with pytest.raises(InputShapeError, match="multiples of 4"):
        model.sample_coefficients([1], condition=torch.zeros(1, 16, 6, 8, 8))
    with pytest.raises(ConfigError, match="inpaint model"):
        model.sample(1)


def test_cwdm_seeded_1000_step_run_reproduces_released(reference_dir, one_thread):
    ref = load_reference("cwdm/cwdm_sampling.pt")
    model = wdmcore.load_model(reference_dir / "cwdm/cwdm_unet_tiny_state_dict.pt", official_args=ref["config"])
    cond = torch.cat([to_coefficients(ref[f"image_{name}"]) for name in ref["condition_order"]], dim=1)
    torch.testing.assert_close(cond, ref["cond"], atol=1e-6, rtol=0)
    # The loader's hidden int64 draw comes before the initial noise.
    assert torch.equal(model.noise_source([42]).initial((8, 8, 8, 4)), ref["initial_noise"])
    kept = ref["kept_steps"].tolist()
    seen = {}

    def on_step(done, total, x, pred):
        if total - done in kept:
            seen[total - done] = (x.clone(), pred.clone())

    final = model.sample_coefficients([int(ref["seed"])], condition=cond, on_step=on_step)
    for j, step in enumerate(kept):
        torch.testing.assert_close(seen[step][0], ref["samples_at_kept_steps"][j], atol=1e-4, rtol=0)
        torch.testing.assert_close(seen[step][1], ref["pred_xstart_at_kept_steps"][j], atol=1e-4, rtol=0)
    torch.testing.assert_close(final, ref["final_coefficients"], atol=1e-4, rtol=0)
    image = from_coefficients(final)
    torch.testing.assert_close(image, ref["final_image_before_clamp"], atol=1e-4, rtol=0)


def test_wavunet_with_one_res_block_per_level_and_equal_multipliers_builds_and_runs():
    # The released code builds this configuration (the last ResBlock of a decoder level is reused by the up
    # block, as with two blocks per level); our network used to refuse it.
    network = from_official_args(
        {"use_freq": True, "num_channels": 8, "channel_mult": "1,1", "num_res_blocks": 1, "num_groups": 4}
    ).eval()
    from wdmcore.models.checkpoints import shared_parameter_aliases

    aliases = shared_parameter_aliases(network)
    assert len(aliases) == 20  # 10 tensors of the shared block per decoder level, two levels
    assert all(alias.startswith(("output_blocks.1.0.", "output_blocks.3.0.")) for alias in aliases)
    with torch.no_grad():
        out = network(torch.randn(1, 8, 8, 8, 8), torch.tensor([5]))
    assert out.shape == (1, 8, 8, 8, 8) and torch.isfinite(out).all()


def test_cwdm_conditional_training_loss_matches_released_targets():
    ref = load_reference("cwdm/cwdm_training_targets.pt")
    diffusion = Diffusion(DiffusionConfig(clip_min=0.0, clip_max=1.0))
    generator = torch.Generator().manual_seed(int(ref["seed_before_call"]))
    noise = torch.randn(ref["image_t2w"].shape, generator=generator)
    assert torch.equal(noise, ref["noise_image_space"])
    condition = torch.cat([to_coefficients(ref[f"image_{name}"]) for name in ref["condition_order"]], dim=1)
    seen = {}

    def fake_model(x, t):
        seen["input"], seen["t"] = x.clone(), t.clone()
        return ref["model_output"]

    loss, per_band = diffusion.training_loss(fake_model, ref["image_t2w"], ref["t"], noise, condition=condition)
    torch.testing.assert_close(seen["input"], ref["model_input"], atol=1e-5, rtol=0)
    assert torch.equal(seen["t"], ref["timesteps_seen_by_model"])
    torch.testing.assert_close(per_band, ref["mse_wav"].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, ref["loss"].float(), atol=1e-5, rtol=0)


def test_wavunet_with_one_res_block_per_level_matches_the_released_layout_key_for_key(reference_dir):
    # What the released code builds for num_res_blocks 1 with equal multipliers: every state-dict key with its
    # shape, and the keys its decoder shares between two positions. Ours must match it and load it strictly.
    manifest = json.loads((reference_dir / "wavunet_nrb1_state_dict_manifest.json").read_text(encoding="utf-8"))
    network = from_official_args(manifest["configuration"]).eval()
    ours = {key: list(tensor.shape) for key, tensor in network.state_dict().items()}
    released = {key: list(shape) for key, shape in manifest["state_dict"].items()}
    assert sorted(set(ours) - set(released)) == [] and sorted(set(released) - set(ours)) == []
    assert ours == released
    from wdmcore.models.checkpoints import load_network_weights, shared_parameter_aliases

    aliases = shared_parameter_aliases(network)
    assert sorted(sorted(pair) for pair in aliases.items()) == sorted(
        sorted(pair) for pair in manifest["aliased_state_dict_keys"]
    )
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in released.items()}
    for alias, canonical in aliases.items():
        state[alias] = state[canonical].clone()  # the released file stores the shared block under both keys
    fresh = from_official_args(manifest["configuration"]).eval()
    load_network_weights(fresh, state, "a released one-block WavU-Net")
    fresh.load_state_dict(state, strict=True)
    for key, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, state[key], atol=0, rtol=0)
