"""What a device name means: ``auto`` is CUDA, then Apple's MPS, then the CPU; a device asked for by name must
exist here, or the error says what to use instead."""

from __future__ import annotations

import torch

from .errors import ConfigError


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else Apple's MPS, else the CPU; a CUDA or MPS device must exist."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {str(device)!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if device.type not in ("cpu", "cuda", "mps"):  # e.g. "meta": tensors without data, no volume comes out
        raise ConfigError(f"device {str(device)!r} cannot run a model here; use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but PyTorch sees no GPU here; use device 'cpu' (or 'auto').")
    if device.type == "mps" and not mps_available():
        raise ConfigError(
            "Apple's MPS was requested but PyTorch sees no MPS device here (it needs a Mac with Apple silicon, "
            "macOS 12.3 or later and a PyTorch build with MPS); use device 'cpu' (or 'auto')."
        )
    return device
