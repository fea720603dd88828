# ruff: noqa: F811 - the scene fixture of slicer_support is an argument of the tests
"""What the panel asks for per task: cards, input slots, the parameter node, input checks and the logic call.

Real MRML nodes of slicer-core: scalar volumes with rotated and shifted grids, segmentations with binary
labelmap segments (also outside the volume, and empty), labelmaps and transforms.
"""

from __future__ import annotations

import inspect
import json
import struct

import numpy as np
import pytest
from slicer_support import REPO_ROOT, require_slicer, scene  # noqa: F401 - the scene fixture
from WaveletDiffusionCommonLib.volumes import add_volume_from_array
from WaveletDiffusionLib import taskpanel
from WaveletDiffusionLib.parameters import GenerationParameters
from WaveletDiffusionLib.taskpanel import INPAINT, LABELMAP, SEGMENT, STRENGTH, SYNTHESIZE, VARY, VOLUME, Selection

CATALOGUE = REPO_ROOT / "WDMCore" / "wdmcore" / "hub" / "models.json"
ASSETS = REPO_ROOT / "WDMCore" / "wdmcore" / "assets"


@pytest.fixture(scope="module")
def cards():
    return taskpanel.catalogue_cards(CATALOGUE)


# ------------------------------------------------------------------------------------------- cards and slots


def test_the_catalogue_cards_name_the_tasks_and_inputs(cards):
    assert taskpanel.tasks_of(cards["demo_phantom_64"]) == ["generate", "vary", "inpaint"]
    assert taskpanel.tasks_of(cards["demo_phantom_synthesize_32"]) == [SYNTHESIZE]
    assert taskpanel.tasks_of(cards["demo_phantom_inpaint_32"]) == [INPAINT]
    assert [i["name"] for i in taskpanel.card_inputs(cards["cwdm_t1n"])] == ["t1c", "t2w", "t2f"]
    # Without a path: the catalogue of the engine this interpreter would give the worker (this checkout's).
    assert taskpanel.catalogue_cards() == cards


def test_an_unreadable_catalogue_gives_no_cards(tmp_path):
    (tmp_path / "models.json").write_text("{not json")
    assert taskpanel.catalogue_cards(tmp_path / "models.json") == {}
    assert taskpanel.catalogue_cards(tmp_path / "missing.json") == {}


def test_synthesis_asks_for_one_volume_per_input_the_card_names(cards):
    slots = taskpanel.input_slots(SYNTHESIZE, cards["demo_phantom_synthesize_32"])
    assert [(s.key, s.kind, s.label) for s in slots] == [("t2", VOLUME, "t2:"), ("flair", VOLUME, "flair:"),
                                                          ("pd", VOLUME, "pd:")]  # fmt: skip
    assert slots[0].tooltip == "phantom contrast t2 (used to synthesize t1)"
    released = taskpanel.input_slots(SYNTHESIZE, cards["cwdm_t1n"])
    assert [s.key for s in released] == ["t1c", "t2w", "t2f"]
    assert released[2].tooltip.startswith("T2-FLAIR MRI")


def test_inpainting_vary_and_generate_slots(cards):
    assert [(s.key, s.kind) for s in taskpanel.input_slots(INPAINT, cards["demo_phantom_inpaint_32"])] == [
        ("volume", VOLUME), ("segment", SEGMENT), ("labelmap", LABELMAP)]  # fmt: skip
    assert [(s.key, s.kind) for s in taskpanel.input_slots(VARY, cards["demo_phantom_64"])] == [
        ("volume", VOLUME), ("strength", STRENGTH)]  # fmt: skip
    assert taskpanel.input_slots("generate", cards["demo_phantom_64"]) == []
    with pytest.raises(ValueError, match="unknown task"):
        taskpanel.input_slots("denoise", {})


