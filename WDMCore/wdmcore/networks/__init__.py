"""The diffusion networks: U-Net and WavU-Net, state-dict compatible with the released WDM checkpoints."""

from __future__ import annotations

from typing import Any

from .config import PRESETS, NetworkConfig, config_from_official_args, preset_config, preset_image_size, preset_of
from .unet import DiffusionNetwork, UNet
from .wavunet import WavUNet


def build_network(config: NetworkConfig) -> DiffusionNetwork:
    """Instantiate the network a config describes (weights initialised as the released code does)."""
    return WavUNet(config) if config.architecture == "wavunet" else UNet(config)


def from_official_args(args: dict[str, Any]) -> DiffusionNetwork:
    """Build the network that the released code builds from these model arguments (the
    ``create_model_and_diffusion`` kwargs or run.sh flag values; ``"1,2,2,4,4"``-style strings accepted)."""
    return build_network(config_from_official_args(args))


__all__ = [
    "PRESETS",
    "DiffusionNetwork",
    "NetworkConfig",
    "UNet",
    "WavUNet",
    "build_network",
    "config_from_official_args",
    "from_official_args",
    "preset_config",
    "preset_image_size",
    "preset_of",
]
