"""Wavelet Diffusion Training: train 3-D wavelet diffusion models (WDM) on your own volumes from Slicer.

The module class, a thin widget and the self-test. The work is done by ``WaveletDiffusionTrainingLib`` (logic
that never imports Qt) and by ``wdm train`` in a separate process; nothing heavy runs on the GUI thread. The
process handling, the volume reading and the first-use installers are shared with the *Wavelet Diffusion*
(generation) module, on which this module depends.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
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
from WaveletDiffusionTrainingLib import datasource, parameters, runfolder
from WaveletDiffusionTrainingLib.logic import WaveletDiffusionTrainingLogic as _TrainingLogic
from WaveletDiffusionTrainingLib.parameters import TrainingParameters
from WaveletDiffusionTrainingLib.runs import TrainingError, format_duration
from WaveletDiffusionTrainingLib.scanning import ScanScheduler

DATA_SOURCE_KEYS = ("folder", "nodes")  # the order of dataSourceComboBox
DOCUMENTATION_URL = (
    "https://github.com/WaveletDiffusion/SlicerWaveletDiffusion/blob/main/docs/slicer.md"
    "#the-training-module-wavelet-diffusion-training"
)
# The packages that Reload must reload as well: Slicer reloads this file only.
LIB_PACKAGES = ("WaveletDiffusionCommonLib", "WaveletDiffusionCommonWidgets", "WaveletDiffusionTrainingLib")


class WaveletDiffusionTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Wavelet Diffusion Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["WaveletDiffusion"]
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Train a 3-D wavelet diffusion model on a folder of volumes (BraTS, LIDC-IDRI or any NIfTI/NRRD/MHA "
            "files) or on volumes of the scene. Watch the loss curve and preview samples, stop and resume, and "
            "open the result in the Wavelet Diffusion module. Needs Slicer 5.10 or later."
        ) + documentationLink(DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "Based on WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis "
            "(P. Friedrich, J. Wolleb, F. Bieder, A. Durrer, P. C. Cattin, DGM4MICCAI 2024)."
        )


@parameterNodeWrapper
class WaveletDiffusionTrainingParameterNode:
    """The training settings saved with the scene (paths and the data source are bound by the widget)."""

    dataSource: Annotated[str, Choice(list(DATA_SOURCE_KEYS))] = "folder"
    dataPath: str = ""
    dataFormat: Annotated[str, Choice(list(parameters.DATA_FORMATS))] = "auto"
    sequence: Annotated[str, Choice(list(parameters.BRATS_SEQUENCES))] = "t1n"
    intensity: Annotated[str, Choice(list(parameters.INTENSITIES))] = "mri"
    skipBadFiles: bool = False
    preset: Annotated[str, Choice(list(parameters.PRESETS))] = "unet-128"
    imageSize: Annotated[int, WithinRange(0, 512)] = 0
    batchSize: Annotated[int, WithinRange(0, 1024)] = 0
    maxSteps: Annotated[int, WithinRange(1, 2000000000)] = 100000
    learningRate: str = "1e-5"
    precision: Annotated[str, Choice(list(parameters.PRECISIONS))] = "auto"
    device: Annotated[str, Choice(list(parameters.DEVICES))] = "auto"
    outputDir: str = ""
    emaRate: Annotated[float, WithinRange(0.0, 0.999999)] = 0.9999
    checkpointInterval: Annotated[int, WithinRange(1, 10000000)] = 5000
    previewInterval: Annotated[int, WithinRange(0, 10000000)] = 5000
    numWorkers: Annotated[int, WithinRange(0, 64)] = 0

    def toTrainingParameters(self) -> TrainingParameters:
        try:
            lr = float(self.learningRate)
        except ValueError:
            raise ValueError(f"the learning rate {self.learningRate!r} is not a number; write it like 1e-5") from None
        return TrainingParameters(
            data_source=self.dataSource,
            data_path=self.dataPath,
            data_format=self.dataFormat,
            sequence=self.sequence,
            intensity=self.intensity,
            skip_bad_files=self.skipBadFiles,
            preset=self.preset,
            image_size=self.imageSize,
            batch_size=self.batchSize,
            max_steps=self.maxSteps,
            lr=lr,
            precision=self.precision,
            device=self.device,
            output_dir=self.outputDir,
            ema_rate=self.emaRate,
            checkpoint_interval=self.checkpointInterval,
            preview_interval=self.previewInterval,
            num_workers=self.numWorkers,
        )

    def setFromTrainingParameters(self, params: TrainingParameters) -> None:
        self.dataSource, self.dataPath, self.dataFormat = params.data_source, params.data_path, params.data_format
        self.sequence, self.intensity, self.skipBadFiles = params.sequence, params.intensity, params.skip_bad_files
        self.preset, self.imageSize, self.batchSize = params.preset, params.image_size, params.batch_size
        self.maxSteps, self.learningRate, self.precision = params.max_steps, f"{params.lr:g}", params.precision
        self.device = params.device if params.device in parameters.DEVICES else "auto"
        self.outputDir, self.emaRate = params.output_dir, params.ema_rate
        self.checkpointInterval, self.previewInterval = params.checkpoint_interval, params.preview_interval
        self.numWorkers = params.num_workers


class WaveletDiffusionTrainingLogic(ScriptedLoadableModuleLogic, _TrainingLogic):
    """The Lib's logic wired to Slicer: PythonSlicer runs ``wdm train``, a QTimer polls, the GUI stays live.

    From the Python console::

        logic = slicer.util.getModuleLogic("WaveletDiffusionTraining")
        run = logic.start_training(data_path="/data/brats", output_dir="/runs/brats", max_steps=1000)
        logic.stop(run); run = logic.resume(run.params)
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
            dependency_gate=lambda: dependencies.ensure_dependencies(
                slicerInstallers(), requester="Wavelet Diffusion Training", extra=dependencies.TRAINING_PACKAGES
            ),
        )

    def getParameterNode(self):
        """The scene's parameter node; a new one starts from the user's last choices (QSettings), one that came
        with a loaded scene keeps that scene's settings."""
        node = super().getParameterNode()
        fresh = settings.is_new_parameter_node(node)
        wrapped = WaveletDiffusionTrainingParameterNode(node)
        if fresh:
            wrapped.setFromTrainingParameters(parameters.load_settings(qt.QSettings(), wrapped.toTrainingParameters()))
        return wrapped

    def ensureDependencies(self) -> None:
        """Install what training needs (PyTorch, the engine's packages, nibabel), after asking, once a session:
        the gate every request of the logic passes (``require_dependencies``)."""
        self.require_dependencies()

    def dependenciesPresent(self) -> bool:
        """Whether everything is installed already (checked without asking or installing anything)."""
        required = [dependencies.TORCH, *dependencies.PACKAGES, *dependencies.MODULE_PACKAGES,
                    *dependencies.TRAINING_PACKAGES]  # fmt: skip
        return self._dependencies_ready or not dependencies.missing(required)


class WaveletDiffusionTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._lastRun = None
        self._leftTrainers = []  # trainers of the output folder left by an earlier session: Stop offers to stop them
        self.confirmStop = lambda q: slicer.util.confirmYesNoDisplay(q, windowTitle=_("Wavelet Diffusion Training"))
        self._scanJob = None

    # ------------------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if showUnsupportedPython(self.layout, _("Wavelet Diffusion Training")):
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/WaveletDiffusionTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.volumesComboBox.setMRMLScene(slicer.mrmlScene)

        self.logic = WaveletDiffusionTrainingLogic()
        self.logic.log_callback = self.appendLog
        self.settings = qt.QSettings()
        # The folder is described when the user changed what a scan reads, once the changes settled; binding a
        # parameter node (module enter, scene close) refills combo boxes and must not start scans.
        self.scanScheduler = ScanScheduler(lambda ms, callback: qt.QTimer.singleShot(ms, callback),
                                           lambda key: self.startScan(readVoxels=False))  # fmt: skip

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.dataSourceComboBox.activated.connect(self.onDataSourceChosen)
        self.ui.dataFolderPathLineEdit.currentPathChanged.connect(self.onDataFolderChanged)
        self.ui.volumesComboBox.checkedNodesChanged.connect(self.onVolumesChanged)
        self.ui.checkDataButton.clicked.connect(lambda: self.startScan(readVoxels=True))
        self.ui.outputDirPathLineEdit.currentPathChanged.connect(self.onOutputDirChanged)
        self.ui.startButton.clicked.connect(self.onStart)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.resumeButton.clicked.connect(self.onResume)
        self.ui.showPlotButton.clicked.connect(self.showLossCurve)
        self.ui.openInGenerationButton.clicked.connect(self.onOpenInGeneration)

        self.initializeParameterNode()
        self.updateButtons()

    def onReload(self) -> None:
        """Reload both Libs as well: Slicer reloads this file only (importlib.reload; Python 3.12 has no imp)."""
        reloading.reload_packages(LIB_PACKAGES)
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            # Slicer is closing: a graceful stop (checkpoint) if it comes within a few seconds, else the process
            # tree ends; the checkpoints already written stay usable either way. Never blocks more than ~5 s.
            self.logic.shutdown()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        for run in (self._run, self._lastRun):
            if run is not None:
                run.curve = None  # its nodes go with the scene; the run goes on without a curve
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
            self.scanScheduler.seed(self.scanKey())  # binding the node is no reason to scan
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.updatePathWidgets()
            self.showDataSource()
            if self._parameterNode.dataSource == "folder" and self._parameterNode.dataPath:
                self.ui.dataSummaryTextEdit.plainText = _("Press Check data to describe this folder.")

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Runs after connectGui's slots wrote the new values (they run before it): read the node here."""
        self.scanScheduler.changed(self.scanKey())

    def scanKey(self):
        """What a header scan reads; None when the data are volumes of the scene."""
        node = self._parameterNode
        if not node or node.dataSource != "folder":
            return None
        return (node.dataPath, node.dataFormat, node.sequence)

    # ------------------------------------------------------------------------------------------- data

    def updatePathWidgets(self) -> None:
        """Paths and the data source are bound by hand (empty paths must stay empty, not ".")."""
        if not self._parameterNode:
            return
        for widget, value in ((self.ui.dataFolderPathLineEdit, self._parameterNode.dataPath),
                              (self.ui.outputDirPathLineEdit, self._parameterNode.outputDir)):  # fmt: skip
            widget.blockSignals(True)
            widget.currentPath = value
            widget.blockSignals(False)
        combo = self.ui.dataSourceComboBox
        combo.blockSignals(True)
        combo.setCurrentIndex(DATA_SOURCE_KEYS.index(self._parameterNode.dataSource))
        combo.blockSignals(False)

    def onDataSourceChosen(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.dataSource = DATA_SOURCE_KEYS[max(0, index)]
        self.showDataSource()

    def showDataSource(self) -> None:
        source = self._parameterNode.dataSource if self._parameterNode else "folder"
        folder = source == "folder"
        for widget in (self.ui.dataFolderLabel, self.ui.dataFolderPathLineEdit, self.ui.dataFormatLabel,
                       self.ui.dataFormatComboBox, self.ui.sequenceLabel, self.ui.sequenceComboBox,
                       self.ui.checkDataButton, self.ui.checkDataProgressBar):  # fmt: skip
            widget.visible = folder
        self.ui.volumesLabel.visible = self.ui.volumesComboBox.visible = not folder
        if not folder:
            self.onVolumesChanged()

    def onDataFolderChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.dataPath = path  # the scan follows through onParameterNodeModified

    def onVolumesChanged(self, *_args) -> None:
        if self._parameterNode and self._parameterNode.dataSource == "nodes":
            self.ui.dataSummaryTextEdit.plainText = datasource.describe_nodes(self.checkedVolumes())

    def checkedVolumes(self):
        return list(self.ui.volumesComboBox.checkedNodes())

    def startScan(self, readVoxels: bool) -> None:
        """Describe the data folder in a child process: headers only when the folder changes (fast), every
        voxel on *Check data* (intensity ranges and unreadable files; slow for big datasets)."""
        if self._scanJob is not None:
            self.logic.cancel_scan(self._scanJob)
            self._scanJob = None
        params = self._parameterNode
        if not params or params.dataSource != "folder":
            return
        if not params.dataPath or not os.path.exists(params.dataPath):
            self.ui.dataSummaryTextEdit.plainText = _("Choose the folder of training volumes.")
            return
        if readVoxels:
            try:
                self.logic.ensureDependencies()
            except Exception as exc:
                self.showError(_("Cannot prepare the training engine"), exc)
                return
        elif not self.logic.dependenciesPresent():
            self.ui.dataSummaryTextEdit.plainText = _("Press Check data to read the folder.")
            return
        self.ui.dataSummaryTextEdit.plainText = _("Reading the folder...")
        self.ui.checkDataProgressBar.value = 0
        self._scanJob = self.logic.start_scan(
            params.dataPath,
            params.dataFormat,
            params.sequence,
            read_voxels=readVoxels,
            on_progress=self.onScanProgress,
            on_finished=self.onScanFinished,
        )

    def onScanProgress(self, job, event) -> None:
        self.ui.checkDataProgressBar.value = int(1000 * job.fraction)
        self.ui.dataSummaryTextEdit.plainText = _("Reading volume {done} of {total}...").format(
            done=event.get("done"), total=event.get("total"))  # fmt: skip

    def onScanFinished(self, job) -> None:
        if job is not self._scanJob:
            return
        self._scanJob = None
        if job.state == "cancelled":
            return
        if job.state != "done":
            self.scanScheduler.forget()  # the next change scans again, even back to these values
        self.ui.checkDataProgressBar.value = 1000 if job.state == "done" else 0
        self.ui.dataSummaryTextEdit.plainText = job.text

    # ------------------------------------------------------------------------------------------- output

    def onOutputDirChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.outputDir = path
        self.describeOutputDir()
        self.updateButtons()

    def describeOutputDir(self) -> None:
        path = self._parameterNode.outputDir if self._parameterNode else ""
        self._leftTrainers = self.logic.left_trainers(path) if path else []
        if not path:
            self.ui.checkpointLabel.text = _("Choose an output folder.")
            return
        if self._leftTrainers:
            self.ui.checkpointLabel.text = _("A trainer left by an earlier session still runs here: Stop stops it.")
            return
        found = runfolder.checkpoints(path)
        if not found:
            self.ui.checkpointLabel.text = _("No checkpoint in the output folder: Start begins a new run.")
            return
        resumable = runfolder.resumable(path)
        text = _("Newest checkpoint: {name} (step {step:,}).").format(name=found[-1].model.name, step=found[-1].step)
        if resumable is not None:
            text += " " + _("Resume continues from step {step:,}.").format(step=resumable.step)
        self.ui.checkpointLabel.text = text

    # ------------------------------------------------------------------------------------------- training

    def currentParameters(self) -> TrainingParameters:
        return self._parameterNode.toTrainingParameters()

    def callbacks(self) -> dict:
        return {
            "on_progress": self.onProgress,
            "on_checkpoint": self.onCheckpoint,
            "on_preview": self.onPreview,
            "on_finished": self.onTrainingFinished,
        }

    def onStart(self) -> None:
        self.startRun(resume=False)

    def onResume(self) -> None:
        self.startRun(resume=True)

    def startRun(self, resume: bool) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot start training."), waitCursor=True):
            params = self.currentParameters()
            if params.data_source == "nodes" and not resume and not self.checkedVolumes():
                raise ValueError(_("select the volumes to train on"))
            parameters.save_settings(self.settings, params)
            if not self.logic.offer_to_stop_left_trainers(params.output_dir, self.confirmStop):
                return
            self.logic.ensureDependencies()
            warning = self.logic.memory_warning(params)
            title = _("Wavelet Diffusion Training")
            if warning and not slicer.util.confirmOkCancelDisplay(
                warning + "\n\n" + _("Start anyway?"), windowTitle=title
            ):
                return
            slicer.util.showStatusMessage(_("Wavelet Diffusion Training: starting {run}...").format(
                run=params.output_dir))  # fmt: skip
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the training process...")
            self._run = self.logic.start_training(
                params, resume=resume, nodes=self.checkedVolumes(), **self.callbacks()
            )
            self._lastRun = self._run
            if resume:
                self.appendLog("Resume keeps the run's own settings; the number of steps, the intervals, the data "
                               "workers and the device are taken from the module.")  # fmt: skip
            self.showLossCurve()
        self.updateButtons()

    def showLossCurve(self) -> None:
        run = self._run or self._lastRun
        if run is None or run.curve is None:
            return
        slicer.modules.plots.logic().ShowChartInLayout(run.curve.chart_node)

    def onProgress(self, run, event) -> None:
        if run is not self._run:
            return
        self.ui.progressBar.value = int(1000 * run.fraction)
        self.ui.statusLabel.text = run.status_text()

    def onCheckpoint(self, run, path) -> None:
        self.ui.checkpointLabel.text = _("Newest checkpoint: {path}").format(path=path)
        self.updateButtons()

    def onPreview(self, run, node) -> None:
        slicer.util.setSliceViewerLayers(background=node, fit=len(run.previews) == 1)

    def onStop(self) -> None:
        run = self._run
        if run is None:
            with slicer.util.tryWithErrorDisplay(_("Cannot stop the training process."), waitCursor=True):
                self.logic.offer_to_stop_left_trainers(self._parameterNode.outputDir, self.confirmStop)
            return self.onOutputDirChanged(self._parameterNode.outputDir)  # describes the folder again
        if run.stop_requested_at is not None:
            self.appendLog("ending the training process now (the newest checkpoint on disk stays usable)")
            self.logic.stop(run, force=True)
        else:
            self.ui.statusLabel.text = _(
                "Stopping: a checkpoint is written after the current step (press Stop "
                "again to end the process at once)..."
            )
            self.logic.stop(run)

    def onTrainingFinished(self, run) -> None:
        if run is self._run:
            self._run = None
        elapsed = format_duration(time.monotonic() - run.started)
        if run.state == "failed":
            self.ui.statusLabel.text = _("Failed after {elapsed}: {error}").format(elapsed=elapsed, error=run.error)
            self.showError(_("Training failed"), run.error)
        else:
            self.ui.progressBar.value = int(1000 * run.fraction)
            text = (_("Finished at step {step:,} after {elapsed}.") if run.state == "finished"
                    else _("Stopped at step {step:,} after {elapsed}."))  # fmt: skip
            self.ui.statusLabel.text = text.format(step=run.step, elapsed=elapsed)
            if run.message and run.state == "stopped" and run.result_path is None:
                self.appendLog(run.message)
        slicer.util.showStatusMessage(_("Wavelet Diffusion Training: {status}").format(
            status=self.ui.statusLabel.text), 5000)  # fmt: skip
        self.describeOutputDir()
        self.updateButtons()

    def onOpenInGeneration(self) -> None:
        run = self._lastRun
        path = run.model_path if run is not None else None
        if path is None and self._parameterNode and self._parameterNode.outputDir:
            path = runfolder.latest_model(self._parameterNode.outputDir)
        if path is None:
            slicer.util.errorDisplay(_("There is no checkpoint in the output folder yet."))
            return
        slicer.util.selectModule("WaveletDiffusion")
        slicer.util.getModuleWidget("WaveletDiffusion").useCheckpoint(str(path))

    # ------------------------------------------------------------------------------------------- helpers

    def updateButtons(self) -> None:
        running = self._run is not None
        outputDir = self._parameterNode.outputDir if self._parameterNode else ""
        resumable = bool(outputDir) and runfolder.resumable(outputDir) is not None
        hasModel = bool(outputDir) and runfolder.latest_model(outputDir) is not None
        self.ui.startButton.enabled = not running
        self.ui.resumeButton.enabled = not running and resumable
        self.ui.stopButton.enabled = running or bool(self._leftTrainers)
        self.ui.openInGenerationButton.enabled = not running and hasModel
        lastRun = self._run or self._lastRun
        self.ui.showPlotButton.enabled = lastRun is not None and lastRun.curve is not None

    def appendLog(self, message: str) -> None:
        logging.info(message)
        self.ui.logTextEdit.appendPlainText(message)

    def showError(self, title: str, error) -> None:
        message = str(error)
        self.appendLog(f"{title}: {message}")
        detail = getattr(error, "detail", "") if isinstance(error, TrainingError) else ""
        slicer.util.errorDisplay(f"{title}:\n{message}", **errorDetails(detail))


class WaveletDiffusionTrainingTest(selftests.SelfTest):
    """Trains a tiny network on three small volumes of the scene on the CPU: to the end and on with Resume, and
    stopped in the middle (seconds each); in testing mode a missing requirement skips them (``selftests``)."""

    requester = "Wavelet Diffusion Training"
    extra = dependencies.TRAINING_PACKAGES

    @classmethod
    def makeLogic(cls):
        return WaveletDiffusionTrainingLogic()

    def setUp(self):
        super().setUp()
        self.folder = Path(tempfile.mkdtemp(prefix="WaveletDiffusionTrainingTest-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)

    def tinyParameters(self, **fields) -> TrainingParameters:
        tiny = ["--model-channels", "8", "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1",
                "--no-tensorboard"]  # fmt: skip
        values = dict(
            data_source="nodes", output_dir=str(self.folder / "run"), image_size=16, batch_size=2, max_steps=4,
            lr=1e-3, device="cpu", checkpoint_interval=2, preview_interval=2, preview_steps=2, log_interval=1,
            extra_args=tiny,
        )  # fmt: skip
        return TrainingParameters(**(values | fields))

    def test_TrainResumeOnSceneVolumes(self):
        self.delayDisplay("Training a tiny network on three scene volumes, then resuming it")
        logic = self.requireLogic()
        params = self.tinyParameters()
        run = logic.train(params, nodes=selftests.addBlobVolumes(), timeout=600)
        self.assertEqual((run.state, [step for step, _ in run.curve.points()]), ("finished", [1, 2, 3, 4]))
        self.assertEqual(len(run.previews), 2)
        self.assertTrue(run.model_path.is_file())
        run = logic.train(params, resume=True, max_steps=6, timeout=600)
        self.assertEqual((run.state, run.step), ("finished", 6))
        self.assertEqual([step for step, _ in run.curve.points()], [1, 2, 3, 4, 5, 6])

    def test_StopDuringTraining(self):
        self.delayDisplay("Stopping a training run in the middle")
        logic = self.requireLogic()
        params = self.tinyParameters(max_steps=100_000, checkpoint_interval=100_000, preview_interval=0)
        run = logic.start_training(params, nodes=selftests.addBlobVolumes())
        deadline = time.monotonic() + 300
        while run.step < 2 and not run.finished:
            self.assertLess(time.monotonic(), deadline, "the trainer did not reach step 2 within 300 s")
            logic.poll()
            slicer.app.processEvents()
            time.sleep(0.02)
        logic.stop(run)
        logic.wait(run, timeout=300)
        self.assertIsNone(run.error)
        self.assertTrue(run.state == "stopped" and run.stopped_early and run.step < 100_000, run.message)
        self.assertTrue(run.model_path.is_file())  # the checkpoint written on the stop, at the step reached
        self.assertEqual(runfolder.resumable(Path(params.output_dir)).step, run.step)
