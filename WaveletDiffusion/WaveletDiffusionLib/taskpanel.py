"""What the *Wavelet Diffusion* panel asks for, decided from the chosen model's card (no Qt here).

A model's card names its task (``generate`` when it names none) and, for a conditional model, its inputs. The
panel offers the tasks a model can run (:func:`tasks_of`), shows one input slot per thing the task needs
(:func:`input_slots`), keeps the user's choices in the scene's parameter node (:class:`TaskInputs`), checks a
selection before a run (:func:`check_selection`: every problem described in words) and turns it into one call
of the logic (:func:`run_plan`). The widget only draws what these functions return.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from WaveletDiffusionCommonLib.volumes import ijk_to_ras

GENERATE, SYNTHESIZE, INPAINT, VARY = "generate", "synthesize", "inpaint", "vary"
TASK_LABELS = {
    GENERATE: "Generate new volumes",
    SYNTHESIZE: "Synthesize a missing sequence",
    INPAINT: "Inpaint a region",
    VARY: "Variations of a volume",
}
RUN_LABELS = {GENERATE: "Generate", SYNTHESIZE: "Synthesize", INPAINT: "Inpaint", VARY: "Make variations"}
DEFAULT_STRENGTH = 0.3
STRENGTH_DECIMALS = 2  # the strength slider's (the .ui file's ``decimals``)
# Two grids are the same when their IJK-to-RAS matrices agree within 1 um (the engine's own tolerance).
GRID_TOLERANCE_MM = 1e-3
CARD_KEY = "wdm_card"  # where our .safetensors files keep their card (wdmcore.models.checkpoints.CARD_KEY)
MAX_HEADER_BYTES = 100 * 2**20

# Slot kinds: the widget makes one selector per slot of these kinds.
VOLUME, SEGMENT, LABELMAP, STRENGTH = "volume", "segment", "labelmap", "strength"


# ------------------------------------------------------------------------------------------- cards


def catalogue_cards(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Each catalogue model's card, read from ``wdmcore/hub/models.json`` without importing the engine (the
    worker's model list may not carry the cards). ``path`` defaults to the installed engine's catalogue; an
    unreadable catalogue gives no cards (the panel then offers generation only)."""
    if path is None:
        from WaveletDiffusionCommonLib.process import wdmcore_search_path

        folder = wdmcore_search_path()
        if folder is None:
            return {}
        path = Path(folder) / "wdmcore" / "hub" / "models.json"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    models = raw.get("models", []) if isinstance(raw, dict) else raw
    return {m["name"]: dict(m.get("card") or {}) for m in models if isinstance(m, dict) and "name" in m}


_CHECKPOINT_CARDS: dict[tuple[str, int, int], dict[str, Any]] = {}


