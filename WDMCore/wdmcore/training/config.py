"""The configuration of a training run (:class:`TrainConfig`): the released recipe's defaults, checked."""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..diffusion import DiffusionConfig
from ..errors import ConfigError, WDMError
from ..limits import checked
from ..networks import PRESETS, NetworkConfig, preset_config

log = logging.getLogger(__name__)


# Batch sizes of the released recipe by image size (run.sh): 10 at 128^3, 1 at 256^3.
PRESET_BATCH = {128: 10, 256: 1}


class TrainingError(WDMError):
    """Training cannot go on (non-finite losses, a broken resume state, ...)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields are filled by :meth:`resolved`."""

    preset: str | None = "unet-128"  # network preset; ``network`` overrides its fields
    network: dict[str, Any] = field(default_factory=dict)  # NetworkConfig fields (all of them without a preset)
    image_size: int | None = None  # default: the preset's (128 or 256)
    diffusion: dict[str, Any] = field(default_factory=dict)  # DiffusionConfig fields
    lr: float = 1e-5
    batch_size: int | None = None  # global batch; default 10 at 128^3, 1 at 256^3 (released recipe)
    max_steps: int = 100_000
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    ema_warmup: bool = True  # effective rate min(ema_rate, (1 + n) / (10 + n)) after n updates
    grad_clip: float | None = None  # max global gradient norm
    lr_warmup_steps: int = 0  # linear warm-up from lr / warmup to lr
    # Share of samples whose timestep is drawn from the lowest 5 % of the schedule instead of all of it. 0, as
    # released (uniform). A small network trained briefly learns the noisy end first and keeps too little fine
    # detail at low noise; the bundled demo model is trained with a share of 0.5.
    low_noise_share: float = 0.0
    checkpoint_interval: int = 5000
    keep_last: int = 3
    preview_interval: int = 0  # 0: no previews
    preview_steps: int = 10  # DDIM steps of a preview sample
    log_interval: int = 10
    seed: int = 0
    num_workers: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16" (refused on the CPU)
    activation_checkpointing: bool = False
    max_nonfinite_steps: int = 10  # raise after this many non-finite losses in a row
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    tensorboard: bool = True  # when the tensorboard package is installed
    # Model card fields of the checkpoints.
    name: str | None = None
    description: str = ""
    data_description: str = ""
    geometry: dict[str, Any] = field(default_factory=dict)
    intensity: Any = "[0, 1] (network space 2x - 1)"
    data: dict[str, Any] = field(default_factory=dict)  # where the data came from (informational, for the record)

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value checked."""
        c = dataclasses.replace(self, network=dict(self.network), diffusion=dict(self.diffusion), data=dict(self.data))
        if not isinstance(c.adam_betas, list | tuple) or len(c.adam_betas) != 2:
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {c.adam_betas!r:.100}.")
        if c.preset is not None and c.preset not in PRESETS:
            raise ConfigError(f"unknown preset {c.preset!r}; choose one of {', '.join(PRESETS)} (or give a network).")
        if c.preset is None and not c.network:
            raise ConfigError("give a preset (e.g. unet-128) or a network configuration.")
        if c.image_size is None:
            if c.preset is None:
                raise ConfigError("image_size is required when no preset is given.")
            c.image_size = PRESETS[c.preset][1]
        if c.batch_size is None:
            c.batch_size = PRESET_BATCH.get(c.image_size, 1)
        c.image_size = checked("image_size", c.image_size)
        _check_network_fields({**(preset_config(c.preset).to_dict() if c.preset else {}), **c.network})
        try:
            net = c.network_config()  # validates the network fields
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise ConfigError(
                f"the network settings are invalid ({exc}); check --model-channels and the like."
            ) from None
        DiffusionConfig.from_dict(c.diffusion)
        factor = 2 * net.downsampling_factor
        if c.image_size % factor:
            raise ConfigError(
                f"image size {c.image_size} must be a multiple of {factor} for this network "
                f"({len(net.channel_mult)} levels); choose e.g. {factor * max(1, round(c.image_size / factor))}."
            )
        for name in _NUMERIC_FIELDS:
            value = getattr(c, name)
            if value is not None or name != "grad_clip":  # grad_clip None: no clipping
                setattr(c, name, checked(name, value))
        c.adam_betas = tuple(checked("adam_beta", b, "each of adam_betas") for b in c.adam_betas)
        checks = [
            (c.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16"),
            (_DEVICE.fullmatch(c.device) is not None, f"unknown device {c.device!r}; use auto, cpu, cuda or cuda:N"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message}.")
        return c

    def network_config(self) -> NetworkConfig:
        base = preset_config(self.preset).to_dict() if self.preset is not None else {}
        fields = {**base, **self.network}
        fields["use_checkpoint"] = bool(self.activation_checkpointing)
        if "channel_mult" in fields:
            fields["channel_mult"] = tuple(fields["channel_mult"])
        return NetworkConfig.from_dict(fields)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}.")
        for f in dataclasses.fields(cls):
            if f.name in data:
                _check_type(f.name, data[f.name], str(f.type))
        return cls(**data)


# The data options that choose and prepare the volumes; the cache folder, skip_bad_files and the recorded
# volume count may differ on resume.
_DATA_IDENTITY = ("path", "format", "sequence", "resample", "spacing", "crop", "intensity", "phantoms",
                  "phantom_seed")  # fmt: skip
_LAYOUT_ALIASES = {"general": "folder"}  # configs of older versions


def data_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the data options a run was started with and those of a resume, as text."""

    def value(data: dict[str, Any], key: str) -> Any:
        item = data.get(key)
        return _LAYOUT_ALIASES.get(item, item) if key == "format" else item

    changed = []
    for key in _DATA_IDENTITY:
        if key not in saved or key not in now:  # runs of older versions did not record every option
            continue
        before, after = value(saved, key), value(now, key)
        if key == "format" and "auto" in (before, after):
            continue  # the layout is checked through the path and the volumes it gives
        if before != after:
            changed.append(f"{key} {before!r} -> {after!r}")
    return changed