def test_sampler_count_and_descriptions_per_task(cards):
    inpaint_card, unconditional = cards["demo_phantom_inpaint_32"], cards["demo_phantom_64"]
    assert not taskpanel.uses_steps(INPAINT, inpaint_card)  # its released steps
    assert taskpanel.uses_steps(INPAINT, unconditional)  # RePaint's steps
    assert taskpanel.uses_steps(VARY, unconditional) and taskpanel.uses_steps(SYNTHESIZE, {})
    # The sampler is chosen for generation, synthesis and variations; RePaint runs the ancestral one.
    assert [t for t in ("generate", SYNTHESIZE, INPAINT, VARY) if taskpanel.uses_sampler(t, unconditional)] == [
        "generate", SYNTHESIZE, VARY]  # fmt: skip
    assert taskpanel.uses_count(VARY) and not taskpanel.uses_count(SYNTHESIZE) and not taskpanel.uses_count(INPAINT)
    text = taskpanel.task_description(SYNTHESIZE, cards["demo_phantom_synthesize_32"])
    assert text.startswith("Synthesizes t1 (phantom contrast t1) from t2, flair, pd")
    assert "RePaint" in taskpanel.task_description(INPAINT, unconditional)
    assert "RePaint" not in taskpanel.task_description(INPAINT, inpaint_card)


def test_the_card_comes_from_the_list_the_catalogue_or_the_checkpoint_file(cards, tmp_path):
    listed = [{"name": "demo_phantom_64", "card": {"task": "synthesize", "inputs": [{"name": "a", "meaning": ""}]}}]
    assert taskpanel.model_card("demo_phantom_64", listed, cards)["task"] == "synthesize"  # the worker's wins
    assert taskpanel.model_card("demo_phantom_inpaint_32", [{"name": "demo_phantom_inpaint_32"}], cards)[
        "task"] == INPAINT  # fmt: skip
    # A bundled .safetensors file: its card, read from the header without torch, says the same as the catalogue.
    for name in ("demo_phantom_synthesize_32", "demo_phantom_inpaint_32", "demo_phantom_64"):
        card = taskpanel.model_card(str(ASSETS / f"{name}.safetensors"), [], cards)
        assert taskpanel.task_of(card) == taskpanel.task_of(cards[name])
        assert card.get("inputs") == cards[name].get("inputs")
    # Not ours, or unreadable: an unconditional model.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    assert taskpanel.model_card(str(bad)) == {}
    assert taskpanel.model_card(str(tmp_path / "released.pt")) == {}


def test_a_checkpoint_card_written_by_safetensors_is_read(tmp_path):
    from safetensors.numpy import save_file

    card = {"task": "inpaint", "inputs": [{"name": "image", "meaning": "x"}, {"name": "mask", "meaning": "m"}]}
    path = tmp_path / "mine.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path), metadata={"wdm_card": json.dumps(card)})
    assert taskpanel.checkpoint_card(path) == card


def test_the_stored_task_is_kept_only_when_the_model_offers_it(cards):
    assert taskpanel.choose_task(VARY, cards["demo_phantom_64"]) == VARY
    assert taskpanel.choose_task(VARY, cards["demo_phantom_synthesize_32"]) == SYNTHESIZE
    assert taskpanel.choose_task("", cards["demo_phantom_64"]) == "generate"


# ------------------------------------------------------------------------------------------- scene helpers


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), degrees=0.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_z(degrees) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def volume(scene, name, shape=(16, 16, 12), **geometry):
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    return add_volume_from_array(scene, array, affine(**geometry), name)


@pytest.fixture(scope="module")
def converters():
    """The labelmap and surface representations (Slicer's Segmentations module registers them at start-up)."""
    slicer = require_slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    return slicer


def add_segment(slicer, segmentation, name, ijk_box, grid):
    """A segment painted on ``grid`` (4x4 image-to-RAS) in the (i, j, k) box ``ijk_box``; None: left empty."""
    from vtk.util import numpy_support

    segment_id = segmentation.GetSegmentation().AddEmptySegment(name, name)
    if ijk_box is None:
        return segment_id
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(16, 16, 12)
    image.SetSpacing(1.0, 1.0, 1.0)
    image.SetOrigin(0.0, 0.0, 0.0)
    spacing = np.linalg.norm(grid[:3, :3], axis=0)
    image.SetSpacing(*spacing)
    image.SetOrigin(*grid[:3, 3])
    directions = grid[:3, :3] / spacing
    image.SetDirections([list(directions[r]) for r in range(3)])
    import vtk

    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(12, 16, 16)
    voxels[:] = 0
    (i0, i1), (j0, j1), (k0, k1) = ijk_box
    voxels[k0:k1, j0:j1, i0:i1] = 1
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, segmentation, segment_id)
    return segment_id


