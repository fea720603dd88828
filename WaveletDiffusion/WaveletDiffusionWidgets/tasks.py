"""The task panel of the *Wavelet Diffusion* widget: synthesize, inpaint and vary. What the panel shows and checks
is decided by ``WaveletDiffusionLib.taskpanel`` from the model's card; this file only puts it on the widgets."""

from __future__ import annotations

import time

import qt
import slicer
from slicer.i18n import tr as _
from WaveletDiffusionCommonWidgets.helpers import formatDuration
from WaveletDiffusionLib import parameters, taskpanel


class TaskPanel:
    """Mixed into :class:`WaveletDiffusion.WaveletDiffusionWidget`."""

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
        samplesLabel, samplesSpinBox = self.samplesRow()
        samplesLabel.visible = samplesSpinBox.visible = taskpanel.uses_samples(task)
        if samplesSpinBox.value != inputs.samples:
            samplesSpinBox.blockSignals(True)
            samplesSpinBox.value = inputs.samples
            samplesSpinBox.blockSignals(False)
        generating = task == taskpanel.GENERATE
        for widget in (self.ui.batchSizeLabel, self.ui.batchSizeSpinBox, self.ui.outputNameLabel,
                       self.ui.outputNameLineEdit):  # fmt: skip
            widget.enabled = generating
        self.ui.generateButton.text = taskpanel.RUN_LABELS[task]
        self.ui.runCollapsibleButton.text = taskpanel.RUN_LABELS[task]
        self.showSelectionCheck()

    def samplesRow(self):
        """(label, spin box) of *Samples*, made once below *Number of volumes*: 1 draws one result as before;
        more draw that many (seeds seed, seed + 1, ...) and give their mean and an uncertainty map (their std)."""
        row = getattr(self, "_samplesRow", None)
        if row is not None:
            return row
        label = qt.QLabel(_("Samples:"))
        spinBox = qt.QSpinBox()
        spinBox.minimum, spinBox.maximum, spinBox.value = 1, 1000, 1
        spinBox.toolTip = _(
            "Draws per result. 1: one draw. More: the result is their mean, with an uncertainty map (the per-voxel "
            "standard deviation of the draws) shown in colour over it; the run takes about that many times longer."
        )
        layout = self.ui.countSpinBox.parentWidget().layout()
        if isinstance(layout, qt.QFormLayout):
            layout.addRow(label, spinBox)
        else:
            rowIndex = layout.rowCount()
            layout.addWidget(label, rowIndex, 0)
            layout.addWidget(spinBox, rowIndex, 1)
        spinBox.valueChanged.connect(self.onSamplesChosen)
        self._samplesRow = (label, spinBox)
        return self._samplesRow

    def onSamplesChosen(self, value) -> None:
        inputs = self.taskInputs()
        if inputs is not None:
            inputs.samples = int(value)

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
        text = "\n".join(problems) if problems else _("Inputs are ready.")
        warning = self.taskMemoryWarning() if not problems else None
        self.ui.inputCheckLabel.text = text + ("\n" + warning if warning else "")
        return problems

    def taskMemoryWarning(self):
        """The memory the task needs against the device's free memory, as generation checks it (None: fits)."""
        params = self._parameterNode.toGenerationParameters()
        entry = next((m for m in self._models if m.get("name") == params.model), {})
        selection = self.currentSelection()
        first = next((n for n in [selection.volume, *selection.inputs.values()] if n is not None), None)
        image = first.GetImageData() if first is not None else None
        return self.logic.task_memory_warning(
            self._task, params.model, self.currentCard(), device=params.device, precision=params.precision,
            grid=tuple(image.GetDimensions()) if image is not None else None,
            preset=params.preset or entry.get("preset"), devices=self._lastDevices,
        )  # fmt: skip

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
            warning = self.taskMemoryWarning()
            if warning and not slicer.util.confirmOkCancelDisplay(
                warning + "\n\n" + _("Start anyway?"), windowTitle=_("Wavelet Diffusion")
            ):
                return
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
            self.ui.statusLabel.text = _("Downloading the model... {percent:.0f} %").format(percent=100 * job.fraction)
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