def checkpoint_card(path: str | Path) -> dict[str, Any]:
    """The card in one of our ``.safetensors`` files (its JSON header's metadata), read without torch; an
    empty card for any other file (a released ``.pt`` state dict is an unconditional model). Kept per file
    version: the panel asks on every change of its parameter node."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CHECKPOINT_CARDS:
        _CHECKPOINT_CARDS[key] = _read_checkpoint_card(path)
    return dict(_CHECKPOINT_CARDS[key])


def _read_checkpoint_card(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(handle.read(length))
        card = json.loads((header.get("__metadata__") or {}).get(CARD_KEY, "{}"))
    except (OSError, ValueError, struct.error, AttributeError):
        return {}
    return card if isinstance(card, dict) else {}


def model_card(model: str, listed: Sequence[Mapping[str, Any]] = (), catalogue: Mapping[str, Any] | None = None):
    """The card of ``model`` (a catalogue name or a checkpoint path): from the worker's list when its entry has
    one, else from the catalogue file, else from the checkpoint file itself."""
    entry = next((m for m in listed if m.get("name") == model), None)
    if entry is not None and isinstance(entry.get("card"), dict):
        return dict(entry["card"])
    if catalogue and model in catalogue:
        return dict(catalogue[model])
    return checkpoint_card(model)


def task_of(card: Mapping[str, Any]) -> str:
    return str(card.get("task") or GENERATE)


def tasks_of(card: Mapping[str, Any]) -> list[str]:
    """The tasks the panel offers for a model: a conditional model runs its own task only; an unconditional
    one also makes variations of a volume (SDEdit) and fills a region (RePaint), as the engine does."""
    task = task_of(card)
    return [GENERATE, VARY, INPAINT] if task == GENERATE else [task]


def card_inputs(card: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"name": str(i["name"]), "meaning": str(i.get("meaning", ""))} for i in card.get("inputs") or []]


# ------------------------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    """One thing the panel asks for: ``key`` names it in the parameter node and in the call to the logic."""

    key: str
    kind: str
    label: str
    tooltip: str = ""


def input_slots(task: str, card: Mapping[str, Any]) -> list[Slot]:
    """The input rows of ``task`` for a model with ``card``, in the order the panel shows them."""
    if task == GENERATE:
        return []
    if task == SYNTHESIZE:
        output = (card.get("output") or {}).get("name", "the missing sequence")
        return [
            Slot(i["name"], VOLUME, f"{i['name']}:", f"{i['meaning'] or i['name']} (used to synthesize {output})")
            for i in card_inputs(card)
        ]
    if task == INPAINT:
        image = next((i for i in card_inputs(card) if i["name"] == "image"), None)
        meaning = image["meaning"] if image else "the volume with the region to fill"
        return [
            Slot("volume", VOLUME, "Volume:", f"{meaning}; it is not modified: the result is a new volume"),
            Slot("segment", SEGMENT, "Region (segment):", "the segment to fill, rasterised on the volume's grid"),
            Slot("labelmap", LABELMAP, "or labelmap:", "a labelmap on the volume's grid (non-zero: fill); used "
                 "instead of the segment when chosen"),
        ]  # fmt: skip
    if task == VARY:
        return [
            Slot("volume", VOLUME, "Volume:", "the volume to vary; it is not modified: the results are new volumes"),
            Slot("strength", STRENGTH, "Strength:", "0.1-0.3 keeps the anatomy and changes the texture; 1 forgets "
                 "the input"),
        ]  # fmt: skip
    raise ValueError(f"unknown task {task!r}")


def task_description(task: str, card: Mapping[str, Any]) -> str:
    """One sentence under the task box: what the run makes from what."""
    output = card.get("output") or {}
    made = output.get("name", "")
    if task == GENERATE:
        return "Generates new volumes from noise; no input."
    if task == SYNTHESIZE:
        names = ", ".join(i["name"] for i in card_inputs(card))
        meaning = f" ({output['meaning']})" if output.get("meaning") else ""
        return (
            f"Synthesizes {made or 'the missing sequence'}{meaning} from {names}: choose one scene volume per input, "
            "all on one grid. The result is a new volume in that grid."
        )
    if task == INPAINT:
        how = "this inpainting model" if task_of(card) == INPAINT else "RePaint with this unconditional model"
        return (
            f"Fills a region of a volume ({how}): choose the volume and a segment (or a labelmap). The result is a "
            "new volume in the volume's grid; outside the region it equals the input."
        )
    if task == VARY:
        return "Makes variations of a volume (SDEdit): the strength says how much may change."
    raise ValueError(f"unknown task {task!r}")


def progress_text(event: Mapping[str, Any], format_duration: Any) -> str:
    """The status line while a task samples (``format_duration``: seconds -> text)."""
    eta = event.get("eta_s")
    left = "" if eta is None else f", about {format_duration(eta)} left"
    step, steps = event.get("step"), event.get("steps")
    if step is None or steps is None:
        return f"Working{left}..."
    return f"Step {step} of {steps}{left}"


def uses_count(task: str) -> bool:
    """Whether the *Number of volumes* field applies (one result per run otherwise)."""
    return task in (GENERATE, VARY)


def uses_samples(task: str) -> bool:
    """Whether the *Samples* field applies: the tasks whose result can be the mean of several draws, with an
    uncertainty map."""
    return task in (SYNTHESIZE, INPAINT, VARY)


def uses_sampler(task: str, card: Mapping[str, Any]) -> bool:
    """Whether the sampler choice applies: RePaint runs the ancestral sampler (its resampling jumps need fresh
    noise), a conditional inpainting model its released schedule."""
    return task in (GENERATE, SYNTHESIZE, VARY)


def uses_steps(task: str, card: Mapping[str, Any]) -> bool:
    """Whether the number of steps applies: a conditional inpainting model runs its released steps."""
    return not (task == INPAINT and task_of(card) == INPAINT)


# ------------------------------------------------------------------------------------------- parameter node

PREFIX = "WaveletDiffusion.task."


class TaskInputs:
    """The task choices kept in the scene's parameter node (a ``vtkMRMLScriptedModuleNode``): node references
    per input name (so that a volume chosen for "t2w" stays chosen when another model also names "t2w"), the
    segment id, the strength and the task. Saved with the scene like the other settings."""

    def __init__(self, node: Any):
        self.node = node

    @staticmethod
    def role(key: str) -> str:
        return f"{PREFIX}{key}"

    def get_node(self, key: str) -> Any:
        return self.node.GetNodeReference(self.role(key))

    def set_node(self, key: str, value: Any) -> None:
        new_id = value.GetID() if value is not None else None
        if self.node.GetNodeReferenceID(self.role(key)) != new_id:
            self.node.SetNodeReferenceID(self.role(key), new_id)

    def _get(self, key: str) -> str:
        return self.node.GetParameter(f"{PREFIX}{key}") or ""

    def _set(self, key: str, value: str) -> None:
        if self._get(key) != value:
            self.node.SetParameter(f"{PREFIX}{key}", value)

    @property
    def task(self) -> str:
        return self._get("name")

    @task.setter
    def task(self, value: str) -> None:
        self._set("name", value)

    @property
    def segment_id(self) -> str:
        return self._get("segmentId")

    @segment_id.setter
    def segment_id(self, value: str | None) -> None:
        self._set("segmentId", value or "")

    @property
    def strength(self) -> float:
        try:
            value = float(self._get("strength"))
        except ValueError:
            return DEFAULT_STRENGTH
        return value if math.isfinite(value) else DEFAULT_STRENGTH

    @strength.setter
    def strength(self, value: float) -> None:
        self._set("strength", repr(round(float(value), 4)))

    @property
    def samples(self) -> int:
        """Draws per result (1: one draw, as before; more: their mean and an uncertainty map)."""
        text = self._get("samples")
        return int(text) if text.isdigit() and int(text) >= 1 else 1

    @samples.setter
    def samples(self, value: int) -> None:
        self._set("samples", str(int(value)))

    def selection(self, task: str, card: Mapping[str, Any]) -> Selection:
        """What the user chose for ``task``'s slots."""
        chosen = Selection(task=task, strength=self.strength, samples=self.samples)
        for slot in input_slots(task, card):
            if slot.kind == VOLUME and task == SYNTHESIZE:
                chosen.inputs[slot.key] = self.get_node(slot.key)
            elif slot.kind == VOLUME:
                chosen.volume = self.get_node(slot.key)
            elif slot.kind == SEGMENT:
                chosen.segmentation = self.get_node("segmentation")
                chosen.segment_id = self.segment_id or None
            elif slot.kind == LABELMAP:
                chosen.labelmap = self.get_node(slot.key)
        return chosen


