"""Wavelet Diffusion: generate 3-D medical volumes with 3-D wavelet diffusion models (WDM).

The module class, a thin widget and the self-test. The work is done by ``WaveletDiffusionLib`` (logic that
never imports Qt) and by a worker process running ``wdmcore``; nothing heavy runs on the GUI thread.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
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
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from WaveletDiffusionLib import dependencies, parameters, reloading, settings, support, taskpanel
from WaveletDiffusionLib.logic import GenerationCancelled, GenerationError
from WaveletDiffusionLib.logic import WaveletDiffusionLogic as _GenerationLogic
from WaveletDiffusionLib.parameters import GenerationParameters

SAMPLER_PRESET_KEYS = ("fast", "preview", "faithful", "custom")
DOCUMENTATION_URL = "https://github.com/WaveletDiffusion/SlicerWaveletDiffusion/blob/main/docs/slicer.md"
CONTRIBUTORS = ["SlicerWaveletDiffusion project (https://github.com/WaveletDiffusion/SlicerWaveletDiffusion)"]
# The Libs that Reload must reload as well (the training module imports both).
LIB_PACKAGES = ("WaveletDiffusionLib",)


def documentationLink(url: str = DOCUMENTATION_URL) -> str:
    """The help text's link, worded like ScriptedLoadableModule.getDefaultModuleDocumentationLink (which would
    point at Slicer's own documentation, not an extension's)."""
    text = _("For more information, see the {url_start}online documentation{url_end}.")
    return "<p>" + text.format(url_start=f'<a href="{url}">', url_end="</a>") + "</p>"


def errorDetails(detail) -> dict:
    """errorDisplay's keywords: PythonQt would show None as the text "None" under "Show Details"."""
    return {"detailedText": str(detail)} if detail else {}


def showUnsupportedPython(layout, moduleTitle: str) -> bool:
    """On a Slicer older than 5.10 (Python < 3.10) put one clear message in the panel; True when it did."""
    message = support.unsupported_message(module=moduleTitle)
    if message is None:
        return False
    label = qt.QLabel(message)
    label.wordWrap = True
    layout.addWidget(label)
    layout.addStretch(1)
    return True


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
    steps: Annotated[int, WithinRange(1, 1000)] = 25
    count: Annotated[int, WithinRange(1, 100)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    batchSize: Annotated[int, WithinRange(1, 16)] = 1
    precision: Annotated[str, Choice(list(parameters.PRECISIONS))] = "fp32"
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
            output_name=self.outputName,
            preview=self.preview,
        )

    def setFromGenerationParameters(self, params: GenerationParameters) -> None:
        self.model, self.preset, self.device = params.model, params.preset, params.device
        self.sampler, self.steps, self.count = params.sampler, params.steps, params.count
        self.batchSize, self.precision, self.preview = params.batch_size, params.precision, params.preview


def slicerInstallers() -> dependencies.Installers:
    """Slicer's installers for :func:`dependencies.ensure_dependencies`."""
    try:
        import PyTorchUtils

        torchLogic = PyTorchUtils.PyTorchUtilsLogic()

        def installTorch(requirement):
            return torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)

    except ImportError:
        installTorch = None
    try:
        import slicer.packaging as packaging

        def pipEnsure(specs):
            return packaging.pip_ensure(specs, requester="Wavelet Diffusion")

    except ImportError:
        pipEnsure = None

    def offerRestart(message):
        if slicer.util.confirmYesNoDisplay(message + "\n\n" + _("Restart Slicer now?"),
                                           windowTitle=_("Wavelet Diffusion")):  # fmt: skip
            slicer.util.restart()

    return dependencies.Installers(
        confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Wavelet Diffusion")),
        install_torch=installTorch,
        pip_ensure=pipEnsure,
        pip_install=slicer.util.pip_install,
        offer_restart=offerRestart,
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
        )
        self._dependenciesChecked = False

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
        """Install what the worker needs, after asking (once per session)."""
        if self._dependenciesChecked:
            return
        dependencies.ensure_dependencies(slicerInstallers())
        self._dependenciesChecked = True

    def generate(self, *args, **kwargs):
        """Blocking: returns the volume nodes (see the Lib's ``WaveletDiffusionLogic.generate``)."""
        self.ensureDependencies()
        return super().generate(*args, **kwargs)

    def start_generation(self, params=None, **kwargs):
        """Non-blocking: returns a job at once; callbacks run on the GUI thread from a QTimer."""
        self.ensureDependencies()
        return super().start_generation(params, **kwargs)


class WaveletDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        self.updateSamplerPreset()
        self.showTask()

    # ------------------------------------------------------------------------------------------- models

    def onRefreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay("Cannot prepare the generation engine.", waitCursor=True):
            self.logic.ensureDependencies()
            self.appendLog("reading the model catalogue and the devices...")
            self.logic.request("list_models", on_finished=self.onModelsListed)
            self.logic.request("info", on_finished=self.onDeviceInfo)

    def onModelsListed(self, job) -> None:
        if job.error is not None:
            self.showError("Cannot list the models", job.error)
            return
        self._models = job.result["models"]
        self.appendLog(f"model cache: {job.result.get('cache_dir')}")
        self.setModelItems(self._models)

    def setModelItems(self, models) -> None:
        combo = self.ui.modelComboBox
        wanted = self._parameterNode.model if self._parameterNode else parameters.DEFAULT_MODEL
        combo.blockSignals(True)
        combo.clear()
        for model in models:
            state = "cached" if model["cached"] else "not downloaded"
            combo.addItem(f"{model['name']} ({state})", model["name"])
        if not models:
            combo.addItem(wanted, wanted)
        for path in self._customCheckpoints:
            combo.addItem(f"{os.path.basename(path)} (file)", path)
        index = combo.findData(wanted)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)
        self.onModelChanged()

    def selectedModel(self):
        name = self.ui.modelComboBox.currentData
        return name, next((m for m in self._models if m["name"] == name), None)

    def onModelChanged(self, *_args) -> None:
        name, info = self.selectedModel()
        if self._parameterNode and name:
            self._parameterNode.model = name
        if info is None:
            text = name if name and os.path.isfile(name) else "Press Refresh to read the catalogue."
        else:
            size = info.get("size_bytes")
            sizeText = "size unknown" if not size else f"{'' if info.get('size_exact') else '~'}{size / 1e6:.0f} MB"
            state = "cached" if info["cached"] else "not downloaded yet"
            text = f"{info['description']}\n{state}, {sizeText}, license: {info.get('license') or 'unknown'}"
        self.ui.modelInfoLabel.text = text
        self.showTask()
        self.updateButtons()

    def onDownload(self) -> None:
        name, info = self.selectedModel()
        if not name:
            return
        self.ui.downloadProgressBar.enabled = True
        self.ui.downloadProgressBar.value = 0
        self.appendLog(f"downloading {name}...")
        self._downloadJob = self.logic.start_download(
            name, on_progress=self.onDownloadProgress, on_finished=self.onDownloadFinished
        )
        self.updateButtons()

    def onDownloadProgress(self, job, event) -> None:
        total = event.get("total") or 0
        if total:
            self.ui.downloadProgressBar.maximum = 1000
            self.ui.downloadProgressBar.value = int(1000 * event.get("done", 0) / total)
        else:
            self.ui.downloadProgressBar.maximum = 0  # busy indicator: size unknown

    def onCancelDownload(self) -> None:
        if self._downloadJob is not None:
            self.logic.cancel(self._downloadJob)

    def onDownloadFinished(self, job) -> None:
        self._downloadJob = None
        self.ui.downloadProgressBar.maximum = 1000
        if job.state == "done":
            self.ui.downloadProgressBar.value = 1000
            self.appendLog(f"downloaded to {job.result}")
            self.onRefreshModels()
        elif job.state == "cancelled":
            self.ui.downloadProgressBar.value = 0
            self.appendLog("download cancelled")
        else:
            self.showError("Download failed", job.error)
        self.updateButtons()

    def onOpenCheckpoint(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Open a WDM checkpoint", "", "Checkpoints (*.safetensors *.pt *.pth)"
        )
        if path:
            self.useCheckpoint(path)

    def useCheckpoint(self, path: str) -> None:
        """Select a checkpoint file as the model (also called by the training module's "Open in Wavelet
        Diffusion")."""
        path = str(path)
        if path not in self._customCheckpoints:
            self._customCheckpoints.append(path)
        if not self._parameterNode:
            self.initializeParameterNode()
        self._parameterNode.model = path
        self.setModelItems(self._models)
        self.appendLog(f"checkpoint: {path}")

    def onPresetChosen(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.preset = "" if index <= 0 else self.ui.presetComboBox.currentText

    def showPresetAndDevice(self) -> None:
        """The preset and device boxes show the parameter node's values (restored from settings or a scene), never
        a default while the run would use something else."""
        if not self._parameterNode:
            return
        combo = self.ui.presetComboBox
        preset = self._parameterNode.preset
        combo.blockSignals(True)
        combo.setCurrentIndex(0 if not preset else max(0, combo.findText(preset)))
        combo.blockSignals(False)
        self.setDeviceItems(self._lastDevices)

    # ------------------------------------------------------------------------------------------- task and inputs

    def currentCard(self) -> dict:
        name = self.ui.modelComboBox.currentData or (self._parameterNode.model if self._parameterNode else "")
        return taskpanel.model_card(name or "", self._models, self._catalogueCards)

    def taskInputs(self):
        return taskpanel.TaskInputs(self._parameterNode.parameterNode) if self._parameterNode else None

    def showTask(self) -> None:
        """Show the task the model's card allows and one selector per input it needs, with the stored choices."""
        inputs = self.taskInputs()
        if inputs is None:
            return
        card = self.currentCard()
        self._task = task = taskpanel.choose_task(inputs.task, card)
        combo = self.ui.taskComboBox
        offered = taskpanel.tasks_of(card)
        combo.blockSignals(True)
        if [combo.itemData(i) for i in range(combo.count)] != offered:
            combo.clear()
            for key in offered:
                combo.addItem(taskpanel.TASK_LABELS[key], key)
        combo.setCurrentIndex(offered.index(task))
        combo.blockSignals(False)
        combo.enabled = len(offered) > 1
        self.ui.taskInfoLabel.text = taskpanel.task_description(task, card)

        slots = taskpanel.input_slots(task, card)
        kinds = {slot.kind: slot for slot in slots if task != taskpanel.SYNTHESIZE}
        rows = {
            taskpanel.VOLUME: (self.ui.inputVolumeLabel, self.ui.inputVolumeSelector),
            taskpanel.SEGMENT: (self.ui.segmentLabel, self.ui.segmentSelectorWidget),
            taskpanel.LABELMAP: (self.ui.labelmapLabel, self.ui.labelmapSelector),
            taskpanel.STRENGTH: (self.ui.strengthLabel, self.ui.strengthSliderWidget),
        }
        for kind, (label, field) in rows.items():
            slot = kinds.get(kind)
            label.visible = field.visible = slot is not None
            if slot is not None:
                label.text, field.toolTip = slot.label, slot.tooltip
        self.setSynthesisSlots(slots if task == taskpanel.SYNTHESIZE else [])

        selectors = [(self.ui.inputVolumeSelector, inputs.get_node("volume")),
                     (self.ui.labelmapSelector, inputs.get_node("labelmap")),
                     *((selector, inputs.get_node(key)) for key, _label, selector in self._synthesisSlots)]  # fmt: skip
        for selector, node in selectors:
            if selector.currentNode() is not node:
                selector.blockSignals(True)
                selector.setCurrentNode(node)
                selector.blockSignals(False)
        segments = self.ui.segmentSelectorWidget
        segments.blockSignals(True)
        if segments.currentNode() is not inputs.get_node("segmentation"):
            segments.setCurrentNode(inputs.get_node("segmentation"))
        if inputs.segment_id and segments.currentSegmentID() != inputs.segment_id:
            segments.setCurrentSegmentID(inputs.segment_id)
        segments.blockSignals(False)
        strength = self.ui.strengthSliderWidget
        strength.blockSignals(True)
        strength.value = inputs.strength
        strength.blockSignals(False)

        usesSampler = taskpanel.uses_sampler(task, card)
        for widget in (self.ui.samplerPresetLabel, self.ui.samplerPresetComboBox, self.ui.samplerComboBox):
            widget.enabled = usesSampler
        for widget in (self.ui.stepsLabel, self.ui.stepsSpinBox):
            widget.enabled = taskpanel.uses_steps(task, card)
        for widget in (self.ui.countLabel, self.ui.countSpinBox):
            widget.enabled = taskpanel.uses_count(task)
        generating = task == taskpanel.GENERATE
        for widget in (self.ui.batchSizeLabel, self.ui.batchSizeSpinBox, self.ui.outputNameLabel,
                       self.ui.outputNameLineEdit):  # fmt: skip
            widget.enabled = generating
        self.ui.generateButton.text = taskpanel.RUN_LABELS[task]
        self.ui.runCollapsibleButton.text = taskpanel.RUN_LABELS[task]
        self.showSelectionCheck()

    def setSynthesisSlots(self, slots) -> None:
        """One labelled volume selector per input the card names; made anew only when the names change (another
        model), each with the scene set."""
        wanted = [(slot.key, slot.label, slot.tooltip) for slot in slots]
        if [(key, label) for key, label, _ in self._synthesisSlots] == [(k, lab) for k, lab, _ in wanted]:
            return
        layout = self.ui.synthesisInputsWidget.layout()
        for _key, label, selector in self._synthesisSlots:
            for widget in (label, selector):
                layout.removeWidget(widget)
                widget.setParent(None)
                widget.deleteLater()
        self._synthesisSlots = []
        for key, text, tooltip in wanted:
            label = qt.QLabel(text)
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.toolTip = tooltip
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setCurrentNode(None)
            selector.currentNodeChanged.connect(lambda node, key=key: self.storeInputNode(key, node))
            layout.addRow(label, selector)
            self._synthesisSlots.append((key, label, selector))
        self.ui.synthesisInputsWidget.visible = bool(self._synthesisSlots)

    def onTaskChosen(self, index) -> None:
        inputs = self.taskInputs()
        if inputs is not None:
            inputs.task = self.ui.taskComboBox.itemData(index)

    def storeInputNode(self, key: str, node) -> None:
        inputs = self.taskInputs()
        if inputs is not None:
            inputs.set_node(key, node)

    def onSegmentChosen(self, segmentId) -> None:
        inputs = self.taskInputs()
        if inputs is not None:
            inputs.segment_id = segmentId

    def onStrengthChosen(self, value) -> None:
        inputs = self.taskInputs()
        if inputs is not None:
            inputs.strength = value

    def currentSelection(self):
        return self.taskInputs().selection(self._task, self.currentCard())

    def showSelectionCheck(self) -> list:
        """The problems of the current selection under the inputs (the Run button checks again: a segment can be
        painted without the parameter node changing)."""
        if self._task == taskpanel.GENERATE or self.taskInputs() is None:
            self.ui.inputCheckLabel.text = ""
            return []
        problems = taskpanel.check_selection(self._task, self.currentCard(), self.currentSelection())
        self.ui.inputCheckLabel.text = "\n".join(problems) if problems else _("Inputs are ready.")
        return problems

    # ------------------------------------------------------------------------------------------- devices

    def onDeviceInfo(self, job) -> None:
        if job.error is not None:
            self.showError("Cannot query the devices", job.error)
            return
        info = job.result
        self.appendLog(
            f"PyTorch {info.get('torch')} (CUDA build {info.get('cuda_build')}), Python {info.get('python')}"
        )
        self._lastDevices = list(info.get("devices", []))
        self.setDeviceItems(self._lastDevices)

    def setDeviceItems(self, devices) -> None:
        """The devices the worker found; a saved device it did not list (yet) is shown as such, so that the box
        always shows the device the run will use."""
        combo = self.ui.deviceComboBox
        wanted = self._parameterNode.device if self._parameterNode else "cpu"
        combo.blockSignals(True)
        combo.clear()
        for device in devices:
            label = device["name"]
            if device["kind"] == "cuda":
                free, total = device.get("free_bytes"), device.get("total_bytes")
                label = f"CUDA {device['id'][5:]}: {device['name']}"
                if free is not None and total:
                    label += _(" ({free:.1f} of {total:.1f} GiB free)").format(free=free / 2**30, total=total / 2**30)
            elif device["kind"] == "cpu":
                label = _("CPU")
            combo.addItem(label, device["id"])
        if combo.findData(wanted) < 0:
            label = _("CPU") if wanted == "cpu" else _("{device} (press Refresh to check it)").format(device=wanted)
            combo.addItem(label, wanted)
        combo.setCurrentIndex(combo.findData(wanted))
        combo.blockSignals(False)

    def onDeviceChosen(self, *_args) -> None:
        device = self.ui.deviceComboBox.currentData
        if self._parameterNode and device:
            self._parameterNode.device = device

    # ------------------------------------------------------------------------------------------- sampler

    def onSamplerPresetChosen(self, index) -> None:
        key = SAMPLER_PRESET_KEYS[index]
        if key != "custom" and self._parameterNode:
            chosen = parameters.SAMPLER_PRESETS[key]
            self._parameterNode.sampler = chosen["sampler"]
            self._parameterNode.steps = chosen["steps"]

    def updateSamplerPreset(self, *_args) -> None:
        if not self._parameterNode:
            return
        current = {"sampler": self._parameterNode.sampler, "steps": self._parameterNode.steps}
        key = next((k for k, v in parameters.SAMPLER_PRESETS.items() if v == current), "custom")
        combo = self.ui.samplerPresetComboBox
        combo.blockSignals(True)
        combo.setCurrentIndex(SAMPLER_PRESET_KEYS.index(key))
        combo.blockSignals(False)

    def onRandomSeed(self) -> None:
        self._parameterNode.seed = random.randrange(0, 2**31 - 1)

    # ------------------------------------------------------------------------------------------- generation

    def onGenerate(self) -> None:
        if self._task != taskpanel.GENERATE:
            self.onRunTask()
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot start generating."), waitCursor=True):
            params = self._parameterNode.toGenerationParameters().validate()
            parameters.save_settings(self.settings, params)
            self.logic.ensureDependencies()
            warning = self.logic.memory_warning(params, self._lastDevices)
            if warning and not slicer.util.confirmOkCancelDisplay(warning + "\n\n" + _("Generate anyway?"),
                                                                  windowTitle=_("Wavelet Diffusion")):  # fmt: skip
                return
            self._volumesShown = 0
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker and loading the model...")
            slicer.util.showStatusMessage(_("Wavelet Diffusion: generating {count} volume(s)...").format(
                count=params.count))  # fmt: skip
            self._job = self.logic.start_generation(
                params,
                on_progress=self.onProgress,
                on_preview=self.onPreview,
                on_volume=self.onVolume,
                on_finished=self.onGenerationFinished,
            )
            self.updateButtons()

    def onRunTask(self) -> None:
        """Synthesize, inpaint or vary: check the inputs, then make the one logic call taskpanel plans."""
        task, card = self._task, self.currentCard()
        with slicer.util.tryWithErrorDisplay(_("Cannot start."), waitCursor=True):
            params = self._parameterNode.toGenerationParameters().validate()
            selection = self.currentSelection()
            problems = taskpanel.check_selection(task, card, selection)
            if problems:
                self.ui.inputCheckLabel.text = "\n".join(problems)
                slicer.util.errorDisplay("\n".join(problems), windowTitle=_("Wavelet Diffusion"))
                return
            parameters.save_settings(self.settings, params)
            self.logic.ensureDependencies()
            plan = taskpanel.run_plan(task, card, params.model, selection, params)
            self._volumesShown = 0
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker and loading the model...")
            self.appendLog(plan.description)
            slicer.util.showStatusMessage(_("Wavelet Diffusion: {what}...").format(what=plan.description))
            self._runningTask = task
            job = getattr(self.logic, plan.method)(
                *plan.args,
                **plan.kwargs,
                on_progress=self.onTaskProgress,
                on_preview=self.onPreview if params.preview else None,
                on_finished=self.onTaskFinished,
            )
            # A job that could not start has already finished (onTaskFinished ran inside the call).
            self._job = None if job.finished else job
            self.updateButtons()

    def onTaskProgress(self, job, event) -> None:
        if event.get("task") == "download":
            self.ui.statusLabel.text = f"Downloading the model... {100 * job.fraction:.0f} %"
            return
        self.ui.progressBar.value = int(1000 * job.fraction)
        self.ui.statusLabel.text = taskpanel.progress_text(event, formatDuration)

    def onTaskFinished(self, job) -> None:
        self._job = None
        task = self._runningTask
        elapsed = formatDuration(max(0.0, time.monotonic() - job.started))
        self.ui.statusLabel.text = taskpanel.finished_text(task, job, elapsed)
        if job.state == "done":
            self.ui.progressBar.value = 1000
        if job.nodes:
            self.showTaskResult(job)
        if job.state == "failed":
            self.showError(_("{task} failed").format(task=taskpanel.RUN_LABELS[task]), job.error)
        slicer.util.showStatusMessage(_("Wavelet Diffusion: {status}").format(status=self.ui.statusLabel.text), 5000)
        self.updateButtons()

    def showTaskResult(self, job) -> None:
        """The logic's show_task_result sets the slice views (inpainting: the original in the background)."""
        from WaveletDiffusionLib import logic as libLogic

        show = getattr(libLogic, "show_task_result", None)
        if show is not None:
            show(job)
        else:
            slicer.util.setSliceViewerLayers(background=job.nodes[0], fit=True)

    def onProgress(self, job, event) -> None:
        if event.get("task") == "download":
            self.ui.statusLabel.text = f"Downloading the model... {100 * job.fraction:.0f} %"
            return
        self.ui.progressBar.value = int(1000 * job.fraction)
        eta = event.get("eta_s")
        etaText = "" if eta is None else f", about {formatDuration(eta)} left"
        volume = int(event.get("volume", 0)) + 1
        self.ui.statusLabel.text = (
            f"Volume {volume} of {event.get('num', job.params.count)}: step {event.get('step')} of "
            f"{event.get('steps')}{etaText}"
        )

    def onPreview(self, job, node) -> None:
        if self._volumesShown == 0:
            # Fit once, on the first preview: the user may zoom and pan while sampling goes on.
            slicer.util.setSliceViewerLayers(background=node, fit=job.preview_updates == 1)

    def onVolume(self, job, node) -> None:
        self._volumesShown += 1
        slicer.util.setSliceViewerLayers(background=node, fit=self._volumesShown == 1)

    def onGenerationFinished(self, job) -> None:
        self._job = None
        elapsed = formatDuration(max(0.0, time.monotonic() - job.started))
        if job.state == "done":
            self.ui.progressBar.value = 1000
            self.ui.statusLabel.text = _("Generated {count} volume(s) in {elapsed}.").format(
                count=len(job.nodes), elapsed=elapsed)  # fmt: skip
        elif job.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; {count} volume(s) were finished.").format(count=len(job.nodes))
        else:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=job.error)
            self.showError(_("Generation failed"), job.error)
        slicer.util.showStatusMessage(_("Wavelet Diffusion: {status}").format(status=self.ui.statusLabel.text), 5000)
        self.updateButtons()

    def onCancel(self) -> None:
        if self._job is None:
            return
        if self._job.cancel_requested:
            self.appendLog("stopping the worker")
            self.logic.cancel(self._job, force=True)
        else:
            self.appendLog("cancel requested: stopping after the current step")
            self.ui.statusLabel.text = "Cancelling... (press Cancel again to stop the worker at once)"
            self.logic.cancel(self._job)

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


