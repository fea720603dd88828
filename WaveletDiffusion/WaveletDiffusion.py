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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from WaveletDiffusionLib import dependencies, parameters
from WaveletDiffusionLib.logic import GenerationCancelled, GenerationError
from WaveletDiffusionLib.logic import WaveletDiffusionLogic as _GenerationLogic
from WaveletDiffusionLib.parameters import GenerationParameters

SAMPLER_PRESET_KEYS = ("fast", "preview", "faithful", "custom")


class WaveletDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Wavelet Diffusion"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []
        self.parent.contributors = ["WaveletDiffusion contributors"]
        self.parent.helpText = (
            "Generate synthetic 3-D volumes (brain MRI, chest CT, a demo phantom) with 3-D wavelet diffusion "
            "models. Choose a model, the number of volumes, the seed and the sampler, then press Generate. "
            "See the <a href='https://github.com/WaveletDiffusion/WaveletDiffusion/blob/main/docs/slicer.md'>"
            "documentation</a>."
        )
        self.parent.acknowledgementText = (
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
        if slicer.util.confirmYesNoDisplay(message + "\n\nRestart Slicer now?", windowTitle="Wavelet Diffusion"):
            slicer.util.restart()

    return dependencies.Installers(
        confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle="Wavelet Diffusion"),
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
        ScriptedLoadableModuleLogic.__init__(self)
        _GenerationLogic.__init__(
            self,
            python=shutil.which("PythonSlicer") or None,
            idle=slicer.app.processEvents,
            schedule=lambda ms, callback: qt.QTimer.singleShot(ms, callback),
        )
        self._dependenciesChecked = False

    def getParameterNode(self):
        return WaveletDiffusionParameterNode(super().getParameterNode())

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

    def start_generation(self, *args, **kwargs):
        """Non-blocking: returns a job at once; callbacks run on the GUI thread from a QTimer."""
        self.ensureDependencies()
        return super().start_generation(*args, **kwargs)


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

    # ------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WaveletDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = WaveletDiffusionLogic()
        self.logic.log_callback = self.appendLog
        self.settings = qt.QSettings()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.refreshModelsButton.clicked.connect(self.onRefreshModels)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.downloadButton.clicked.connect(self.onDownload)
        self.ui.cancelDownloadButton.clicked.connect(self.onCancelDownload)
        self.ui.openCheckpointButton.clicked.connect(self.onOpenCheckpoint)
        self.ui.presetComboBox.currentIndexChanged.connect(self.onPresetChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.samplerPresetComboBox.currentIndexChanged.connect(self.onSamplerPresetChanged)
        self.ui.samplerComboBox.currentIndexChanged.connect(self.updateSamplerPreset)
        self.ui.stepsSpinBox.valueChanged.connect(self.updateSamplerPreset)
        self.ui.randomSeedButton.clicked.connect(self.onRandomSeed)
        self.ui.generateButton.clicked.connect(self.onGenerate)
        self.ui.cancelButton.clicked.connect(self.onCancel)

        self.initializeParameterNode()
        self._parameterNode.setFromGenerationParameters(
            parameters.load_settings(self.settings, self._parameterNode.toGenerationParameters())
        )
        self.setModelItems([])
        self.updateButtons()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

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
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.updateSamplerPreset()

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

    def onModelChanged(self, *_) -> None:
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

    def onPresetChanged(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.preset = "" if index <= 0 else self.ui.presetComboBox.currentText

    # ------------------------------------------------------------------------------------------- devices

    def onDeviceInfo(self, job) -> None:
        if job.error is not None:
            self.showError("Cannot query the devices", job.error)
            return
        info = job.result
        self.appendLog(
            f"PyTorch {info.get('torch')} (CUDA build {info.get('cuda_build')}), Python {info.get('python')}"
        )
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        for device in info.get("devices", []):
            label = device["name"]
            if device["kind"] == "cuda":
                free, total = device.get("free_bytes"), device.get("total_bytes")
                label = f"CUDA {device['id'][5:]}: {device['name']}"
                if free is not None and total:
                    label += f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
            elif device["kind"] == "cpu":
                label = "CPU"
            combo.addItem(label, device["id"])
        index = combo.findData(self._parameterNode.device)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)
        self.onDeviceChanged()

    def onDeviceChanged(self, *_) -> None:
        device = self.ui.deviceComboBox.currentData
        if self._parameterNode and device:
            self._parameterNode.device = device

    # ------------------------------------------------------------------------------------------- sampler

    def onSamplerPresetChanged(self, index) -> None:
        key = SAMPLER_PRESET_KEYS[index]
        if key != "custom" and self._parameterNode:
            chosen = parameters.SAMPLER_PRESETS[key]
            self._parameterNode.sampler = chosen["sampler"]
            self._parameterNode.steps = chosen["steps"]

    def updateSamplerPreset(self, *_) -> None:
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
        with slicer.util.tryWithErrorDisplay("Cannot start generating.", waitCursor=True):
            params = self._parameterNode.toGenerationParameters().validate()
            parameters.save_settings(self.settings, params)
            self.logic.ensureDependencies()
            self._volumesShown = 0
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting the worker and loading the model..."
            self._job = self.logic.start_generation(
                params,
                on_progress=self.onProgress,
                on_preview=self.onPreview,
                on_volume=self.onVolume,
                on_finished=self.onGenerationFinished,
            )
            self.updateButtons()

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
            slicer.util.setSliceViewerLayers(background=node, fit=True)

    def onVolume(self, job, node) -> None:
        self._volumesShown += 1
        slicer.util.setSliceViewerLayers(background=node, fit=self._volumesShown == 1)

    def onGenerationFinished(self, job) -> None:
        self._job = None
        elapsed = formatDuration(max(0.0, time.monotonic() - job.started))
        if job.state == "done":
            self.ui.progressBar.value = 1000
            self.ui.statusLabel.text = f"Generated {len(job.nodes)} volume(s) in {elapsed}."
        elif job.state == "cancelled":
            self.ui.statusLabel.text = f"Cancelled; {len(job.nodes)} volume(s) were finished."
        else:
            self.ui.statusLabel.text = f"Failed: {job.error}"
            self.showError("Generation failed", job.error)
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
        _, info = self.selectedModel()
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
        slicer.util.errorDisplay(f"{title}:\n{message}", detailedText=detail or None)


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
        logic = WaveletDiffusionLogic()
        try:
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
