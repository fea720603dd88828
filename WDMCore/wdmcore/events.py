"""The progress-event protocol shared by the Python API, the `wdm` command and the Slicer modules.

Long jobs (download, sample, train, evaluate) report through a callback that receives plain dicts::

    {"event": "progress", "task": "sample", "done": 12, "total": 25, "eta_s": 3.1}
    {"event": "result", "path": "/tmp/out/sample_0.nii.gz"}
    {"event": "error", "kind": "OutOfMemory", "message": "..."}

``--progress jsonl`` in the CLI writes one such object per line on stdout; the default CLI reader draws tqdm
bars from the same events. Library code never prints.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

Event = dict[str, Any]
ProgressCallback = Callable[[Event], None]


def emit(callback: ProgressCallback | None, event: str, **fields: Any) -> None:
    """Send one event to ``callback`` if there is one."""
    if callback is not None:
        callback({"event": event, **fields})


class ProgressTracker:
    """Turns "one more unit done" into progress events with a smoothed rate and an ETA."""

    def __init__(self, callback: ProgressCallback | None, task: str, total: int, **extra: Any):
        self.callback = callback
        self.task = task
        self.total = total
        self.extra = extra
        self.done = 0
        self._start = time.perf_counter()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        emit(
            self.callback,
            "progress",
            task=self.task,
            done=self.done,
            total=self.total,
            elapsed_s=round(elapsed, 3),
            eta_s=None if eta is None else round(eta, 3),
            **self.extra,
            **fields,
        )


def jsonl_writer(stream: IO[str] | None = None) -> ProgressCallback:
    """A callback that writes each event as one JSON line (flushed, so a parent process sees it at once)."""
    out = stream if stream is not None else sys.stdout

    def write(event: Event) -> None:
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    return write


def warn(callback: ProgressCallback | None, logger: logging.Logger, message: str, **fields: Any) -> None:
    """Tell the user something they should know about a result: a ``warning`` event when there is a callback
    (the CLI's bar, the worker and the Slicer modules show it), else a logged warning, so it is said once."""
    if callback is not None:
        emit(callback, "warning", message=message, **fields)
    else:
        logger.warning(message)
