"""Loading released checkpoints and our own files, and every way a checkpoint can be wrong."""

import json
import os

import pytest
import torch
from conftest import load_reference

import wdmcore
from wdmcore.errors import CheckpointError, ConfigError
from wdmcore.models.checkpoints import detect_preset, read_model_file
from wdmcore.networks import build_network, preset_config


@pytest.fixture(scope="module")
def tiny():
    fixture = load_reference("unet_tiny_additive.pt")
    return fixture, dict(fixture["config"])


@pytest.fixture
def tiny_model(reference_dir, tiny):
    return wdmcore.load_model(reference_dir / "unet_tiny_additive_state_dict.pt", official_args=tiny[1])


def test_released_checkpoint_with_official_args(tiny_model, tiny):
    fixture, _ = tiny
    with torch.no_grad():
        out = tiny_model.network(fixture["x_t"], fixture["timesteps"])
    torch.testing.assert_close(out, fixture["output"], atol=1e-5, rtol=0)
    assert tiny_model.image_size == 32


def test_preset_is_detected_from_keys_and_shapes(tmp_path):
    network = build_network(preset_config("unet-128"))
    path = tmp_path / "brats_unet_128_1200k.pt"
    torch.save(network.state_dict(), path)
    model = wdmcore.load_model(path)
    assert model.card["preset"] == "unet-128" and model.image_size == 128
    assert detect_preset(network.state_dict()) == "unet-128"
    for key, value in network.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)


def test_wrapped_and_prefixed_state_dicts_load(tmp_path, tiny, reference_dir):
    state = torch.load(reference_dir / "unet_tiny_additive_state_dict.pt", weights_only=True)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = wdmcore.load_model(path, official_args=tiny[1])
    assert torch.equal(model.network.out[2].weight, state["out.2.weight"])


def test_sample_api_shapes_range_and_seeds(tiny_model):
    volumes = tiny_model.sample(3, seed=7, sampler="ddim", steps=4, batch_size=2)
    assert volumes.shape == (3, 1, 32, 32, 32) and volumes.dtype == torch.float32
    assert volumes.min() >= -1e-6 and volumes.max() <= 1 + 1e-6
    one_by_one = tiny_model.sample(3, seed=7, sampler="ddim", steps=4, batch_size=1)
    torch.testing.assert_close(volumes, one_by_one, atol=1e-5, rtol=0)
    shifted = tiny_model.sample(2, seed=8, sampler="ddim", steps=4)
    torch.testing.assert_close(shifted, volumes[1:], atol=1e-5, rtol=0)
    events = []
    tiny_model.sample(1, seed=0, sampler="ancestral", steps=3, on_progress=events.append)
    assert [e["done"] for e in events] == [1, 2, 3] and events[-1]["total"] == 3
    with pytest.raises(ConfigError, match="sampler"):
        tiny_model.sample(1, sampler="euler")
    with pytest.raises(ConfigError, match="steps"):
        tiny_model.sample(1, steps=0)


def test_safetensors_round_trip_keeps_card_and_weights(tmp_path, tiny_model):
    path = tiny_model.save(tmp_path / "model.safetensors", name="tiny", training_data="fixture weights")
    loaded = wdmcore.load_model(path)
    assert loaded.card["name"] == "tiny" and loaded.card["training_data"] == "fixture weights"
    assert loaded.card["network"] == tiny_model.network.config.to_dict()
    for key, value in tiny_model.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    torch.testing.assert_close(
        loaded.sample(1, seed=1, sampler="ddim", steps=3), tiny_model.sample(1, seed=1, sampler="ddim", steps=3)
    )
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left a temporary file"


def test_wavunet_shared_block_round_trip(tmp_path):
    fixture = load_reference("wnet_tiny_freq.pt")
    torch.save(fixture["state_dict"], tmp_path / "wnet.pt")
    model = wdmcore.load_model(tmp_path / "wnet.pt", official_args=fixture["config"])
    saved = model.save(tmp_path / "wnet.safetensors")
    tensors, _ = read_model_file(saved)
    assert len(tensors) == len(fixture["state_dict"]) - len(fixture["aliased_state_dict_keys"])
    reloaded = wdmcore.load_model(saved)
    with torch.no_grad():
        out = reloaded.network(fixture["x_t"], fixture["timesteps"])
    torch.testing.assert_close(out, fixture["output"], atol=1e-5, rtol=0)


def test_inconsistent_shared_block_is_refused(tmp_path):
    fixture = load_reference("wnet_tiny_freq.pt")
    state = dict(fixture["state_dict"])
    first, second = fixture["aliased_state_dict_keys"][0]
    state[second] = state[first] + 1
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="shared block"):
        wdmcore.load_model(tmp_path / "bad.pt", official_args=fixture["config"])


# -- bad files -------------------------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not a model\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        wdmcore.load_model(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        wdmcore.load_model(tmp_path / "nowhere.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        wdmcore.load_model(tmp_path / "empty.pt")


def test_truncated_checkpoint(tmp_path, reference_dir):
    data = (reference_dir / "unet_tiny_additive_state_dict.pt").read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        wdmcore.load_model(path)


def test_checkpoint_fitting_no_preset_names_the_keys(reference_dir):
    with pytest.raises(CheckpointError) as info:
        wdmcore.load_model(reference_dir / "unet_tiny_additive_state_dict.pt")
    message = str(info.value)
    assert "fits none of the presets" in message and "official_args" in message
    assert "input_blocks.0.0.weight" in message  # a mismatching key is named


def test_wrong_preset_names_shape_mismatches(reference_dir, tmp_path):
    network = build_network(preset_config("unet-128"))
    state = network.state_dict()
    state["out.2.weight"] = torch.zeros(8, 32, 3, 3, 3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"out\.2\.weight: file \(8, 32, 3, 3, 3\)"):
        wdmcore.load_model(tmp_path / "odd.pt", preset="unet-128")
    with pytest.raises(CheckpointError, match="unknown preset"):
        wdmcore.load_model(tmp_path / "odd.pt", preset="unet-512")


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="never executed"):
        wdmcore.load_model(path)
    assert not marker.exists()


def test_optimizer_file_is_refused(tmp_path):
    torch.save({"step": 3, "param_groups": [{"lr": 1e-5}]}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        wdmcore.load_model(tmp_path / "opt.pt")


def test_bad_safetensors_files(tmp_path, tiny_model):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="no WaveletDiffusion model card"):
        wdmcore.load_model(tmp_path / "plain.safetensors")
    good = tiny_model.save(tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        wdmcore.load_model(tmp_path / "cut.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "future.safetensors", metadata={"wdm_card": json.dumps({"format": 99})})
    with pytest.raises(CheckpointError, match="newer"):
        wdmcore.load_model(tmp_path / "future.safetensors")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_files_written_through_a_temporary_name_follow_the_umask(tmp_path, umask, mode):
    """Checkpoints, training states and config.json are as readable as any new file (mkstemp makes 0600)."""
    import stat

    from wdmcore.models.checkpoints import save_model_file
    from wdmcore.networks import NetworkConfig
    from wdmcore.training.checkpoints import atomic_torch_save, atomic_write_text

    network = build_network(NetworkConfig("unet", model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                          num_groups=4))  # fmt: skip
    previous = os.umask(umask)
    try:
        paths = [
            save_model_file(tmp_path / "model.safetensors", network, {"image_size": 16}),
            tmp_path / "state.pt",
            tmp_path / "config.json",
        ]
        atomic_torch_save({"step": 1}, paths[1])
        atomic_write_text(paths[2], "{}\n")
    finally:
        os.umask(previous)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in paths] == [oct(mode)] * 3
