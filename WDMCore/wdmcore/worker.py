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
    {"type": "generate", "num": 2, "seed": 0, "sampler": "unipc", "steps": 25, "batch_size": 1,
     "precision": "fp32", "preview_every": 5, "output_dir": DIR, "name": "volume"}
                                                           -> progress..., preview..., result (one per volume),
                                                              done | cancelled
    {"type": "synthesize", "model": NAME_OR_PATH, "inputs": {"t2": PATH, "flair": PATH, "pd": PATH}, "seed": 0,
     "sampler": null, "steps": null, "preview_every": 5, "output_dir": DIR, "name": "t1_synthesized"}
    {"type": "inpaint", "model": ..., "image": PATH, "mask": PATH, "seed": 0, "steps": null, "resample": 5, ...}
    {"type": "vary", "model": ..., "image": PATH, "strength": 0.5, "count": 1, "seed": 0, "steps": null, ...}
                                                           -> progress..., preview..., result (one per volume,
                                                              in the input's grid), done | cancelled
    {"type": "cancel", "target": JOB_ID_OR_NULL}           (no answer: that job, or the running one, ends with
                                                            cancelled)
    {"type": "shutdown"}                                   -> bye, then the worker exits

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
import traceback
from pathlib import Path
from typing import IO, Any

from . import hugepages
from .errors import WDMError
from .interrupts import EXIT_CODE, Terminated
from .vocabulary import MAX_SEED

PROTOCOL_VERSION = 1
PREVIEW_FILE = "preview.npy"  # in the request's output_dir, replaced at every preview

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
            if not _is_job_id(request.get(key)):
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
            raise _BadRequest(f"unknown request type {kind!r}")
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

        name = _required(request, "model")
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
            num_timesteps=_num_timesteps(self.model),
        )

    def _do_generate(self, request: dict[str, Any]) -> None:
        from .tasks.generate import DEFAULT_SAMPLER, generate

        job_id = request.get("id")
        num = _number_field(request, "num", 1)
        seed = _number_field(request, "seed", 0)
        batch_size = _number_field(request, "batch_size", 1)
        preview_every = _number_field(request, "preview_every", 0)
        output_dir, paths, overwrite = self._plan_outputs(
            request, "generate", lambda name: [f"{name}_seed{seed + i}.nii.gz" for i in range(num)], {}, preview_every
        )
        if "model" in request:
            self._ensure_model(request)
        if self.model is None:
            raise _BadRequest("no model is loaded: send load_model first, or give 'model' with the request")
        sampler = request.get("sampler") or DEFAULT_SAMPLER
        steps = request.get("steps")
        precision = request.get("precision") or "fp32"
        device = request.get("device") or (self.model_key[1] if self.model_key else "cpu")

        progress = _JobProgress(self, job_id, num)
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
                "cancel": self.cancel_event,
                "on_progress": progress.on_progress,
            }
            if steps is not None:
                kwargs["steps"] = steps
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

        inputs = _required(request, "inputs")  # its type: check_fields
        options = {"sampler": request["sampler"]} if request.get("sampler") else {}
        self._run_task(request, "synthesize", 1, {f"input {key!r}": path for key, path in inputs.items()},
                       lambda index, **kw: synthesize(self.model, inputs, **options, **kw))  # fmt: skip

    def _do_inpaint(self, request: dict[str, Any]) -> None:
        from .tasks.inpaint import inpaint

        image, mask = _path_field(request, "image"), _path_field(request, "mask")
        resample = _number_field(request, "resample", 5)
        self._run_task(request, "inpaint", 1, {"'image'": image, "'mask'": mask},
                       lambda index, **kw: inpaint(self.model, image, mask, resample=resample, **kw))  # fmt: skip

    def _do_vary(self, request: dict[str, Any]) -> None:
        from .tasks.vary import vary

        image = _path_field(request, "image")
        count = _number_field(request, "count", 1)
        strength = _number_field(request, "strength", 0.5)
        options = {"sampler": request["sampler"]} if request.get("sampler") else {}
        strength = float(strength)
        self._run_task(request, "vary", count, {"'image'": image},
                       lambda index, **kw: vary(self.model, image, strength=strength, **options, **kw))  # fmt: skip

    def _run_task(self, request: dict[str, Any], task: str, num: int, inputs: dict[str, str], run) -> None:
        """The common part of synthesize, inpaint and vary: outputs, model, progress, previews, results, done.

        ``inputs``: label -> input file (the first one's grid is the previews' grid). ``run(index, seed=...,
        steps=..., ...)`` returns one GeneratedVolume; volume ``index`` uses seed + index."""
        job_id = request.get("id")
        seed = _number_field(request, "seed", 0)
        steps = request.get("steps")
        if steps is not None:
            steps = _number_field(request, "steps", 0)
        preview_every = _number_field(request, "preview_every", 0)
        precision = request.get("precision") or "fp32"
        progress = _JobProgress(self, job_id, num, task=task)
        progress.started()  # the parent knows at once that the job runs (loading the model can take a while)

        def file_names(name: str) -> list[str]:
            return [f"{name}.nii.gz"] if num == 1 else [f"{name}_{i + 1}.nii.gz" for i in range(num)]

        output_dir, paths, overwrite = self._plan_outputs(request, task, file_names, inputs, preview_every)
        grid_path = next(iter(inputs.values()))
        self._ensure_model(request)
        if precision != "fp32":
            self.send("log", id=job_id, message=f"{task} runs in fp32 (precision {precision} applies to generate)")
        written = []
        for index in range(num):
            progress.begin_chunk(index, 1)
            kwargs: dict[str, Any] = {
                "seed": seed + index,
                "device": str(self.model.device),
                "cancel": self.cancel_event,
                "on_progress": progress.on_progress,
            }
            if steps is not None:
                kwargs["steps"] = steps
            if preview_every > 0:
                kwargs["on_preview"] = progress.preview_callback(output_dir, lambda: _file_affine(grid_path))
                kwargs["preview_every"] = preview_every
            volume = run(index, **kwargs)
            written.append(self._write_result(job_id, paths[index], volume, index, num, overwrite=overwrite, task=task))
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
            raise _BadRequest(f"'overwrite' must be true or false, got {overwrite!r:.100}")
        name = _safe_name(plain_name(request.get("name") or ("volume" if task == "generate" else task), "'name'"))
        folder = request.get("output_dir")
        if folder is not None and not isinstance(folder, str):
            raise _BadRequest(f"'output_dir' must be a folder path, got {folder!r:.100}")
        folder = _output_folder(request, task)  # a file or an uncreatable folder is refused in words
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
        ref = _required(request, "model")
        device = request.get("device") or "cpu"
        preset = request.get("preset") or None
        key = (str(ref), device, preset)
        if self.model is not None and self.model_key == key:
            return
        self.model = None  # free the previous one first (GPU memory)
        _empty_cuda_cache()
        self.model = load_any_model(ref, preset=preset, device=device, on_progress=self._forward(request.get("id")))
        self.model_key = key


