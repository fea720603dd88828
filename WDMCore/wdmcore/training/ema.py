"""Exponential moving average of the network weights: what a training run saves as its model."""

from __future__ import annotations

import copy
import logging

import torch

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of a network's parameters, kept as a network of its own (fp32)."""

    def __init__(self, network: torch.nn.Module, rate: float, warmup: bool):
        self.network = copy.deepcopy(network).eval()
        self.network.requires_grad_(False)
        self.rate, self.warmup, self.updates = rate, warmup, 0

    def current_rate(self) -> float:
        if self.warmup:
            return min(self.rate, (1 + self.updates) / (10 + self.updates))
        return self.rate

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        weight = 1.0 - self.current_rate()
        for ema_p, p in zip(self.network.parameters(), network.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), weight)
        self.updates += 1


# -- files --------------------------------------------------------------------------------------------------