def check_same_data(saved: dict[str, Any], now: dict[str, Any], out_dir: Any) -> None:
    """Refuse to resume the run in ``out_dir`` on other data than it was trained on."""
    changes = data_changes(saved, now)
    if changes:
        raise ConfigError(
            f"the run in {out_dir} was trained on other data ({'; '.join(changes)}); resume with the same data "
            "(leave --data out to use the run's), or pass --allow-new-data (allow_new_data=True) to continue "
            "training on this data (the model card then describes the new data), or start a new run in "
            "another folder."
        )


# The numeric fields, checked against wdmcore.limits.LIMITS under the same names.
_NUMERIC_FIELDS = ("lr", "batch_size", "max_steps", "adam_eps", "weight_decay", "ema_rate", "grad_clip",
                   "lr_warmup_steps", "low_noise_share", "checkpoint_interval", "keep_last", "preview_interval",
                   "preview_steps", "log_interval", "seed", "num_workers", "max_nonfinite_steps")  # fmt: skip
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_type(name: str, value: Any, annotation: str) -> None:
    """A value from a config file must have its field's declared type (ints are fine for floats)."""
    base, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
    if value is None:
        if not optional and base in ("int", "float", "bool", "str"):
            raise ConfigError(f"option {name!r} needs a value, got null; fix the config file.")
        return
    if base == "bool":
        ok, kind = isinstance(value, bool), "true or false"
    elif base == "int":
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif base == "float":
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif base == "str":
        ok, kind = isinstance(value, str), "a string"
    elif base.startswith("dict"):
        ok, kind = isinstance(value, dict), "a mapping of settings"
    elif base.startswith("tuple"):
        ok = isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)
        kind = "a list of numbers"
    else:
        return
    if not ok:
        raise ConfigError(f"option {name!r} must be {kind}, got {value!r:.100}; fix the config file.")


def _check_network_fields(fields: dict[str, Any]) -> None:
    for key in ("model_channels", "num_groups", "num_res_blocks", "dropout"):
        if fields.get(key) is not None:
            checked(key, fields[key])
