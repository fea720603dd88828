"""Measuring on a device: synchronising, peak memory, the precision modes, a network call in a precision and
memory format, the errors between two outputs, and a forward pass's median time."""

from __future__ import annotations

import contextlib
import gc
import platform
import time

import torch

from .recording import Part


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
    }


@contextlib.contextmanager
def precision_mode(device: torch.device, precision: str):
    """``fp32`` (TF32 off: true fp32 arithmetic), ``tf32`` (TF32 convolutions and matmuls), ``bf16``/``fp16``
    (autocast, TF32 on for what stays fp32), ``default`` (fp32 with PyTorch's flags as they are: on CUDA that is
    TF32 convolutions and fp32 matmuls)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if precision != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    try:
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device.type, dtype=dtype):
                yield
        else:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_call(network: torch.nn.Module, device: torch.device, precision: str, channels_last: bool):
    """network(x, t) in a precision and memory format; output fp32 (what the samplers receive)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with precision_mode(device, precision):
            out = network(x, t)
        return out.float()

    return call


def engine_network_call():
    """The engine's own network call of ``generate`` (precision, channels-last on CUDA, fp32 output)."""
    from wdmcore.backends.torch_call import torch_call

    return torch_call


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double().cpu(), reference.double().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


def max_abs(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double().cpu() - reference.double().cpu()).abs().max())


def time_forward(call, x: torch.Tensor, t: torch.Tensor, device: torch.device, part: Part, repeats: int = 5) -> float:
    """Median forward time in ms after one warm-up call (no_grad)."""
    times = []
    with torch.no_grad():
        call(x, t)
        sync(device)
        for _ in range(repeats):
            if times:
                part.check()
            start = time.perf_counter()
            call(x, t)
            sync(device)
            times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 3)
