"""Synthesis, inpainting and variations from a Slicer scene through the real worker process (slicer-core MRML
classes, the bundled demo models): inputs exported with their geometry, results in the input's grid, a segment
rasterised on an oblique, anisotropic volume grid, mismatched grids refused before any work, cancel in the
middle, inputs never modified.

The demo models' weights may be replaced by trained ones: these tests check geometry, identity outside the mask,
errors and cancel, never image quality.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import vtk
from slicer_support import register_segmentation_converters, require_slicer, scene  # noqa: F401
from vtk.util import numpy_support

slicer = require_slicer()

from WaveletDiffusionCommonLib import volumes  # noqa: E402
from WaveletDiffusionLib import (  # noqa: E402
    GenerationCancelled,
    GenerationError,
    Job,
    TaskInputError,
    WaveletDiffusionLogic,
    show_task_result,
    tasks,
)

import wdmcore  # noqa: E402
from wdmcore.data.contrasts import paired_phantom  # noqa: E402

SYNTHESIZE = "demo_phantom_synthesize_32"
INPAINT = "demo_phantom_inpaint_32"
GENERATE = "demo_phantom_64"
SIZE = 32
TIMEOUT = 300


def oblique_affine(spacing=(1.1, 0.9, 1.4), origin=(-20.0, 12.0, -15.0)) -> np.ndarray:
    """A voxel-to-RAS matrix with rotated axes and unequal spacing."""
    rotation = vtk.vtkTransform()
    rotation.RotateX(20)
    rotation.RotateZ(35)
    rotate = np.array([[rotation.GetMatrix().GetElement(r, c) for c in range(3)] for r in range(3)])
    affine = np.eye(4)
    affine[:3, :3] = rotate @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


AFFINE = oblique_affine()


@pytest.fixture(scope="module")
def phantom():
    contrasts, _ = paired_phantom(SIZE, 3, 0)
    return contrasts


@pytest.fixture(scope="module")
def shared_logic():
    """One worker for the module: it keeps the model loaded between tests."""
    instance = WaveletDiffusionLogic(None)
    yield instance
    instance.shutdown()


@pytest.fixture
def logic(shared_logic, scene):  # noqa: F811
    shared_logic._scene = scene
    yield shared_logic
    shared_logic.cancel()
    shared_logic._scene = None


def add_volume(scene, array, name, affine=AFFINE):  # noqa: F811
    return volumes.add_volume_from_array(scene, np.asarray(array, dtype=np.float32), affine, name)


def snapshot(node):
    return volumes.array_ijk_from_node(node).copy(), volumes.ijk_to_ras(node).copy()


def assert_unchanged(node, before):
    array, affine = before
    np.testing.assert_array_equal(volumes.array_ijk_from_node(node), array)
    np.testing.assert_array_equal(volumes.ijk_to_ras(node), affine)


def ball_segmentation(scene, centre_ras, radius):  # noqa: F811
    """A segmentation whose one segment is a ball drawn on its own axis-aligned 1 mm grid (not the volume's);
    returns (node, segment id, labelmap array (i, j, k), labelmap origin)."""
    register_segmentation_converters()
    origin = np.array(centre_ras) - 12.0
    k, j, i = np.mgrid[0:24, 0:24, 0:24]
    ras = np.stack([i, j, k], axis=-1) + origin
    ball = (np.linalg.norm(ras - np.array(centre_ras), axis=-1) <= radius).astype(np.uint8)  # (k, j, i)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(24, 24, 24)
    image.SetOrigin(*origin)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = ball.ravel()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    segmentation.AddSegmentFromBinaryLabelmapRepresentation(image, "lesion")
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion")
    return segmentation, segment_id, volumes.ijk_to_kji(ball), origin


def nearest_mask(affine, dims, labels_ijk, label_origin):
    """By hand: each voxel centre of the volume -> RAS -> the nearest voxel of the 1 mm axis-aligned labelmap."""
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in dims), indexing="ij"), axis=-1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    index = np.rint(ras - label_origin).astype(int)
    inside = np.all((index >= 0) & (index < np.array(labels_ijk.shape)), axis=-1)
    clipped = np.clip(index, 0, np.array(labels_ijk.shape) - 1)
    return inside & (labels_ijk[clipped[..., 0], clipped[..., 1], clipped[..., 2]] > 0)


# ------------------------------------------------------------------------------------------- inpainting


def test_a_segment_on_an_oblique_grid_is_inpainted_in_the_input_grid(logic, scene, phantom):  # noqa: F811
    volume = add_volume(scene, phantom["t1"], "case t1")
    centre = AFFINE @ np.array([16, 15, 17, 1.0])  # a voxel near the middle of the volume, in RAS
    segmentation, segment_id, labels, label_origin = ball_segmentation(scene, centre[:3], 4.0)
    before = snapshot(volume)

    mask = tasks.segment_mask(scene, segmentation, segment_id, volume)
    expected = nearest_mask(AFFINE, (SIZE,) * 3, labels, label_origin)
    assert mask.shape == (SIZE,) * 3 and 10 < expected.sum() < expected.size
    np.testing.assert_array_equal(mask, expected)

    node = logic.inpaint(model=INPAINT, volume=volume, segmentation=segmentation, segment_id="lesion", seed=1)
    assert node.GetName() == "case t1 inpainted"
    np.testing.assert_array_equal(volumes.ijk_to_ras(node), AFFINE)
    result, original = volumes.array_ijk_from_node(node), before[0]
    assert result.shape == original.shape
    np.testing.assert_array_equal(result[~mask], original[~mask])  # outside the segment: the input, exactly
    assert not np.array_equal(result[mask], original[mask])
    assert_unchanged(volume, before)
    attributes = volumes.get_attributes(node)
    assert attributes["task"] == "inpaint" and attributes["model"] == INPAINT and attributes["seed"] == "1"
    assert attributes["mask"] == "lesions: lesion"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    assert hierarchy.GetItemName(folder) == f"case t1 inpaint ({INPAINT}, seed 1)"
    assert hierarchy.GetItemAttribute(folder, "WaveletDiffusion.task") == "inpaint"
    # Nothing temporary is left in the scene: the volume, the segmentation and the result.
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 2

    # The views: the result over the original.
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    show_task_result(Job(kind="inpaint", nodes=[node], inputs={"image": volume}))
    assert composite.GetForegroundVolumeID() == node.GetID()
    assert composite.GetBackgroundVolumeID() == volume.GetID()


def test_a_labelmap_on_another_grid_is_resampled_by_nearest_neighbour(scene):  # noqa: F811
    volume = add_volume(scene, np.zeros((12, 10, 8)), "volume")
    label_affine = np.diag([0.7, 0.7, 0.7, 1.0])
    label_affine[:3, 3] = AFFINE[:3, 3] - 3.0
    labels = np.zeros((40, 40, 40), dtype=np.uint8)
    labels[10:30, 5:25, 12:20] = 2
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    volumes.update_volume_node(labelmap, labels, label_affine)
    mask = tasks.labelmap_mask(labelmap, volume)
    expected = nearest_mask(np.linalg.inv(label_affine) @ AFFINE, (12, 10, 8), labels, np.zeros(3))
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------------------- synthesis


def test_synthesis_from_three_scene_volumes_equals_the_engine(logic, scene, phantom):  # noqa: F811
    nodes = {name: add_volume(scene, phantom[name], name) for name in ("t2", "flair", "pd")}
    before = {name: snapshot(node) for name, node in nodes.items()}
    node = logic.synthesize(model=SYNTHESIZE, inputs=nodes, seed=4, sampler="ddim", steps=2)
    assert node.GetName() == "t2 synthesized t1"
    np.testing.assert_array_equal(volumes.ijk_to_ras(node), AFFINE)
    direct = wdmcore.synthesize(SYNTHESIZE, {n: (phantom[n], AFFINE) for n in nodes}, seed=4, sampler="ddim", steps=2)
    np.testing.assert_allclose(volumes.array_ijk_from_node(node), direct.array, atol=1e-5)
    for name, node_in in nodes.items():
        assert_unchanged(node_in, before[name])
    attributes = volumes.get_attributes(node)
    assert attributes["task"] == "synthesize" and attributes["inputs"] == "t2=t2, flair=flair, pd=pd"


def test_mismatched_input_grids_are_refused_before_the_worker_starts(scene, phantom):  # noqa: F811
    logic = WaveletDiffusionLogic(scene)  # a fresh logic: no worker yet
    shifted = AFFINE.copy()
    shifted[:3, 3] += 2.0
    inputs = {
        "t2": add_volume(scene, phantom["t2"], "t2"),
        "flair": add_volume(scene, phantom["flair"], "flair", shifted),
        "pd": add_volume(scene, phantom["pd"][:, :, :30], "pd"),
    }
    count = scene.GetNumberOfNodes()
    with pytest.raises(TaskInputError) as caught:
        logic.synthesize(model=SYNTHESIZE, inputs=inputs)
    message = str(caught.value)
    assert "'flair' ('flair') has another origin, spacing or orientation" in message
    assert "'pd' ('pd') has 32 x 32 x 30 voxels, not 32 x 32 x 32" in message and "Resample" in message
    assert logic._worker is None and scene.GetNumberOfNodes() == count
    with pytest.raises(TaskInputError, match="does not cover any voxel"):
        empty = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty")
        volumes.update_volume_node(empty, np.zeros((32, 32, 32), dtype=np.uint8), AFFINE)
        logic.inpaint(model=INPAINT, volume=inputs["t2"], labelmap=empty)
    assert logic._worker is None


def test_cancel_in_the_middle_of_a_synthesis(logic, scene, phantom):  # noqa: F811
    nodes = {name: add_volume(scene, phantom[name], name) for name in ("t2", "flair", "pd")}
    before = {name: snapshot(node) for name, node in nodes.items()}
    progress, previews, finished = [], [], []
    job = logic.start_synthesize(
        SYNTHESIZE,
        nodes,
        seed=0,
        sampler="ancestral",
        steps=1000,
        preview_every=1,
        on_progress=lambda j, e: progress.append(e),
        on_preview=lambda j, node: previews.append((volumes.array_ijk_from_node(node), volumes.ijk_to_ras(node))),
        on_finished=finished.append,
    )
    deadline = time.monotonic() + TIMEOUT
    while (not previews or progress[-1].get("step", 0) < 2) and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.02)
    assert progress[0]["done"] == 0 and progress[0]["task"] == "synthesize"  # reported before the model loads
    assert 0 < progress[-1]["done"] < progress[-1]["total"] and progress[-1]["eta_s"] is not None
    preview, preview_affine = previews[-1]
    assert preview.shape == (SIZE,) * 3 and np.array_equal(preview_affine, AFFINE)  # the whole output's estimate
    requested = time.monotonic()
    logic.cancel(job)
    logic.wait(job, timeout=60)
    assert job.state == "cancelled" and finished == [job] and isinstance(job.error, GenerationCancelled)
    assert str(job.error) == "synthesize was cancelled"
    assert time.monotonic() - requested < 30  # within a step, not after the remaining ~990
    assert job.nodes == [] and scene.GetFirstNodeByName("WaveletDiffusion preview") is None
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 3
    assert not job.output_dir.exists()  # the inputs written for the worker are gone
    for name, node in nodes.items():
        assert_unchanged(node, before[name])


# ------------------------------------------------------------------------------------------- variations, errors


def test_variations_are_named_and_in_the_input_grid(logic, scene, phantom):  # noqa: F811
    volume = add_volume(scene, phantom["t1"], "case t1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    before = snapshot(volume)
    logged = []
    logic.log_callback = logged.append
    try:
        nodes = logic.vary(model=GENERATE, volume=volume, strength=0.1, count=2, seed=5, steps=10)
    finally:
        logic.log_callback = None
    # The engine's warning reaches the module's log: the demo model says it is a phantom model (once per volume).
    assert sum("warning: demo_phantom_64 is a demonstration model" in m for m in logged) == 2, logged
    assert [n.GetName() for n in nodes] == ["case t1 variation 1", "case t1 variation 2"]
    for node, seed in zip(nodes, (5, 6), strict=True):
        np.testing.assert_array_equal(volumes.ijk_to_ras(node), AFFINE)
        assert node.GetParentTransformNode() is transform  # in the input's grid in the world too
        assert volumes.array_ijk_from_node(node).shape == (SIZE,) * 3
        assert volumes.get_attributes(node)["seed"] == str(seed)
    assert not np.array_equal(volumes.array_ijk_from_node(nodes[0]), volumes.array_ijk_from_node(nodes[1]))
    assert_unchanged(volume, before)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    show_task_result(Job(kind="vary", nodes=nodes, inputs={"image": volume}))
    assert composite.GetBackgroundVolumeID() == nodes[0].GetID() and composite.GetForegroundVolumeID() is None


def test_a_model_of_another_task_is_reported_and_the_worker_lives_on(logic, scene, phantom):  # noqa: F811
    volume = add_volume(scene, phantom["t1"], "t1")
    with pytest.raises(GenerationError) as caught:
        logic.vary(model=INPAINT, volume=volume, strength=0.2, steps=4)
    assert caught.value.kind == "ConfigError" and "task is 'inpaint'" in str(caught.value)
    assert logic.worker.running and scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1


# ------------------------------------------------------------------------------------------- the user's scene


def linear_transform(scene, name, rotate_z=0.0, translate=(0.0, 0.0, 0.0)):  # noqa: F811
    transform = vtk.vtkTransform()
    transform.Translate(*translate)
    transform.RotateZ(rotate_z)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node, np.array([[transform.GetMatrix().GetElement(r, c) for c in range(4)] for r in range(4)])


def test_a_labelmap_under_another_transform_lands_on_the_right_voxels(scene):  # noqa: F811
    volume = add_volume(scene, np.zeros((14, 12, 10)), "volume")
    volume_transform, to_world = linear_transform(scene, "volume registration", 12.0, (1.3, -2.1, 0.4))
    volume.SetAndObserveTransformNodeID(volume_transform.GetID())
    label_affine = oblique_affine(spacing=(0.7, 0.8, 0.6), origin=(-24.0, 6.0, -19.0))
    labels = np.zeros((40, 36, 44), dtype=np.uint8)
    labels[8:30, 4:26, 10:34] = 3
    labels[12:16, 10:14, 14:18] = 0
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    volumes.update_volume_node(labelmap, labels, label_affine)
    label_transform, label_to_world = linear_transform(scene, "label registration", -7.0, (-0.9, 0.6, 1.7))
    labelmap.SetAndObserveTransformNodeID(label_transform.GetID())

    mask = tasks.labelmap_mask(labelmap, volume)

    # By hand: volume voxel -> RAS -> world -> the labelmap's frame -> its nearest voxel (inside: within half a voxel).
    to_label = np.linalg.inv(label_affine) @ np.linalg.inv(label_to_world) @ to_world @ AFFINE
    expected = nearest_mask(to_label, (14, 12, 10), labels, np.zeros(3))
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(mask, expected)


def test_resampling_a_labelmap_builds_no_index_grid(scene):  # noqa: F811
    import tracemalloc

    dims = (96, 96, 64)
    volume = add_volume(scene, np.zeros(dims), "volume", affine=oblique_affine(origin=(-40.0, -40.0, -30.0)))
    labels = np.zeros((80, 80, 80), dtype=np.uint8)
    labels[20:60, 20:60, 20:60] = 1
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    volumes.update_volume_node(labelmap, labels, np.diag([1.2, 1.2, 1.2, 1.0]))
    tracemalloc.start()
    try:
        mask = tasks.labelmap_mask(labelmap, volume)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    voxels = int(np.prod(dims))
    assert mask.shape == dims and 0 < mask.sum() < voxels
    # The output and the mask (a few bytes per voxel); an (N, 3) int64 index grid alone would be 24 bytes per voxel.
    assert peak < 6 * voxels, peak / voxels


def surface_segmentation(scene, centre, radius):  # noqa: F811
    """A segmentation whose source representation is a closed surface (a ball), and a second, labelmap-less
    segment; as a model imported into Segmentations is."""
    register_segmentation_converters()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    for name, offset in (("ball", 0.0), ("other", 8.0)):
        sphere = vtk.vtkSphereSource()
        sphere.SetCenter(centre[0] + offset, centre[1], centre[2])
        sphere.SetRadius(radius)
        sphere.SetThetaResolution(48)
        sphere.SetPhiResolution(48)
        sphere.Update()
        segmentation.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), name)
    return segmentation


def representations(segmentation):
    names = []
    segmentation.GetSegmentation().GetContainedRepresentationNames(names)
    return sorted(names)


def test_rasterising_a_segment_leaves_the_users_segmentation_as_it_was(scene):  # noqa: F811
    volume = add_volume(scene, np.zeros((SIZE,) * 3), "volume")
    centre = AFFINE @ np.array([14.0, 16.0, 15.0, 1.0])
    segmentation = surface_segmentation(scene, centre[:3], 5.0)
    transform, to_world = linear_transform(scene, "moved", 0.0, (2.5, 0.0, 0.0))
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # made by the first look-up: not ours
    before = (representations(segmentation), segmentation.GetNumberOfDisplayNodes(), scene.GetNumberOfNodes())
    assert before[0] == ["Closed surface"]

    ball = segmentation.GetSegmentation().GetSegmentIdBySegmentName("ball")
    mask = tasks.segment_mask(scene, segmentation, ball, volume)

    assert (representations(segmentation), segmentation.GetNumberOfDisplayNodes(), scene.GetNumberOfNodes()) == before
    # The ball, moved by its transform, on the volume's grid: every voxel well inside it, none well outside.
    ijk = np.stack(np.meshgrid(*(np.arange(SIZE),) * 3, indexing="ij"), axis=-1)
    distance = np.linalg.norm(ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3] - (to_world @ centre)[:3], axis=-1)
    assert mask[distance < 4.0].all() and not mask[distance > 6.0].any()


def study_of(scene, volume):  # noqa: F811
    """The volume as Slicer's DICOM import leaves it: under a study under a patient."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    hierarchy.CreateItem(study, volume)
    return hierarchy, study


def test_results_go_under_the_inputs_study(logic, scene, phantom):  # noqa: F811
    volume = add_volume(scene, phantom["t1"], "case t1")
    hierarchy, study = study_of(scene, volume)
    (node,) = logic.vary(model=GENERATE, volume=volume, strength=0.1, count=1, seed=2, steps=3)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    assert hierarchy.GetItemName(folder).startswith("case t1 vary")
    assert hierarchy.GetItemParent(folder) == study
    # Nothing to go beside: a folder at the scene's root.
    other = add_volume(scene, phantom["t1"], "loose")
    item = volumes.place_in_folder(scene, [other], "loose results", None, beside=None)
    assert hierarchy.GetItemParent(item) == hierarchy.GetSceneItemID()


def test_closing_the_scene_cancels_a_running_job_and_adds_nothing_to_the_next_scene(logic, scene, phantom):  # noqa: F811
    volume = add_volume(scene, phantom["t1"], "case t1")
    progress, finished = [], []
    job = logic.start_vary(GENERATE, volume, strength=1.0, count=3, seed=0, sampler="ancestral", steps=1000,
                           preview_every=1, on_progress=lambda j, e: progress.append(e),
                           on_finished=finished.append)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while (not progress or progress[-1].get("step", 0) < 2) and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.02)
    assert progress and job.state == "running"

    scene.Clear(0)  # what File > Close scene does (qSlicerMainWindow::on_FileCloseSceneAction_triggered)

    assert job.state == "cancelled" and finished == [job] and "scene was closed" in str(job.error)
    assert not job.output_dir.exists()
    # What the worker still sends for it reaches no scene: nothing is added to the next one.
    logic.wait(logic.request("info"), timeout=120)  # answered after the worker has left the cancelled job
    for _ in range(20):
        logic.poll()
        time.sleep(0.05)
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    assert logic.preview_node is None and job.nodes == []