# ------------------------------------------------------------------------------------------- parameter node


def test_task_inputs_live_in_the_parameter_node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    inputs = taskpanel.TaskInputs(node)
    assert (inputs.task, inputs.segment_id, inputs.strength) == ("", "", taskpanel.DEFAULT_STRENGTH)
    t2, flair = volume(scene, "t2"), volume(scene, "flair")
    inputs.set_node("t2", t2)
    inputs.set_node("flair", flair)
    inputs.task, inputs.segment_id, inputs.strength = SYNTHESIZE, "Segment_1", 0.55
    # Another object over the same node (as after a scene reload) reads the same choices.
    again = taskpanel.TaskInputs(node)
    assert again.get_node("t2") is t2 and again.get_node("flair") is flair and again.get_node("pd") is None
    assert (again.task, again.segment_id, again.strength) == (SYNTHESIZE, "Segment_1", 0.55)
    assert node.GetNodeReferenceID("WaveletDiffusion.task.t2") == t2.GetID()
    # Setting the same value again does not modify the node (the widget redraws on every Modified event).
    before = node.GetMTime()
    inputs.set_node("t2", t2)
    inputs.strength = 0.55
    assert node.GetMTime() == before
    scene.RemoveNode(flair)
    assert inputs.get_node("flair") is None
    inputs.set_node("t2", None)
    assert inputs.get_node("t2") is None
    node.SetParameter("WaveletDiffusion.task.strength", "nan")
    assert inputs.strength == taskpanel.DEFAULT_STRENGTH


def test_the_selection_reads_the_slots_of_the_task(scene, cards):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    inputs = taskpanel.TaskInputs(node)
    image, seg = volume(scene, "image"), scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    inputs.set_node("volume", image)
    inputs.set_node("segmentation", seg)
    inputs.segment_id = "lesion"
    chosen = inputs.selection(INPAINT, cards["demo_phantom_inpaint_32"])
    assert (chosen.volume, chosen.segmentation, chosen.segment_id, chosen.labelmap) == (image, seg, "lesion", None)
    inputs.set_node("t2", image)
    chosen = inputs.selection(SYNTHESIZE, cards["demo_phantom_synthesize_32"])
    assert chosen.inputs == {"t2": image, "flair": None, "pd": None} and chosen.volume is None


# ------------------------------------------------------------------------------------------- checks


def test_grid_differences_are_described_in_words(scene):
    reference = volume(scene, "ref", spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0))
    assert taskpanel.grid_difference(volume(scene, "same", spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0)),
                                     reference) is None  # fmt: skip
    bigger = volume(scene, "bigger", shape=(20, 16, 12), spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0))
    assert taskpanel.grid_difference(bigger, reference) == "20 x 16 x 12 voxels instead of 16 x 16 x 12"
    coarse = volume(scene, "coarse", spacing=(2.0, 2.0, 2.0), origin=(10.0, -5.0, 3.0))
    assert taskpanel.grid_difference(coarse, reference) == "voxels of 2 x 2 x 2 mm instead of 1 x 1 x 2 mm"
    turned = volume(scene, "turned", spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0), degrees=30.0)
    assert taskpanel.grid_difference(turned, reference) == "axes turned by 30.0 degrees"
    shifted = volume(scene, "shifted", spacing=(1.0, 1.0, 2.0), origin=(13.0, -1.0, 3.0))
    assert taskpanel.grid_difference(shifted, reference) == "its first voxel 5.0 mm away"
    nudged = volume(scene, "nudged", spacing=(1.0, 1.0, 2.0), origin=(10.0005, -5.0, 3.0))  # within 1 um
    assert taskpanel.grid_difference(nudged, reference) is None