def strength_range(decimals: int = STRENGTH_DECIMALS) -> tuple[float, float]:
    """The strength slider's minimum and maximum, from the engine's table (``wdmcore.limits``): an open bound
    becomes the nearest value the slider can show inside it (strength is in (0, 1]: 0 would be refused)."""
    from wdmcore.limits import LIMITS  # torch-free

    limit, step = LIMITS["strength"], 10.0**-decimals
    low = limit.low + step if limit.low_open else limit.low
    high = limit.high - step if limit.high_open else limit.high
    return round(low, decimals), round(high, decimals)


def choose_task(stored: str, card: Mapping[str, Any]) -> str:
    """The task to show: the stored one when the model offers it, else the model's own."""
    offered = tasks_of(card)
    return stored if stored in offered else offered[0]


# ------------------------------------------------------------------------------------------- checks


@dataclass
class Selection:
    task: str
    inputs: dict[str, Any] = field(default_factory=dict)
    volume: Any = None
    segmentation: Any = None
    segment_id: str | None = None
    labelmap: Any = None
    strength: float = DEFAULT_STRENGTH
    samples: int = 1


def _fmt(values: Sequence[float], unit: str = "") -> str:
    return " x ".join(f"{v:g}" for v in values) + unit


def _grid(node: Any) -> tuple[tuple[int, ...], np.ndarray]:
    image = node.GetImageData()
    dims = tuple(int(d) for d in image.GetDimensions()) if image is not None else (0, 0, 0)
    return dims, ijk_to_ras(node)