def test_a_labelmap_under_a_non_linear_transform_is_resampled_through_it(scene):  # noqa: F811
    """A thin-plate spline whose landmarks all move by one vector: Slicer treats it as non-linear (the reslice
    filter gets the general transform), while it moves every point by that vector (an exact expectation)."""
    shift = np.array([1.7, -2.3, 0.9])
    spline = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(-60, -60, -60), (60, -60, -60), (-60, 60, -60), (-60, -60, 60), (60, 60, 60), (0, 10, -5)]:
        source.InsertNextPoint(*point)
        target.InsertNextPoint(*(np.array(point) + shift))
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(spline)
    assert not warp.IsTransformToWorldLinear()
    volume = add_volume(scene, np.zeros((14, 12, 10)), "volume")
    label_affine = oblique_affine(spacing=(0.7, 0.8, 0.6), origin=(-24.0, 6.0, -19.0))
    labels = np.zeros((40, 36, 44), dtype=np.uint8)
    labels[8:30, 4:26, 10:34] = 1
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    volumes.update_volume_node(labelmap, labels, label_affine)
    labelmap.SetAndObserveTransformNodeID(warp.GetID())

    mask = tasks.labelmap_mask(labelmap, volume)

    from_world = np.eye(4)
    from_world[:3, 3] = -shift  # world -> the labelmap's frame
    expected = nearest_mask(np.linalg.inv(label_affine) @ from_world @ AFFINE, (14, 12, 10), labels, np.zeros(3))
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(mask, expected)