class _BadRequest(Exception):
    """A request that cannot be served as written."""


class _JobProgress:
    """Turns the engine's per-chunk progress into whole-job progress with its own ETA, and writes previews."""

    def __init__(self, worker: Worker, job_id: Any, num: int, task: str = "generate"):
        self.worker = worker
        self.job_id = job_id
        self.num = num
        self.task = task
        self.start = time.perf_counter()
        self.chunk_start = 0
        self.chunk_count = 1
        self.step = 0

    def started(self) -> None:
        """Progress 0 before any work (model loading included), so that the parent sees the job at once."""
        self.worker.send("progress", id=self.job_id, task=self.task, done=0, total=1000, fraction=0.0, step=0,
                         volume=0, num=self.num, elapsed_s=0.0, eta_s=None)  # fmt: skip

    def begin_chunk(self, start: int, count: int) -> None:
        self.chunk_start = start
        self.chunk_count = count

    def on_progress(self, event: dict[str, Any]) -> None:
        if event.get("event", "progress") != "progress":
            self.worker.send(event["event"], id=self.job_id, **{k: v for k, v in event.items() if k != "event"})
            return
        done, total = event.get("done"), event.get("total")
        if not total:
            return
        chunk_fraction = min(1.0, float(done) / float(total))
        self.step = int(done) // max(1, self.chunk_count)
        fraction = (self.chunk_start + chunk_fraction * self.chunk_count) / self.num
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.worker.send(
            "progress",
            id=self.job_id,
            task=self.task,
            done=round(fraction * 1000),
            total=1000,
            fraction=round(fraction, 5),
            step=self.step,
            steps=event.get("steps", int(total) // max(1, self.chunk_count)),
            volume=self.chunk_start,
            num=self.num,
            elapsed_s=round(elapsed, 3),
            eta_s=None if eta is None else round(eta, 2),
        )

    def preview_callback(self, output_dir: Path, affine: Any):
        """``on_preview(index, image)`` of :func:`wdmcore.tasks.generate.generate` (and of the other tasks): the
        current x0 estimate of volume ``index`` of this chunk, written to ``preview.npy`` (replaced atomically) and
        announced. ``affine``: the preview's voxel-to-RAS affine, or a callable giving it (read once, when needed)."""
        path = output_dir / PREVIEW_FILE
        known: list[Any] = []

        def on_preview(index: int, image: Any) -> None:
            import numpy as np

            if not known:
                known.append(affine() if callable(affine) else affine)
            tmp = path.with_name(f".preview-{os.getpid()}.npy")
            np.save(tmp, np.asarray(image, dtype=np.float32))
            os.replace(tmp, path)
            self.worker.send(
                "preview",
                id=self.job_id,
                task=self.task,
                path=path,
                affine=known[0],
                volume=self.chunk_start + int(index),
                step=self.step,
            )

        return on_preview


# ------------------------------------------------------------------------------------------- model loading


def load_any_model(ref: str, *, preset: str | None, device: str, on_progress=None):
    """A catalogue name (downloaded when needed) or a checkpoint path, loaded on ``device``."""
    from .tasks.generate import resolve_device, resolve_model

    return resolve_model(ref, preset=preset, device=resolve_device(device), on_progress=on_progress)


def _num_timesteps(model: Any) -> int | None:
    diffusion = getattr(model, "diffusion", None)
    return getattr(diffusion, "num_timesteps", None)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- environment


def environment_info() -> dict[str, Any]:
    """Versions and compute devices, as the Slicer module shows them."""
    import platform

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "devices": []}
    try:
        import torch
    except ImportError as exc:
        info["torch"] = None
        info["torch_error"] = str(exc)
        return info
    info["torch"] = torch.__version__
    info["cuda_build"] = torch.version.cuda
    devices = [{"id": "cpu", "name": platform.processor() or "CPU", "kind": "cpu"}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            try:
                free, total = torch.cuda.mem_get_info(index)
            except RuntimeError:
                free, total = None, props.total_memory
            devices.insert(
                index,
                {
                    "id": f"cuda:{index}",
                    "kind": "cuda",
                    "name": props.name,
                    "total_bytes": total,
                    "free_bytes": free,
                },
            )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.insert(0, {"id": "mps", "kind": "mps", "name": "Apple GPU (MPS)"})
    info["devices"] = devices
    try:
        from .version import __version__

        info["wdmcore"] = __version__
    except ImportError:
        info["wdmcore"] = None
    return info


# ------------------------------------------------------------------------------------------- files


def write_nifti(path: str | os.PathLike, array: Any, affine: Any, *, overwrite: bool = True) -> Path:
    """Write an (i, j, k) array with its voxel-to-RAS affine as NIfTI (nibabel, or SimpleITK as in Slicer's
    Python) under a temporary name, renamed into place when complete; ``overwrite=False`` refuses an existing
    file."""
    import numpy as np

    from .volumes.writing import save_volume

    array = np.asarray(array, dtype=np.float32)
    return save_volume(array, np.asarray(affine, dtype=np.float64), path, sidecar=False, overwrite=overwrite)


# ------------------------------------------------------------------------------------------- errors


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` event fields for an exception: a kind the parent can act on, and a message."""
    name = type(exc).__name__
    message = str(exc) or name
    if "OutOfMemory" in name or "out of memory" in message.lower():
        kind = "OutOfMemory"
        message = (
            f"{message.splitlines()[0]}. Generate fewer volumes at once (batch size 1), use half precision, "
            "or choose the CPU."
        )
    elif isinstance(exc, _BadRequest):
        kind = "BadRequest"
    elif isinstance(exc, ModuleNotFoundError):
        kind = "MissingPackage"
        message = f"{message}. Install the missing package into this Python ({sys.executable})."
    elif isinstance(exc, OSError) and not isinstance(exc, WDMError):
        # A file the request names cannot be used: say which and why, in words rather than an errno.
        kind = "FileError"
        where = f" {exc.filename}" if exc.filename else " a file"
        reason = (exc.strerror or message).lower()
        message = f"cannot use{where} ({reason}); check the paths of the request and their permissions"
    else:
        kind = name
    return {"kind": kind, "message": message, "detail": "".join(traceback.format_exception(exc))[-4000:]}


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, JobCancelled):
        return True
    try:
        from .samplers import Cancelled
    except ImportError:
        return False
    return isinstance(exc, Cancelled)


def _required(request: dict[str, Any], key: str) -> Any:
    if request.get(key) in (None, ""):
        raise _BadRequest(f"request {request.get('type')!r} needs {key!r}")
    return request[key]


def _path_field(request: dict[str, Any], key: str) -> str:
    value = _required(request, key)
    if not isinstance(value, str):
        raise _BadRequest(f"{key!r} must be a volume file path, got {value!r:.100}")
    return value


def _file_affine(path: str) -> Any:
    """The voxel-to-RAS affine in a volume file's header (the grid a task's output is in)."""
    from .volumes.reading import read_header

    return read_header(path).affine


def _is_job_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _number_field(request: dict[str, Any], key: str, default: Any) -> Any:
    """A number field (``default`` when absent), checked against its row of :data:`wdmcore.limits.LIMITS`."""
    from .limits import LIMITS, problem

    value = request.get(key, default)
    message = problem(key, value, repr(key))
    if message:
        raise _BadRequest(message)
    return int(value) if LIMITS[key].whole else float(value)


# What each text field of a request must be, in the words an error message uses. null means "not given".
TEXT_FIELDS = {
    "model": "a catalogue model name or the path of a checkpoint file",
    "preset": "a network preset name such as unet-128, or null to detect it",
    "device": "a device name: auto, cpu, cuda, cuda:N or mps",
    "sampler": "a sampler name (ancestral, ddim, dpm++2m, dpm++2m-sde or unipc), or null for the default",
    "precision": "fp32, bf16 or fp16",
    "output_dir": "the path of a folder for the results, or null for a new temporary folder",
    "name": "a file name for the results (text), or null for the default",
    "image": "the path of a volume file",
    "mask": "the path of a volume file",
}
# Number fields, checked against wdmcore.limits.LIMITS under the same names.
NUMBER_FIELDS = ("num", "count", "seed", "steps", "batch_size", "preview_every", "strength", "resample")


def check_fields(request: dict[str, Any]) -> None:
    """Every known field of a request has the type it must have, before any work: a wrong one is refused with a
    sentence that names the field and says what it must be (never a Python exception's text)."""
    from .limits import problem
    from .vocabulary import PRECISION_NAMES, SAMPLER_NAMES

    for key, what in TEXT_FIELDS.items():
        value = request.get(key)
        if value is not None and not isinstance(value, str):
            raise _BadRequest(f"{key!r} must be {what}, got {value!r:.100}")
    if request.get("sampler") not in (None, "", *SAMPLER_NAMES):
        raise _BadRequest(f"'sampler' must be {TEXT_FIELDS['sampler']}, got {request['sampler']!r:.100}")
    if request.get("precision") not in (None, "", *PRECISION_NAMES):
        raise _BadRequest(f"'precision' must be {TEXT_FIELDS['precision']}, got {request['precision']!r:.100}")
    for key in NUMBER_FIELDS:
        if key in request and not (key == "steps" and request[key] is None):  # steps null: the default
            message = problem(key, request[key], repr(key))
            if message:
                raise _BadRequest(message)
    first = request.get("seed", 0)
    count = request.get("num", request.get("count", 1))
    if first + count - 1 > MAX_SEED:
        raise _BadRequest(f"'seed' + the number of volumes - 1 must stay within 0 to {MAX_SEED}, got seed {first}")
    inputs = request.get("inputs")
    if "inputs" in request and (
        not isinstance(inputs, dict) or not inputs or not all(isinstance(v, str) and v for v in inputs.values())
    ):
        raise _BadRequest(
            f'\'inputs\' must be an object of input name -> volume file path, e.g. {{"t2": "/data/t2.nrrd"}}, '
            f"got {inputs!r:.100}"
        )


def _output_folder(request: dict[str, Any], task: str) -> Path:
    """The request's ``output_dir``, created when needed, or a new temporary folder."""
    value = request.get("output_dir")
    if not value:
        return Path(tempfile.mkdtemp(prefix=f"wdm-{task}-"))
    folder = Path(value)
    if folder.exists() and not folder.is_dir():
        raise _BadRequest(f"'output_dir' {value!r:.200} is a file, not a folder; choose a folder for the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = (exc.strerror or "not allowed").lower()
        raise _BadRequest(
            f"'output_dir' {value!r:.200} cannot be created ({reason}); choose a folder you can write to"
        ) from None
    return folder


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip("._")
    return cleaned or "volume"


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(value)


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
