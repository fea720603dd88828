"""Model cards: one validator, one clear error per bad card, never a traceback or a huge allocation."""

import json
import math
import resource

import pytest
import torch

from wdmcore import load_model
from wdmcore.errors import CheckpointError, ConfigError
from wdmcore.models.cards import parameter_count, validate_card
from wdmcore.models.checkpoints import CARD_KEY, read_model_file, save_model_file
from wdmcore.networks import NetworkConfig, build_network

TINY = NetworkConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=4)


def _good_card(**updates):
    card = {
        "name": "tiny",
        "task": "generate",
        "network": TINY.to_dict(),
        "diffusion": {"steps": 100},
        "image_size": 16,
        "geometry": {"spacing_mm": [1.0, 2.0, 3.0], "known": True},
        "intensity": {"range": [0.0, 1.0], "meaning": "relative"},
    }
    card.update(updates)
    return card


def test_good_cards_pass():
    assert validate_card(_good_card()) is not None
    synth = _good_card(
        task="synthesize",
        inputs=[{"name": "t1c", "meaning": "T1c"}, {"name": "t2w", "meaning": "T2w"}],
        preprocessing={"kind": "cwdm-brats"},
        output={"name": "t1n", "meaning": "T1n"},
        image_size=[224, 224, 160],
    )
    validate_card(synth)
    validate_card(_good_card(task="inpaint", inputs=[{"name": "image"}, {"name": "mask"}]))


HOSTILE = [
    ([1, 2, 3], "JSON object"),
    ("a string", "JSON object"),
    (_good_card(format="2"), "'format'"),
    (_good_card(image_size="abc"), "'image_size'"),
    (_good_card(image_size=math.inf), "'image_size'"),
    (_good_card(image_size=-16), "'image_size'"),
    (_good_card(image_size=[16, 16]), "'image_size'"),
    (_good_card(network={**TINY.to_dict(), "num_groups": 0}), "'network.num_groups'"),
    (_good_card(network={**TINY.to_dict(), "model_channels": "64"}), "'network.model_channels'"),
    (_good_card(network={**TINY.to_dict(), "channel_mult": "1,2"}), "'network.channel_mult'"),
    (_good_card(network={**TINY.to_dict(), "num_groups": 3}), "GroupNorm"),
    (_good_card(network={**TINY.to_dict(), "bogus": 1}), "unknown fields"),
    (_good_card(network=[1]), "'network' must be an object"),
    (_good_card(diffusion="linear"), "'diffusion' must be an object"),
    (_good_card(diffusion={"steps": 1}), "'diffusion.steps'"),
    (_good_card(diffusion={"schedule": "cosine"}), "'diffusion.schedule'"),
    (_good_card(diffusion={"beta_start": 2}), "'diffusion.beta_start'"),
    (_good_card(diffusion={"clip_min": 1.0, "clip_max": 0.0}), "clip_min"),
    (_good_card(diffusion={"typo": 1}), "unknown fields"),
    (_good_card(task="segment"), "'task'"),
    (_good_card(task="synthesize"), "needs 'inputs'"),
    (_good_card(task="synthesize", inputs=[{"name": "T1 c"}]), "lower-case"),
    (_good_card(task="synthesize", inputs=[{"name": "a"}, {"name": "a"}]), "distinct"),
    (_good_card(task="inpaint", inputs=[{"name": "mask"}, {"name": "image"}]), "'image' then 'mask'"),
    (_good_card(inputs=[{"name": "x"}]), "takes no 'inputs'"),
    (_good_card(preprocessing={"kind": "magic"}), "'preprocessing'"),
    (_good_card(spacing_mm="abc"), "'spacing_mm'"),
    (_good_card(spacing_mm=[1, 1, -1]), "positive"),
    (_good_card(geometry={"direction": [[1, 0], [0, 1]]}), "'geometry.direction'"),
    (_good_card(geometry={"known": "yes"}), "'geometry.known'"),
    (_good_card(intensity={"range": [1, 0]}), "'intensity.range'"),
    (_good_card(sampling={"int64_draws_before_noise": -1}), "'sampling.int64_draws_before_noise'"),
]


@pytest.mark.parametrize(("card", "message"), HOSTILE)
def test_every_bad_card_gets_one_clear_error(card, message):
    with pytest.raises(ConfigError, match="model card: .*" + message.replace("(", r"\(").replace("'", "'")):
        validate_card(card)


def test_deeply_nested_card_is_refused():
    nested: dict = {}
    inner = nested
    for _ in range(50):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(ConfigError, match="nested more than"):
        validate_card(_good_card(training=nested))


def _write_with_card(path, card_text):
    from safetensors.torch import save_file

    network = build_network(TINY)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path), metadata={CARD_KEY: card_text})
    return path


@pytest.mark.parametrize(
    ("card_text", "message"),
    [
        ("[1, 2]", "JSON object"),
        ('"card"', "JSON object"),
        ("{not json", "not valid JSON"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        (json.dumps({"format": 1, "image_size": 16}), "no 'network'"),
        ('{"format": 1, "image_size": 1e400, "network": ' + json.dumps(TINY.to_dict()) + "}", "'image_size'"),
    ],
)
def test_bad_cards_in_model_files_are_checkpoint_errors(tmp_path, card_text, message):
    path = _write_with_card(tmp_path / "m.safetensors", card_text)
    with pytest.raises(CheckpointError, match=message):
        read_model_file(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_card_asking_for_a_huge_network_is_refused_before_allocation(tmp_path):
    huge = {**TINY.to_dict(), "model_channels": 1024, "channel_mult": [64, 64, 64, 64], "num_res_blocks": 16}
    path = _write_with_card(tmp_path / "m.safetensors", json.dumps(_good_card(network=huge)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="parameters, more than"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big allocated


def test_card_network_larger_than_its_weights_is_refused_on_meta(tmp_path):
    # Within the bounds (1.2e9 parameters, ~5 GB if allocated) but the file holds the tiny network's weights.
    big = {**TINY.to_dict(), "model_channels": 256, "channel_mult": [4, 4], "num_res_blocks": 4}
    assert 1e9 < parameter_count(NetworkConfig.from_dict(big)) < 2e9
    path = _write_with_card(tmp_path / "m.safetensors", json.dumps(_good_card(network=big)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="does not fit the network"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000


def test_saved_models_round_trip_through_the_validator(tmp_path):
    network = build_network(TINY)
    path = save_model_file(tmp_path / "m.safetensors", network, _good_card())
    model = load_model(path)
    assert model.task == "generate" and model.image_shape == (16, 16, 16)
    with torch.no_grad():
        assert model.network(torch.zeros(1, 8, 8, 8, 8), torch.tensor([3])).shape == (1, 8, 8, 8, 8)


def test_card_given_to_load_model_is_validated(tmp_path):
    path = save_model_file(tmp_path / "m.safetensors", build_network(TINY), _good_card())
    with pytest.raises(ConfigError, match="spacing_mm"):
        load_model(path, card={"spacing_mm": "abc"})


def test_import_refuses_a_bad_card(tmp_path, monkeypatch):
    from wdmcore.cli.main import main

    monkeypatch.setenv("WDM_CACHE_DIR", str(tmp_path / "cache"))
    path = save_model_file(tmp_path / "m.safetensors", build_network(TINY), _good_card())
    code = main(["import-model", str(path), "--preset", "unet-128", "--card", '{"spacing_mm": "abc"}'])
    assert code != 0
    assert not (tmp_path / "cache" / "m.safetensors").exists()
