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


# A student's card as the engine checks it (wdmcore.models.cards): DDIM with 4 calls at the card's timesteps.
STUDENT_CARD = {
    "distilled": {"sampler": "ddim", "calls": 4, "timesteps": [999, 749, 499, 249], "teacher_sha256": "0" * 64}
}


def test_the_student_card_of_these_tests_is_one_the_engine_accepts():
    from wdmcore.diffusion import DiffusionConfig
    from wdmcore.models.cards import validate_card

    validate_card({"diffusion": DiffusionConfig().to_dict(), **STUDENT_CARD})


def test_a_students_fast_preset_is_the_sampler_and_calls_of_its_card():
    from WaveletDiffusionLib import parameters

    assert parameters.sampler_presets(STUDENT_CARD)["fast"] == {"sampler": "ddim", "steps": 4}
    assert parameters.sampler_presets({})["fast"] == parameters.SAMPLER_PRESETS["fast"]
    assert parameters.sampler_presets(STUDENT_CARD)["faithful"] == parameters.SAMPLER_PRESETS["faithful"]
    params = GenerationParameters()
    params.apply_sampler_preset("fast", STUDENT_CARD)
    assert (params.sampler, params.steps) == ("ddim", 4)
    # A damaged record (an unknown sampler) leaves the engine's default.
    damaged = {"distilled": {"sampler": "euler", "calls": 4}}
    assert parameters.sampler_presets(damaged)["fast"] == parameters.SAMPLER_PRESETS["fast"]


def test_the_sampler_follows_the_model_only_when_the_user_kept_fast():
    from WaveletDiffusionLib.parameters import sampling_for_new_model

    # teacher -> student with the default kept: the student's own calls; and back again
    assert sampling_for_new_model("unipc", 10, {}, STUDENT_CARD) == {"sampler": "ddim", "steps": 4}
    assert sampling_for_new_model("ddim", 4, STUDENT_CARD, {}) == {"sampler": "unipc", "steps": 10}
    assert sampling_for_new_model("unipc", 10, None, STUDENT_CARD) == {"sampler": "ddim", "steps": 4}
    # a choice of the user's stays, and so does the same preset between two ordinary models
    assert sampling_for_new_model("ancestral", 1000, {}, STUDENT_CARD) is None
    assert sampling_for_new_model("ddim", 8, STUDENT_CARD, {}) is None
    assert sampling_for_new_model("unipc", 10, {}, {}) is None


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


# ------------------------------------------------------------------------------------------- backend, precision


def test_backend_and_precision_names_agree_with_the_engine_and_default_to_auto():
    from WaveletDiffusionLib import parameters

    from wdmcore.vocabulary import BACKEND_NAMES, PRECISION_NAMES

    assert parameters.PRECISIONS == PRECISION_NAMES and parameters.BACKENDS == BACKEND_NAMES
    params = GenerationParameters().validate()
    assert (params.backend, params.precision) == ("auto", "auto")


@pytest.mark.parametrize(
    ("device", "backend", "precision", "message"),
    [("cpu", "onnx", "auto", "backend is one of auto, torch, openvino, got 'onnx'"),
     ("cpu", "auto", "int8", "precision is one of auto, fp32, bf16, fp16, got 'int8'"),
     ("cuda:0", "openvino", "auto", "the OpenVINO backend runs on the CPU, not on cuda:0: choose the CPU"),
     ("mps", "openvino", "fp32", "runs on the CPU, not on mps"),
     ("cpu", "auto", "fp16", "fp16 is a CUDA precision: on the CPU choose precision auto, fp32 or bf16")],
)  # fmt: skip
def test_a_backend_or_precision_the_engine_refuses_is_refused_before_a_run(device, backend, precision, message):
    from WaveletDiffusionLib.tasks import TaskInputError, TaskParameters

    with pytest.raises(ValueError, match=message):
        GenerationParameters(device=device, backend=backend, precision=precision).validate()
    with pytest.raises(TaskInputError, match=message):
        TaskParameters("vary", "m", device=device, backend=backend, precision=precision).validate()


def test_the_panel_refuses_only_what_the_engine_refuses_on_every_device():
    """Every (device, backend, precision) the panel lets through, the engine resolves; every one it refuses, the
    engine refuses too (the engine may also refuse bf16 on a CPU without native bf16 support, which the panel
    cannot know)."""
    import torch
    from WaveletDiffusionLib import parameters

    from wdmcore.backends import resolve_choice
    from wdmcore.errors import ConfigError

    for device in ("cpu", "cuda:0", "mps"):
        for backend in parameters.BACKENDS:
            for precision in parameters.PRECISIONS:
                refused = parameters.backend_problem(device, backend, precision) is not None
                try:
                    resolve_choice(torch.device(device), backend, precision, threads=1)
                    engine_refused = False
                except ConfigError:
                    engine_refused = True
                if refused:
                    assert engine_refused, (device, backend, precision)
                elif engine_refused:
                    assert device == "cpu" and precision == "bf16", (device, backend, precision)


def test_backend_and_precision_are_remembered_and_older_choices_stay_valid():
    import json

    settings = DictSettings()
    save_settings(settings, GenerationParameters(backend="openvino", precision="bf16"))
    restored = load_settings(settings)
    assert (restored.backend, restored.precision) == ("openvino", "bf16")
    key = "WaveletDiffusion/Generate/last"
    # Saved before the backend box existed, when fp32 was the default precision: kept as it was.
    settings.data[key] = json.dumps({"device": "cpu", "steps": 25, "precision": "fp32"})
    restored = load_settings(settings)
    assert (restored.precision, restored.backend, restored.steps) == ("fp32", "auto", 25)
    # fp16 on the CPU (the engine refuses it) and OpenVINO with a GPU: that value alone is dropped.
    settings.data[key] = json.dumps({"device": "cpu", "steps": 25, "precision": "fp16"})
    restored = load_settings(settings)
    assert (restored.precision, restored.steps) == ("auto", 25)
    settings.data[key] = json.dumps({"device": "cuda:0", "backend": "openvino", "precision": "bf16"})
    restored = load_settings(settings)
    assert (restored.device, restored.backend, restored.precision) == ("cuda:0", "auto", "bf16")
