"""The networks against the released code: tiny fixtures (outputs and per-block intermediates) and the
state-dict manifest of the four released configurations."""

import json

import pytest
import torch
from conftest import load_reference

from wdmcore.errors import ConfigError
from wdmcore.models.checkpoints import shared_parameter_aliases
from wdmcore.networks import (
    NetworkConfig,
    UNet,
    WavUNet,
    build_network,
    config_from_official_args,
    from_official_args,
    preset_config,
)

TINY_FIXTURES = ["unet_tiny_additive.pt", "unet_tiny_additive_gn32.pt", "wnet_tiny_freq.pt"]
MANIFEST_NAMES = {
    "unet-128": "ours_unet_128",
    "unet-256": "ours_unet_256",
    "wavunet-128": "ours_wnet_128",
    "wavunet-256": "ours_wnet_256",
}


def _run_with_intermediates(network, fixture):
    captured = {}
    for name in fixture.get("intermediates_batch0", {}):
        module = network.get_submodule(name)

        def hook(_module, _inputs, output, name=name):
            value = output[0] if isinstance(output, tuple) else output
            captured.setdefault(name, value[:1].detach().clone())

        module.register_forward_hook(hook)
    with torch.no_grad():
        output = network(fixture["x_t"], fixture["timesteps"])
    return output, captured


@pytest.mark.parametrize("name", TINY_FIXTURES)
def test_tiny_network_matches_released_forward(reference_dir, name):
    fixture = load_reference(name)
    network = from_official_args(fixture["config"]).eval()
    assert list(network.state_dict()) == list(fixture["state_dict"])
    network.load_state_dict(fixture["state_dict"], strict=True)
    output, captured = _run_with_intermediates(network, fixture)
    torch.testing.assert_close(output, fixture["output"], atol=1e-5, rtol=0)
    for block, expected in fixture.get("intermediates_batch0", {}).items():
        torch.testing.assert_close(captured[block], expected, atol=1e-5, rtol=0, msg=f"block {block}")


def test_unet_matches_released_forward(reference_dir):
    # Same primitives in the same order as released. On the CPU that made the fixture the output is identical;
    # other CPUs' oneDNN kernels differ in the last bits (8e-7 seen on AVX2), so the contract is 1e-5.
    fixture = load_reference("unet_tiny_additive.pt")
    network = from_official_args(fixture["config"]).eval()
    network.load_state_dict(fixture["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(network(fixture["x_t"], fixture["timesteps"]), fixture["output"], atol=1e-5, rtol=0)


def test_bare_official_state_dict_loads_strictly(reference_dir):
    fixture = load_reference("unet_tiny_additive.pt")
    state_dict = torch.load(reference_dir / "unet_tiny_additive_state_dict.pt", weights_only=True)
    network = from_official_args(fixture["config"]).eval()
    network.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(network(fixture["x_t"], fixture["timesteps"]), fixture["output"], atol=1e-5, rtol=0)


def test_wavunet_shared_block_is_one_module(reference_dir):
    fixture = load_reference("wnet_tiny_freq.pt")
    network = from_official_args(fixture["config"])
    aliases = shared_parameter_aliases(network)
    expected = {b: a for a, b in fixture["aliased_state_dict_keys"]}
    assert aliases == expected
    first, second = fixture["aliased_state_dict_keys"][0]
    assert network.get_parameter(first) is network.get_parameter(second)


@pytest.mark.parametrize("preset", list(MANIFEST_NAMES))
def test_presets_reproduce_released_manifest(reference_dir, preset):
    manifest = json.loads((reference_dir / "official_state_dict_manifest.json").read_text(encoding="utf-8"))["configs"]
    entry = manifest[MANIFEST_NAMES[preset]]
    with torch.device("meta"):
        network = build_network(preset_config(preset))
        from_args = from_official_args(entry["create_model_and_diffusion_kwargs"])
    state = network.state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(e["key"], e["shape"]) for e in entry["state_dict"]]
    assert list(from_args.state_dict()) == list(state)
    assert sum(p.numel() for p in network.parameters()) == entry["total_parameters"]
    assert sum(v.numel() for v in state.values()) == entry["total_state_dict_elements_incl_aliases"]
    assert sorted(shared_parameter_aliases(network).items()) == sorted(
        (b, a) for a, b in entry["aliased_state_dict_keys"]
    )
    assert type(network).__name__ == {"UNetModel": "UNet", "WavUNetModel": "WavUNet"}[entry["model_class"]]


def test_official_args_accept_run_sh_strings():
    config = config_from_official_args(
        {"num_channels": "64", "channel_mult": "1,2,2,4,4", "use_freq": "False", "additive_skips": "True"}
    )
    assert config == preset_config("unet-128")
    assert config_from_official_args({"channel_mult": "", "image_size": 256, "use_freq": True}).channel_mult == (
        1,
        2,
        2,
        4,
        4,
        4,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"attention_resolutions": "16,8"}, "attention"),
        ({"class_cond": True}, "class-conditional"),
        ({"resample_2d": "True"}, "resample_2d"),
        ({"channel_mult": "1,x"}, "comma-separated"),
        ({"num_groups": 3}, "GroupNorm"),
    ],
)
def test_unsupported_official_args_are_refused_clearly(args, message):
    with pytest.raises(ConfigError, match=message):
        config_from_official_args(args)


def test_fresh_unet_outputs_zero_like_released():
    network = UNet(NetworkConfig(model_channels=8, channel_mult=(1, 2), num_groups=4)).eval()
    with torch.no_grad():
        out = network(torch.randn(1, 8, 8, 8, 8), torch.tensor([5]))
    assert torch.count_nonzero(out) == 0


def test_non_cubic_input_and_divisibility_error():
    network = WavUNet(NetworkConfig("wavunet", model_channels=8, channel_mult=(1, 2), num_groups=4)).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 8, 8, 4, 12), torch.tensor([3])).shape == (1, 8, 8, 4, 12)
    with pytest.raises(ValueError, match="divisible by 4"):
        network(torch.randn(1, 8, 6, 8, 8), torch.tensor([3]))


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    config = NetworkConfig(model_channels=8, channel_mult=(1, 2), num_groups=4)
    plain = build_network(config).train()
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.1)
    checkpointed = build_network(NetworkConfig(**{**config.to_dict(), "use_checkpoint": True})).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 8, 8, 8, 8), torch.tensor([1, 900])
    plain(x, t).square().mean().backward()
    checkpointed(x, t).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_silu_after_norm_works_in_place_only_without_autograd():
    from wdmcore.networks.blocks import SiLUAfterNorm

    x = torch.randn(2, 3, 4)
    expected = torch.nn.functional.silu(x)
    with torch.no_grad():
        y = x.clone()
        out = SiLUAfterNorm()(y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, expected)  # inference: no second buffer

    leaf = x.clone().requires_grad_(True)
    y = leaf * 1.0
    out = SiLUAfterNorm()(y)
    assert out.data_ptr() != y.data_ptr() and torch.equal(y, x)  # training: the input stays for backward
    out.sum().backward()
    assert leaf.grad is not None
