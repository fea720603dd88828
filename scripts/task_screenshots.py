"""The panel of the *Wavelet Diffusion* module per task (synthesize, inpaint, vary), for make_screenshot.py.

Each screenshot is the real .ui with the rows ``WaveletDiffusionLib.taskpanel`` decides for the task and the
bundled demo model, the input check run on real slicer-core volume and segmentation nodes, and beside it the
inputs and the result of the engine's task function (what the worker runs) on a paired phantom.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "Resources" / "Screenshots"
PHANTOM_SEED = 20260  # a paired phantom the demo models were not trained on (their data: seed 0)
SIZE = 32
STEPS = 25  # the panel's default (UniPC, 25 steps)
STRENGTH = 0.3
MODELS = {"synthesize": "demo_phantom_synthesize_32", "inpaint": "demo_phantom_inpaint_32", "vary": "demo_phantom_64"}


class Result:
    """What the status line needs of a finished job (taskpanel.finished_text)."""

    def __init__(self, names):
        self.state, self.error = "done", None
        self.nodes = [type("Node", (), {"GetName": lambda self, n=n: n})() for n in names]


def segmentation_from_mask(slicer, scene, mask, affine, name="lesions", segment="lesion"):
    """A segmentation node whose one segment is ``mask`` on the grid ``affine`` (as the Segment Editor makes)."""
    import vtk
    from vtk.util import numpy_support

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():  # Slicer's Segmentations module registers these at start-up
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segment_id = node.GetSegmentation().AddEmptySegment(segment, segment)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*mask.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(*spacing)
    image.SetOrigin(*affine[:3, 3])
    directions = affine[:3, :3] / spacing
    image.SetDirections([list(directions[r]) for r in range(3)])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    voxels[:] = np.transpose(mask.astype(np.uint8), (2, 1, 0)).ravel()
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, node, segment_id)
    return node, segment_id


def run(task: str):
    """(selection, result names, image rows, elapsed seconds): the engine's task on a paired phantom."""
    import slicer
    from WaveletDiffusionCommonLib.volumes import add_volume_from_array
    from WaveletDiffusionLib import taskpanel

    import wdmcore
    from wdmcore.data.contrasts import paired_phantom
    from wdmcore.data.phantoms import generate_phantom, phantom_affine

    scene = slicer.mrmlScene = slicer.vtkMRMLScene()
    contrasts, mask = paired_phantom(SIZE, PHANTOM_SEED, 0)
    affine = phantom_affine(SIZE)
    started = time.monotonic()
    if task == "synthesize":
        names = ("t2", "flair", "pd")
        nodes = {n: add_volume_from_array(scene, contrasts[n], affine, f"phantom {n}") for n in names}
        chosen = taskpanel.Selection(task, inputs=nodes)
        result = wdmcore.synthesize(MODELS[task], {n: (contrasts[n], affine) for n in names}, seed=0,
                                    sampler="unipc", steps=STEPS, device="cpu")  # fmt: skip
        rows = [("phantom t2 (input)", contrasts["t2"], None), ("t1 synthesized", result.array, None),
                ("phantom t1 (the true one, for comparison)", contrasts["t1"], None)]  # fmt: skip
        return chosen, ["phantom t1 (synthesized)"], rows, time.monotonic() - started
    if task == "inpaint":
        image = add_volume_from_array(scene, contrasts["t1"], affine, "phantom t1")
        segmentation, segment_id = segmentation_from_mask(slicer, scene, mask, affine)
        chosen = taskpanel.Selection(task, volume=image, segmentation=segmentation, segment_id=segment_id)
        result = wdmcore.inpaint(MODELS[task], (contrasts["t1"], affine), (mask.astype(np.uint8), affine), seed=0,
                                 device="cpu")  # fmt: skip
        rows = [("phantom t1 with the segment 'lesion' (red)", contrasts["t1"], mask),
                ("inpainted (outside the segment: the input)", result.array, None)]  # fmt: skip
        return chosen, ["phantom t1 (inpainted)"], rows, time.monotonic() - started
    if task == "vary":
        size = 64
        phantom = generate_phantom(size, seed=PHANTOM_SEED)
        vary_affine = phantom_affine(size)
        image = add_volume_from_array(scene, phantom, vary_affine, "phantom")
        chosen = taskpanel.Selection(task, volume=image, strength=STRENGTH)
        result = wdmcore.vary(MODELS[task], (phantom, vary_affine), strength=STRENGTH, seed=0, steps=STEPS,
                              device="cpu")  # fmt: skip
        rows = [("phantom (input)", phantom, None), (f"variation, strength {STRENGTH}", result.array, None)]
        return chosen, ["phantom (variation 1)"], rows, time.monotonic() - started
    raise ValueError(task)


def fill_inputs(panel, QtWidgets, task, card, chosen):  # noqa: N803 - the Qt module
    """The selectors show the chosen nodes, as the widget's showTask does; the check line shows what
    taskpanel.check_selection says of them."""
    from WaveletDiffusionLib import taskpanel

    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    if task == taskpanel.SYNTHESIZE:
        layout = find(QtWidgets.QWidget, "synthesisInputsWidget").layout()
        for slot in taskpanel.input_slots(task, card):
            combo = QtWidgets.QComboBox()
            combo.addItem(chosen.inputs[slot.key].GetName())
            combo.setToolTip(slot.tooltip)
            layout.addRow(QtWidgets.QLabel(slot.label), combo)
    if chosen.volume is not None:
        find(QtWidgets.QComboBox, "inputVolumeSelector").addItem(chosen.volume.GetName())
    if chosen.segmentation is not None:
        segment = chosen.segmentation.GetSegmentation().GetSegment(chosen.segment_id)
        find(QtWidgets.QComboBox, "segmentSelectorWidget").addItem(
            f"{chosen.segmentation.GetName()}  |  {segment.GetName()}")  # fmt: skip
        find(QtWidgets.QComboBox, "labelmapSelector").addItem("None")
    find(QtWidgets.QDoubleSpinBox, "strengthSliderWidget").setValue(chosen.strength)
    problems = taskpanel.check_selection(task, card, chosen)
    find(QtWidgets.QLabel, "inputCheckLabel").setText("\n".join(problems) or "Inputs are ready.")
    return problems


