"""Generation settings: checks, presets, naming, and persistence through a QSettings-like object."""

from __future__ import annotations

import pytest
import slicer_support  # noqa: F401 - puts the module folder on sys.path
from WaveletDiffusionLib.parameters import GenerationParameters, load_settings, save_settings


class DictSettings:
    """The two QSettings methods the Lib uses, over a dict (what QSettings stores is strings)."""

    def __init__(self):
        self.data = {}

    def value(self, key, default=None):
        return self.data.get(key, default)

    def setValue(self, key, value):  # noqa: N802 - QSettings' name
        self.data[key] = str(value)


def test_defaults_are_valid_and_fast():
    params = GenerationParameters().validate()
    assert params.sampler == "unipc" and params.steps == 10 and params.device == "cpu"


def test_step_defaults_agree_with_the_engine():
    # The Lib cannot import wdmcore inside Slicer, so it keeps its own copy of the engine's defaults.
    from WaveletDiffusionLib import parameters

    from wdmcore.samplers import SAMPLERS
    from wdmcore.tasks.generate import DEFAULT_SAMPLER, DEFAULT_STEPS, PREVIEW_SAMPLER, PREVIEW_STEPS

    assert parameters.DEFAULT_STEPS == DEFAULT_STEPS
    assert (GenerationParameters.sampler, GenerationParameters.steps) == (
        DEFAULT_SAMPLER,
        DEFAULT_STEPS[DEFAULT_SAMPLER],
    )
    assert parameters.SAMPLER_PRESETS["fast"] == {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS[DEFAULT_SAMPLER]}
    assert parameters.SAMPLER_PRESETS["preview"] == {"sampler": PREVIEW_SAMPLER, "steps": PREVIEW_STEPS}
    assert set(parameters.SAMPLERS) == set(SAMPLERS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("sampler", "euler", "unknown sampler"), ("steps", 0, "steps"), ("count", 0, "number of volumes must be"),
     ("seed", -1, "the seed must be a whole number from 0 to 18446744073709551615, got -1"),
     ("seed", 2**64, "the seed must be a whole number from 0 to 18446744073709551615, got 18446744073709551616"),
     ("batch_size", 1.5, "the batch size must be a whole number"), ("preview_every", -1, "preview interval"),
     ("model", "", "model"), ("preset", "unet-64", "preset"), ("precision", "int8", "precision")],
)  # fmt: skip
def test_invalid_values_say_what_to_change(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationParameters(**{field: value}).validate()


def test_sampler_presets():
    params = GenerationParameters()
    params.apply_sampler_preset("faithful")
    assert (params.sampler, params.steps) == ("ancestral", 1000)
    params.apply_sampler_preset("fast")
    assert (params.sampler, params.steps) == ("unipc", 10)
    params.apply_sampler_preset("preview")
    assert (params.sampler, params.steps) == ("unipc", 6)


def test_node_name_from_model_or_output_name():
    assert GenerationParameters(model="/data/ckpt/my_model.safetensors").node_name() == "my_model"
    assert GenerationParameters(model="brats_unet_128_1200k").node_name() == "brats_unet_128_1200k"
    assert GenerationParameters(output_name="trial").node_name() == "trial"


def test_last_choices_round_trip_but_not_seed():
    settings = DictSettings()
    chosen = GenerationParameters(model="brats_unet_128_1200k", device="cuda:0", sampler="ancestral", steps=1000,
                                  count=3, seed=99, preview=False)  # fmt: skip
    save_settings(settings, chosen)
    restored = load_settings(settings)
    assert (restored.model, restored.device, restored.sampler, restored.steps, restored.count, restored.preview) == (
        "brats_unet_128_1200k", "cuda:0", "ancestral", 1000, 3, False)  # fmt: skip
    assert restored.seed == GenerationParameters().seed


def test_damaged_settings_fall_back_to_defaults():
    settings = DictSettings()
    settings.data["WaveletDiffusion/Generate/last"] = "{not json"
    assert load_settings(settings) == GenerationParameters()
    settings.data["WaveletDiffusion/Generate/last"] = '{"steps": 0, "sampler": "ddim"}'
    restored = load_settings(settings)
    # the invalid value alone is dropped
    assert restored.steps == GenerationParameters.steps and restored.sampler == "ddim"
