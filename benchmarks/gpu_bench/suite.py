"""What every part of one run shares: the options, the device, the recorder, the reference fixtures, the
measured bf16 matrix-product peak (for the achieved share of it), the FLOP counts, and the dry run's
compile-once rule."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .networks import meta_flops
from .recording import Recorder, significant

REPO = Path(__file__).resolve().parents[2]


def reference_dir(args: argparse.Namespace) -> Path | None:
    candidates = [args.reference] if args.reference else []
    candidates += [
        os.environ.get("WDM_REFERENCE_DIR"),
        REPO / "Testing" / "reference",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


class Suite:
    def __init__(self, args: argparse.Namespace, device: torch.device, recorder: Recorder):
        self.args = args
        self.device = device
        self.tiny = args.tiny
        self.recorder = recorder
        self.matmul_peak_tflops: float | None = None  # set by the env part
        self.flops: dict[str, float] = {}
        self.reference = reference_dir(args)
        self.compiled_paths: set[str] = set()

    def may_compile(self, path: str) -> bool:
        """The dry run compiles once per code path (generation, training): each compile costs seconds on a CPU."""
        if not self.tiny:
            return True
        if path in self.compiled_paths:
            return False
        self.compiled_paths.add(path)
        return True

    def compile_backend(self) -> str:
        # On the CPU dry run the inductor backend would compile C++ for a minute; "eager" still runs
        # TorchDynamo's graph capture of our networks, which is what can break.
        return "eager" if self.device.type == "cpu" else "inductor"

    def flops_of(self, name: str, config, grid: tuple[int, int, int]) -> float:
        key = f"{name}@{'x'.join(map(str, grid))}"
        if key not in self.flops:
            self.flops[key] = meta_flops(config, grid)
        return self.flops[key]

    def tflops(self, flops_per_volume: float, batch: int, seconds: float) -> dict[str, float]:
        achieved = flops_per_volume * batch / seconds / 1e12
        out = {"achieved_tflops": significant(achieved)}
        if self.matmul_peak_tflops:
            out["pct_of_bf16_matmul_peak"] = significant(100 * achieved / self.matmul_peak_tflops)
        return out
