"""Generated arrays and NIfTI files -> volume nodes: voxels and IJK-to-RAS survive the trip exactly."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from slicer_support import require_slicer, scene  # noqa: F401 - the fixture

slicer = require_slicer()

from WaveletDiffusionCommonLib import volumes  # noqa: E402

from wdmcore.worker import write_nifti  # noqa: E402


def oblique_affine() -> np.ndarray:
    """Rotation about two axes, non-uniform spacing, an offset origin: nothing an identity would pass."""
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 1.25, 2.5])
    affine[:3, 3] = [-91.5, 12.25, 40.0]
    return affine


def distinct_volume(shape=(7, 5, 4)) -> np.ndarray:
    """Every voxel different and not symmetric along any axis, so a swapped or flipped axis shows."""
    rng = np.random.default_rng(3)
    return (np.arange(np.prod(shape)).reshape(shape) + rng.random(shape)).astype(np.float32)


def test_ijk_to_kji_is_the_axis_swap_and_its_own_inverse():
    array = distinct_volume()
    swapped = volumes.ijk_to_kji(array)
    assert swapped.shape == (4, 5, 7)
    assert swapped[3, 2, 1] == array[1, 2, 3]
    np.testing.assert_array_equal(volumes.ijk_to_kji(swapped), array)
    with pytest.raises(ValueError):
        volumes.ijk_to_kji(np.zeros((2, 2)))


@pytest.mark.parametrize("writer", ["nibabel", "SimpleITK"])
def test_nifti_file_round_trip_keeps_voxels_and_geometry(scene, tmp_path, monkeypatch, writer):  # noqa: F811
    array, affine = distinct_volume(), oblique_affine()
    if writer == "SimpleITK":  # the path the worker takes inside Slicer, which has no nibabel
        pytest.importorskip("SimpleITK")
        monkeypatch.setitem(sys.modules, "nibabel", None)
    path = write_nifti(tmp_path / "generated.nii.gz", array, affine)

    node = volumes.load_volume_file(scene, path, "brats_seed7")

    assert node.GetName() == "brats_seed7"
    np.testing.assert_allclose(volumes.ijk_to_ras(node), affine, atol=1e-5)
    np.testing.assert_array_equal(volumes.array_ijk_from_node(node), array)
    # Slicer's own accessor sees the same voxels in its (k, j, i) order.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array.transpose(2, 1, 0))
    # The RAS position of a voxel is the affine applied to its (i, j, k) index, as nibabel defines it.
    ras = volumes.ijk_to_ras(node) @ np.array([6, 4, 3, 1.0])
    np.testing.assert_allclose(ras, affine @ np.array([6, 4, 3, 1.0]), atol=1e-4)
    # The reader's storage node is gone: the volume is not tied to the worker's temporary file.
    assert node.GetStorageNode() is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeArchetypeStorageNode") == 0


def test_array_path_matches_the_file_path(scene, tmp_path):  # noqa: F811
    array, affine = distinct_volume(), oblique_affine()
    from_array = volumes.add_volume_from_array(scene, array, affine, "preview")
    from_file = volumes.load_volume_file(scene, write_nifti(tmp_path / "v.nii.gz", array, affine), "file")
    np.testing.assert_allclose(volumes.ijk_to_ras(from_array), volumes.ijk_to_ras(from_file), atol=1e-5)
    np.testing.assert_array_equal(volumes.array_ijk_from_node(from_array), volumes.array_ijk_from_node(from_file))


def test_update_in_place_keeps_the_node_and_changes_voxels(scene):  # noqa: F811
    node = volumes.add_volume_from_array(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "preview")
    node_id = node.GetID()
    new = distinct_volume((4, 4, 4))
    volumes.update_volume_node(node, new, oblique_affine())
    assert scene.GetNodeByID(node_id) is node
    np.testing.assert_array_equal(volumes.array_ijk_from_node(node), new)
    np.testing.assert_allclose(volumes.ijk_to_ras(node), oblique_affine(), atol=1e-12)


def test_display_window_level_covers_the_foreground(scene):  # noqa: F811
    array = np.zeros((20, 20, 20), np.float32)
    array[5:15, 5:15, 5:15] = np.linspace(0.2, 0.8, 1000, dtype=np.float32).reshape(10, 10, 10)
    node = volumes.add_volume_from_array(scene, array, np.eye(4), "phantom")
    display = node.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    low = display.GetLevel() - display.GetWindow() / 2
    high = display.GetLevel() + display.GetWindow() / 2
    assert 0.19 < low < 0.21 and 0.79 < high < 0.81  # background zeros ignored
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"


def test_attributes_round_trip(scene):  # noqa: F811
    node = volumes.add_volume_from_array(scene, np.ones((2, 2, 2), np.float32), np.eye(4), "v")
    volumes.set_attributes(node, {"model": "demo_phantom_64", "seed": 7, "steps": 25, "skipped": None})
    assert volumes.get_attributes(node) == {"model": "demo_phantom_64", "seed": "7", "steps": "25"}


def test_unreadable_file_leaves_the_scene_as_it_was(scene, tmp_path):  # noqa: F811
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    before = scene.GetNumberOfNodes()
    with pytest.raises(OSError):
        volumes.load_volume_file(scene, bad, "broken")
    with pytest.raises(OSError):
        volumes.load_volume_file(scene, tmp_path / "missing.nii.gz", "missing")
    assert scene.GetNumberOfNodes() == before