def test_synthesis_inputs_must_all_be_chosen_and_share_one_grid(scene, cards):
    card = cards["demo_phantom_synthesize_32"]
    t2 = volume(scene, "case t2", degrees=12.0, origin=(1.0, 2.0, 3.0))
    flair = volume(scene, "case flair", degrees=12.0, origin=(1.0, 2.0, 3.0))
    problems = taskpanel.check_selection(SYNTHESIZE, card, Selection(SYNTHESIZE, inputs={"t2": t2, "flair": flair}))
    assert problems == ["Choose the volume for 'pd' (phantom contrast pd)."]
    pd = volume(scene, "case pd", shape=(16, 16, 10), spacing=(1.0, 1.0, 1.5), degrees=12.0, origin=(1.0, 2.0, 3.0))
    problems = taskpanel.check_selection(SYNTHESIZE, card, Selection(SYNTHESIZE, inputs={"t2": t2, "flair": flair,
                                                                                         "pd": pd}))  # fmt: skip
    assert problems == [
        "'pd' (case pd) is not on the grid of 't2' (case t2): 16 x 16 x 10 voxels instead of 16 x 16 x 12, voxels "
        "of 1 x 1 x 1.5 mm instead of 1 x 1 x 1 mm. Resample it onto that volume (module Resample Scalar/Vector/DTI "
        "Volume) or register the inputs to each other first."
    ]
    good = volume(scene, "case pd ok", degrees=12.0, origin=(1.0, 2.0, 3.0))
    chosen = Selection(SYNTHESIZE, inputs={"t2": t2, "flair": flair, "pd": good})
    assert taskpanel.check_selection(SYNTHESIZE, card, chosen) == []
    twice = Selection(SYNTHESIZE, inputs={"t2": t2, "flair": t2, "pd": good})
    assert taskpanel.check_selection(SYNTHESIZE, card, twice) == [
        "The same volume is chosen for two inputs; choose one volume per input."]  # fmt: skip


