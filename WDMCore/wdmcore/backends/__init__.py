"""How the denoiser's network is called: one place builds ``call(x, t)`` for every task (generate, synthesize,
inpaint, vary), so the samplers stay as they are and only the network call changes.

>>> call = network_call(wdm.network, torch.device("cpu"), backend="auto", precision="auto")
>>> call.choice.record()                      # {"backend": "torch", "precision": "fp32", "threads": 2}

Backends: PyTorch (fp32; bf16 autocast on CPUs with native bf16; bf16/fp16 autocast on CUDA) and OpenVINO on
the CPU (fp32 or bf16, the optional ``openvino`` extra). ``auto`` follows :mod:`.choice`. When OpenVINO is
missing or the conversion fails, the call falls back to PyTorch and says so in one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..events import ProgressCallback, warn
from .choice import Choice, is_faithful, openvino_installed, resolve_choice
from .cpu import configure_threads, cpu_flags, default_threads, native_bf16, reported_flags
from .torch_call import torch_call

__all__ = [
    "Choice",
    "NetworkCall",
    "configure_threads",
    "cpu_flags",
    "default_threads",
    "is_faithful",
    "native_bf16",
    "network_call",
    "reported_flags",
    "resolve_choice",
]

log = logging.getLogger(__name__)


class NetworkCall:
    """``call(x, t) -> fp32 tensor`` on the chosen backend; ``choice`` says what runs it (after a fallback: what
    actually ran)."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        choice: Choice,
        *,
        channels_last: bool = False,
        on_progress: ProgressCallback | None = None,
    ):
        self.network = network
        self.device = device
        self.choice = choice
        self.on_progress = on_progress
        self._channels_last = channels_last
        self._call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if choice.backend == "openvino" and not openvino_installed():
            self._fall_back("OpenVINO is not installed (pip install 'wdmcore[openvino]', or the Slicer module's offer)")
        elif choice.backend == "openvino":
            from .openvino_call import OpenVINOCall

            self._call = OpenVINOCall(network, choice.precision, choice.threads)
        else:
            self._call = torch_call(network, device, choice.precision, channels_last)

    def _fall_back(self, reason: str) -> None:
        precision = self.choice.precision if self.choice.precision == "fp32" or native_bf16() else "fp32"
        self.choice = Choice("torch", precision, self.choice.threads)
        warn(
            self.on_progress,
            log,
            f"the OpenVINO backend is not used: {reason}; running PyTorch {precision} instead.",
            kind="backend-fallback",
        )
        self._call = torch_call(self.network, self.device, precision, self._channels_last)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.choice.backend == "openvino":
            try:
                self._call.compiled_for(x, t)  # converts (or reads the cache) on the first call of a shape
            except Exception as exc:  # noqa: BLE001 - any conversion failure means "use PyTorch", said once
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                self._fall_back(f"converting the network failed ({type(exc).__name__}: {first})")
        return self._call(x, t)


def network_call(
    network: torch.nn.Module,
    device: torch.device,
    *,
    backend: str = "auto",
    precision: str = "auto",
    faithful: bool = False,
    threads: int | None = None,
    channels_last: bool = False,
    on_progress: ProgressCallback | None = None,
) -> NetworkCall:
    """The network call of a task: backend and precision resolved for ``device`` (:func:`resolve_choice`;
    ``faithful``: the run reproduces the released sampler), ``threads`` CPU threads (default: PyTorch's current
    count, which the worker and ``wdm`` set to all physical cores)."""
    count = torch.get_num_threads() if threads is None else threads
    choice = resolve_choice(device, backend, precision, faithful=faithful, threads=count)
    return NetworkCall(network, device, choice, channels_last=channels_last, on_progress=on_progress)
