"""The scene side of the tasks beyond generation (synthesize, inpaint, vary): their settings, their inputs
written to files with their geometry, the mask of a segment on a volume's grid, and how results are named and
shown.

Inputs are written with Slicer's own volume writer (NRRD: the voxel type and the full-precision geometry are
kept) into a temporary folder that the worker reads; the input nodes are only read, never modified. A mask is
the segment rasterised on the volume's grid (Slicer's segmentation export with the volume as reference
geometry, nearest neighbour) or a labelmap resampled onto that grid (VTK's reslice filter, nearest neighbour).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support
from WaveletDiffusionCommonLib import volumes
from WaveletDiffusionCommonLib.settings import numeric_problem

from .parameters import backend_problem

TASKS = ("synthesize", "inpaint", "vary")
# Inputs that should share one grid may differ by rounding in their headers (as wdmcore.tasks.inputs allows).
GRID_TOLERANCE_MM = 1e-3


# The numeric settings of a task, checked against the engine's table (wdmcore.limits).
TASK_NUMERIC_LABELS = {"seed": "the seed", "steps": "the number of steps", "count": "the number of volumes",
                       "strength": "the strength", "resample": "the RePaint repetitions",
                       "preview_every": "the preview interval", "samples": "the number of samples"}  # fmt: skip


class TaskInputError(ValueError):
    """An input cannot be used (missing, not a scalar volume, on another grid, an empty segment...); the message
    says which one and what to do. Raised before anything is sent to the worker."""


@dataclass
class TaskParameters:
    """The settings of one synthesize / inpaint / vary job (recorded on its result nodes and folder)."""

    task: str
    model: str
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    device: str = "cpu"
    precision: str = "auto"
    backend: str = "auto"
    count: int = 1
    strength: float | None = None
    resample: int | None = None
    samples: int = 1
    """Draws per result: more than 1 gives their mean and an uncertainty map (their per-voxel std)."""
    preview: bool = True
    preview_every: int = 5
    source: str = ""
    """The name of the volume the results are named after (the first input of a synthesis)."""
    inputs: dict[str, str] = field(default_factory=dict)
    """Input name -> node name, for the record."""
    mask: str = ""
    """Inpainting: the segment or labelmap that marks the region."""

    def validate(self) -> TaskParameters:
        if self.task not in TASKS:
            raise TaskInputError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if not self.model:
            raise TaskInputError("choose a model (or open a checkpoint file)")
        message = numeric_problem(self, TASK_NUMERIC_LABELS) or backend_problem(
            self.device, self.backend, self.precision
        )
        if message:
            raise TaskInputError(message)
        return self

    def folder_label(self) -> str:
        model = self.model.replace("\\", "/").rsplit("/", 1)[-1]
        seeds = f"seed {self.seed}" if self.count == 1 else f"seeds {self.seed}-{self.seed + self.count - 1}"
        return f"{self.source} {self.task} ({model}, {seeds})"

    def result_name(self, index: int, output: str | None = None) -> str:
        """``t2 synthesized t1``, ``<volume> inpainted``, ``<volume> variation 2``."""
        if self.task == "synthesize":
            return f"{self.source} synthesized {output or 'image'}"
        if self.task == "inpaint":
            return f"{self.source} inpainted"
        return f"{self.source} variation {index + 1}"

    def attributes(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "task": self.task,
            "model": self.model,
            "seed": self.seed,
            "sampler": self.sampler,
            "steps": self.steps,
            "device": self.device,
            "source": self.source,
            "inputs": ", ".join(f"{k}={v}" for k, v in self.inputs.items()) or None,
            "mask": self.mask or None,
            "strength": self.strength,
            "resample": self.resample,
            "samples": self.samples if self.samples > 1 else None,
        }
        return {k: v for k, v in values.items() if v not in (None, "")}


# ------------------------------------------------------------------------------------------- inputs


def check_volume(node: Any, what: str) -> Any:
    """``node`` must be a scalar volume node with voxels; returns it."""
    if node is None:
        raise TaskInputError(f"choose a volume for {what}")
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise TaskInputError(f"{what} must be a scalar volume node, got {type(node).__name__}")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise TaskInputError(f"{what} ({node.GetName()!r}) has no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise TaskInputError(f"{what} ({node.GetName()!r}) has several components per voxel; choose a scalar volume")
    return node


def grid_of(node: Any) -> tuple[tuple[int, int, int], np.ndarray]:
    """(dimensions i, j, k; IJK-to-RAS 4x4) of a volume node."""
    return tuple(node.GetImageData().GetDimensions()), volumes.ijk_to_ras(node)


def same_grid(a: Any, b: Any) -> bool:
    (dims_a, affine_a), (dims_b, affine_b) = grid_of(a), grid_of(b)
    return (
        dims_a == dims_b
        and np.allclose(affine_a, affine_b, atol=GRID_TOLERANCE_MM, rtol=0)
        and a.GetParentTransformNode() is b.GetParentTransformNode()
    )


def check_same_grid(nodes: dict[str, Any]) -> None:
    """All synthesis inputs on the first one's grid (dimensions, IJK-to-RAS, parent transform); the message names
    every input that differs and how."""
    names = list(nodes)
    first_name, first = names[0], nodes[names[0]]
    dims, affine = grid_of(first)
    problems = []
    for name in names[1:]:
        node = nodes[name]
        other_dims, other_affine = grid_of(node)
        if other_dims != dims:
            problems.append(f"{name!r} ({node.GetName()!r}) has {_dims(other_dims)} voxels, not {_dims(dims)}")
        elif not np.allclose(other_affine, affine, atol=GRID_TOLERANCE_MM, rtol=0):
            problems.append(f"{name!r} ({node.GetName()!r}) has another origin, spacing or orientation")
        elif node.GetParentTransformNode() is not first.GetParentTransformNode():
            problems.append(f"{name!r} ({node.GetName()!r}) is under another transform")
    if problems:
        raise TaskInputError(
            f"the inputs must share one voxel grid, that of {first_name!r} ({first.GetName()!r}): "
            + "; ".join(problems)
            + ". Resample them onto one grid first (e.g. the Resample Scalar/Vector/DWI Volume module, or "
            "register them and harden the transform)."
        )


def _dims(dims: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in dims)


def write_volume(scene: Any, node: Any, path: str | os.PathLike) -> str:
    """Write a volume node's voxels and geometry (its own IJK-to-RAS) with Slicer's writer; the node is only read."""
    path = os.fspath(path)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(path)
        storage.SetUseCompression(False)
        if not storage.WriteData(node) or not os.path.isfile(path):
            raise OSError(f"Slicer could not write {node.GetName()!r} to {path}")
    finally:
        scene.RemoveNode(storage)
    return path


def write_array(scene: Any, array_ijk: np.ndarray, affine: Any, path: str | os.PathLike) -> str:
    """Write an (i, j, k) array with its IJK-to-RAS affine through a temporary volume node."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "__WaveletDiffusion_temporary__")
    try:
        volumes.update_volume_node(node, array_ijk, affine)
        return write_volume(scene, node, path)
    finally:
        _remove(scene, node)


