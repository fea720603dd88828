"""Generated arrays and files -> Slicer scalar volume nodes, with their geometry.

wdmcore arrays are in NIfTI index order (i, j, k) with a 4x4 voxel-to-RAS affine. VTK image data, and so
``slicer.util.arrayFromVolume``, is (k, j, i). :func:`ijk_to_kji` is the only place that swaps the axes;
everything else here goes through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import vtk
from vtk.util import numpy_support

# Node attributes that record how a volume was made.
ATTRIBUTE_PREFIX = "WaveletDiffusion."


def ijk_to_kji(array: np.ndarray) -> np.ndarray:
    """The one axis swap between wdmcore's (i, j, k) arrays and VTK/Slicer's (k, j, i) arrays.

    It is its own inverse: applied to a (k, j, i) array it gives the (i, j, k) array back.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D volume array, got shape {array.shape}")
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def vtk_matrix(affine: Any) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"an affine is 4x4, got shape {affine.shape}")
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(affine[row, col]))
    return matrix


def ijk_to_ras(node: Any) -> np.ndarray:
    """The IJK-to-RAS matrix of a volume node as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_ijk_from_node(node: Any) -> np.ndarray:
    """A copy of the node's voxels in (i, j, k) order."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return ijk_to_kji(flat.reshape(dims[2], dims[1], dims[0]))


def update_volume_node(node: Any, array_ijk: np.ndarray, affine: Any) -> Any:
    """Replace the voxels and geometry of ``node`` (in place: views showing it update)."""
    array_ijk = np.asarray(array_ijk)
    if array_ijk.dtype not in (np.float32, np.float64, np.int16, np.uint8, np.int32, np.uint16):
        array_ijk = array_ijk.astype(np.float32)
    kji = ijk_to_kji(array_ijk)
    image = vtk.vtkImageData()
    image.SetDimensions(kji.shape[2], kji.shape[1], kji.shape[0])
    scalars = numpy_support.numpy_to_vtk(kji.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    was_modifying = node.StartModify()
    node.SetIJKToRASMatrix(vtk_matrix(affine))
    node.SetAndObserveImageData(image)
    node.EndModify(was_modifying)
    return node


def window_level(array: np.ndarray) -> tuple[float, float]:
    """(window, level) covering the 0.5-99.5 percentiles of the non-background voxels."""
    values = np.asarray(array, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0, 0.5
    foreground = values[values > values.min()]
    if foreground.size < 0.01 * values.size:
        foreground = values
    low, high = np.percentile(foreground, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    return float(high - low), float((high + low) / 2)


def apply_display(node: Any, array_ijk: np.ndarray | None = None) -> Any:
    """A grey display node with a window/level that fits the volume."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if array_ijk is None:
        array_ijk = array_ijk_from_node(node)
    window, level = window_level(array_ijk)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(window, level)
    if not display.GetColorNodeID():
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    return display


def set_attributes(node: Any, attributes: Mapping[str, Any]) -> None:
    """Record generation settings on the node (``WaveletDiffusion.model`` ...); values become strings."""
    for key, value in attributes.items():
        if value is None:
            continue
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))


def get_attributes(node: Any) -> dict[str, str]:
    names = node.GetAttributeNames() or ()
    return {n[len(ATTRIBUTE_PREFIX) :]: node.GetAttribute(n) for n in names if n.startswith(ATTRIBUTE_PREFIX)}


def add_volume_from_array(scene: Any, array_ijk: np.ndarray, affine: Any, name: str) -> Any:
    """A new scalar volume node in ``scene`` holding ``array_ijk`` with the voxel-to-RAS ``affine``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    update_volume_node(node, array_ijk, affine)
    apply_display(node, array_ijk)
    return node


def load_volume_file(scene: Any, path: str | os.PathLike, name: str) -> Any:
    """Read a NIfTI/NRRD file with Slicer's own reader into a new scalar volume node.

    The temporary storage node is removed afterwards, so the volume is not tied to the worker's temporary
    file: saving the scene asks for a place to write it. Raises ``OSError`` when the file cannot be read; the
    scene is then left as it was.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OSError(f"generated volume file {path} does not exist")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    try:
        storage.SetFileName(path)
        storage.SetSingleFile(True)
        storage.SetUseOrientationFromFile(True)
        if not storage.ReadData(node) or node.GetImageData() is None:
            raise OSError(f"Slicer could not read the generated volume {path}")
    except BaseException:
        scene.RemoveNode(node)
        raise
    finally:
        scene.RemoveNode(storage)
    apply_display(node)
    return node


def place_in_folder(
    scene: Any, nodes: Sequence[Any], folder_name: str, folder_item: int | None = None, beside: Any = None
) -> int:
    """Put ``nodes`` into one subject-hierarchy folder (created when ``folder_item`` is None or gone); returns the
    folder's item id, so that later results of the same run join it.

    A new folder goes where ``beside`` (the input the results were made from) sits in the hierarchy: under its
    patient/study (or folder), as Slicer's segmentation modules place their results; at the scene's root when
    ``beside`` is None or has no item."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    invalid = hierarchy.GetInvalidItemID()
    if folder_item is None or folder_item == invalid or not hierarchy.GetItemName(folder_item):
        parent = hierarchy.GetSceneItemID()
        input_item = hierarchy.GetItemByDataNode(beside) if beside is not None else invalid
        if input_item != invalid and hierarchy.GetItemParent(input_item) != invalid:
            parent = hierarchy.GetItemParent(input_item)
        folder_item = hierarchy.CreateFolderItem(parent, folder_name)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if item == invalid:  # Slicer's application adds the item itself; a bare scene does not
            hierarchy.CreateItem(folder_item, node)
        else:
            hierarchy.SetItemParent(item, folder_item)
    return folder_item


def set_item_attributes(scene: Any, item: int, attributes: Mapping[str, Any]) -> None:
    """Record settings on a subject-hierarchy item (a results folder), as :func:`set_attributes` does on nodes."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for key, value in attributes.items():
        if value is not None:
            hierarchy.SetItemAttribute(item, ATTRIBUTE_PREFIX + key, str(value))
