"""Data scans: ``wdm summarize`` on a data folder in a child process, as :class:`ScanJob` s (layout, cases, sizes,
unusable files), for the module to show before training starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from WaveletDiffusionCommonLib.process import ChildProcess, WorkerError

from .datasource import describe_summary
from .runs import TrainingError


@dataclass(eq=False)
class ScanJob:
    """``wdm summarize`` on a data folder: layout, cases, sizes, spacings, intensities, unusable files."""

    path: str
    data_format: str = "auto"
    state: str = "running"  # running | done | failed | cancelled
    fraction: float = 0.0
    result: dict[str, Any] | None = None
    text: str = ""
    error: TrainingError | None = None
    process: ChildProcess | None = field(default=None, repr=False)
    on_progress: Callable[[ScanJob, dict], None] | None = None
    on_finished: Callable[[ScanJob], None] | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def layout(self) -> str | None:
        return None if self.result is None else self.result.get("format")

    @property
    def summary(self) -> dict[str, Any]:
        return {} if self.result is None else self.result.get("summary") or {}


class DataScans:
    """Mixed into :class:`~.logic.WaveletDiffusionTrainingLogic`, whose ``_child``, ``_wait_for``, ``_scans`` and
    ``_ensure_polling`` it uses; the logic's :meth:`poll` hands each scan's events to :meth:`_scan_event`."""

    def start_scan(
        self,
        path: str,
        data_format: str = "auto",
        sequence: str = "t1n",
        *,
        read_voxels: bool = True,
        on_progress: Callable[[ScanJob, dict], None] | None = None,
        on_finished: Callable[[ScanJob], None] | None = None,
    ) -> ScanJob:
        """Describe a data folder as ``wdm train`` will see it (``wdm summarize`` in a child process)."""
        job = ScanJob(str(path), data_format, on_progress=on_progress, on_finished=on_finished)
        args = ["-m", "wdmcore", "summarize", str(path), "--format", data_format, "--sequence", sequence,
                "--progress", "jsonl", *([] if read_voxels else ["--headers-only"])]  # fmt: skip
        job.process = self._child("the data scan")
        try:
            job.process.start(args)
        except WorkerError as exc:
            self._finish_scan(job, "failed", TrainingError(str(exc), kind="WorkerError"))
            return job
        self._scans.append(job)
        self._ensure_polling()
        return job

    def scan(self, path: str, data_format: str = "auto", sequence: str = "t1n", *, timeout: float | None = None,
             read_voxels: bool = True) -> ScanJob:  # fmt: skip
        """Blocking :meth:`start_scan`; raises :class:`TrainingError` when the folder cannot be read."""
        job = self.start_scan(path, data_format, sequence, read_voxels=read_voxels)
        if not self._wait_for(lambda: job.finished, timeout):
            self.cancel_scan(job)
            raise TrainingError(f"the data scan did not finish within {timeout} s", kind="Timeout")
        if job.error is not None:
            raise job.error
        return job

    def cancel_scan(self, job: ScanJob) -> None:
        if job.process is not None and not job.finished:
            job.process.kill(wait=0.5)
            self._finish_scan(job, "cancelled")

    def _scan_event(self, job: ScanJob, event: dict[str, Any]) -> None:
        if job.finished:
            return
        kind = event.get("event")
        if kind == "progress":
            total = event.get("total") or 0
            job.fraction = float(event.get("done", 0)) / total if total else 0.0
            if job.on_progress is not None:
                job.on_progress(job, event)
        elif kind == "result":
            job.result = event
            job.text = describe_summary(event)
        elif kind == "error":
            job.error = TrainingError(str(event.get("message")), str(event.get("kind", "Error")),
                                      str(event.get("detail", "")))  # fmt: skip
        elif kind == "exit":
            if job.error is not None:
                self._finish_scan(job, "failed", job.error)
            elif job.result is not None:
                self._finish_scan(job, "done")
            else:
                self._finish_scan(job, "failed", TrainingError(str(event.get("message")), kind="Crashed",
                                                               detail=str(event.get("stderr_tail", ""))))  # fmt: skip

    def _finish_scan(self, job: ScanJob, state: str, error: TrainingError | None = None) -> None:
        if job.finished:
            return
        job.state, job.error = state, error
        if error is not None:
            job.text = f"Cannot use this data: {error}"
        if job.on_finished is not None:
            job.on_finished(job)
