"""The worker's job machinery: whole-job progress and previews, model loading, result files, the environment.

:class:`JobProgress` turns the engine's per-chunk progress into one job's progress with its own ETA and writes
the job's previews (``preview.npy`` in the output folder, replaced atomically); :func:`write_nifti` writes a
finished volume; :func:`environment_info` is the ``info`` answer.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

PREVIEW_FILE = "preview.npy"  # in the request's output_dir, replaced at every preview


class JobProgress:
    """Turns the engine's per-chunk progress into whole-job progress with its own ETA, and writes previews."""

    def __init__(self, worker: Any, job_id: Any, num: int, task: str = "generate"):
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


def num_timesteps(model: Any) -> int | None:
    diffusion = getattr(model, "diffusion", None)
    return getattr(diffusion, "num_timesteps", None)


def empty_cuda_cache() -> None:
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
    from .backends import default_threads, native_bf16
    from .backends.choice import openvino_installed

    info["cpu"] = {"threads": default_threads(), "native_bf16": native_bf16(), "openvino": openvino_installed()}
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


def task_file_names(name: str, num: int, samples: int = 1, keep_samples: bool = False) -> list[list[str]]:
    """The file names of each of the ``num`` results of a synthesize / inpaint / vary request: the volume (the mean
    of ``samples`` draws), then with ``samples`` > 1 its uncertainty map ``<volume>_std``, then with
    ``keep_samples`` every draw ``<volume>_sample<i>``."""
    stems = [name] if num == 1 else [f"{name}_{i + 1}" for i in range(num)]
    files = []
    for stem in stems:
        names = [f"{stem}.nii.gz"]
        if samples > 1:
            names.append(f"{stem}_std.nii.gz")
        if keep_samples:
            names.extend(f"{stem}_sample{i}.nii.gz" for i in range(samples))
        files.append(names)
    return files


def write_nifti(path: str | os.PathLike, array: Any, affine: Any, *, overwrite: bool = True) -> Path:
    """Write an (i, j, k) array with its voxel-to-RAS affine as NIfTI (nibabel, or SimpleITK as in Slicer's
    Python) under a temporary name, renamed into place when complete; ``overwrite=False`` refuses an existing
    file."""
    import numpy as np

    from .volumes.writing import save_volume

    array = np.asarray(array, dtype=np.float32)
    return save_volume(array, np.asarray(affine, dtype=np.float64), path, sidecar=False, overwrite=overwrite)
