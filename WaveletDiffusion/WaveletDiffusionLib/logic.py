"""The logic of the *Wavelet Diffusion* module: jobs on the generation worker, results as volume nodes.

Usable without the module's GUI, from Slicer's Python console::

    from WaveletDiffusionLib import WaveletDiffusionLogic
    logic = WaveletDiffusionLogic()
    nodes = logic.generate(model="demo_phantom_64", count=2, seed=7, steps=25, device="cpu")
    t1 = logic.synthesize(model="demo_phantom_synthesize_32", inputs={"t2": t2, "flair": flair, "pd": pd})
    filled = logic.inpaint(model="demo_phantom_inpaint_32", volume=t1, segmentation=seg, segment_id="lesion")
    variations = logic.vary(model="demo_phantom_64", volume=volume, strength=0.3, count=2)

The tasks' results are new volume nodes in the grid of their input (same IJK-to-RAS and dimensions); their
inputs are written to files with their geometry for the worker and never modified.

:meth:`WaveletDiffusionLogic.generate` blocks (keeping the application responsive when an ``idle`` callback
such as ``slicer.app.processEvents`` is given); :meth:`WaveletDiffusionLogic.start_generation` returns at once
and reports through callbacks while someone calls :meth:`WaveletDiffusionLogic.poll` (the module widget does
from a QTimer; a ``schedule`` callback makes the logic arrange it itself).

The heavy work happens in a separate process (:mod:`WaveletDiffusionLib.process`), never in the caller's
thread. Nodes are added to the scene only from complete result files, so a cancelled or crashed job leaves
the scene as it was apart from the volumes that were already finished.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import memory, tasks, volumes
from .parameters import DEFAULT_STEPS, GenerationParameters
from .polling import PolledLogic
from .process import WorkerError, WorkerProcess
from .tasks import TaskInputError, TaskParameters, show_task_result

__all__ = [
    "GenerationCancelled",
    "GenerationError",
    "Job",
    "TaskInputError",
    "TaskParameters",
    "WaveletDiffusionLogic",
    "show_task_result",
]

log = logging.getLogger(__name__)

PREVIEW_NODE_NAME = "WaveletDiffusion preview"


def preset_of_model(model: str) -> str | None:
    """The network preset a catalogue name or file name states (``brats_unet_128_1200k`` -> ``unet-128``)."""
    match = re.search(r"(wavunet|unet)[_-](128|256)", model.replace("\\", "/").rsplit("/", 1)[-1].lower())
    return None if match is None else f"{match.group(1)}-{match.group(2)}"


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


class WaveletDiffusionLogic(PolledLogic):
    """Generation jobs on a persistent worker process, results as scalar volume nodes."""

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

    # ------------------------------------------------------------------------------------------- plumbing

    @property
    def worker(self) -> WorkerProcess:
        """The running worker, started when first needed (and again after a crash)."""
        if self._worker is None or not self._worker.running:
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

    def _submit(self, job: Job, request_type: str, **fields: Any) -> Job:
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
        if job.kind in ("generate", *tasks.TASKS):
            if not self.keep_preview:
                self.remove_preview()
            if job.output_dir is not None and not self.keep_files:
                shutil.rmtree(job.output_dir, ignore_errors=True)
        if job.on_finished is not None:
            job.on_finished(job)

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

    # ------------------------------------------------------------------------------------------- generation

    def start_generation(
        self,
        params: GenerationParameters | None = None,
        *,
        on_progress: Callable[[Job, dict], None] | None = None,
        on_preview: Callable[[Job, Any], None] | None = None,
        on_volume: Callable[[Job, Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
        **overrides: Any,
    ) -> Job:
        """Start generating; returns the :class:`Job` at once. Callbacks run in the thread that polls."""
        params = dataclasses.replace(params or GenerationParameters(), **overrides).validate()
        output_dir = Path(tempfile.mkdtemp(prefix="WaveletDiffusion-"))
        job = Job(
            kind="generate",
            params=params,
            output_dir=output_dir,
            on_progress=on_progress,
            on_preview=on_preview,
            on_volume=on_volume,
            on_finished=on_finished,
        )
        self._log(
            f"generating {params.count} volume(s) with {params.model} on {params.device}: "
            f"{params.sampler}, {params.steps} steps, seed {params.seed}"
        )
        return self._submit(
            job,
            "generate",
            model=params.model,
            preset=params.preset or None,
            device=params.device,
            num=int(params.count),
            seed=int(params.seed),
            sampler=params.sampler,
            steps=int(params.steps),
            batch_size=int(params.batch_size),
            precision=params.precision,
            preview_every=int(params.preview_every) if params.preview else 0,
            output_dir=str(output_dir),
            name=file_name(params.node_name()),  # the worker takes plain file names only; nodes keep the name
        )

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

    def generate(
        self,
        model: str | None = None,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        device: str = "cpu",
        *,
        sampler: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> list[Any]:
        """Generate ``count`` volumes and return their nodes (blocks until done).

        ``sampler`` defaults to the engine's default sampler (UniPC, ``wdmcore.vocabulary.DEFAULT_SAMPLER``) with
        its default step count (25); ``sampler="ancestral", steps=1000`` gives the paper's sampler exactly. A
        sampler named without ``steps`` gets its default step count (:data:`.parameters.DEFAULT_STEPS`). Other
        keywords are :class:`GenerationParameters` fields (``batch_size``, ``precision``, ``preset``,
        ``output_name``, ``preview``). Raises :class:`GenerationError` (or
        :class:`GenerationCancelled`); volumes finished before a failure stay in the scene and are listed
        in the exception's ``nodes``.
        """
        params = GenerationParameters(preview=False)
        fields: dict[str, Any] = {"count": count, "seed": seed, "device": device, **options}
        if model is not None:
            fields["model"] = str(model)
        if sampler is not None:
            fields["sampler"] = sampler
            if steps is None:
                steps = DEFAULT_STEPS.get(sampler, GenerationParameters.steps)
        if steps is not None:
            fields["steps"] = steps
        job = self.start_generation(dataclasses.replace(params, **fields))
        self.wait(job, timeout)
        if job.error is not None:
            job.error.nodes = list(job.nodes)  # type: ignore[attr-defined]
            raise job.error
        return list(job.nodes)

    def _on_generate_preview(self, job: Job, event: dict[str, Any]) -> None:
        path = event.get("path")
        if not path or not Path(path).is_file():
            return
        array = np.load(path)
        affine = event.get("affine")
        if job.grid_node is not None:  # a task's preview is in its input's grid
            affine = volumes.ijk_to_ras(job.grid_node)
        if affine is None:
            affine = np.eye(4)
        node = self.preview_node
        if node is None or self.scene.GetNodeByID(node.GetID()) is None:
            node = volumes.add_volume_from_array(self.scene, array, affine, PREVIEW_NODE_NAME)
            node.SetAttribute("WaveletDiffusion.preview", "1")
            self.preview_node = node
        else:
            volumes.update_volume_node(node, array, affine)
            volumes.apply_display(node, array)
        if job.grid_node is not None:
            tasks.place_like(node, job.grid_node)  # also under the input's transform
        elif node.GetParentTransformNode() is not None:
            node.SetAndObserveTransformNodeID(None)
        job.preview_updates += 1
        if job.on_preview is not None:
            job.on_preview(job, node)

    def _on_generate_result(self, job: Job, event: dict[str, Any]) -> None:
        params: GenerationParameters = job.params
        seed = event.get("seed")
        node = volumes.load_volume_file(self.scene, event["path"], f"{params.node_name()}_seed{seed}")
        expected = event.get("affine")
        if expected is not None and not np.allclose(volumes.ijk_to_ras(node), expected, atol=1e-3):
            log.warning("geometry read from %s differs from the worker's affine; using the worker's", event["path"])
            node.SetIJKToRASMatrix(volumes.vtk_matrix(expected))
        meta = event.get("meta") or {}
        scalars = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
        volumes.set_attributes(
            node,
            {
                **scalars,
                "modelName": meta.get("model"),
                "model": params.model,
                "sampler": meta.get("sampler", params.sampler),
                "steps": meta.get("steps", params.steps),
                "seed": seed,
                "device": meta.get("device", params.device),
                "precision": meta.get("precision", params.precision),
            },
        )
        job.nodes.append(node)
        job.folder_item = volumes.place_in_folder(self.scene, [node], job.folder_name, job.folder_item)
        self._log(f"volume {len(job.nodes)}/{params.count}: {node.GetName()}")
        if job.on_volume is not None:
            job.on_volume(job, node)

    def _on_generate_done(self, job: Job, event: dict[str, Any]) -> None:
        job.fraction = 1.0
        job.result = job.nodes
        self._finish(job, "done")

    # ------------------------------------------------------------------------------------------- other tasks

    def start_synthesize(
        self,
        model: str,
        inputs: dict[str, Any],
        *,
        seed: int = 0,
        sampler: str | None = None,
        steps: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        preview: bool = True,
        preview_every: int = 5,
        on_progress: Callable[[Job, dict], None] | None = None,
        on_preview: Callable[[Job, Any], None] | None = None,
        on_volume: Callable[[Job, Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start synthesising the model's output sequence from ``inputs`` (the card's input names -> volume
        nodes, all on one grid); returns the :class:`Job` at once. Raises :class:`TaskInputError` before
        anything starts when an input is missing or the inputs' grids differ."""
        if not isinstance(inputs, dict) or not inputs:
            raise TaskInputError("give the inputs as a dict of the model's input names -> volume nodes")
        for name, node in inputs.items():
            tasks.check_volume(node, f"input {name!r}")
        tasks.check_same_grid(inputs)
        first = next(iter(inputs.values()))
        params = TaskParameters("synthesize", str(model), seed=seed, sampler=sampler, steps=steps, device=device,
                                precision=precision, preview=preview, preview_every=preview_every,
                                source=first.GetName(),
                                inputs={k: v.GetName() for k, v in inputs.items()}).validate()  # fmt: skip
        job = self._task_job(params, inputs, first, on_progress, on_preview, on_volume, on_finished)

        def export() -> dict[str, Any]:
            files = {}
            for name, node in inputs.items():
                files[name] = tasks.write_volume(self.scene, node, self._input_path(job, name))
            return {"inputs": files}

        return self._submit_task(job, export)

    def start_inpaint(
        self,
        model: str,
        volume: Any,
        *,
        segmentation: Any = None,
        segment_id: str | None = None,
        labelmap: Any = None,
        seed: int = 0,
        steps: int | None = None,
        resample: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        preview: bool = True,
        preview_every: int = 5,
        on_progress: Callable[[Job, dict], None] | None = None,
        on_preview: Callable[[Job, Any], None] | None = None,
        on_volume: Callable[[Job, Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start filling the region of ``volume`` that a segment (``segmentation`` + ``segment_id``, an id or a
        name; the only segment when None) or a ``labelmap`` (non-zero voxels) marks. The mask is rasterised on the
        volume's grid (nearest neighbour); outside it the result equals the volume exactly."""
        tasks.check_volume(volume, "the volume to inpaint")
        if (segmentation is None) == (labelmap is None):
            raise TaskInputError("mark the region to inpaint with a segmentation and segment, or with a labelmap")
        if segmentation is not None:
            segment_id = tasks.segment_id_of(segmentation, segment_id)
            mask = tasks.segment_mask(self.scene, segmentation, segment_id, volume)
            segment = segmentation.GetSegmentation().GetSegment(segment_id)
            mask_label = f"{segmentation.GetName()}: {segment.GetName()}"
        else:
            tasks.check_volume(labelmap, "the labelmap")
            mask = tasks.labelmap_mask(labelmap, volume)
            mask_label = labelmap.GetName()
        if not mask.any():
            raise TaskInputError(
                f"{mask_label} does not cover any voxel of {volume.GetName()!r}; draw the region on this volume"
            )
        params = TaskParameters("inpaint", str(model), seed=seed, steps=steps, resample=resample, device=device,
                                precision=precision, preview=preview, preview_every=preview_every,
                                source=volume.GetName(), inputs={"image": volume.GetName()},
                                mask=mask_label).validate()  # fmt: skip
        job = self._task_job(params, {"image": volume}, volume, on_progress, on_preview, on_volume, on_finished)

        def export() -> dict[str, Any]:
            fields: dict[str, Any] = {
                "image": tasks.write_volume(self.scene, volume, self._input_path(job, "image")),
                "mask": tasks.write_array(
                    self.scene, mask.astype(np.uint8), volumes.ijk_to_ras(volume), self._input_path(job, "mask")
                ),
            }
            if resample is not None:
                fields["resample"] = int(resample)
            return fields

        return self._submit_task(job, export)

    def start_vary(
        self,
        model: str,
        volume: Any,
        *,
        strength: float = 0.5,
        count: int = 1,
        seed: int = 0,
        sampler: str | None = None,
        steps: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        preview: bool = True,
        preview_every: int = 5,
        on_progress: Callable[[Job, dict], None] | None = None,
        on_preview: Callable[[Job, Any], None] | None = None,
        on_volume: Callable[[Job, Any], None] | None = None,
        on_finished: Callable[[Job], None] | None = None,
    ) -> Job:
        """Start making ``count`` variations of ``volume`` (seeds ``seed``, ``seed + 1``...) with an unconditional
        model: ``strength`` in (0, 1] is how far it is pushed into the noise (0.1-0.3 keeps the anatomy).
        ``sampler``/``steps``: as for generation (the engine's fast default when None); only the sampler's steps
        below the chosen noise level run."""
        tasks.check_volume(volume, "the volume to vary")
        params = TaskParameters("vary", str(model), seed=seed, sampler=sampler, steps=steps, device=device,
                                precision=precision, count=count, strength=strength, preview=preview,
                                preview_every=preview_every, source=volume.GetName(),
                                inputs={"image": volume.GetName()}).validate()  # fmt: skip
        job = self._task_job(params, {"image": volume}, volume, on_progress, on_preview, on_volume, on_finished)

        def export() -> dict[str, Any]:
            image = tasks.write_volume(self.scene, volume, self._input_path(job, "image"))
            return {"image": image, "strength": float(strength), "count": int(count)}

        return self._submit_task(job, export)

    def synthesize(
        self,
        model: str,
        inputs: dict[str, Any],
        seed: int = 0,
        sampler: str | None = None,
        steps: int | None = None,
        device: str = "cpu",
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Synthesise the model's output sequence and return its volume node (blocks until done). Other keywords
        as :meth:`start_synthesize`. Raises :class:`TaskInputError`, :class:`GenerationError` or
        :class:`GenerationCancelled`."""
        options.setdefault("preview", False)
        job = self.start_synthesize(model, inputs, seed=seed, sampler=sampler, steps=steps, device=device, **options)
        return self._task_nodes(job, timeout)[0]

    def inpaint(
        self,
        model: str,
        volume: Any,
        segmentation: Any = None,
        segment_id: str | None = None,
        labelmap: Any = None,
        seed: int = 0,
        steps: int | None = None,
        device: str = "cpu",
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Inpaint the region a segment (or a labelmap) marks and return the new volume node (blocks until done).
        Other keywords as :meth:`start_inpaint` (``resample``, ``precision``...)."""
        options.setdefault("preview", False)
        job = self.start_inpaint(model, volume, segmentation=segmentation, segment_id=segment_id, labelmap=labelmap,
                                 seed=seed, steps=steps, device=device, **options)  # fmt: skip
        return self._task_nodes(job, timeout)[0]

    def vary(
        self,
        model: str,
        volume: Any,
        strength: float = 0.5,
        count: int = 1,
        seed: int = 0,
        steps: int | None = None,
        device: str = "cpu",
        timeout: float | None = None,
        **options: Any,
    ) -> list[Any]:
        """Make ``count`` variations of ``volume`` and return their nodes (blocks until done)."""
        options.setdefault("preview", False)
        job = self.start_vary(model, volume, strength=strength, count=count, seed=seed, steps=steps, device=device,
                              **options)  # fmt: skip
        return self._task_nodes(job, timeout)

    def _task_job(self, params, inputs, grid_node, on_progress, on_preview, on_volume, on_finished) -> Job:
        root = Path(tempfile.mkdtemp(prefix=f"WaveletDiffusion-{params.task}-"))
        (root / "inputs").mkdir()
        return Job(kind=params.task, params=params, output_dir=root, inputs=dict(inputs), grid_node=grid_node,
                   on_progress=on_progress, on_preview=on_preview, on_volume=on_volume,
                   on_finished=on_finished)  # fmt: skip

    @staticmethod
    def _input_path(job: Job, name: str) -> Path:
        return job.output_dir / "inputs" / f"{file_name(name, 'input')}.nrrd"

    def _submit_task(self, job: Job, export: Callable[[], dict[str, Any]]) -> Job:
        """Write the inputs (``export`` returns the request's file fields) and send the request. When writing
        fails, the temporary folder goes and the error is raised: the job never started."""
        params: TaskParameters = job.params
        try:
            fields = export()
        except BaseException:
            shutil.rmtree(job.output_dir, ignore_errors=True)
            raise
        self._log(
            f"{params.task} with {params.model} on {params.device}: {params.source}, seed {params.seed}"
            + (f", {params.steps} steps" if params.steps else "")
        )
        request: dict[str, Any] = {
            "model": params.model,
            "device": params.device,
            "seed": int(params.seed),
            "precision": params.precision,
            "preview_every": int(params.preview_every) if params.preview else 0,
            "output_dir": str(job.output_dir / "results"),
            "name": params.task,
            **fields,
        }
        if params.sampler:
            request["sampler"] = params.sampler
        if params.steps is not None:
            request["steps"] = int(params.steps)
        return self._submit(job, params.task, **request)

    def _task_nodes(self, job: Job, timeout: float | None) -> list[Any]:
        self.wait(job, timeout)
        if job.error is not None:
            job.error.nodes = list(job.nodes)  # type: ignore[attr-defined]
            raise job.error
        return list(job.nodes)

    def _on_task_result(self, job: Job, event: dict[str, Any]) -> None:
        """A complete result file of synthesize / inpaint / vary -> a node in the input's exact grid."""
        params: TaskParameters = job.params
        meta = event.get("meta") or {}
        output = meta.get("output")
        output_name = output.get("name") if isinstance(output, dict) else output
        index = int(event.get("index", len(job.nodes)))
        node = volumes.load_volume_file(self.scene, event["path"], params.result_name(index, output_name))
        dims, affine = tasks.grid_of(job.grid_node)
        if tuple(node.GetImageData().GetDimensions()) != dims or not np.allclose(
            volumes.ijk_to_ras(node), affine, atol=tasks.GRID_TOLERANCE_MM
        ):
            self.scene.RemoveNode(node)
            raise GenerationError(f"the {params.task} result {event['path']} is not in the input's grid", "BadResult")
        tasks.place_like(node, job.grid_node)  # the very matrix of the input, not its rounding through a file
        scalars = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
        attributes = {**scalars, **params.attributes(), "modelName": meta.get("model"), "seed": event.get("seed")}
        attributes["steps"] = meta.get("steps", params.steps)
        volumes.set_attributes(node, attributes)
        job.nodes.append(node)
        job.folder_item = volumes.place_in_folder(self.scene, [node], job.folder_name, job.folder_item)
        volumes.set_item_attributes(self.scene, job.folder_item, params.attributes())
        self._log(f"{params.task}: {node.GetName()}")
        if job.on_volume is not None:
            job.on_volume(job, node)

    _on_synthesize_result = _on_inpaint_result = _on_vary_result = _on_task_result
    _on_synthesize_preview = _on_inpaint_preview = _on_vary_preview = _on_generate_preview
    _on_synthesize_done = _on_inpaint_done = _on_vary_done = _on_generate_done

    def memory_warning(self, params: GenerationParameters, devices: list[dict[str, Any]] | None = None) -> str | None:
        """A warning with a remedy when generating with ``params`` would not fit the device's free memory
        (``devices``: the worker's ``info`` list; the CPU's is this machine's available RAM). None when it fits or
        when the network is not known before loading it."""
        preset = params.preset or preset_of_model(params.model)
        if preset is None:
            return None
        available = None
        if params.device == "cpu":
            available = memory.available_ram()
        else:
            device = next((d for d in devices or [] if d.get("id") == params.device), None)
            available = None if device is None else device.get("free_bytes")

        def needed(batch: int) -> float:
            return memory.sampling_bytes(preset, 0, batch, params.precision)

        remedies = []
        if params.batch_size > 1 and available:
            fits = memory.largest_batch(needed, 0.9 * available, params.batch_size)
            if fits:
                remedies.append(f"set the batch size to {fits}")
        if params.precision == "fp32" and params.device.startswith("cuda"):
            remedies.append("choose bf16 precision")
        if params.device != "cpu":
            remedies.append("generate on the CPU (slower, uses the computer's memory)")
        return memory.warning(needed(params.batch_size), available, params.device, remedies=remedies)

    def remove_preview(self) -> None:
        node, self.preview_node = self.preview_node, None
        if node is not None and self.scene.GetNodeByID(node.GetID()) is not None:
            self.scene.RemoveNode(node)
