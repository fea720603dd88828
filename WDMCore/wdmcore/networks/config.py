"""Network configuration: presets of the released models and conversion from the released code's arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that determines a network's structure (and therefore its state-dict keys and shapes)."""

    architecture: str = "unet"  # "unet" (additive or concatenated skips) or "wavunet"
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    num_groups: int = 32
    in_channels: int = 8
    out_channels: int = 8
    dropout: float = 0.0
    additive_skips: bool = True  # U-Net only: average instead of concatenate
    scale_shift_norm: bool = False
    use_checkpoint: bool = False  # activation checkpointing per ResBlock (training memory, not structure)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # informational, e.g. source args

    def __post_init__(self):
        if self.architecture not in ("unet", "wavunet"):
            raise ConfigError(f"unknown architecture {self.architecture!r}: use 'unet' or 'wavunet'.")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        widths = {self.model_channels * m for m in self.channel_mult}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise ConfigError(
                f"GroupNorm with {self.num_groups} groups cannot divide channel counts {bad}; choose "
                "num_groups dividing model_channels * every channel_mult entry."
            )

    @property
    def downsampling_factor(self) -> int:
        """How much the network input (coefficient volume) must be divisible by."""
        levels = len(self.channel_mult) if self.architecture == "wavunet" else len(self.channel_mult) - 1
        return 2**levels

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channel_mult"] = list(self.channel_mult)
        data.pop("extra")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown network config fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**data)


# The configurations of the released run.sh files: the four of wdm-3d, cWDM's (8 noisy + 3 x 8 conditioning
# channels, concatenating skips; its grid is 224 x 224 x 160) and fastWDM3D's (8 noisy + voided image + mask,
# 4 ResBlocks per level). Image size = 2 x network input size.
PRESETS: dict[str, tuple[NetworkConfig, int]] = {
    "unet-128": (NetworkConfig("unet", channel_mult=(1, 2, 2, 4, 4), additive_skips=True), 128),
    "unet-256": (NetworkConfig("unet", channel_mult=(1, 2, 2, 4, 4, 4), additive_skips=True), 256),
    "wavunet-128": (NetworkConfig("wavunet", channel_mult=(1, 2, 2, 4, 4), additive_skips=False), 128),
    "wavunet-256": (NetworkConfig("wavunet", channel_mult=(1, 2, 2, 4, 4, 4), additive_skips=False), 256),
    "cwdm-224": (NetworkConfig("unet", channel_mult=(1, 2, 2, 4, 4), in_channels=32, additive_skips=False), 224),
    "fastwdm3d-128": (
        NetworkConfig("unet", channel_mult=(1, 2, 2, 2, 4), num_res_blocks=4, in_channels=24, additive_skips=True),
        128,
    ),
}


def preset_config(name: str) -> NetworkConfig:
    """The network config of a preset (``unet-128``, ``unet-256``, ``wavunet-128``, ``wavunet-256``)."""
    try:
        return PRESETS[name][0]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}.") from None


def preset_of(config: NetworkConfig) -> str | None:
    """The name of the preset whose network is ``config``, or None for a custom network."""
    wanted = config.to_dict()
    return next((name for name, (preset, _) in PRESETS.items() if preset.to_dict() == wanted), None)


def preset_image_size(name: str) -> int:
    preset_config(name)
    return PRESETS[name][1]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "y", "t"):
            return True
        if lowered in ("false", "0", "no", "n", "f", ""):
            return False
        raise ConfigError(f"cannot read {value!r} as a boolean flag (use True or False).")
    return bool(value)


def _as_int_tuple(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"channel_mult {value!r} must be comma-separated integers, e.g. '1,2,2,4,4'.") from None
    return tuple(int(v) for v in value)


# Released-code arguments that only matter for training, sampling or attention we refuse below.
_IGNORED_OFFICIAL_ARGS = {
    "image_size", "num_heads", "num_heads_upsample", "num_head_channels", "use_fp16", "use_new_attention_order",
    "dims", "mode", "predict_xstart", "diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl",
    "rescale_timesteps", "rescale_learned_sigmas", "dataset", "bottleneck_attention_heads", "lr", "batch_size",
    "beta_min", "beta_max", "sampling_steps", "use_wgupdown",
}  # fmt: skip


def config_from_official_args(args: dict[str, Any]) -> NetworkConfig:
    """Network config from the released code's model arguments (the ``create_model_and_diffusion`` kwargs or
    run.sh flag values; strings such as ``"1,2,2,4,4"`` and ``"True"`` are accepted)."""
    if not isinstance(args, dict):
        raise ConfigError(f"official args must be a dict of the released code's arguments, not {type(args).__name__}.")
    try:
        return _config_from_official_args(dict(args))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"official args: a value has the wrong type ({exc}); use the run.sh values.") from None


def _config_from_official_args(a: dict[str, Any]) -> NetworkConfig:
    if _as_bool(a.get("class_cond", False)):
        raise ConfigError("class-conditional WDM checkpoints (class_cond=True) are not supported.")
    if str(a.get("attention_resolutions", "")).strip() not in ("", "None"):
        raise ConfigError(
            f"attention_resolutions={a['attention_resolutions']!r}: WDM networks with attention blocks are not "
            "supported (the released models use none)."
        )
    if _as_bool(a.get("bottleneck_attention", False)):
        raise ConfigError("bottleneck_attention=True is not supported (the released models use none).")
    if _as_bool(a.get("resample_2d", False)):
        raise ConfigError("resample_2d=True is not supported (the released models resample all three axes).")
    if not _as_bool(a.get("resblock_updown", True)):
        raise ConfigError("resblock_updown=False is not supported (the released models resample in ResBlocks).")
    if _as_bool(a.get("use_wgupdown", False)):
        raise ConfigError("use_wgupdown=True is not supported (the released fastWDM3D model does not use it).")
    if int(a.get("dims", 3)) != 3:
        raise ConfigError(f"dims={a['dims']}: only 3-D networks are supported.")

    mult = a.get("channel_mult", "")
    if mult in ("", None):
        size = int(a.get("image_size", 128))
        table = {128: (1, 2, 2, 4, 4), 256: (1, 2, 2, 4, 4, 4)}
        if size not in table:
            raise ConfigError(f"channel_mult is empty and image_size {size} has no released default.")
        mult = table[size]
    out_channels = int(a.get("out_channels", 8))
    if _as_bool(a.get("learn_sigma", False)):
        out_channels *= 2
    use_freq = _as_bool(a.get("use_freq", False))
    return NetworkConfig(
        architecture="wavunet" if use_freq else "unet",
        model_channels=int(a.get("num_channels", a.get("model_channels", 64))),
        channel_mult=_as_int_tuple(mult),
        num_res_blocks=int(a.get("num_res_blocks", 2)),
        num_groups=int(a.get("num_groups", 32)),
        in_channels=int(a.get("in_channels", 8)),
        out_channels=out_channels,
        dropout=float(a.get("dropout", 0.0)),
        additive_skips=_as_bool(a.get("additive_skips", False)) and not use_freq,
        scale_shift_norm=_as_bool(a.get("use_scale_shift_norm", False)),
        use_checkpoint=False,
        extra={"official_args": {k: v for k, v in a.items() if k not in _IGNORED_OFFICIAL_ARGS}},
    )