def segment_id_of(segmentation: Any, segment_id: str | None) -> str:
    """The segment to use: ``segment_id`` (an id or a segment name), or the only segment."""
    segments = segmentation.GetSegmentation()
    ids = [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())]
    if not ids:
        raise TaskInputError(f"the segmentation {segmentation.GetName()!r} has no segment")
    if not segment_id:
        if len(ids) > 1:
            names = ", ".join(repr(segments.GetSegment(i).GetName()) for i in ids)
            raise TaskInputError(f"choose the segment to inpaint ({names})")
        return ids[0]
    if segment_id in ids:
        return segment_id
    by_name = segments.GetSegmentIdBySegmentName(segment_id)
    if by_name:
        return by_name
    names = ", ".join(f"{i} ({segments.GetSegment(i).GetName()!r})" for i in ids)
    raise TaskInputError(f"the segmentation {segmentation.GetName()!r} has no segment {segment_id!r}; it has {names}")


def segment_mask(scene: Any, segmentation: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The segment rasterised on ``volume``'s grid: a boolean (i, j, k) array of the volume's dimensions.

    Slicer's export to a labelmap with the volume as reference geometry and the reference extent (the whole
    volume) resamples the segment's binary labelmap by nearest neighbour onto the volume's voxels. The export
    converts every segment of the segmentation it is given to a binary labelmap and gives it display nodes, so
    it is given a temporary copy of the one segment (under the same transform): the user's segmentation keeps
    its representations and display nodes."""
    import slicer

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "__WaveletDiffusion_segment__")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__WaveletDiffusion_mask__")
    try:
        source = segmentation.GetSegmentation()
        copy.SetAndObserveTransformNodeID(segmentation.GetTransformNodeID())
        copy.GetSegmentation().SetSourceRepresentationName(source.GetSourceRepresentationName())
        # A segment drawn as a surface is rasterised on the volume's grid, not on a default grid of its own.
        copy.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        exported = copy.GetSegmentation().CopySegmentFromSegmentation(source, segment_id) and (
            slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                copy, ids, labelmap, volume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            )
        )
        image = labelmap.GetImageData()
        if not exported or image is None or image.GetPointData().GetScalars() is None:
            raise TaskInputError(
                f"the segment {segment_id!r} of {segmentation.GetName()!r} could not be rasterised on "
                f"{volume.GetName()!r}; make sure it has a binary labelmap representation"
            )
        mask = volumes.array_ijk_from_node(labelmap) > 0
    finally:
        _remove(scene, labelmap)
        _remove(scene, copy)
    if mask.shape != grid_of(volume)[0]:
        raise TaskInputError(f"the segment came out with {mask.shape} voxels, not the volume's {grid_of(volume)[0]}")
    return mask


def labelmap_mask(labelmap: Any, volume: Any) -> np.ndarray:
    """The non-zero voxels of ``labelmap`` on ``volume``'s grid; voxels of the volume outside the labelmap are
    outside the mask.

    VTK's reslice filter samples the labelmap by nearest neighbour at every voxel centre of the volume: volume
    IJK -> its RAS -> through both nodes' parent transforms (linear or not) -> the labelmap's IJK. It works on
    the voxels in place, so the memory it needs is the output (one value per volume voxel), whatever the grids.
    A voxel centre within half a voxel of the labelmap's edge takes the edge voxel's value (its border)."""
    import slicer

    dims = grid_of(volume)[0]
    labels = labelmap.GetImageData()
    same = (
        tuple(labels.GetDimensions()) == dims
        and np.allclose(volumes.ijk_to_ras(labelmap), volumes.ijk_to_ras(volume), atol=GRID_TOLERANCE_MM, rtol=0)
        and labelmap.GetParentTransformNode() is volume.GetParentTransformNode()
    )
    if same:
        return volumes.array_ijk_from_node(labelmap) != 0
    parents = (volume.GetParentTransformNode(), labelmap.GetParentTransformNode())
    to_labelmap_ijk = volumes.vtk_matrix(np.linalg.inv(volumes.ijk_to_ras(labelmap)))
    if all(t is None or t.IsTransformToWorldLinear() for t in parents):
        # One matrix: the reslice filter then takes its fast path for linear maps.
        between = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(*parents, between)
        matrix = (
            np.linalg.inv(volumes.ijk_to_ras(labelmap))
            @ np.array([[between.GetElement(r, c) for c in range(4)] for r in range(4)])
            @ volumes.ijk_to_ras(volume)
        )
        volume_to_labelmap = vtk.vtkTransform()
        volume_to_labelmap.SetMatrix(volumes.vtk_matrix(matrix))
    else:
        volume_to_labelmap = vtk.vtkGeneralTransform()
        volume_to_labelmap.PostMultiply()
        volume_to_labelmap.Concatenate(volumes.vtk_matrix(volumes.ijk_to_ras(volume)))
        between = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(*parents, between)
        volume_to_labelmap.Concatenate(between)
        volume_to_labelmap.Concatenate(to_labelmap_ijk)
    # The node keeps the geometry; its image data is read as plain voxel indices (a shallow copy: no voxels copied).
    source = vtk.vtkImageData()
    source.ShallowCopy(labels)
    source.SetOrigin(0.0, 0.0, 0.0)
    source.SetSpacing(1.0, 1.0, 1.0)
    source.SetDirectionMatrix(1, 0, 0, 0, 1, 0, 0, 0, 1)
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(source)
    reslice.SetResliceTransform(volume_to_labelmap)
    reslice.SetInterpolationModeToNearestNeighbor()
    reslice.SetBackgroundLevel(0.0)
    reslice.SetOutputOrigin(0.0, 0.0, 0.0)
    reslice.SetOutputSpacing(1.0, 1.0, 1.0)
    reslice.SetOutputExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    reslice.Update()
    output = reslice.GetOutput()
    kji = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    return volumes.ijk_to_kji(kji != 0)


def _remove(scene: Any, node: Any) -> None:
    """Remove a temporary node and the display and color nodes it may have created."""
    display = node.GetDisplayNode() if hasattr(node, "GetDisplayNode") else None
    if display is not None:
        color = display.GetColorNode()
        scene.RemoveNode(display)
        # A labelmap export may add a color table of its own; the scene's default tables stay.
        if color is not None and color.GetScene() is scene and not color.GetSingletonTag():
            scene.RemoveNode(color)
    scene.RemoveNode(node)


# ------------------------------------------------------------------------------------------- results


def place_like(node: Any, source: Any) -> None:
    """Give ``node`` exactly the grid of ``source`` (IJK-to-RAS and parent transform)."""
    node.SetIJKToRASMatrix(volumes.vtk_matrix(volumes.ijk_to_ras(source)))
    parent = source.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)


def show_task_result(job: Any) -> None:
    """Show a finished task's first result in every slice view: for inpainting in the foreground over the
    original in the background (fade between the two with the slice views' opacity slider), otherwise in the
    background; a mean of several draws in the background with its uncertainty map in colour over it. Fits the
    views when Slicer's application is there."""
    nodes = [n for n in getattr(job, "nodes", []) or [] if n is not None and n.GetScene() is not None]
    if not nodes:
        return
    result = nodes[0]
    scene = result.GetScene()
    source = (getattr(job, "inputs", None) or {}).get("image")
    inpainting = getattr(job, "kind", "") == "inpaint" and source is not None and source.GetScene() is scene
    uncertainty = [n for n in getattr(job, "uncertainty_nodes", []) or [] if n.GetScene() is scene]
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        if uncertainty:  # several draws: their std in colour over the mean (the legend is the std's)
            composite.SetBackgroundVolumeID(result.GetID())
            composite.SetForegroundVolumeID(uncertainty[0].GetID())
            composite.SetForegroundOpacity(UNCERTAINTY_OPACITY)
        elif inpainting:
            composite.SetBackgroundVolumeID(source.GetID())
            composite.SetForegroundVolumeID(result.GetID())
            composite.SetForegroundOpacity(1.0)
        else:
            composite.SetBackgroundVolumeID(result.GetID())
            composite.SetForegroundVolumeID(None)
    _fit_slice_views()


def _fit_slice_views() -> None:
    try:
        import slicer

        layout = slicer.app.layoutManager()
    except (ImportError, AttributeError):  # slicer-core without the application: nothing to fit
        return
    if layout is None:
        return
    logics = layout.mrmlSliceLogics()
    for i in range(logics.GetNumberOfItems()):
        logics.GetItemAsObject(i).FitSliceToBackground()


# ------------------------------------------------------------------------------------------- uncertainty

UNCERTAINTY_COLORS = "WaveletDiffusion uncertainty"
# Dark (little spread) to bright yellow (much): the std map shown over the mean, transparent where it is 0.
UNCERTAINTY_RAMP = ((0.0, (0.0, 0.0, 0.0, 0.0)), (0.25, (0.35, 0.0, 0.55, 0.6)), (0.6, (0.9, 0.3, 0.1, 0.8)),
                    (1.0, (1.0, 1.0, 0.2, 0.9)))  # fmt: skip
UNCERTAINTY_OPACITY = 0.6
UNCERTAINTY = "WaveletDiffusion.uncertainty"  # on a mean: the node ID of its uncertainty map
UNCERTAINTY_OF = "WaveletDiffusion.uncertaintyOf"  # on an uncertainty map: the node ID of its mean


def uncertainty_colors(scene: Any) -> Any:
    """The colour table of uncertainty maps (one per scene, made on first use)."""
    existing = scene.GetFirstNodeByName(UNCERTAINTY_COLORS)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", UNCERTAINTY_COLORS)
    node.SetTypeToUser()
    count = 256
    node.SetNumberOfColors(count)
    stops = np.array([p for p, _ in UNCERTAINTY_RAMP])
    rgba = np.array([c for _, c in UNCERTAINTY_RAMP])
    for i in range(count):
        x = i / (count - 1)
        node.SetColor(i, "", *(float(np.interp(x, stops, rgba[:, k])) for k in range(4)))
    node.SetAttribute("Category", "WaveletDiffusion")
    return node


def show_uncertainty(scene: Any, mean: Any, std: Any, units: str = "") -> Any:
    """Display ``std`` (the per-voxel standard deviation of the draws whose mean is ``mean``) as a colour map from
    0 to its largest value, with a colour legend titled in the intensity's ``units``; returns the legend node.
    The slice views show it over the mean with :func:`slicer.util.setSliceViewerLayers` (the module does that)."""
    std.CreateDefaultDisplayNodes()
    display = std.GetDisplayNode()
    display.SetAndObserveColorNodeID(uncertainty_colors(scene).GetID())
    array = volumes.array_ijk_from_node(std)
    high = float(np.max(array)) if array.size else 0.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, high if high > 0 else 1.0)
    legend = _add_color_legend(scene, std, display)
    legend.SetTitleText(f"std of the draws{f' ({units})' if units else ''}")
    legend.SetLabelFormat("%.3g")
    legend.SetVisibility(True)
    std.SetAttribute(UNCERTAINTY_OF, mean.GetID())
    mean.SetAttribute(UNCERTAINTY, std.GetID())
    return legend


def _add_color_legend(scene: Any, node: Any, display: Any) -> Any:
    """A colour legend of ``node``'s ``display``: Slicer's Colors module makes it where the application runs
    (``AddDefaultColorLegendDisplayNode``); with the MRML classes alone (slicer-core) the same node by hand."""
    import slicer

    colors = getattr(getattr(slicer, "modules", None), "colors", None)
    if colors is not None:
        legend = colors.logic().AddDefaultColorLegendDisplayNode(node)
    else:
        legend = scene.AddNode(slicer.vtkMRMLColorLegendDisplayNode())
        node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetName(f"{node.GetName()} legend")
    legend.SetAndObservePrimaryDisplayNode(display)
    return legend
