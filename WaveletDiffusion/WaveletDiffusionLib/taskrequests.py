"""Synthesize, inpaint and vary on the worker: the inputs checked and written to files with their geometry, the
request, and each result placed in its input's exact grid. The inputs are never modified."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from WaveletDiffusionCommonLib import volumes

from . import tasks
from .generation import GenerationRequests
from .jobs import GenerationError, Job, file_name
from .tasks import TaskInputError, TaskParameters


class TaskRequests(GenerationRequests):
    """The tasks beyond generating; their previews and ends are handled as generation's."""

    def start_synthesize(
        self,
        model: str,
        inputs: dict[str, Any],
        *,
        seed: int = 0,
        samples: int = 1,
        sampler: str | None = None,
        steps: int | None = None,
        device: str = "cpu",
        precision: str = "auto",
        backend: str = "auto",
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
        params = TaskParameters("synthesize", str(model), seed=seed, samples=samples, sampler=sampler, steps=steps,
                                device=device, precision=precision, backend=backend, preview=preview,
                                preview_every=preview_every, source=first.GetName(),
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
        samples: int = 1,
        steps: int | None = None,
        resample: int | None = None,
        device: str = "cpu",
        precision: str = "auto",
        backend: str = "auto",
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
        params = TaskParameters("inpaint", str(model), seed=seed, samples=samples, steps=steps, resample=resample,
                                device=device, precision=precision, backend=backend, preview=preview,
                                preview_every=preview_every, source=volume.GetName(),
                                inputs={"image": volume.GetName()}, mask=mask_label).validate()  # fmt: skip
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
        samples: int = 1,
        sampler: str | None = None,
        steps: int | None = None,
        device: str = "cpu",
        precision: str = "auto",
        backend: str = "auto",
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
        params = TaskParameters("vary", str(model), seed=seed, samples=samples, sampler=sampler, steps=steps,
                                device=device, precision=precision, backend=backend, count=count, strength=strength,
                                preview=preview, preview_every=preview_every, source=volume.GetName(),
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
            self.require_dependencies()  # before any file is written (``_submit`` asks again, at no cost)
            self.require_backend(params.backend)
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
            "backend": params.backend,
            "preview_every": int(params.preview_every) if params.preview else 0,
            "output_dir": str(job.output_dir / "results"),
            "name": params.task,
            **fields,
        }
        if params.sampler:
            request["sampler"] = params.sampler
        if params.steps is not None:
            request["steps"] = int(params.steps)
        if params.samples > 1:
            request["samples"] = int(params.samples)
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
        placed = [node]
        if event.get("std_path"):
            std = volumes.load_volume_file(self.scene, event["std_path"], f"{node.GetName()} uncertainty")
            tasks.place_like(std, job.grid_node)
            volumes.set_attributes(std, {**attributes, "statistic": "per-voxel std of the draws"})
            tasks.show_uncertainty(self.scene, node, std, str(meta.get("intensity") or ""))
            job.uncertainty_nodes.append(std)
            placed.append(std)
        job.folder_item = volumes.place_in_folder(
            self.scene, placed, job.folder_name, job.folder_item, beside=job.grid_node
        )
        volumes.set_item_attributes(self.scene, job.folder_item, params.attributes())
        self._log(f"{params.task}: {node.GetName()}")
        if job.on_volume is not None:
            job.on_volume(job, node)

    _on_synthesize_result = _on_inpaint_result = _on_vary_result = _on_task_result
    _on_synthesize_preview = _on_inpaint_preview = _on_vary_preview = GenerationRequests._on_generate_preview
    _on_synthesize_done = _on_inpaint_done = _on_vary_done = GenerationRequests._on_generate_done
