"""Generating volumes on the worker: the ``generate`` request, its preview volume, its results as volume nodes,
and the memory it will need."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from WaveletDiffusionCommonLib import memory, volumes

from . import taskpanel, tasks
from .client import WorkerClient
from .jobs import Job, file_name
from .parameters import DEFAULT_STEPS, GenerationParameters, sampler_presets

log = logging.getLogger(__name__)

PREVIEW_NODE_NAME = "WaveletDiffusion preview"


def preset_of_model(model: str) -> str | None:
    """The network preset a catalogue name or file name states (``brats_unet_128_1200k`` -> ``unet-128``)."""
    match = re.search(r"(wavunet|unet)[_-](128|256)", model.replace("\\", "/").rsplit("/", 1)[-1].lower())
    return None if match is None else f"{match.group(1)}-{match.group(2)}"


class GenerationRequests(WorkerClient):
    """Generation on the worker; results and previews as scalar volume nodes."""

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
        self.require_dependencies()  # PyTorch first, then the backend's own packages; before the folder is made
        self.require_backend(params.backend)
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
            f"{params.sampler}, {params.steps} steps, seed {params.seed}, backend {params.backend}, "
            f"precision {params.precision}"
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
            backend=params.backend,
            preview_every=int(params.preview_every) if params.preview else 0,
            output_dir=str(output_dir),
            name=file_name(params.node_name()),  # the worker takes plain file names only; nodes keep the name
        )

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
        its default step count (10 for unipc), and for a distilled student to the sampler and calls of its card
        (the engine's rule); ``sampler="ancestral", steps=1000`` gives the paper's sampler exactly. A
        sampler named without ``steps`` gets its default step count (:data:`.parameters.DEFAULT_STEPS`). Other
        keywords are :class:`GenerationParameters` fields (``batch_size``, ``precision``, ``backend``, ``preset``,
        ``output_name``, ``preview``). Raises :class:`GenerationError` (or
        :class:`GenerationCancelled`); volumes finished before a failure stay in the scene and are listed
        in the exception's ``nodes``.
        """
        params = GenerationParameters(preview=False)
        fields: dict[str, Any] = {"count": count, "seed": seed, "device": device, **options}
        if model is not None:
            fields["model"] = str(model)
        # The engine's rule (wdmcore.models.model.WDMModel.sampling_defaults): no sampler means the model's own (a
        # student's card's); no steps means that sampler's default, for a student's sampler its card's calls.
        card = taskpanel.model_card(fields.get("model", params.model), catalogue=taskpanel.catalogue_cards())
        fast = sampler_presets(card)["fast"]
        sampler = sampler or fast["sampler"]
        if steps is None:
            steps = (
                fast["steps"] if sampler == fast["sampler"] else DEFAULT_STEPS.get(sampler, GenerationParameters.steps)
            )
        fields.update(sampler=sampler, steps=steps)
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

    def memory_warning(self, params: GenerationParameters, devices: list[dict[str, Any]] | None = None) -> str | None:
        """A warning with a remedy when generating with ``params`` would not fit the device's free memory
        (``devices``: the worker's ``info`` list; the CPU's is this machine's available RAM). None when it fits or
        when the network is not known before loading it."""
        preset = params.preset or preset_of_model(params.model)
        if preset is None:
            return None
        return _sampling_warning(params.device, params.precision, params.batch_size, devices,
                                 lambda batch: memory.sampling_bytes(preset, 0, batch, params.precision))  # fmt: skip

    def task_memory_warning(
        self,
        task: str,
        model: str,
        card: dict[str, Any],
        *,
        device: str = "cpu",
        precision: str = "auto",
        grid: tuple[int, ...] | None = None,
        preset: str | None = None,
        devices: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """:meth:`memory_warning` for synthesize, inpaint and vary: the network of ``preset`` (or the one the
        model's name states) on the volume it works on, one at a time: a crop of the model's size (the card's
        ``image_size``) for inpainting and variations, and for a cWDM synthesis the inputs' ``grid`` with each axis
        rounded up to a multiple of 32 (the engine pads or crops to one). None when it fits or the network is not
        known."""
        preset = preset or preset_of_model(model)
        if preset is None:
            return None
        size = card.get("image_size") or memory.PRESET_SIZE.get(preset)
        size = int(size[0] if isinstance(size, list | tuple) else size or 0)
        voxels = float(size) ** 3 if size else None
        multiple = memory.FAMILY_MULTIPLE.get(preset)
        if task == "synthesize" and grid and multiple:
            # The engine pads or crops each axis to a multiple (wdmcore.tasks.inputs.fit_axis); padding, the
            # larger of the two, is the estimate's (the Lib imports no engine module that needs numpy or torch).
            voxels = float(np.prod([-(-int(n) // multiple) * multiple for n in grid]))
        return _sampling_warning(
            device, precision, 1, devices, lambda batch: memory.sampling_bytes(preset, size, batch, precision, voxels)
        )

    def remove_preview(self) -> None:
        node, self.preview_node = self.preview_node, None
        if node is not None and self.scene.GetNodeByID(node.GetID()) is not None:
            self.scene.RemoveNode(node)

    def _release(self, job: Job) -> None:
        """A generation or task job's preview and temporary folder go when it ends (unless kept)."""
        if job.kind in ("generate", *tasks.TASKS):
            if not self.keep_preview:
                self.remove_preview()
            if job.output_dir is not None and not self.keep_files:
                shutil.rmtree(job.output_dir, ignore_errors=True)


def _sampling_warning(
    device: str, precision: str, batch_size: int, devices: list[dict[str, Any]] | None, needed: Callable[[int], float]
) -> str | None:
    """The warning (with remedies) when ``needed(batch_size)`` bytes do not fit ``device``'s free memory."""
    if device == "cpu":
        available = memory.available_ram()
    else:
        found = next((d for d in devices or [] if d.get("id") == device), None)
        available = None if found is None else found.get("free_bytes")
    remedies = []
    if batch_size > 1 and available:
        fits = memory.largest_batch(needed, 0.9 * available, batch_size)
        if fits:
            remedies.append(f"set the batch size to {fits}")
    if precision in ("auto", "fp32") and device.startswith("cuda"):  # auto is fp32 on CUDA
        remedies.append("choose bf16 precision")
    if device != "cpu":
        remedies.append("run on the CPU (slower, uses the computer's memory)")
    return memory.warning(needed(batch_size), available, device, remedies=remedies)
