"""A job on the generation worker (one request and what came back), and how a job fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tasks import TaskParameters


class GenerationError(RuntimeError):
    """A job failed: the worker reported an error or died. ``kind`` is the worker's error kind."""

    def __init__(self, message: str, kind: str = "Error", detail: str = ""):
        super().__init__(message)
        self.kind = kind
        self.detail = detail


class GenerationCancelled(GenerationError):
    """The job was cancelled before it finished."""

    def __init__(self, message: str = "generation was cancelled"):
        super().__init__(message, kind="Cancelled")


def file_name(text: str, default: str = "volume") -> str:
    """``text`` as a plain file name (letters, digits, '-' and '_'; anything else, separators included, is '_')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or default


@dataclass
class Job:
    """One request to the worker and what came back."""

    kind: str
    params: Any = None
    request_id: int | None = None
    state: str = "running"  # running | done | cancelled | failed
    fraction: float = 0.0
    eta_s: float | None = None
    message: str = ""
    error: GenerationError | None = None
    nodes: list[Any] = field(default_factory=list)
    result: Any = None
    output_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)
    on_progress: Callable[[Job, dict], None] | None = None
    on_preview: Callable[[Job, Any], None] | None = None
    on_volume: Callable[[Job, Any], None] | None = None
    on_finished: Callable[[Job], None] | None = None
    cancel_requested: bool = False
    preview_updates: int = 0
    """How often the preview volume was updated: the module fits the views to it on the first update only, so
    that the user can zoom and pan while sampling."""
    folder_item: int | None = None
    """The subject-hierarchy folder that holds this job's volumes."""
    inputs: dict[str, Any] = field(default_factory=dict)
    """Synthesize / inpaint / vary: the input nodes by role (``image`` for inpaint and vary, the card's input
    names for synthesis); results are placed in the grid of :attr:`grid_node`."""
    grid_node: Any = None
    uncertainty_nodes: list[Any] = field(default_factory=list)
    """Results of several draws: the uncertainty map (std) of each mean in :attr:`nodes`."""

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def folder_name(self) -> str:
        params = self.params
        if isinstance(params, TaskParameters):
            return params.folder_label()
        last = params.seed + params.count - 1
        seeds = f"seed {params.seed}" if params.count == 1 else f"seeds {params.seed}-{last}"
        return f"{params.node_name()} ({seeds})"
