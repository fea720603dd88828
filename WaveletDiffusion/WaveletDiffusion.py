"""Wavelet Diffusion: generate 3-D medical volumes with 3-D wavelet diffusion models (WDM).

The module class, a thin widget and the self-test. The widget's panels (models, checkpoints, generation, tasks)
are in ``WaveletDiffusionWidgets``; the work is done by ``WaveletDiffusionLib`` (logic that never imports Qt) on
``WaveletDiffusionCommonLib`` (shared with the training module) and by a worker process running ``wdmcore``;
nothing heavy runs on the GUI thread.
"""

from __future__ import annotations

import logging
import shutil
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from WaveletDiffusionCommonLib import dependencies, reloading, settings
from WaveletDiffusionCommonWidgets import selftests
from WaveletDiffusionCommonWidgets.helpers import (
    CONTRIBUTORS,
    documentationLink,
    errorDetails,
    showUnsupportedPython,
    slicerInstallers,
)
from WaveletDiffusionLib import parameters, taskpanel
from WaveletDiffusionLib.logic import GenerationCancelled, GenerationError
from WaveletDiffusionLib.logic import WaveletDiffusionLogic as _GenerationLogic
from WaveletDiffusionLib.parameters import GenerationParameters
from WaveletDiffusionWidgets import CheckpointPanel, GenerationPanel, ModelPanel, TaskPanel

# The packages that Reload must reload as well: Slicer reloads this file only.
LIB_PACKAGES = (
    "WaveletDiffusionCommonLib",
    "WaveletDiffusionCommonWidgets",
    "WaveletDiffusionLib",
    "WaveletDiffusionWidgets",
)


class WaveletDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Wavelet Diffusion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["Segmentations"]  # qMRMLSegmentSelectorWidget, segment export for inpainting
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = (
            _(
                "Generate synthetic 3-D volumes (brain MRI, chest CT, a demo phantom) with 3-D wavelet diffusion "
                "models, synthesize a missing MR sequence from the others, fill a segment of a volume, or make "
                "variations of a volume. Choose a model: its card decides which task and which inputs the panel "
                "asks for. Needs Slicer 5.10 or later."
            )
            + documentationLink()
        )
        self.parent.acknowledgementText = _(
            "Based on WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis "
            "(P. Friedrich, J. Wolleb, F. Bieder, A. Durrer, P. C. Cattin, DGM4MICCAI 2024)."
        )