def grid_difference(node: Any, reference: Any) -> str | None:
    """How the grid of ``node`` differs from that of ``reference``, in words; None when they are the same."""
    (dims, m), (ref_dims, ref_m) = _grid(node), _grid(reference)
    differences = []
    if dims != ref_dims:
        differences.append(f"{_fmt(dims)} voxels instead of {_fmt(ref_dims)}")
    spacing, ref_spacing = np.linalg.norm(m[:3, :3], axis=0), np.linalg.norm(ref_m[:3, :3], axis=0)
    if not np.allclose(spacing, ref_spacing, atol=GRID_TOLERANCE_MM):
        differences.append(
            f"voxels of {_fmt(np.round(spacing, 3), ' mm')} instead of {_fmt(np.round(ref_spacing, 3), ' mm')}"
        )
    directions = m[:3, :3] / np.where(spacing > 0, spacing, 1)
    ref_directions = ref_m[:3, :3] / np.where(ref_spacing > 0, ref_spacing, 1)
    cosines = np.clip(np.sum(directions * ref_directions, axis=0), -1.0, 1.0)
    if not np.allclose(cosines, 1.0, atol=1e-6):
        angle = float(np.degrees(np.arccos(cosines.min())))
        differences.append(f"axes turned by {angle:.1f} degrees")
    shift = float(np.linalg.norm(m[:3, 3] - ref_m[:3, 3]))
    if shift > GRID_TOLERANCE_MM:
        differences.append(f"its first voxel {shift:.1f} mm away")
    return ", ".join(differences) if differences else None


def _display_name(node: Any) -> str:
    return f"'{node.GetName()}'"


def _transform_problem(node: Any) -> str | None:
    transform = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transform is None:
        return None
    return (
        f"{_display_name(node)} is under the transform '{transform.GetName()}': its voxels would be used where they "
        "are without it. Harden the transform (Data module, right-click the volume, Harden transform) first."
    )


def _has_voxels(node: Any) -> bool:
    image = node.GetImageData()
    return image is not None and all(d > 0 for d in image.GetDimensions())


