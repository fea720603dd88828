"""The ``env`` part: what the figures were measured on (device, driver, versions, commit) and the device's bf16
matrix-product peak, against which the timing parts state their achieved rate."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .measuring import device_name, sync
from .recording import Part, significant
from .suite import REPO, Suite


def run(suite: Suite, part: Part) -> None:
    """The environment record (into the JSON's ``environment``) and this device's bf16 matrix-product peak."""
    env: dict[str, Any] = {
        "device": str(suite.device),
        "device_name": device_name(suite.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "git_commit": _git_commit(),
        "wdmcore": _wdmcore_location(),
        "reference_dir": str(suite.reference) if suite.reference else None,
    }
    if suite.device.type == "cuda":
        props = torch.cuda.get_device_properties(suite.device)
        env.update(
            gpu_memory_gb=round(props.total_memory / 2**30, 2),
            multiprocessors=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            driver=_nvidia_smi("driver_version"),
            nvidia_smi_name=_nvidia_smi("name"),
            cudnn_benchmark_default=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32_default=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32_default=torch.backends.cuda.matmul.allow_tf32,
        )
    suite.recorder.data["environment"] = env
    part.row(
        what="environment",
        **{
            k: v
            for k, v in env.items()
            if k in ("device_name", "torch", "cuda", "cpu_count", "cuda_device_count", "gpu_memory_gb")
        },
        status="ok",
    )

    n = 256 if suite.tiny else 8192

    def matmul_peak() -> dict[str, Any]:
        gen = torch.Generator(device=suite.device).manual_seed(0)
        a = torch.randn(n, n, device=suite.device, dtype=torch.bfloat16, generator=gen)
        b = torch.randn(n, n, device=suite.device, dtype=torch.bfloat16, generator=gen)
        for _ in range(3):
            a @ b
        sync(suite.device)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            a @ b
            sync(suite.device)
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        suite.matmul_peak_tflops = 2 * n**3 / median / 1e12
        return {"tflops": significant(suite.matmul_peak_tflops), "median_ms": round(1000 * median, 3)}

    part.measure({"what": "bf16 matmul peak", "n": n, "method": "median of 10 after 3 warm-ups"}, matmul_peak)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None


def _wdmcore_location() -> str:
    import wdmcore

    return f"{wdmcore.__version__} at {Path(wdmcore.__file__).parent}"


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout  # fmt: skip
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
