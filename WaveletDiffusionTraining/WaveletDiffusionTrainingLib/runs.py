"""A training run as the module sees it (:class:`TrainingRun`: its state, progress and what it wrote), and how
training fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from WaveletDiffusionCommonLib.process import ChildProcess

from . import runfolder
from .parameters import TrainingParameters
from .plots import LossCurve

FINISHED_STATES = ("finished", "stopped", "failed")


class TrainingError(RuntimeError):
    """Training (or a data scan) failed; ``kind`` is the engine's error kind (DataError, OutOfMemory, ...)."""

    def __init__(self, message: str, kind: str = "Error", detail: str = ""):
        super().__init__(message)
        self.kind = kind
        self.detail = detail


def format_duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


@dataclass(eq=False)
class TrainingRun:
    """One session of ``wdm train`` (a new run, or a resumed one) and what it reported."""

    params: TrainingParameters
    out_dir: Path
    resume: bool = False
    state: str = "starting"  # starting | preparing | running | stopping | finished | stopped | failed
    phase: str = "starting the training process"
    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    it_s: float | None = None
    eta_s: float | None = None
    gpu_mem_gb: float | None = None
    skipped_steps: int = 0
    device: str | None = None
    checkpoint: Path | None = None
    """The newest checkpoint (model file) of the run folder known to this session."""
    result_path: Path | None = None
    stopped_early: bool = False
    previews: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: TrainingError | None = None
    message: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    curve: LossCurve | None = None
    started: float = field(default_factory=time.monotonic)
    stop_requested_at: float | None = None
    killed_after_timeout: bool = False
    folder_item: int | None = None
    """The subject-hierarchy folder of this run's nodes (loss table and chart, previews)."""
    process: ChildProcess | None = field(default=None, repr=False)
    on_event: Callable[[TrainingRun, dict], None] | None = None
    on_progress: Callable[[TrainingRun, dict], None] | None = None
    on_checkpoint: Callable[[TrainingRun, Path], None] | None = None
    on_preview: Callable[[TrainingRun, Any], None] | None = None
    on_finished: Callable[[TrainingRun], None] | None = None

    @property
    def name(self) -> str:
        return self.out_dir.name or "training"

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def model_path(self) -> Path | None:
        """The checkpoint to generate with: this session's result, else the newest in the run folder."""
        if self.result_path is not None and self.result_path.is_file():
            return self.result_path
        if self.checkpoint is not None and self.checkpoint.is_file():
            return self.checkpoint
        return runfolder.latest_model(self.out_dir)

    @property
    def can_resume(self) -> bool:
        return runfolder.resumable(self.out_dir) is not None

    def status_text(self) -> str:
        """One line for the module: step, loss, speed, time left, GPU memory."""
        if self.state in ("starting", "preparing"):
            return self.phase[:1].upper() + self.phase[1:] + "..."
        parts = [f"step {self.step:,} of {self.total:,}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.it_s is not None:
            parts.append(f"{self.it_s:.3g} it/s" if self.it_s >= 1 else f"{1 / max(self.it_s, 1e-9):.3g} s/step")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"about {format_duration(self.eta_s)} left")
        if self.gpu_mem_gb is not None:
            parts.append(f"GPU memory {self.gpu_mem_gb:.2f} GB")
        if self.skipped_steps:
            parts.append(f"{self.skipped_steps} non-finite step(s) skipped")
        text = ", ".join(parts)
        if self.state == "stopping":
            return "Stopping (writing a checkpoint)... " + text
        return text[:1].upper() + text[1:]