def segment_voxels_in_grid(segmentation: Any, segment_id: str, volume: Any) -> int | None:
    """How many voxels of the segment fall inside the volume's grid (its labelmap voxels mapped into the
    volume's IJK space); None when the segment has no labelmap representation to count from."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    if not segmentation.GetBinaryLabelmapRepresentation(segment_id, image):
        return None
    extent = image.GetExtent()
    if any(extent[2 * a + 1] < extent[2 * a] for a in range(3)) or image.GetPointData().GetScalars() is None:
        return 0
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    k, j, i = np.nonzero(flat)  # the segment alone, as 0/1 (also when segments share one labelmap layer)
    if i.size == 0:
        return 0
    to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(to_world)
    image_to_ras = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)]).astype(float)
    ras = image_to_ras @ ijk
    transform = segmentation.GetParentTransformNode()
    if transform is not None:
        to_ras = vtk.vtkMatrix4x4()
        if transform.GetMatrixTransformToWorld(to_ras):
            ras = np.array([[to_ras.GetElement(r, c) for c in range(4)] for r in range(4)]) @ ras
    volume_ijk = np.linalg.inv(ijk_to_ras(volume)) @ ras
    dims = np.array(volume.GetImageData().GetDimensions(), dtype=float)[:, None]
    inside = np.all((volume_ijk[:3] > -0.5) & (volume_ijk[:3] < dims - 0.5), axis=0)
    return int(inside.sum())


def check_selection(task: str, card: Mapping[str, Any], chosen: Selection) -> list[str]:
    """Every problem that stops ``chosen`` from running, each in one sentence that says what to do; empty when
    the run may start."""
    problems: list[str] = []
    if task == GENERATE:
        return problems
    if task == SYNTHESIZE:
        reference_name = None
        meanings = {i["name"]: i["meaning"] or i["name"] for i in card_inputs(card)}
        for slot in input_slots(task, card):
            node = chosen.inputs.get(slot.key)
            if node is None:
                problems.append(f"Choose the volume for '{slot.key}' ({meanings[slot.key]}).")
                continue
            if not _has_voxels(node):
                problems.append(f"The volume {_display_name(node)} chosen for '{slot.key}' holds no voxels.")
                continue
            transform = _transform_problem(node)
            if transform:
                problems.append(transform)
            if reference_name is None:
                reference_name, reference = slot.key, node
                continue
            difference = grid_difference(node, reference)
            if difference:
                problems.append(
                    f"'{slot.key}' ({node.GetName()}) is not on the grid of '{reference_name}' "
                    f"({reference.GetName()}): {difference}. Resample it onto that volume (module Resample Scalar/"
                    "Vector/DTI Volume) or register the inputs to each other first."
                )
        nodes = [n for n in chosen.inputs.values() if n is not None]
        if len({n.GetID() for n in nodes}) < len(nodes):
            problems.append("The same volume is chosen for two inputs; choose one volume per input.")
        return problems
    if task not in (INPAINT, VARY):
        raise ValueError(f"unknown task {task!r}")
    volume = chosen.volume
    if volume is None:
        problems.append("Choose the volume to " + ("fill." if task == INPAINT else "vary."))
    elif not _has_voxels(volume):
        problems.append(f"The volume {_display_name(volume)} holds no voxels.")
        volume = None
    elif _transform_problem(volume):
        problems.append(_transform_problem(volume))
    if task == VARY:
        if not 0 < chosen.strength <= 1:
            problems.append(f"The strength is {chosen.strength:g}; choose a value above 0 and at most 1.")
        return problems
    if chosen.labelmap is not None:
        labelmap = chosen.labelmap
        if not _has_voxels(labelmap):
            problems.append(f"The labelmap {_display_name(labelmap)} holds no voxels.")
            return problems
        from WaveletDiffusionCommonLib.volumes import array_ijk_from_node

        if not np.any(array_ijk_from_node(labelmap)):
            problems.append(f"The labelmap {_display_name(labelmap)} is empty: paint the region to fill first.")
        if volume is not None:
            difference = grid_difference(labelmap, volume)
            if difference:
                problems.append(
                    f"The labelmap {_display_name(labelmap)} is not on the grid of {_display_name(volume)}: "
                    f"{difference}. Choose a segment instead (it is rasterised on the volume's grid), or resample "
                    "the labelmap onto the volume."
                )
        return problems
    segmentation = chosen.segmentation
    if segmentation is None:
        problems.append("Choose the region to fill: a segmentation and one of its segments (or a labelmap).")
        return problems
    segment = segmentation.GetSegmentation().GetSegment(chosen.segment_id) if chosen.segment_id else None
    if segment is None:
        problems.append(f"Choose a segment of '{segmentation.GetName()}' to fill.")
        return problems
    if volume is not None:
        count = segment_voxels_in_grid(segmentation, chosen.segment_id, volume)
        if count == 0:
            problems.append(
                f"The segment '{segment.GetName()}' covers no voxel of {_display_name(volume)}: paint it on this "
                "volume (Segment Editor) or choose another segment."
            )
    return problems


# ------------------------------------------------------------------------------------------- the run


@dataclass
class RunPlan:
    """One call of the logic: ``getattr(logic, method)(*args, **kwargs, on_progress=..., ...)``."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    description: str


