"""The PyTorch backend: ``network(x, t)`` in fp32, or under bf16/fp16 autocast (GroupNorm, the sampler's
arithmetic and the image-space x0 clip stay fp32); the output is always fp32."""

from __future__ import annotations

from collections.abc import Callable

import torch

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_call(
    network: torch.nn.Module, device: torch.device, precision: str, channels_last: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """network(x, t) in the requested precision; the output is always fp32 and contiguous."""
    autocast_dtype = AUTOCAST[precision]

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        if autocast_dtype is None:
            out = network(x, t)
        else:
            with torch.autocast(device.type, dtype=autocast_dtype):
                out = network(x, t)
        return out.float().contiguous()

    return call