def render_task(task, load_panel, show_task_rows, slice_image) -> Path:
    chosen, names, rows, elapsed = run(task)
    from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets
    from WaveletDiffusionLib import taskpanel

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv)
    card = taskpanel.catalogue_cards()[MODELS[task]]
    panel = load_panel(QtCore, QtUiTools)
    find = lambda cls, name: panel.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QComboBox, "modelComboBox").addItems(
        [f"{MODELS[task]} (cached)", "cwdm_t1n (not downloaded)", "fastwdm3d (not downloaded)"])  # fmt: skip
    info = {"synthesize": "synthesises t1 from t2, flair and pd", "inpaint": "fills a masked region of a phantom t1",
            "vary": "phantom volumes of 64^3"}[task]  # fmt: skip
    find(QtWidgets.QLabel, "modelInfoLabel").setText(f"Bundled demo model: {info}. Not a medical model.\ncached")
    show_task_rows(panel, QtWidgets, task, card)
    problems = fill_inputs(panel, QtWidgets, task, card, chosen)
    assert not problems, problems
    find(QtWidgets.QSpinBox, "seedSpinBox").setValue(0)
    find(QtWidgets.QSpinBox, "stepsSpinBox").setValue(STEPS)
    find(QtWidgets.QPushButton, "downloadButton").setEnabled(False)
    find(QtWidgets.QProgressBar, "progressBar").setValue(1000)
    find(QtWidgets.QLabel, "statusLabel").setText(taskpanel.finished_text(task, Result(names), f"{elapsed:.0f} s"))
    find(QtWidgets.QGroupBox, "logCollapsibleButton").setVisible(False)
    height = 900
    panel.resize(max(430, panel.sizeHint().width()), height)
    left = panel.width() + 20
    slice_size = 240
    canvas = QtGui.QImage(left + 3 * (slice_size + 10) + 10, height, QtGui.QImage.Format_RGB32)
    canvas.fill(QtGui.QColor(30, 30, 30))
    painter = QtGui.QPainter(canvas)
    panel.render(painter, QtCore.QPoint(0, 0))
    painter.setPen(QtGui.QColor(230, 230, 230))
    font = painter.font()
    font.setPointSize(10)
    painter.setFont(font)
    spacing = np.full(3, 1.0)
    # Inpainting: the slices through the segment's centre (the mid-slices may miss it); otherwise mid-slices.
    region = next((overlay for _title, _array, overlay in rows if overlay is not None), None)
    centre = None if region is None else np.round(np.argwhere(region).mean(axis=0)).astype(int)
    where = "mid-slices" if centre is None else "slices through the segment's centre"
    for row, (title, array, overlay) in enumerate(rows):
        y = 40 + row * (slice_size + 40)
        painter.drawText(left, y - 12, f"{title}: axial, coronal, sagittal {where}")
        for col, axis in enumerate((2, 1, 0)):
            index = None if centre is None else int(centre[axis])
            image = slice_image(QtGui, array, spacing, axis, slice_size, index)
            if overlay is not None:
                image = outline(QtGui, image, overlay, axis, index)
            painter.drawImage(left + col * (slice_size + 10), y, image)
    what = {"synthesize": "wdmcore.synthesize", "inpaint": "wdmcore.inpaint", "vary": "wdmcore.vary"}[task]
    trained = card.get("training", {}).get("steps")
    painter.drawText(left, height - 60, f"Model: {MODELS[task]} (bundled demo model, {trained} training steps).")
    data = "a phantom" if task == "vary" else "a paired phantom"
    painter.drawText(left, height - 40, f"Result: {what} on {data} (seed {PHANTOM_SEED}), CPU, {elapsed:.0f} s.")
    painter.drawText(left, height - 20, "Panel: the module's .ui drawn by Qt offscreen; inputs checked on MRML nodes.")
    painter.end()
    out = SHOTS / f"WaveletDiffusion_{task}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(str(out))
    print(out)
    del app
    return out


def outline(QtGui, image, mask, axis, index):  # noqa: N803 - the Qt module
    """Slice ``index`` of ``mask`` drawn in red over ``image`` (scaled to the image, as slice_image lays it out)."""
    plane = np.rot90(np.take(mask, index, axis=axis))
    if not plane.any():
        return image
    result = image.convertToFormat(QtGui.QImage.Format_RGB32)
    painter = QtGui.QPainter(result)
    painter.setPen(QtGui.QColor(230, 40, 40))
    sy, sx = result.height() / plane.shape[0], result.width() / plane.shape[1]
    for r, c in zip(*np.nonzero(plane), strict=True):
        painter.fillRect(int(c * sx), int(r * sy), max(1, int(sx)), max(1, int(sy)), QtGui.QColor(230, 40, 40, 110))
    painter.end()
    return result
