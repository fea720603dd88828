"""The client of the generation worker: one persistent worker process, requests on it as jobs, and its events
handed to the job they belong to (``_on_<job kind>_<event>``, else ``_on_<event>``).

The simple requests live here too (``info``, ``list_models``, ``download``); generating and the other tasks
build on this class (:mod:`.generation`, :mod:`.taskrequests`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from WaveletDiffusionCommonLib.polling import PolledLogic
from WaveletDiffusionCommonLib.process import WorkerError, WorkerProcess

from .jobs import GenerationCancelled, GenerationError, Job

log = logging.getLogger(__name__)

# Requests whose answer is data, not nodes: they go on when the scene is closed.
QUERY_KINDS = ("info", "list_models", "download")


class WorkerClient(PolledLogic):
    """Jobs on a persistent worker process (started when first needed, and again after a crash)."""

    def __init__(
        self,
        scene: Any = None,
        *,
        python: str | None = None,
        worker_env: dict[str, str] | None = None,
        idle: Callable[[], None] | None = None,
        schedule: Callable[[int, Callable[[], None]], None] | None = None,
        keep_files: bool = False,
        keep_preview: bool = False,
        base_env: Callable[[], dict[str, str]] | None = None,
        provided_root: str | None = None,
    ):
        super().__init__(scene, schedule)
        self.python = python
        self.worker_env = dict(worker_env or {})
        self.base_env = base_env
        """The environment the worker starts from (``slicer.util.startupEnvironment`` in Slicer; else ours)."""
        self.provided_root = provided_root
        self.idle = idle
        self.keep_files = keep_files
        self.keep_preview = keep_preview
        self._worker: WorkerProcess | None = None
        self._jobs: dict[int, Job] = {}
        self.preview_node: Any = None
        self._watched_scene: Any = None
        self._scene_close_tag: int | None = None
        self.backend_gate: Callable[[str], str | None] | None = None
        """Offers the packages of a network backend that is chosen but not installed (in Slicer: the engine's
        ``openvino`` extra, :func:`WaveletDiffusionCommonLib.dependencies.offer_backend`); returns None when the
        backend is ready, else a sentence for the log (the worker then runs PyTorch, as the engine falls back)."""
        self._backends_offered: set[str] = set()

    def require_backend(self, backend: str, *, again: bool = False) -> None:
        """Offer what ``backend`` needs (:attr:`backend_gate`) before a request that runs the network: once a
        session per backend, or ``again`` when the user has just chosen it. A backend left missing is no error:
        the worker runs PyTorch instead and says so."""
        if self.backend_gate is None or (backend in self._backends_offered and not again):
            return
        self._backends_offered.add(backend)
        message = self.backend_gate(backend)
        if message:
            self._log(message)

    # ------------------------------------------------------------------------------------------- plumbing

    @property
    def worker(self) -> WorkerProcess:
        """The running worker, started when first needed (and again after a crash)."""
        if self._worker is None or not self._worker.running:
            self.require_dependencies()  # the worker imports torch and the engine
            if self._worker is not None:
                self._worker.kill()
            self._worker = WorkerProcess(self.python, env=self.worker_env, base_env=self.base_env,
                                         provided_root=self.provided_root)  # fmt: skip
            self._worker.start()
            self._log(f"started generation worker (pid {self._worker.pid}, {self._worker.python})")
        return self._worker

    @property
    def busy(self) -> bool:
        return any(not job.finished for job in self._jobs.values())

    def shutdown(self) -> None:
        """Stop the worker and every process it started (within about 4 s: the module calls it when Slicer
        closes); running jobs end as cancelled."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(timeout=2.0)
        for job in list(self._jobs.values()):
            self._finish(job, "cancelled", GenerationCancelled("the worker was stopped"))
        self._jobs.clear()
        self._unwatch_scene_close()

    def _watch_scene_close(self) -> None:
        """Cancel the jobs that add nodes when their scene is closed (*Close scene*, or a scene loaded in its
        place: both clear the scene, which starts with StartCloseEvent): their results belong to a scene, and
        an input grid, that are going away."""
        scene = self.scene
        if scene is None or scene is self._watched_scene:
            return
        self._unwatch_scene_close()
        self._scene_close_tag = scene.AddObserver(scene.StartCloseEvent, self._on_scene_start_close)
        self._watched_scene = scene

    def _unwatch_scene_close(self) -> None:
        scene, self._watched_scene = self._watched_scene, None
        if scene is not None and self._scene_close_tag is not None:
            scene.RemoveObserver(self._scene_close_tag)
        self._scene_close_tag = None

    def _on_scene_start_close(self, caller: Any = None, event: Any = None) -> None:
        """The scene is being cleared: each job that would add nodes is cancelled on the worker and ends now, so
        that nothing it sends later reaches the next scene (events of a job no longer listed are dropped)."""
        for job in [j for j in self._jobs.values() if not j.finished and j.kind not in QUERY_KINDS]:
            job.cancel_requested = True
            if self._worker is not None and job.request_id is not None:
                self._worker.cancel(job.request_id)
            what = "generation" if job.kind == "generate" else job.kind
            self._log(f"the scene was closed: {what} cancelled")
            self._finish(job, "cancelled", GenerationCancelled(f"{what} was cancelled: the scene was closed"))
        self.preview_node = None

    def _submit(self, job: Job, request_type: str, **fields: Any) -> Job:
        self.require_dependencies()  # every request reaches the worker through here
        self._watch_scene_close()
        try:
            job.request_id = self.worker.send(request_type, **fields)
        except WorkerError as exc:
            self._finish(job, "failed", GenerationError(str(exc), kind="WorkerError"))
            return job
        self._jobs[job.request_id] = job
        self._ensure_polling()
        return job

    # ------------------------------------------------------------------------------------------- events

    def poll(self) -> bool:
        """Handle every event that has arrived. Returns True while jobs are still running."""
        if self._worker is None:
            return self.busy
        for event in self._worker.poll():
            self._dispatch(event)
        return self.busy

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        """Handle events until ``job`` has finished (``idle`` is called between polls)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished:
            if self._worker is None:
                break
            for event in self._worker.poll(timeout=0.0 if self.idle else 0.05):
                self._dispatch(event)
            if job.finished:
                break
            if self.idle is not None:
                self.idle()
                time.sleep(0.01)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(job, force=True)
                self._finish(job, "failed", GenerationError(f"no result within {timeout} s", kind="Timeout"))
        return job

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "exit":
            self._worker_exited(event)
            return
        if kind in ("ready", "bye"):
            return
        if kind == "log":
            self._log(str(event.get("message", "")))
            return
        job = self._jobs.get(event.get("id"))  # type: ignore[arg-type]
        if job is None:
            if kind == "error":
                self._log(f"worker error: {event.get('kind')}: {event.get('message')}")
            return
        handler = getattr(self, f"_on_{job.kind}_{kind}", None) or getattr(self, f"_on_{kind}", None)
        if handler is None:
            return
        try:
            handler(job, event)
        except Exception as exc:  # a callback or a node update failed: the job fails, the worker lives on
            log.exception("handling %s event failed", kind)
            self.cancel(job)
            self._finish(job, "failed", GenerationError(f"{type(exc).__name__}: {exc}", kind=type(exc).__name__))

    def _worker_exited(self, event: dict[str, Any]) -> None:
        message = event.get("message", "the generation worker exited")
        if event.get("crashed"):
            self._log(message)
        for job in list(self._jobs.values()):
            if job.finished:
                continue
            if job.cancel_requested:
                self._finish(job, "cancelled", GenerationCancelled())
            else:
                last = event.get("last_error") or {}
                self._finish(
                    job,
                    "failed",
                    GenerationError(message, kind="WorkerCrashed", detail=str(last.get("detail", ""))),
                )
        self._jobs.clear()
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def _finish(self, job: Job, state: str, error: GenerationError | None = None) -> None:
        if job.finished:
            return
        job.state = state
        job.error = error
        job.message = str(error) if error else "finished"
        if job.request_id is not None:
            self._jobs.pop(job.request_id, None)
        self._release(job)
        if job.on_finished is not None:
            job.on_finished(job)

    def _release(self, job: Job) -> None:
        """Remove what a finished job leaves behind, before its callback runs (nothing here; the requests that
        write files and show a preview override it)."""

    def _on_progress(self, job: Job, event: dict[str, Any]) -> None:
        total = event.get("total") or 0
        if total:
            job.fraction = min(1.0, float(event.get("done", 0)) / float(total))
        job.eta_s = event.get("eta_s")
        if job.on_progress is not None:
            job.on_progress(job, event)

    def _on_error(self, job: Job, event: dict[str, Any]) -> None:
        message = str(event.get("message", "unknown error"))
        self._finish(
            job, "failed", GenerationError(message, kind=str(event.get("kind")), detail=event.get("detail", ""))
        )

    def _on_cancelled(self, job: Job, event: dict[str, Any]) -> None:
        what = "generation" if job.kind == "generate" else job.kind
        self._finish(job, "cancelled", GenerationCancelled(f"{what} was cancelled"))

    def _on_warning(self, job: Job, event: dict[str, Any]) -> None:
        self._log(f"warning: {event.get('message')}")

    # ------------------------------------------------------------------------------------------- simple requests

    def request(self, request_type: str, on_finished: Callable[[Job], None] | None = None, **fields: Any) -> Job:
        """Send a request whose single answer ends the job (``info``, ``list_models``, ``download``)."""
        job = Job(kind=request_type, on_finished=on_finished)
        return self._submit(job, request_type, **fields)

    def _on_info_info(self, job: Job, event: dict[str, Any]) -> None:
        job.result = event
        self._finish(job, "done")

    def _on_list_models_models(self, job: Job, event: dict[str, Any]) -> None:
        job.result = event
        self._finish(job, "done")

    def _on_download_downloaded(self, job: Job, event: dict[str, Any]) -> None:
        job.result = event.get("path")
        self._finish(job, "done")

    def start_download(
        self,
        model: str,
        on_progress: Callable[[Job, dict], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
    ) -> Job:
        job = Job(kind="download", params=model, on_progress=on_progress, on_finished=on_finished)
        return self._submit(job, "download", model=model)

    def _blocking(self, job: Job, timeout: float | None) -> Any:
        self.wait(job, timeout)
        if job.state == "cancelled":
            raise job.error or GenerationCancelled()
        if job.error is not None:
            raise job.error
        return job.result

    def device_info(self, timeout: float | None = 120) -> dict[str, Any]:
        """Versions and devices as the worker sees them (``devices``: id, name, free/total bytes)."""
        return self._blocking(self.request("info"), timeout)

    def list_models(self, timeout: float | None = 120) -> list[dict[str, Any]]:
        """The model catalogue with local state (cached, size, license, path)."""
        return self._blocking(self.request("list_models"), timeout)["models"]

    def download(self, model: str, timeout: float | None = None) -> str:
        """Download a catalogue model into the cache (verified); returns its local path."""
        return self._blocking(self.start_download(model), timeout)

    def cancel(self, job: Job | None = None, *, force: bool = False) -> None:
        """Ask the worker to stop ``job`` (every job when None) within one sampling step; ``force`` kills the
        worker at once instead (the model must then be loaded again)."""
        jobs = [job] if job is not None else [j for j in self._jobs.values() if not j.finished]
        for item in jobs:
            if item is None or item.finished:
                continue
            item.cancel_requested = True
            if not force and self._worker is not None:
                self._worker.cancel(item.request_id)
        if force and self._worker is not None:
            worker, self._worker = self._worker, None
            worker.kill()
            for item in jobs:
                self._finish(item, "cancelled", GenerationCancelled())
