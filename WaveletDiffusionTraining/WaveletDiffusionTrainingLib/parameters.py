"""The training settings: one dataclass, its checks, the ``wdm train`` command line it makes, and the
persistence of the last choices in the application settings.

The module widget mirrors these fields in a ``@parameterNodeWrapper`` class (saved with the scene) and stores
the last choices with :func:`save_settings` / :func:`load_settings` in QSettings. The settings object is
passed in (anything with ``value(key, default)`` and ``setValue(key, value)``), so this file never imports Qt.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from WaveletDiffusionCommonLib.settings import load_last_choices, numeric_problem, save_last_choices

SETTINGS_GROUP = "WaveletDiffusion/Train"

DATA_SOURCES = ("folder", "nodes")
DATA_FORMATS = ("auto", "brats", "lidc", "folder")  # `wdm train --format` for a path
BRATS_SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
INTENSITIES = ("mri", "ct")
PRESETS = ("unet-128", "unet-256", "wavunet-128", "wavunet-256")
PRECISIONS = ("auto", "fp32", "bf16")
# What the module offers; scripts may also name any "cuda:N".
# auto: CUDA, then Apple's MPS, then the CPU.
DEVICES = ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "mps")


# The numeric settings, checked against the engine's table (wdmcore.limits) under these names; 0 means "the
# preset's" for the image size and "the recipe's" for the batch size.
NUMERIC_LABELS = {"image_size": "the image size", "batch_size": "the batch size", "max_steps": "the number of steps",
                  "lr": "the learning rate", "ema_rate": "the EMA rate",
                  "checkpoint_interval": "the checkpoint interval", "preview_interval": "the preview interval",
                  "preview_steps": "the preview's sampling steps", "num_workers": "the number of data workers",
                  "log_interval": "the log interval"}  # fmt: skip


@dataclass
class TrainingParameters:
    """Everything one *Start* press needs. Zero means "the preset's/recipe's default" where noted."""

    data_source: str = "folder"
    """"folder": ``data_path``; "nodes": volume nodes of the scene, exported into the output folder."""
    data_path: str = ""
    data_format: str = "auto"
    sequence: str = "t1n"
    """BraTS sequence."""
    intensity: str = "mri"
    """Intensity scaling of a plain folder: "mri" (percentiles) or "ct" (Hounsfield window)."""
    skip_bad_files: bool = False
    preset: str = "unet-128"
    image_size: int = 0
    """Edge of the training cube; 0: the preset's (128 or 256)."""
    batch_size: int = 0
    """Global batch size; 0: the released recipe's (10 at 128^3, 1 at 256^3)."""
    max_steps: int = 100_000
    lr: float = 1e-5
    precision: str = "auto"
    device: str = "auto"
    output_dir: str = ""
    ema_rate: float = 0.9999
    checkpoint_interval: int = 5000
    preview_interval: int = 5000
    """Steps between preview samples; 0: none."""
    preview_steps: int = 10
    num_workers: int = 0
    log_interval: int = 10
    extra_args: list[str] = field(default_factory=list)
    """Further ``wdm train`` options for a new run (e.g. ``["--model-channels", "64"]``), for scripting."""

    def validate(self) -> TrainingParameters:
        """Raise ``ValueError`` with a message saying what to change."""
        if self.data_source not in DATA_SOURCES:
            raise ValueError(f"the data source is one of {', '.join(DATA_SOURCES)}")
        if self.data_source == "folder" and not self.data_path:
            raise ValueError("choose the folder of training volumes")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"the data format is one of {', '.join(DATA_FORMATS)}")
        if self.sequence not in BRATS_SEQUENCES:
            raise ValueError(f"the BraTS sequence is one of {', '.join(BRATS_SEQUENCES)}")
        if self.intensity not in INTENSITIES:
            raise ValueError(f"the intensity scaling is one of {', '.join(INTENSITIES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        message = numeric_problem(self, NUMERIC_LABELS, zero_means_default=("image_size", "batch_size"))
        if message:
            raise ValueError(message)
        if int(self.image_size) % 16:
            raise ValueError("the image size is a multiple of 16 (e.g. 64, 128 or 256), or 0 for the preset's")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision is one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES and not re.fullmatch(r"cuda:\d+", self.device or ""):
            raise ValueError("the device is auto, cpu, cuda, cuda:N or mps")
        if not self.output_dir:
            raise ValueError("choose an output folder for the checkpoints")
        return self

    # ------------------------------------------------------------------------------------ command lines

    def _resume_free_args(self) -> list[str]:
        """Options a resumed run may change (``wdm train --resume`` refuses the others)."""
        return [
            "--max-steps", str(int(self.max_steps)),
            "--checkpoint-interval", str(int(self.checkpoint_interval)),
            "--preview-interval", str(int(self.preview_interval)),
            "--preview-steps", str(int(self.preview_steps)),
            "--num-workers", str(int(self.num_workers)),
            "--device", self.device,
        ]  # fmt: skip

    def train_args(self, data_path: str | None = None, data_format: str | None = None) -> list[str]:
        """``wdm train`` options of a new run (``data_path``/``data_format`` replace the fields, for volumes
        exported from the scene)."""
        path = data_path if data_path is not None else self.data_path
        fmt = data_format if data_format is not None else self.data_format
        args = [
            "--out", self.output_dir,
            "--progress", "jsonl",
            "--preset", self.preset,
            "--data", str(path),
            "--format", fmt,
            "--intensity", self.intensity,
            "--lr", repr(float(self.lr)),
            "--precision", self.precision,
            "--ema-rate", repr(float(self.ema_rate)),
            "--log-interval", str(int(self.log_interval)),
        ]  # fmt: skip
        if fmt in ("auto", "brats"):
            args += ["--sequence", self.sequence]
        if int(self.image_size):
            args += ["--image-size", str(int(self.image_size))]
        if int(self.batch_size):
            args += ["--batch-size", str(int(self.batch_size))]
        if self.skip_bad_files:
            args.append("--skip-bad-files")
        return [*args, *self._resume_free_args(), *map(str, self.extra_args)]

    def resume_args(self) -> list[str]:
        """``wdm train`` options that continue the run in ``output_dir`` with its own settings (config.json)."""
        return ["--out", self.output_dir, "--resume", "--progress", "jsonl", *self._resume_free_args()]


_PERSISTED = (
    "data_source", "data_path", "data_format", "sequence", "intensity", "skip_bad_files", "preset", "image_size",
    "batch_size", "max_steps", "lr", "precision", "device", "output_dir", "ema_rate", "checkpoint_interval",
    "preview_interval", "num_workers",
)  # fmt: skip


def save_settings(settings: Any, params: TrainingParameters) -> None:
    """Remember the last choices."""
    save_last_choices(settings, SETTINGS_GROUP, params, _PERSISTED)


def load_settings(settings: Any, defaults: TrainingParameters | None = None) -> TrainingParameters:
    """The last choices over ``defaults``; unreadable or invalid stored values are ignored one by one."""
    params = dataclasses.replace(defaults) if defaults is not None else TrainingParameters()
    fresh = TrainingParameters()

    def accept(candidate: TrainingParameters) -> bool:
        # A stored value must have its field's type; empty paths are allowed (a fresh profile has none), and
        # everything else must pass the checks.
        if any(not isinstance(getattr(candidate, n), type(getattr(fresh, n))) for n in _PERSISTED):
            return False
        dataclasses.replace(candidate, data_path=candidate.data_path or "x",
                            output_dir=candidate.output_dir or "x").validate()  # fmt: skip
        return True

    return load_last_choices(settings, SETTINGS_GROUP, params, _PERSISTED, accept)
