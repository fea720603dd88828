"""The generation settings: one dataclass, its checks, and its persistence in the application settings.

The module widget mirrors these fields in a ``@parameterNodeWrapper`` class (saved with the scene) and stores
the last choices with :func:`save_settings` / :func:`load_settings` in QSettings. The settings object is
passed in (anything with ``value(key, default)`` and ``setValue(key, value)``), so this file never imports Qt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from WaveletDiffusionCommonLib.settings import load_last_choices, numeric_problem, save_last_choices

SETTINGS_GROUP = "WaveletDiffusion/Generate"

# "fast": the engine's default, UniPC with 10 network calls (the exact-denoiser table in docs/generation.md), or a
# distilled student's own sampler and calls (sampler_presets);
# "preview": UniPC with 6 calls, a quick look; "faithful": the 1000-step ancestral sampler of the paper.
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"sampler": "unipc", "steps": 10},
    "preview": {"sampler": "unipc", "steps": 6},
    "faithful": {"sampler": "ancestral", "steps": 1000},
}

SAMPLERS = ("unipc", "dpm++2m", "dpm++2m-sde", "ddim", "ancestral")


def sampler_presets(card: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The sampler presets for a model with this card: a distilled student's *Fast* is the sampler and calls of
    its card (``wdmcore.distill``; e.g. DDIM with 4 calls), every other model's the engine's default."""
    presets = {key: dict(value) for key, value in SAMPLER_PRESETS.items()}
    distilled = (card or {}).get("distilled")
    if isinstance(distilled, Mapping) and distilled.get("sampler") in SAMPLERS and distilled.get("calls"):
        presets["fast"] = {"sampler": str(distilled["sampler"]), "steps": int(distilled["calls"])}
    return presets


def sampling_for_new_model(
    sampler: str, steps: int, old_card: Mapping[str, Any] | None, new_card: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The sampler and steps to switch to when the model changes from ``old_card``'s to ``new_card``'s: the new
    model's *Fast* when the user kept the old model's *Fast* (so a student runs its own calls, and its teacher
    the engine's default again); None when the user chose something else, which stays."""
    old_fast, new_fast = sampler_presets(old_card)["fast"], sampler_presets(new_card)["fast"]
    if {"sampler": sampler, "steps": int(steps)} == old_fast and new_fast != old_fast:
        return new_fast
    return None


# Steps when a sampler is named without a step count: wdmcore.tasks.generate.DEFAULT_STEPS (the Lib does not import
# wdmcore; Testing/test_slicer_parameters.py checks that the two agree).
DEFAULT_STEPS = {"unipc": 10, "dpm++2m": 25, "dpm++2m-sde": 25, "ddim": 50, "ancestral": 1000}
PRESETS = ("", "unet-128", "unet-256", "wavunet-128", "wavunet-256")
# How the worker runs the network (wdmcore.vocabulary's PRECISION_NAMES and BACKEND_NAMES, kept here because the
# Lib does not import wdmcore; Testing/test_slicer_parameters.py checks that they agree). "auto" picks for the
# device and CPU (docs/generation.md, "CPU backends"); OpenVINO runs on the CPU only, fp16 on CUDA only.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
DEFAULT_MODEL = "demo_phantom_64"


@dataclass
class GenerationParameters:
    """Everything one *Generate* press needs."""

    model: str = DEFAULT_MODEL
    """A catalogue name or a checkpoint path."""
    preset: str = ""
    """Network preset for a released-format ``.pt`` checkpoint of one's own ("" = detect from the file)."""
    device: str = "cpu"
    sampler: str = "unipc"
    steps: int = 10
    count: int = 1
    seed: int = 0
    batch_size: int = 1
    precision: str = "auto"
    backend: str = "auto"
    """The network's backend: auto, torch or openvino (the CPU; the engine's optional ``openvino`` extra)."""
    output_name: str = ""
    """Node name prefix; empty: named after the model."""
    preview: bool = True
    preview_every: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> GenerationParameters:
        """Raise ``ValueError`` with a message saying what to change."""
        if not self.model:
            raise ValueError("choose a model (or open a checkpoint file)")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        message = numeric_problem(self, NUMERIC_LABELS)
        if message:
            raise ValueError(message)
        message = backend_problem(self.device, self.backend, self.precision)
        if message:
            raise ValueError(message)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(p for p in PRESETS if p)}")
        return self

    def apply_sampler_preset(self, preset: str, card: Mapping[str, Any] | None = None) -> None:
        """Set the sampler and steps of ``preset`` for the model with ``card`` (see :func:`sampler_presets`)."""
        chosen = sampler_presets(card)[preset]
        self.sampler = chosen["sampler"]
        self.steps = chosen["steps"]

    def node_name(self) -> str:
        if self.output_name:
            return self.output_name
        base = self.model.replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in (".safetensors", ".pt", ".pth"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base or "WDM"


_PERSISTED = ("model", "preset", "device", "sampler", "steps", "count", "batch_size", "precision", "backend",
              "preview")  # fmt: skip


def backend_problem(device: str, backend: str, precision: str) -> str | None:
    """What is wrong with running the network with ``backend`` and ``precision`` on ``device``, in one sentence
    that says what to choose (the combinations the engine refuses, wdmcore.backends.choice); None when allowed."""
    if precision not in PRECISIONS:
        return f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}"
    if backend not in BACKENDS:
        return f"backend is one of {', '.join(BACKENDS)}, got {backend!r}"
    on_cpu = device == "cpu"
    if backend == "openvino" and not on_cpu:
        return f"the OpenVINO backend runs on the CPU, not on {device}: choose the CPU, or backend auto or torch"
    if precision == "fp16" and on_cpu:
        return "fp16 is a CUDA precision: on the CPU choose precision auto, fp32 or bf16"
    return None


# The numeric settings, checked against the engine's table (wdmcore.limits) under these names, with the words
# the module shows.
NUMERIC_LABELS = {"steps": "the number of steps", "count": "the number of volumes", "batch_size": "the batch size",
                  "seed": "the seed", "preview_every": "the preview interval"}  # fmt: skip


def save_settings(settings: Any, params: GenerationParameters) -> None:
    """Remember the last choices (not the seed or the output name, which belong to one run)."""
    save_last_choices(settings, SETTINGS_GROUP, params, _PERSISTED)


def load_settings(settings: Any, defaults: GenerationParameters | None = None) -> GenerationParameters:
    """The last choices over ``defaults``; unreadable or invalid stored values are ignored."""
    params = dataclasses.replace(defaults) if defaults is not None else GenerationParameters()
    return load_last_choices(settings, SETTINGS_GROUP, params, _PERSISTED, accept=lambda p: bool(p.validate()))
