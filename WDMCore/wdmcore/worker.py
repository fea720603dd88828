"""A persistent generation worker that speaks JSON lines on stdin/stdout.

Run it as ``python -m wdmcore.worker`` (in Slicer: ``PythonSlicer -m wdmcore.worker``). The parent writes one
request per line on the worker's stdin; the worker answers with one event per line on its stdout. Every request
may carry an ``"id"``; the events it causes repeat that id.

Requests::

    {"type": "info"}                                       -> info (versions, CUDA devices with free memory)
    {"type": "list_models"}                                -> models (the catalogue and the local cache)
    {"type": "download", "model": NAME}                    -> progress..., downloaded
    {"type": "load_model", "model": NAME_OR_PATH, "preset": null, "device": "cpu"}
                                                           -> progress (downloads)..., loaded
    {"type": "generate", "num": 2, "seed": 0, "sampler": "unipc", "steps": 10, "batch_size": 1,
     "precision": "auto", "backend": "auto", "preview_every": 5, "output_dir": DIR, "name": "volume"}
                                                           ("quality": "preview" instead of "steps": 6 UniPC
                                                            calls; generate, synthesize and vary)
                                                           -> progress..., preview..., result (one per volume),
                                                              done | cancelled
    {"type": "synthesize", "model": NAME_OR_PATH, "inputs": {"t2": PATH, "flair": PATH, "pd": PATH}, "seed": 0,
     "sampler": null, "steps": null, "preview_every": 5, "output_dir": DIR, "name": "t1_synthesized"}
    {"type": "inpaint", "model": ..., "image": PATH, "mask": PATH, "seed": 0, "steps": null, "resample": 5, ...}
    {"type": "vary", "model": ..., "image": PATH, "strength": 0.5, "count": 1, "seed": 0, "steps": null, ...}
                                                           -> progress..., preview..., result (one per volume,
                                                              in the input's grid), done | cancelled
    The three tasks take "samples": N (default 1) and "keep_samples": false: each volume is then the mean of N
    draws (volume i: seeds seed + i N ... seed + i N + N - 1), written with its uncertainty map
    ``<name>_std.nii.gz`` (the result event's "std_path") and, when kept, the draws ``<name>_sample<j>.nii.gz``
    ("sample_paths").
    {"type": "cancel", "target": JOB_ID_OR_NULL}           (no answer: that job, or the running one, ends with
                                                            cancelled)
    {"type": "shutdown"}                                   -> bye, then the worker exits

Every request that runs a network may carry ``"precision"`` (auto, fp32, bf16, fp16) and ``"backend"`` (auto,
torch, openvino; :mod:`wdmcore.backends`); the worker uses all physical cores it may run on, and each result's
meta records the backend, precision and thread count that ran it.

Events the worker sends on its own: ``ready`` when it has started, ``error`` (``kind``, ``message``,
``detail``) when a request fails (the worker stays alive), ``log`` for warnings.

Outputs: ``name`` is a plain file name (no path separator, ``..`` or absolute path); the results (and, with
``preview_every``, ``preview.npy``) go into ``output_dir`` (a new temporary folder when it is not given). Before
any model is loaded, a request whose outputs would be one of its inputs (image, mask, contrasts, model file, in
any spelling or through a link) is refused, and so is one whose outputs exist, unless it has ``"overwrite":
true`` (:mod:`wdmcore.volumes.outputs`).

Big arrays never travel through the pipe: a preview is written to a ``.npy`` file (replaced atomically) and
its path is sent; each generated volume is written as a NIfTI file whose path, affine, seed and meta are sent.
The tasks' inputs arrive the same way: volume files (NRRD or NIfTI, with their geometry) that the parent wrote
into a folder of its own; their results are in the grid of their inputs and their previews are the current
estimate of the whole output in that grid.

The model stays loaded between requests. ``cancel`` is read by a separate thread that sets a
:class:`threading.Event` the sampler checks before every step, so GPU work stops within one sampling step.
The worker exits on ``shutdown`` or when its stdin closes (the parent went away).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from . import hugepages
from .errors import DataError
from .interrupts import EXIT_CODE, Terminated
from .worker_jobs import (
    PREVIEW_FILE,
    JobProgress,
    empty_cuda_cache,
    environment_info,
    load_any_model,
    num_timesteps,
    task_file_names,
    write_nifti,
)
from .worker_requests import (
    BadRequest,
    check_fields,
    describe_error,
    is_job_id,
    number_field,
    path_field,
    required,
    safe_name,
)

PROTOCOL_VERSION = 1

log = logging.getLogger("wdmcore.worker")


class _Stop(Exception):
    """Ends the request loop."""


class JobCancelled(Exception):
    """Raised from inside a progress callback to stop a download that the parent cancelled."""


class Worker:
    """The request loop. ``out`` receives the events, ``inp`` is read by a background thread."""

    def __init__(self, inp: IO[str] | IO[bytes], out: IO[str]):
        self._inp = inp
        self._out = out
        self._out_lock = threading.Lock()
        self._requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._state_lock = threading.Lock()
        self._current: Any = None  # id of the running job
        self._cancelled_ids: set[Any] = set()
        self._queued: dict[Any, int] = {}  # ids of requests waiting in the queue (how many with each id)
        self.cancel_event = threading.Event()
        self.model: Any = None
        self.model_key: tuple | None = None

    # ------------------------------------------------------------------------------------------- plumbing

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, default=_json_default)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def _read_requests(self) -> None:
        """Reader thread: parse lines, act on cancel/shutdown at once, queue the rest. No line can end it."""
        try:
            for raw in self._inp:
                try:
                    if self._take_line(raw):
                        return
                except Exception as exc:  # a line we did not foresee: report it, keep reading
                    self.send("error", id=None, kind="BadRequest", message=f"unreadable request: {exc}")
        finally:
            # EOF: the parent closed our stdin or died. Stop the running job and leave.
            self._cancel(None)
            self._requests.put(None)

    def _take_line(self, raw: str | bytes) -> bool:
        """Handle one line of stdin; True when it was shutdown."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.send("error", id=None, kind="BadRequest", message=f"a request line is not UTF-8 text ({exc})")
                return False
        raw = raw.strip()
        if not raw:
            return False
        try:
            request = json.loads(raw)
            if not isinstance(request, dict) or not isinstance(request.get("type"), str):
                raise ValueError("a request is a JSON object with a string 'type'")
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands of levels deep
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            self.send("error", id=None, kind="BadRequest", message=f"unreadable request {raw[:200]!r}: {reason}")
            return False
        for key in ("id", "target"):
            if not is_job_id(request.get(key)):
                self.send(
                    "error",
                    id=None,
                    kind="BadRequest",
                    message=f"request {key!r} must be a string, a number or null, got {request.get(key)!r:.200}",
                )
                return False
        kind = request["type"]
        if kind == "cancel":
            self._cancel(request.get("target"))
        elif kind == "shutdown":
            self._cancel(None)
            self._requests.put(request)
            return True
        else:
            with self._state_lock:
                job_id = request.get("id")
                if job_id is not None:
                    self._queued[job_id] = self._queued.get(job_id, 0) + 1
            self._requests.put(request)
        return False

    def _cancel(self, job_id: Any) -> None:
        with self._state_lock:
            if job_id is None or job_id == self._current:
                self.cancel_event.set()
            elif self._queued.get(job_id):
                # Only a job that is waiting in the queue: a cancel for a job that already ended must not
                # cancel a later job that happens to reuse its id.
                self._cancelled_ids.add(job_id)

    def run(self) -> int:
        threading.Thread(target=self._read_requests, name="wdm-worker-stdin", daemon=True).start()
        self.send("ready", protocol=PROTOCOL_VERSION, pid=os.getpid(), python=sys.executable)
        while True:
            request = self._requests.get()
            if request is None:
                return 0
            job_id = request.get("id")
            with self._state_lock:
                self._current = job_id
                if job_id is not None and self._queued.get(job_id):
                    self._queued[job_id] -= 1
                self.cancel_event.clear()
                if job_id is not None and job_id in self._cancelled_ids:
                    self._cancelled_ids.discard(job_id)
                    self.cancel_event.set()
            try:
                self._handle(request)
            except _Stop:
                self.send("bye", id=job_id)
                return 0
            except Terminated:  # SIGTERM during a download (which removes its temporary file first): leave
                self.send("error", id=job_id, kind="Terminated", message="the worker was stopped by SIGTERM")
                return EXIT_CODE
            except BaseException as exc:  # every failure is reported, the worker lives on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                if _is_cancellation(exc):
                    self.send("cancelled", id=job_id)
                else:
                    self.send("error", id=job_id, **describe_error(exc))
            finally:
                with self._state_lock:
                    self._current = None

    def _handle(self, request: dict[str, Any]) -> None:
        kind = request["type"]
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            raise BadRequest(f"unknown request type {kind!r}")
        if kind not in ("ping", "info", "list_models"):  # these read no field: what else they carry is ignored
            check_fields(request)
        handler(request)

    # ------------------------------------------------------------------------------------------- requests

    def _do_shutdown(self, request: dict[str, Any]) -> None:
        raise _Stop

    def _do_ping(self, request: dict[str, Any]) -> None:
        self.send("pong", id=request.get("id"))

    def _do_info(self, request: dict[str, Any]) -> None:
        self.send("info", id=request.get("id"), **environment_info())

    def _do_list_models(self, request: dict[str, Any]) -> None:
        from . import hub

        models = [
            {
                "name": m.name,
                "description": m.description,
                "preset": m.preset,
                "size_bytes": m.size_bytes,
                "size_exact": m.size_exact,
                "license": m.license,
                "cached": m.cached,
                "path": m.path,
                "source": m.source,
            }
            for m in hub.list_models()
        ]
        self.send("models", id=request.get("id"), models=models, cache_dir=hub.cache_dir())

    def _do_download(self, request: dict[str, Any]) -> None:
        from . import hub

        name = required(request, "model")
        path = hub.fetch(name, on_progress=self._forward(request.get("id"), raise_on_cancel=True))
        self.send("downloaded", id=request.get("id"), model=name, path=path)

    def _do_load_model(self, request: dict[str, Any]) -> None:
        self._ensure_model(request)
        card = getattr(self.model, "card", {}) or {}
        self.send(
            "loaded",
            id=request.get("id"),
            model=request["model"],
            device=str(getattr(self.model, "device", request.get("device", "cpu"))),
            image_size=card.get("image_size"),
            num_timesteps=num_timesteps(self.model),
        )

    def _do_generate(self, request: dict[str, Any]) -> None:
        from .tasks.generate import generate

        job_id = request.get("id")
        num = number_field(request, "num", 1)
        seed = number_field(request, "seed", 0)
        batch_size = number_field(request, "batch_size", 1)
        preview_every = number_field(request, "preview_every", 0)
        output_dir, paths, overwrite = self._plan_outputs(
            request, "generate", lambda name: [f"{name}_seed{seed + i}.nii.gz" for i in range(num)], {}, preview_every
        )
        if "model" in request:
            self._ensure_model(request)
        if self.model is None:
            raise BadRequest("no model is loaded: send load_model first, or give 'model' with the request")
        sampler = request.get("sampler") or None  # None: the model's own (a distilled student's sampler and calls)
        steps = request.get("steps")
        precision = request.get("precision") or "auto"
        backend = request.get("backend") or "auto"
        device = request.get("device") or (self.model_key[1] if self.model_key else "cpu")
        _use_all_cores()

        progress = JobProgress(self, job_id, num)
        preview_affine = None
        if preview_every > 0:
            from .volumes.writing import card_geometry

            size = int(self.model.image_size)
            preview_affine = card_geometry(self.model.card, (size, size, size)).affine
        written = []
        for start in range(0, num, batch_size):
            count = min(batch_size, num - start)
            progress.begin_chunk(start, count)
            kwargs: dict[str, Any] = {
                "seed": seed + start,
                "sampler": sampler,
                "batch_size": count,
                "device": device,
                "precision": precision,
                "backend": backend,
                "cancel": self.cancel_event,
                "on_progress": progress.on_progress,
            }
            if steps is not None:
                kwargs["steps"] = steps
            if request.get("quality") is not None:
                kwargs["quality"] = request["quality"]
            if preview_every > 0:
                kwargs["on_preview"] = progress.preview_callback(output_dir, preview_affine)
                kwargs["preview_every"] = preview_every
            volumes = generate(self.model, count, **kwargs)
            for offset, volume in enumerate(volumes):
                path = paths[start + offset]
                written.append(self._write_result(job_id, path, volume, start + offset, num, overwrite=overwrite))
        self.send("done", id=job_id, paths=written, elapsed_s=round(time.perf_counter() - progress.start, 3))

    def _do_synthesize(self, request: dict[str, Any]) -> None:
        from .tasks.synthesize import synthesize

        inputs = required(request, "inputs")  # its type: check_fields
        options = {"sampler": request["sampler"]} if request.get("sampler") else {}
        self._run_task(request, "synthesize", 1, {f"input {key!r}": path for key, path in inputs.items()},
                       lambda index, **kw: synthesize(self.model, inputs, **options, **kw))  # fmt: skip

    def _do_inpaint(self, request: dict[str, Any]) -> None:
        from .tasks.inpaint import inpaint

        image, mask = path_field(request, "image"), path_field(request, "mask")
        resample = number_field(request, "resample", 5)
        self._run_task(request, "inpaint", 1, {"'image'": image, "'mask'": mask},
                       lambda index, **kw: inpaint(self.model, image, mask, resample=resample, **kw))  # fmt: skip

    def _do_vary(self, request: dict[str, Any]) -> None:
        from .tasks.vary import vary

        image = path_field(request, "image")
        count = number_field(request, "count", 1)
        strength = number_field(request, "strength", 0.5)
        options = {"sampler": request["sampler"]} if request.get("sampler") else {}
        strength = float(strength)
        self._run_task(request, "vary", count, {"'image'": image},
                       lambda index, **kw: vary(self.model, image, strength=strength, **options, **kw))  # fmt: skip

    def _run_task(self, request: dict[str, Any], task: str, num: int, inputs: dict[str, str], run) -> None:
        """The common part of synthesize, inpaint and vary: outputs, model, progress, previews, results, done.

        ``inputs``: label -> input file (the first one's grid is the previews' grid). ``run(index, seed=...,
        steps=..., ...)`` returns one GeneratedVolume; volume ``index`` uses seed + index."""
        job_id = request.get("id")
        seed = number_field(request, "seed", 0)
        steps = request.get("steps")
        if steps is not None:
            steps = number_field(request, "steps", 0)
        if request.get("quality") is not None and task == "inpaint":
            raise BadRequest("inpainting has no quality levels (it runs the model's own or RePaint's steps); leave "
                             "'quality' out and set 'steps' instead")  # fmt: skip
        preview_every = number_field(request, "preview_every", 0)
        precision = request.get("precision") or "auto"
        backend = request.get("backend") or "auto"
        samples = number_field(request, "samples", 1)
        keep_samples = bool(request.get("keep_samples", False))  # its type: check_fields
        progress = JobProgress(self, job_id, num, task=task)
        progress.started()  # the parent knows at once that the job runs (loading the model can take a while)

        def file_names(name: str) -> list[str]:
            return [f for names in task_file_names(name, num, samples, keep_samples) for f in names]

        output_dir, flat, overwrite = self._plan_outputs(request, task, file_names, inputs, preview_every)
        per_volume = len(flat) // num
        paths = [flat[i * per_volume : (i + 1) * per_volume] for i in range(num)]
        grid_path = next(iter(inputs.values()))
        self._ensure_model(request)
        _use_all_cores()
        written = []
        for index in range(num):
            progress.begin_chunk(index, 1)
            kwargs: dict[str, Any] = {
                "seed": seed + index * samples,
                "device": str(self.model.device),
                "precision": precision,
                "backend": backend,
                "cancel": self.cancel_event,
                "on_progress": progress.on_progress,
            }
            if steps is not None:
                kwargs["steps"] = steps
            if request.get("quality") is not None:
                kwargs["quality"] = request["quality"]
            if preview_every > 0:
                kwargs["on_preview"] = progress.preview_callback(output_dir, lambda: _file_affine(grid_path))
                kwargs["preview_every"] = preview_every
            if samples > 1 or keep_samples:
                kwargs.update(samples=samples, keep_samples=keep_samples)
            volume = run(index, **kwargs)
            extra: dict[str, Any] = {"task": task}
            files = iter(paths[index][1:])
            if volume.std is not None:
                extra["std_path"] = str(write_nifti(next(files), volume.std, volume.affine, overwrite=overwrite))
            if volume.draws is not None:
                extra["sample_paths"] = [
                    str(write_nifti(next(files), draw, volume.affine, overwrite=overwrite)) for draw in volume.draws
                ]
            mean_path = paths[index][0]
            written.append(self._write_result(job_id, mean_path, volume, index, num, overwrite=overwrite, **extra))
        self.send("done", id=job_id, paths=written, elapsed_s=round(time.perf_counter() - progress.start, 3))

    # ------------------------------------------------------------------------------------------- helpers

    def _plan_outputs(
        self, request: dict[str, Any], task: str, file_names, inputs: dict[str, str], preview_every: int
    ) -> tuple[Path, list[Path], bool]:
        """(output folder, result paths, overwrite) of a request, checked before any model is loaded: ``name`` is a
        plain file name, no output (results, the preview file) is an input, the model file or, unless the request
        says ``"overwrite": true``, an existing file, and the folder can be written. ``file_names(name)``: the
        results' file names. Without ``output_dir`` the results go to a new temporary folder."""
        from .volumes.outputs import check_outputs, existing_file, plain_name
        from .volumes.writing import ensure_output_folder

        overwrite = request.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise BadRequest(f"'overwrite' must be true or false, got {overwrite!r:.100}")
        name = safe_name(plain_name(request.get("name") or ("volume" if task == "generate" else task), "'name'"))
        value = request.get("output_dir")  # text or null: check_fields
        folder = Path(value) if value else Path(tempfile.mkdtemp(prefix=f"wdm-{task}-"))
        try:  # a file, or a folder that cannot be made, is named as the request's field
            ensure_output_folder(folder, create=False)
        except DataError as exc:
            raise BadRequest(f"'output_dir': {exc}") from None
        results = [folder / file_name for file_name in file_names(name)]
        model = request.get("model") or (self.model_key[0] if self.model_key else None)
        check_outputs(
            [*results, *([folder / PREVIEW_FILE] if preview_every > 0 else [])],
            inputs={**inputs, "'model'": existing_file(model)},
            overwrite=overwrite,
            overwrite_hint='send "overwrite": true to replace them',
            rename_hint="choose another 'output_dir' or 'name'",
        )
        ensure_output_folder(folder)  # previews are written into it from the first step
        return folder, results, overwrite

    def _write_result(
        self, job_id: Any, path: Path, volume, index: int, num: int, *, overwrite: bool, **extra: Any
    ) -> str:
        """Write one finished volume (atomically) and report it with a "result" event; returns its path."""
        write_nifti(path, volume.array, volume.affine, overwrite=overwrite)
        self.send("result", id=job_id, **extra, index=index, num=num, path=path, affine=volume.affine,
                  seed=volume.seed, shape=list(volume.array.shape), meta=dict(volume.meta))  # fmt: skip
        return str(path)

    def _forward(self, job_id: Any, raise_on_cancel: bool = False):
        def forward(event: dict[str, Any]) -> None:
            if raise_on_cancel and self.cancel_event.is_set():
                raise JobCancelled("cancelled")
            self.send(event.get("event", "progress"), id=job_id, **{k: v for k, v in event.items() if k != "event"})

        return forward

    def _ensure_model(self, request: dict[str, Any]) -> None:
        ref = required(request, "model")
        device = request.get("device") or "cpu"
        preset = request.get("preset") or None
        key = (str(ref), device, preset)
        if self.model is not None and self.model_key == key:
            return
        self.model = None  # free the previous one first (GPU memory)
        empty_cuda_cache()
        self.model = load_any_model(ref, preset=preset, device=device, on_progress=self._forward(request.get("id")))
        self.model_key = key


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, JobCancelled):
        return True
    try:
        from .samplers import Cancelled
    except ImportError:
        return False
    return isinstance(exc, Cancelled)


def _file_affine(path: str) -> Any:
    """The voxel-to-RAS affine in a volume file's header (the grid a task's output is in)."""
    from .volumes.reading import read_header

    return read_header(path).affine


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(value)


def _use_all_cores() -> int:
    """PyTorch (and the OpenVINO backend, which takes the same count) on all physical cores of this process's
    affinity: one pool computes at a time, and Slicer's own process is idle while the worker runs, so no core
    is asked for twice. The count is in every result's meta (``threads``)."""
    from .backends import configure_threads

    return configure_threads()


def main(argv: list[str] | None = None) -> int:
    """Serve requests until shutdown or EOF. The protocol owns the real stdout; prints go to stderr."""
    hugepages.enable_for_this_process()  # before any large tensor exists
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    # Anything else written to stdout (a library's print, a C extension) must not corrupt the protocol.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    # Bytes, decoded line by line: one line that is not UTF-8 is answered with an error, not a dead reader.
    inp = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - lives as long as the worker
    return Worker(inp, protocol_out).run()


if __name__ == "__main__":
    sys.exit(main())
