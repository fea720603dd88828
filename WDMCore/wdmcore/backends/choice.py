"""Which backend and precision run the network: the user's choice, or ``auto``'s rule for this device and CPU.

``auto`` on the CPU, from what the CPU computes natively (:mod:`.cpu`) and whether OpenVINO is installed:

=============================  ================  ============================================================
CPU                            auto              measured (seconds per unet-128 call, 64^3 grid, 2 threads)
=============================  ================  ============================================================
native bf16 (AVX-512 BF16,     OpenVINO bf16     PyTorch fp32 6.18 s, PyTorch bf16 2.85 s, OpenVINO fp32
AMX; ARM BF16) + OpenVINO                        4.06 s, OpenVINO bf16 1.01 s (2-core Intel Xeon with
                                                 AVX-512 BF16 and AMX; bench_cpu_amx-xeon-2core_20261206.json)
native bf16, no OpenVINO       PyTorch bf16      (the same host: 2.85 s against 6.18 s)
AVX2 only (or no bf16)         PyTorch fp32      PyTorch fp32 17.96 s, OpenVINO fp32 18.66 s (2-core AMD EPYC,
                                                 AVX2; bench_cpu_avx2-epyc-2core_20261206.json): no faster,
                                                 so PyTorch stays
=============================  ================  ============================================================

With ``precision="fp32"`` and ``backend="auto"``, OpenVINO fp32 is chosen on an AVX-512 CPU where it is installed
(1.5x on the AVX-512 BF16 host above), PyTorch fp32 elsewhere. The faithful path stays faithful: the released
sampler (``ancestral`` over the model's whole schedule, e.g. ``--sampler ancestral --steps 1000``, and a fastWDM3D
model's two released steps, its default) resolves ``auto`` to PyTorch fp32. On CUDA and MPS ``auto`` is PyTorch in
fp32, as before; bf16/fp16 there are autocast when asked for.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..vocabulary import BACKEND_NAMES, PRECISION_NAMES
from . import cpu


@dataclass(frozen=True)
class Choice:
    """A resolved backend (``torch`` or ``openvino``), precision (``fp32``, ``bf16``, ``fp16``) and thread count
    (the CPU threads the network call uses; recorded with every result)."""

    backend: str
    precision: str
    threads: int

    @property
    def name(self) -> str:
        """``torch-fp32``, ``openvino-bf16``, ...: the key of benchmark records."""
        return f"{self.backend}-{self.precision}"

    def record(self) -> dict[str, object]:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads}


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.cache
def openvino_capabilities() -> frozenset[str]:
    """OpenVINO's CPU ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``INT8``, ...); empty when it is absent
    or its CPU plugin does not load."""
    if not openvino_installed():
        return frozenset()
    try:
        from .openvino_call import shared_core

        return frozenset(str(c) for c in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - a plugin that fails to load means "no OpenVINO here", said by the caller
        return frozenset()


def openvino_bf16() -> bool:
    return "BF16" in openvino_capabilities()


def check_names(backend: str, precision: str) -> None:
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}.")
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_NAMES)}.")


def is_faithful(sampler: str | None, steps: int | None, schedule_steps: int | None) -> bool:
    """The released sampler: ancestral over the model's whole schedule (the fixtures' and reproductions' path)."""
    return sampler == "ancestral" and steps is not None and steps == schedule_steps


def resolve_choice(
    device: torch.device,
    backend: str = "auto",
    precision: str = "auto",
    *,
    faithful: bool = False,
    threads: int | None = None,
) -> Choice:
    """The backend and precision that will run the network on ``device`` (see the module's table); ``faithful``:
    the run reproduces the released sampler, so ``auto`` means PyTorch fp32. Raises :class:`ConfigError` for a
    combination this device cannot run well (bf16 on a CPU without native bf16, OpenVINO on a GPU, fp16 on the
    CPU). An OpenVINO choice where OpenVINO is not installed is resolved here and falls back to PyTorch (with
    a warning) when the network is first called."""
    check_names(backend, precision)
    count = cpu.default_threads() if threads is None else threads
    if device.type != "cpu":
        if backend == "openvino":
            raise ConfigError(
                f"the OpenVINO backend runs on the CPU, not on {device}; use backend 'torch' (or 'auto') there, "
                "or device 'cpu'."
            )
        return Choice("torch", "fp32" if precision == "auto" else precision, count)
    if precision == "fp16":
        raise ConfigError(
            "fp16 is a CUDA precision; on the CPU use precision fp32, auto, or bf16 (CPUs with native bf16)."
        )
    if faithful and backend == "auto" and precision == "auto":
        return Choice("torch", "fp32", count)
    if precision == "bf16":
        return Choice(_bf16_backend(backend), "bf16", count)
    if precision == "fp32":
        if backend == "auto":
            backend = "openvino" if openvino_installed() and cpu.has_avx512() else "torch"
        return Choice(backend, "fp32", count)
    # precision auto
    if backend == "auto":
        if cpu.native_bf16():
            backend = "openvino" if openvino_installed() and openvino_bf16() else "torch"
            return Choice(backend, "bf16", count)
        return Choice("torch", "fp32", count)
    if backend == "openvino":
        return Choice("openvino", "bf16" if cpu.native_bf16() and openvino_bf16() else "fp32", count)
    return Choice("torch", "bf16" if cpu.native_bf16() else "fp32", count)


def _bf16_backend(backend: str) -> str:
    """The backend that runs bf16 on this CPU, or a refusal that says what to use instead."""
    if not cpu.native_bf16():
        raise ConfigError(
            "bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX on x86, the BF16 extension on ARM), which "
            "this one lacks, so it would be slower than fp32; use precision fp32 or auto."
        )
    if backend == "openvino" and openvino_installed() and not openvino_bf16():
        raise ConfigError(
            "OpenVINO's CPU plugin reports no bf16 support on this CPU; use precision fp32 with OpenVINO, or "
            "backend torch for bf16."
        )
    if backend == "auto":
        return "openvino" if openvino_installed() and openvino_bf16() else "torch"
    return backend