def formatDuration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class WaveletDiffusionTest(ScriptedLoadableModuleTest):
    """Generates with the bundled demo model on the CPU (about a minute)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GenerateDemoVolumes()

    def test_GenerateDemoVolumes(self):
        import numpy as np
        from WaveletDiffusionLib import volumes

        self.delayDisplay("Generating two volumes with the demo model on the CPU")
        if slicer.app.testingEnabled() and dependencies.missing([dependencies.TORCH]):
            # In testing mode every confirmation answers yes: the test would install several GB of PyTorch.
            self.delayDisplay("PyTorch is not installed: test skipped (install it from the PyTorch Utils module)")
            return
        logic = WaveletDiffusionLogic()
        try:
            logic.ensureDependencies()  # before the first request: the worker imports torch
            models = {m["name"]: m for m in logic.list_models()}
            demo = models.get(parameters.DEFAULT_MODEL)
            if demo is None or not demo["cached"]:
                self.delayDisplay("The demo model is not part of this installation: test skipped")
                return
            nodes = logic.generate(model=parameters.DEFAULT_MODEL, count=2, seed=3, steps=5, device="cpu")
        finally:
            logic.shutdown()
        self.assertEqual(len(nodes), 2)
        for seed, node in zip((3, 4), nodes, strict=True):
            self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(node.GetID()))
            array = volumes.array_ijk_from_node(node)
            self.assertEqual(array.ndim, 3)
            self.assertTrue(np.isfinite(array).all())
            self.assertEqual(volumes.get_attributes(node)["seed"], str(seed))
            self.assertIsNotNone(node.GetDisplayNode())
        self.assertFalse(np.array_equal(volumes.array_ijk_from_node(nodes[0]), volumes.array_ijk_from_node(nodes[1])))
        self.delayDisplay("Test passed")
