"""What a training run reports: its events (progress, checkpoints, previews, the final result) to the
callback, ``events.jsonl`` and TensorBoard (:class:`RunLog`), and its cost before it runs long (the ``cost``
event: time per step, the whole run, the disk its checkpoints take; :func:`training_cost`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..events import ProgressCallback, emit
from .config import TrainConfig
from .ema import EMA

log = logging.getLogger(__name__)


class RunLog:
    """Progress events, events.jsonl and TensorBoard (rank 0 only)."""

    def __init__(self, config: TrainConfig, out_dir: Path, on_event: ProgressCallback | None, enabled: bool):
        self.on_event, self.enabled, self.writer, self.file = on_event, enabled, None, None
        if not enabled:
            return
        self.file = (out_dir / "events.jsonl").open("a")
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        payload = {"event": kind, **fields}
        self.file.write(json.dumps(payload, default=str) + "\n")
        self.file.flush()
        emit(self.on_event, kind, **fields)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def checkpoint_bytes(network: torch.nn.Module, ema: EMA) -> int:
    """About the disk one checkpoint takes: the model file (EMA weights) and the training state (raw weights and
    AdamW's two moments of every parameter)."""

    def size(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    return (
        size(ema.network.state_dict().values()) + size(network.state_dict().values()) + 2 * size(network.parameters())
    )


def checkpoints_kept(config: TrainConfig, start_step: int, existing: int) -> int:
    """How many checkpoints the folder holds at the end of a run from ``start_step`` to ``max_steps``."""
    if config.max_steps <= start_step:
        return min(config.keep_last, existing)
    interval = config.checkpoint_interval
    written = (config.max_steps - 1) // interval - start_step // interval + 1  # the intervals', then the last step's
    return min(config.keep_last, existing + written)


def training_cost(
    step_s: float, config: TrainConfig, start_step: int, network: torch.nn.Module, ema: EMA, existing: int
) -> dict[str, Any]:
    """The figures of the ``cost`` event, and its one-line ``message``."""
    steps = max(0, config.max_steps - start_step)
    each = checkpoint_bytes(network, ema)
    kept = checkpoints_kept(config, start_step, existing)
    eta_s = step_s * steps
    message = (
        f"about {_seconds(step_s)} s per step: {steps} steps ≈ {format_duration(eta_s)}; each checkpoint "
        f"{format_bytes(each)}, {kept} kept = {format_bytes(each * kept)}"
    )
    return {"step_s": round(step_s, 4), "steps": steps, "eta_s": round(eta_s, 1), "checkpoint_bytes": each,
            "checkpoints_kept": kept, "checkpoints_total_bytes": each * kept, "message": message}  # fmt: skip


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def format_bytes(count: int) -> str:
    value, unit = next(((count / scale, unit) for scale, unit in ((1e9, "GB"), (1e6, "MB"))
                        if count >= scale), (count / 1e3, "kB"))  # fmt: skip
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
