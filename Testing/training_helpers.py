"""Small configurations shared by the training tests."""

from __future__ import annotations

from wdmcore.training import TrainConfig

TINY_NETWORK = {
    "architecture": "unet",
    "model_channels": 8,
    "channel_mult": [1, 2],
    "num_groups": 4,
    "num_res_blocks": 1,
}


def tiny_config(**overrides) -> TrainConfig:
    """A network of ~70k parameters on 16^3 volumes (8^3 coefficients): a step takes milliseconds."""
    fields = {
        "preset": None,
        "network": dict(TINY_NETWORK),
        "image_size": 16,
        "batch_size": 2,
        "max_steps": 6,
        "lr": 1e-3,
        "ema_rate": 0.9,
        "checkpoint_interval": 3,
        "log_interval": 1,
        "tensorboard": False,
    }
    fields.update(overrides)
    return TrainConfig(**fields)
