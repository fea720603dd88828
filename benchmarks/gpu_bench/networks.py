"""The networks the suite measures: the engine's presets with random weights, their dry-run stand-ins, and
their FLOP counts (``torch.utils.flop_counter``; on the meta device, a full-size count costs no memory)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch


def randomize(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the zero-initialised output convolutions random weights, so that every layer shapes the output
    (with the released initialisation a fresh network outputs exactly zero and compares trivially)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                module.weight.copy_((torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound)
                module.bias.copy_((torch.rand(module.bias.shape, generator=generator) * 2 - 1) * bound)
    return network


# The dry run's stand-ins: same architecture and code, 8 base channels, fewer levels (CPU bf16 convolutions are
# very slow, and a full-depth unet-256 needs a 32^3 grid), so that every network runs on an 8^3 grid.
TINY_MULT = {"unet-128": (1, 2, 2), "unet-256": (1, 2, 2, 2), "wavunet-128": (1, 2), "wavunet-256": (1, 2)}
TINY_GRID = 8


def preset(name: str, tiny: bool, **changes: Any):
    """A preset's NetworkConfig; with ``tiny`` the dry run's small stand-in of it."""
    from wdmcore.networks import preset_config

    config = preset_config(name)
    if tiny:
        changes = {"model_channels": 8, "num_groups": 4, "channel_mult": TINY_MULT[name], **changes}
    return dataclasses.replace(config, **changes) if changes else config


def build(config, device: torch.device | str = "cpu", seed: int = 0) -> torch.nn.Module:
    from wdmcore.networks import build_network

    torch.manual_seed(seed)
    return randomize(build_network(config), seed + 1).to(device).eval()


def count_flops(network: torch.nn.Module, shape: tuple[int, ...]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(network.parameters()).device
    x = torch.empty(shape, device=device) if device.type == "meta" else torch.randn(shape, device=device)
    t = torch.zeros(shape[0], dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x, t)
    return float(counter.get_total_flops())


def meta_flops(config, grid: tuple[int, int, int], batch: int = 1) -> float:
    from wdmcore.networks import build_network

    with torch.device("meta"):
        network = build_network(config).eval()
    return count_flops(network, (batch, config.in_channels, *grid))