def run_plan(task: str, card: Mapping[str, Any], model: str, chosen: Selection, settings: Any) -> RunPlan:
    """The call the Run button makes for ``task`` (``settings``: the panel's :class:`GenerationParameters`).
    Generation keeps its own path (``start_generation`` with the whole settings)."""
    # *Live preview* unticked reaches the worker as preview_every 0: no preview files, no preview node.
    common = {"seed": int(settings.seed), "device": settings.device, "precision": settings.precision,
              "backend": settings.backend, "preview": bool(settings.preview)}  # fmt: skip
    if uses_samples(task) and chosen.samples > 1:
        common["samples"] = int(chosen.samples)
    sampling = {"sampler": settings.sampler, "steps": int(settings.steps)}
    if task == GENERATE:
        return RunPlan("start_generation", (settings,), {}, f"generating {settings.count} volume(s)")
    if task == SYNTHESIZE:
        output = (card.get("output") or {}).get("name", "the missing sequence")
        inputs = {slot.key: chosen.inputs[slot.key] for slot in input_slots(task, card)}
        names = ", ".join(f"{k}={n.GetName()}" for k, n in inputs.items())
        return RunPlan(
            "start_synthesize", (model, inputs), {**common, **sampling}, f"synthesizing {output} from {names}"
        )
    if task == INPAINT:
        # A conditional inpainting model runs its released steps (None); an unconditional one RePaint's steps.
        steps = int(settings.steps) if uses_steps(task, card) else None
        kwargs = {**common, "steps": steps}
        if chosen.labelmap is not None:
            kwargs["labelmap"] = chosen.labelmap
            region = f"labelmap {chosen.labelmap.GetName()}"
        else:
            kwargs.update(segmentation=chosen.segmentation, segment_id=chosen.segment_id)
            segment = chosen.segmentation.GetSegmentation().GetSegment(chosen.segment_id)
            region = f"segment {segment.GetName() if segment else chosen.segment_id}"
        return RunPlan("start_inpaint", (model, chosen.volume), kwargs,
                       f"inpainting {region} of {chosen.volume.GetName()}")  # fmt: skip
    if task == VARY:
        kwargs = {
            **common,
            **sampling,
            "strength": float(chosen.strength),
            "count": int(settings.count),
        }
        description = f"{settings.count} variation(s) of {chosen.volume.GetName()} at strength {chosen.strength:g}"
        return RunPlan("start_vary", (model, chosen.volume), kwargs, description)
    raise ValueError(f"unknown task {task!r}")


def finished_text(task: str, job: Any, elapsed: str) -> str:
    """The status line after a task finished."""
    names = ", ".join(n.GetName() for n in getattr(job, "nodes", []) or [])
    if job.state == "done":
        verb = {GENERATE: "Generated", SYNTHESIZE: "Synthesized", INPAINT: "Inpainted", VARY: "Made"}[task]
        return f"{verb} in {elapsed}: {names or 'nothing'}."
    if job.state == "cancelled":
        return f"Cancelled{'; kept ' + names if names else ''}."
    return f"Failed: {job.error}"