@parameterNodeWrapper
class WaveletDiffusionParameterNode:
    """The generation settings saved with the scene (the model and device are chosen from live lists)."""

    model: str = parameters.DEFAULT_MODEL
    preset: str = ""
    device: str = "cpu"
    sampler: Annotated[str, Choice(list(parameters.SAMPLERS))] = "unipc"
    steps: Annotated[int, WithinRange(1, 1000)] = 10
    count: Annotated[int, WithinRange(1, 100)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    batchSize: Annotated[int, WithinRange(1, 16)] = 1
    precision: Annotated[str, Choice(list(parameters.PRECISIONS))] = "auto"
    backend: Annotated[str, Choice(list(parameters.BACKENDS))] = "auto"
    outputName: str = ""
    preview: bool = True

    def toGenerationParameters(self) -> GenerationParameters:
        return GenerationParameters(
            model=self.model,
            preset=self.preset,
            device=self.device,
            sampler=self.sampler,
            steps=self.steps,
            count=self.count,
            seed=self.seed,
            batch_size=self.batchSize,
            precision=self.precision,
            backend=self.backend,
            output_name=self.outputName,
            preview=self.preview,
        )

    def setFromGenerationParameters(self, params: GenerationParameters) -> None:
        self.model, self.preset, self.device = params.model, params.preset, params.device
        self.sampler, self.steps, self.count = params.sampler, params.steps, params.count
        self.batchSize, self.precision, self.preview = params.batch_size, params.precision, params.preview
        self.backend = params.backend


OPENVINO_QUESTION = _(
    "The OpenVINO backend needs {packages} (the engine's optional openvino package; it runs the network faster "
    "on many CPUs). Install it now? Otherwise PyTorch runs the network."
)


class WaveletDiffusionLogic(ScriptedLoadableModuleLogic, _GenerationLogic):
    """The Lib's logic wired to Slicer: PythonSlicer runs the worker, a QTimer polls, the GUI stays live.

    From the Python console::

        logic = slicer.util.getModuleLogic("WaveletDiffusion")  # or WaveletDiffusionLogic()
        nodes = logic.generate(model="demo_phantom_64", count=2, seed=7, steps=25, device="cpu")
    """

    def __init__(self):
        # ScriptedLoadableModuleLogic.__init__ runs the Lib logic's __init__ (through super()); configure it
        # rather than running that __init__ a second time.
        ScriptedLoadableModuleLogic.__init__(self)
        self.configure(
            python=shutil.which("PythonSlicer") or None,
            idle=slicer.app.processEvents,
            schedule=lambda ms, callback: qt.QTimer.singleShot(ms, callback),
            base_env=slicer.util.startupEnvironment,
            provided_root=slicer.app.extensionsInstallPath,
            dependency_gate=lambda: dependencies.ensure_dependencies(slicerInstallers()),
            backend_gate=lambda backend: dependencies.offer_backend(
                slicerInstallers(), backend, question=OPENVINO_QUESTION, testing=slicer.app.testingEnabled()
            ),
        )

    def getParameterNode(self):
        """The scene's parameter node; a new one starts from the user's last choices (QSettings), one that came
        with a loaded scene keeps that scene's settings."""
        node = super().getParameterNode()
        fresh = settings.is_new_parameter_node(node)
        wrapped = WaveletDiffusionParameterNode(node)
        if fresh:
            wrapped.setFromGenerationParameters(
                parameters.load_settings(qt.QSettings(), wrapped.toGenerationParameters())
            )
        return wrapped

    def ensureDependencies(self) -> None:
        """Install what the worker needs, after asking (once per session): the gate every request of the logic
        passes (``require_dependencies``), called by the panel before its first request."""
        self.require_dependencies()


class WaveletDiffusionWidget(
    ModelPanel, CheckpointPanel, GenerationPanel, TaskPanel, ScriptedLoadableModuleWidget, VTKObservationMixin
):
    """The panel: set-up, the parameter node and the buttons' state; each task's panel is a class of
    WaveletDiffusionWidgets, mixed in."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._downloadJob = None
        self._models = []
        self._customCheckpoints = []
        self._volumesShown = 0
        self._catalogueCards = {}
        self._samplingCard = None  # the card of the model the sampler settings were last fitted to
        self._synthesisSlots = []  # (key, label, selector) of the synthesis inputs shown now
        self._task = taskpanel.GENERATE
        self._runningTask = taskpanel.GENERATE

    # ------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if showUnsupportedPython(self.layout, _("Wavelet Diffusion")):
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WaveletDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = WaveletDiffusionLogic()
        self.logic.log_callback = self.appendLog
        self.settings = qt.QSettings()
        self._lastDevices = []

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.refreshModelsButton.clicked.connect(self.onRefreshModels)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.downloadButton.clicked.connect(self.onDownload)
        self.ui.cancelDownloadButton.clicked.connect(self.onCancelDownload)
        self.ui.openCheckpointButton.clicked.connect(self.onOpenCheckpoint)
        # User actions only. What shows parameter values (the preset, device and sampler-preset boxes) follows
        # the parameter node through its Modified event, which comes after connectGui's own slots have written
        # the new value (PythonQt calls slots in connection order, and these connect before connectGui).
        self.ui.presetComboBox.activated.connect(self.onPresetChosen)
        self.ui.deviceComboBox.activated.connect(self.onDeviceChosen)
        self.ui.backendComboBox.activated.connect(self.onBackendChosen)  # choosing OpenVINO offers to install it
        self.ui.samplerPresetComboBox.activated.connect(self.onSamplerPresetChosen)
        self.ui.randomSeedButton.clicked.connect(self.onRandomSeed)
        self.ui.generateButton.clicked.connect(self.onGenerate)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        # The task's inputs live in the parameter node through taskpanel.TaskInputs (node references per input
        # name); these slots store the user's choice, onParameterNodeModified shows what is stored.
        self.ui.taskComboBox.activated.connect(self.onTaskChosen)
        self.ui.inputVolumeSelector.currentNodeChanged.connect(lambda node: self.storeInputNode("volume", node))
        self.ui.labelmapSelector.currentNodeChanged.connect(lambda node: self.storeInputNode("labelmap", node))
        self.ui.segmentSelectorWidget.currentNodeChanged.connect(
            lambda node: self.storeInputNode("segmentation", node))  # fmt: skip
        self.ui.segmentSelectorWidget.currentSegmentChanged.connect(self.onSegmentChosen)
        self.ui.strengthSliderWidget.minimum, self.ui.strengthSliderWidget.maximum = taskpanel.strength_range()
        self.ui.strengthSliderWidget.valueChanged.connect(self.onStrengthChosen)
        self._catalogueCards = taskpanel.catalogue_cards()

        self.initializeParameterNode()
        self.setModelItems([])
        self.updateButtons()

    def onReload(self) -> None:
        """Reload the Lib as well: Slicer reloads this file only (importlib.reload; Python 3.12 has no imp)."""
        reloading.reload_packages(LIB_PACKAGES)
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.shutdown()  # within about 4 s: the worker's whole process tree ends

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.preview_node = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Show what the parameter node holds in the boxes that connectGui does not bind."""
        self.showPresetAndDevice()
        self.showBackend()
        self.updateSamplerPreset()
        self.showTask()

    # ------------------------------------------------------------------------------------------- helpers

    def updateButtons(self) -> None:
        generating = self._job is not None
        downloading = self._downloadJob is not None
        info = self.selectedModel()[1]
        self.ui.generateButton.enabled = not generating and not downloading
        self.ui.cancelButton.enabled = generating
        self.ui.downloadButton.enabled = (
            info is not None and not info["cached"] and info["source"] == "huggingface" and not downloading
        )
        self.ui.cancelDownloadButton.enabled = downloading
        self.ui.refreshModelsButton.enabled = not generating and not downloading

    def appendLog(self, message: str) -> None:
        logging.info(message)
        self.ui.logTextEdit.appendPlainText(message)

    def showError(self, title: str, error) -> None:
        message = str(error)
        self.appendLog(f"{title}: {message}")
        if isinstance(error, GenerationCancelled):
            return
        detail = getattr(error, "detail", "") if isinstance(error, GenerationError) else ""
        slicer.util.errorDisplay(f"{title}:\n{message}", **errorDetails(detail))


# The bundled demo models the self-tests use (shipped with the engine: no download), both 32^3.
DEMO_SYNTHESIZE = "demo_phantom_synthesize_32"  # t1 from t2, flair and pd
DEMO_INPAINT = "demo_phantom_inpaint_32"  # fills a mask of a volume


class WaveletDiffusionTest(selftests.SelfTest):
    """Generation, synthesis, inpainting and variations with the bundled demo models on the CPU (seconds each);
    in testing mode a missing requirement skips them (see ``selftests.SelfTest``)."""

    requester = "Wavelet Diffusion"

    @classmethod
    def makeLogic(cls):
        return WaveletDiffusionLogic()

    def requireModels(self, *models: str) -> WaveletDiffusionLogic:
        logic = self.requireLogic()
        cached = {m["name"] for m in logic.list_models() if m["cached"]}
        absent = [name for name in models if name not in cached]
        if absent:
            self.skip(f"the demo models {', '.join(absent)} are not part of this installation (reinstall it).")
        return logic

    def assertResultOnGridOf(self, node, reference):
        import numpy as np
        from WaveletDiffusionCommonLib import volumes

        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(node.GetID()))
        array = volumes.array_ijk_from_node(node)
        self.assertEqual(array.shape, volumes.array_ijk_from_node(reference).shape)
        np.testing.assert_allclose(volumes.ijk_to_ras(node), volumes.ijk_to_ras(reference), atol=1e-6)
        self.assertTrue(np.isfinite(array).all())
        return array

    # ------------------------------------------------------------------------------------------- tests

    def test_GenerateDemoVolumes(self):
        import numpy as np
        from WaveletDiffusionCommonLib import volumes

        self.delayDisplay("Generating two volumes with the demo model on the CPU")
        logic = self.requireModels(parameters.DEFAULT_MODEL)
        nodes = logic.generate(model=parameters.DEFAULT_MODEL, count=2, seed=3, steps=2, device="cpu")
        self.assertEqual(len(nodes), 2)
        for seed, node in zip((3, 4), nodes, strict=True):
            self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(node.GetID()))
            array = volumes.array_ijk_from_node(node)
            self.assertEqual(array.ndim, 3)
            self.assertTrue(np.isfinite(array).all())
            self.assertEqual(volumes.get_attributes(node)["seed"], str(seed))
            self.assertIsNotNone(node.GetDisplayNode())
        self.assertFalse(np.array_equal(volumes.array_ijk_from_node(nodes[0]), volumes.array_ijk_from_node(nodes[1])))

    def test_SynthesizeDemoPhantom(self):
        import numpy as np
        from WaveletDiffusionCommonLib import volumes

        self.delayDisplay("Synthesizing t1 from t2, flair and pd with the demo model on the CPU")
        logic = self.requireModels(DEMO_SYNTHESIZE)
        names = ("t2", "flair", "pd")
        inputs = {name: selftests.addPhantomVolume(name, contrast) for contrast, name in enumerate(names)}
        before = {name: volumes.array_ijk_from_node(node).copy() for name, node in inputs.items()}
        node = logic.synthesize(model=DEMO_SYNTHESIZE, inputs=inputs, seed=1, sampler="ddim", steps=2, device="cpu")
        array = self.assertResultOnGridOf(node, inputs["t2"])
        self.assertGreater(float(array.max() - array.min()), 0.0)  # an image, not a constant
        self.assertEqual(volumes.get_attributes(node)["task"], "synthesize")
        for name, node_in in inputs.items():
            np.testing.assert_array_equal(volumes.array_ijk_from_node(node_in), before[name])

    def test_InpaintSegmentOfDemoPhantom(self):
        import numpy as np
        from vtk.util import numpy_support
        from WaveletDiffusionCommonLib import volumes
        from WaveletDiffusionLib import tasks

        self.delayDisplay("Inpainting a segment of a phantom with the demo model on the CPU")
        logic = self.requireModels(DEMO_INPAINT)
        volume = selftests.addPhantomVolume("phantom t1")
        original = volumes.array_ijk_from_node(volume).copy()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion")
        segmentation.CreateDefaultDisplayNodes()
        # A ball drawn on its own 1 mm axis-aligned grid, not the volume's: the module resamples it.
        centre = (volumes.ijk_to_ras(volume) @ np.array([16, 14, 17, 1.0]))[:3]
        origin = np.floor(centre) - 8.0
        k, j, i = np.mgrid[0:16, 0:16, 0:16]
        ball = np.linalg.norm(np.stack([i, j, k], axis=-1) + origin - centre, axis=-1) <= 5.0
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(16, 16, 16)
        image.SetOrigin(*origin)
        image.SetSpacing(1.0, 1.0, 1.0)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = ball.astype(np.uint8).ravel()
        segmentation.AddSegmentFromBinaryLabelmapRepresentation(image, "lesion")
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("lesion")
        mask = tasks.segment_mask(slicer.mrmlScene, segmentation, segmentId, volume)
        self.assertTrue(0 < mask.sum() < mask.size)
        node = logic.inpaint(model=DEMO_INPAINT, volume=volume, segmentation=segmentation, segment_id=segmentId,
                             seed=2, device="cpu")  # fmt: skip
        array = self.assertResultOnGridOf(node, volume)
        np.testing.assert_array_equal(array[~mask], original[~mask])  # outside the segment: the input, exactly
        self.assertFalse(np.array_equal(array[mask], original[mask]))
        np.testing.assert_array_equal(volumes.array_ijk_from_node(volume), original)

    def test_VaryDemoPhantom(self):
        import numpy as np
        from WaveletDiffusionCommonLib import volumes

        self.delayDisplay("Making two variations of a phantom with the demo model on the CPU")
        logic = self.requireModels(parameters.DEFAULT_MODEL)
        volume = selftests.addPhantomVolume("phantom")
        original = volumes.array_ijk_from_node(volume).copy()
        nodes = logic.vary(model=parameters.DEFAULT_MODEL, volume=volume, strength=0.2, count=2, seed=5, steps=4,
                           device="cpu")  # fmt: skip
        self.assertEqual(len(nodes), 2)
        arrays = [self.assertResultOnGridOf(node, volume) for node in nodes]
        self.assertFalse(np.array_equal(arrays[0], arrays[1]))
        self.assertFalse(np.array_equal(arrays[0], original))
        np.testing.assert_array_equal(volumes.array_ijk_from_node(volume), original)
