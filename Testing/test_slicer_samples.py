"""Several draws from the Slicer Lib (slicer-core MRML classes, the real worker, the bundled demo models): the
*Samples* setting reaches the worker, and the result is the mean volume plus its uncertainty map, shown in colour
over the mean with a colour legend, both in the job's folder and in the input's grid."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_support import require_slicer, scene  # noqa: F401

slicer = require_slicer()

from WaveletDiffusionCommonLib import volumes  # noqa: E402
from WaveletDiffusionLib import TaskInputError, WaveletDiffusionLogic, show_task_result, taskpanel, tasks  # noqa: E402

import wdmcore  # noqa: E402
from wdmcore.data.contrasts import paired_phantom  # noqa: E402

SIZE = 32
AFFINE = np.diag([7.5, 7.5, 7.5, 1.0])
AFFINE[:3, 3] = -116.25


@pytest.fixture(scope="module")
def shared_logic():
    instance = WaveletDiffusionLogic(None)
    yield instance
    instance.shutdown()


@pytest.fixture
def logic(shared_logic, scene):  # noqa: F811
    shared_logic._scene = scene
    yield shared_logic
    shared_logic.cancel()
    shared_logic._scene = None


def test_several_draws_give_the_mean_and_its_uncertainty_overlay(logic, scene):  # noqa: F811
    contrasts, lesion = paired_phantom(SIZE, 5, 0)
    image = volumes.add_volume_from_array(scene, contrasts["t1"].astype(np.float32), AFFINE, "t1")
    mask = volumes.add_volume_from_array(scene, lesion.astype(np.float32), AFFINE, "lesion")
    job = logic.start_inpaint("demo_phantom_inpaint_32", image, labelmap=mask, seed=3, samples=3, preview=False)
    logic.wait(job, 300)
    assert job.state == "done", job.error
    (mean,) = job.nodes
    (std,) = job.uncertainty_nodes
    direct = wdmcore.inpaint("demo_phantom_inpaint_32", (contrasts["t1"], AFFINE), (lesion, AFFINE), seed=3, samples=3)
    np.testing.assert_allclose(volumes.array_ijk_from_node(mean), direct.array, atol=1e-5)
    np.testing.assert_allclose(volumes.array_ijk_from_node(std), direct.std, atol=1e-5)
    np.testing.assert_allclose(volumes.ijk_to_ras(std), AFFINE, atol=1e-6)
    assert volumes.get_attributes(mean)["samples"] == "3"
    # The std: a colour table from 0 to its largest value, and a colour legend titled in the intensity's units.
    display = std.GetDisplayNode()
    assert display.GetColorNode().GetName() == tasks.UNCERTAINTY_COLORS
    assert display.GetWindowLevelMin() == 0.0 and display.GetWindowLevelMax() == pytest.approx(float(direct.std.max()))
    legends = [std.GetNthDisplayNode(i) for i in range(std.GetNumberOfDisplayNodes())]
    (legend,) = [n for n in legends if n.IsA("vtkMRMLColorLegendDisplayNode")]
    assert legend.GetPrimaryDisplayNode() is display and legend.GetTitleText().startswith("std of the draws")
    assert mean.GetAttribute(tasks.UNCERTAINTY) == std.GetID()
    # Both in the job's folder of the subject hierarchy.
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(std)) == hierarchy.GetItemParent(
        hierarchy.GetItemByDataNode(mean)
    )
    # Shown: the mean in the background, the std in colour over it.
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    show_task_result(job)
    assert composite.GetBackgroundVolumeID() == mean.GetID() and composite.GetForegroundVolumeID() == std.GetID()
    assert 0 < composite.GetForegroundOpacity() < 1


def test_one_sample_makes_no_uncertainty_map(logic, scene):  # noqa: F811
    contrasts, _ = paired_phantom(SIZE, 5, 1)
    nodes = {n: volumes.add_volume_from_array(scene, contrasts[n], AFFINE, n) for n in ("t2", "flair", "pd")}
    job = logic.start_synthesize("demo_phantom_synthesize_32", nodes, sampler="ddim", steps=2, preview=False)
    logic.wait(job, 300)
    assert job.state == "done" and len(job.nodes) == 1 and job.uncertainty_nodes == []
    assert scene.GetFirstNodeByName(tasks.UNCERTAINTY_COLORS) is None


@pytest.mark.parametrize("samples", [0, 1001, 2.5])
def test_a_wrong_sample_count_is_refused_before_the_worker(samples):
    with pytest.raises(TaskInputError, match="number of samples"):
        tasks.TaskParameters("vary", "demo_phantom_64", samples=samples).validate()


def test_the_samples_setting_is_kept_and_planned_for_the_three_tasks(scene):  # noqa: F811
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    inputs = taskpanel.TaskInputs(node)
    assert inputs.samples == 1
    inputs.samples = 8
    assert taskpanel.TaskInputs(node).samples == 8
    assert [taskpanel.uses_samples(t) for t in ("generate", "synthesize", "inpaint", "vary")] == [
        False, True, True, True]  # fmt: skip