def test_a_volume_under_a_transform_must_be_hardened_first(scene, cards):
    image = volume(scene, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    image.SetAndObserveTransformNodeID(transform.GetID())
    problems = taskpanel.check_selection(VARY, cards["demo_phantom_64"], Selection(VARY, volume=image, strength=0.3))
    assert len(problems) == 1 and "under the transform 'registration'" in problems[0] and "Harden" in problems[0]


def test_vary_needs_a_volume_and_a_strength_above_zero(scene, cards):
    card, image = cards["demo_phantom_64"], volume(scene, "image")
    assert taskpanel.check_selection(VARY, card, Selection(VARY, strength=0.3)) == ["Choose the volume to vary."]
    assert taskpanel.check_selection(VARY, card, Selection(VARY, volume=image, strength=0.0)) == [
        "The strength is 0; choose a value above 0 and at most 1."]  # fmt: skip
    assert taskpanel.check_selection(VARY, card, Selection(VARY, volume=image, strength=1.0)) == []


def test_inpainting_checks_the_segment_on_the_volumes_grid(scene, cards, converters):
    card = cards["demo_phantom_inpaint_32"]
    grid = affine(spacing=(1.0, 1.0, 1.5), origin=(-8.0, 4.0, 2.0), degrees=25.0)  # not axis-aligned
    image = volume(scene, "t1 case", spacing=(1.0, 1.0, 1.5), origin=(-8.0, 4.0, 2.0), degrees=25.0)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    inside = add_segment(converters, segmentation, "lesion", ((4, 7), (5, 8), (3, 5)), grid)
    # Painted on the volume's own grid: one labelmap voxel per volume voxel.
    assert taskpanel.segment_voxels_in_grid(segmentation, inside, image) == 3 * 3 * 2
    empty = add_segment(converters, segmentation, "nothing", None, grid)
    far = add_segment(converters, segmentation, "elsewhere", ((2, 4), (2, 4), (2, 4)), affine(origin=(500.0, 0, 0)))

    def check(**chosen):
        return taskpanel.check_selection(INPAINT, card, Selection(INPAINT, **chosen))

    # A segment on another grid makes the segmentation resample its shared labelmap: still inside.
    assert taskpanel.segment_voxels_in_grid(segmentation, inside, image) >= 3 * 3 * 2
    assert taskpanel.segment_voxels_in_grid(segmentation, far, image) == 0
    assert check(volume=image, segmentation=segmentation, segment_id=inside) == []
    assert check(volume=image, segmentation=segmentation, segment_id=empty) == [
        "The segment 'nothing' covers no voxel of 't1 case': paint it on this volume (Segment Editor) or choose "
        "another segment."]  # fmt: skip
    assert check(volume=image, segmentation=segmentation, segment_id=far)[0].startswith(
        "The segment 'elsewhere' covers no voxel of 't1 case'")  # fmt: skip
    assert check(volume=image, segmentation=segmentation) == ["Choose a segment of 'lesions' to fill."]
    assert check(volume=image) == [
        "Choose the region to fill: a segmentation and one of its segments (or a labelmap)."]  # fmt: skip
    assert check(segmentation=segmentation, segment_id=inside) == ["Choose the volume to fill."]


def test_inpainting_with_a_labelmap(scene, cards):
    card = cards["demo_phantom_64"]  # RePaint with the unconditional model: the same checks
    image = volume(scene, "image", origin=(1.0, 1.0, 1.0))
    mask = np.zeros((16, 16, 12), np.uint8)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    from WaveletDiffusionCommonLib.volumes import update_volume_node

    update_volume_node(labelmap, mask, affine(origin=(1.0, 1.0, 1.0)))
    chosen = Selection(INPAINT, volume=image, labelmap=labelmap)
    assert taskpanel.check_selection(INPAINT, card, chosen) == [
        "The labelmap 'mask' is empty: paint the region to fill first."]  # fmt: skip
    mask[3:6, 3:6, 3:6] = 1
    update_volume_node(labelmap, mask, affine(origin=(1.0, 1.0, 1.0)))
    assert taskpanel.check_selection(INPAINT, card, chosen) == []
    update_volume_node(labelmap, mask, affine(origin=(1.0, 1.0, 4.0)))
    assert taskpanel.check_selection(INPAINT, card, chosen) == [
        "The labelmap 'mask' is not on the grid of 'image': its first voxel 3.0 mm away. Choose a segment instead "
        "(it is rasterised on the volume's grid), or resample the labelmap onto the volume."]  # fmt: skip


# ------------------------------------------------------------------------------------------- the run


# The logic's task API, as the panel calls it (WaveletDiffusionLib.logic).
def start_synthesize(model, inputs, *, seed, sampler, steps, device, precision, backend, preview, on_progress,
                     on_preview, on_finished): ...  # fmt: skip
def start_inpaint(model, volume, *, segmentation=None, segment_id=None, labelmap=None, seed, steps, device, precision,
                  backend, preview, on_progress, on_preview, on_finished): ...  # fmt: skip
def start_vary(model, volume, *, strength, count, seed, sampler, steps, device, precision, backend, preview,
               on_progress, on_preview, on_finished): ...  # fmt: skip


API = {"start_synthesize": start_synthesize, "start_inpaint": start_inpaint, "start_vary": start_vary}
CALLBACKS = {"on_progress": None, "on_preview": None, "on_finished": None}


def plans(scene, cards):
    settings = GenerationParameters(model="m", seed=11, sampler="dpm++2m", steps=20, device="cuda:0", count=3,
                                    precision="bf16", backend="torch")  # fmt: skip
    t2, flair, pd = (volume(scene, n) for n in ("t2", "flair", "pd"))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.GetSegmentation().AddEmptySegment("s1", "lesion")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    return settings, {
        "synthesize": taskpanel.run_plan(SYNTHESIZE, cards["demo_phantom_synthesize_32"], "demo_phantom_synthesize_32",
                                         Selection(SYNTHESIZE, inputs={"pd": pd, "t2": t2, "flair": flair}), settings),
        "inpaint": taskpanel.run_plan(INPAINT, cards["demo_phantom_inpaint_32"], "demo_phantom_inpaint_32",
                                      Selection(INPAINT, volume=t2, segmentation=segmentation, segment_id="s1"),
                                      settings),
        "repaint": taskpanel.run_plan(INPAINT, cards["demo_phantom_64"], "demo_phantom_64",
                                      Selection(INPAINT, volume=t2, labelmap=labelmap), settings),
        "vary": taskpanel.run_plan(VARY, cards["demo_phantom_64"], "demo_phantom_64",
                                   Selection(VARY, volume=flair, strength=0.25), settings),
    }, (t2, flair, pd, segmentation, labelmap)  # fmt: skip


def test_run_makes_one_call_of_the_logic_per_task(scene, cards):
    settings, made, (t2, flair, pd, segmentation, labelmap) = plans(scene, cards)
    synth = made["synthesize"]
    assert synth.method == "start_synthesize" and synth.args[0] == "demo_phantom_synthesize_32"
    assert list(synth.args[1].items()) == [("t2", t2), ("flair", flair), ("pd", pd)]  # the card's order
    assert synth.kwargs == {
        "seed": 11,
        "device": "cuda:0",
        "precision": "bf16",
        "backend": "torch",
        "preview": True,
        "sampler": "dpm++2m",
        "steps": 20,
    }
    assert synth.description == "synthesizing t1 from t2=t2, flair=flair, pd=pd"
    inpaint = made["inpaint"]
    assert inpaint.method == "start_inpaint" and inpaint.args == ("demo_phantom_inpaint_32", t2)
    assert inpaint.kwargs == {"seed": 11, "device": "cuda:0", "precision": "bf16", "backend": "torch",
                              "preview": True, "steps": None, "segmentation": segmentation,
                              "segment_id": "s1"}  # fmt: skip
    assert inpaint.description == "inpainting segment lesion of t2"
    repaint = made["repaint"]
    assert repaint.kwargs == {
        "seed": 11,
        "device": "cuda:0",
        "precision": "bf16",
        "backend": "torch",
        "preview": True,
        "steps": 20,
        "labelmap": labelmap,
    }
    vary = made["vary"]
    assert vary.method == "start_vary" and vary.args == ("demo_phantom_64", flair)
    assert vary.kwargs == {"seed": 11, "device": "cuda:0", "precision": "bf16", "backend": "torch", "preview": True,
                           "sampler": "dpm++2m", "steps": 20, "strength": 0.25, "count": 3}  # fmt: skip
    generate = taskpanel.run_plan("generate", cards["demo_phantom_64"], "demo_phantom_64", Selection("generate"),
                                  settings)  # fmt: skip
    assert generate.method == "start_generation" and generate.args == (settings,)
    for plan in made.values():  # each call fits the logic's API with the panel's callbacks
        inspect.signature(API[plan.method]).bind(*plan.args, **plan.kwargs, **CALLBACKS)


def test_the_calls_fit_the_logic_when_it_has_the_tasks(scene, cards):
    from WaveletDiffusionLib.logic import WaveletDiffusionLogic

    if not all(hasattr(WaveletDiffusionLogic, m) for m in API):
        pytest.skip("this logic has no task methods (start_synthesize, start_inpaint, start_vary) yet")
    _settings, made, _nodes = plans(scene, cards)
    for plan in made.values():
        inspect.signature(getattr(WaveletDiffusionLogic, plan.method)).bind(None, *plan.args, **plan.kwargs,
                                                                            **CALLBACKS)  # fmt: skip


class FakeJob:
    def __init__(self, state, names=(), error=None):
        self.state, self.error = state, error
        self.nodes = [type("Node", (), {"GetName": lambda self, n=n: n})() for n in names]


def test_status_texts():
    assert taskpanel.finished_text(SYNTHESIZE, FakeJob("done", ["case t1 (synthesized)"]), "12 s") == (
        "Synthesized in 12 s: case t1 (synthesized).")  # fmt: skip
    assert taskpanel.finished_text(VARY, FakeJob("cancelled", ["v1"]), "3 s") == "Cancelled; kept v1."
    assert taskpanel.finished_text(INPAINT, FakeJob("failed", error="mask on another grid"), "1 s") == (
        "Failed: mask on another grid")  # fmt: skip
    assert taskpanel.progress_text({"step": 3, "steps": 20, "eta_s": 40.0}, lambda s: f"{s:.0f} s") == (
        "Step 3 of 20, about 40 s left")  # fmt: skip
    assert taskpanel.progress_text({}, str) == "Working..."
