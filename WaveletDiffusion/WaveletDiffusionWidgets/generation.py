"""The generation panel of the *Wavelet Diffusion* widget: device, sampler and seed, then generating volumes with
progress, previews and cancel."""

from __future__ import annotations

import random
import time

import slicer
from slicer.i18n import tr as _
from WaveletDiffusionCommonWidgets.helpers import formatDuration
from WaveletDiffusionLib import parameters, taskpanel

SAMPLER_PRESET_KEYS = ("fast", "preview", "faithful", "custom")  # the order of samplerPresetComboBox


class GenerationPanel:
    """Mixed into :class:`WaveletDiffusion.WaveletDiffusionWidget`."""

    def onDeviceInfo(self, job) -> None:
        if job.error is not None:
            self.showError(_("Cannot query the devices"), job.error)
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

    def onBackendChosen(self, index) -> None:
        """The user's choice only (the box is not bound by connectGui, so that choosing OpenVINO, and nothing else,
        offers to install it)."""
        if not self._parameterNode:
            return
        backend = parameters.BACKENDS[index]
        self._parameterNode.backend = backend
        with slicer.util.tryWithErrorDisplay(_("Cannot install the OpenVINO backend."), waitCursor=True):
            self.logic.require_backend(backend, again=True)

    def showBackend(self) -> None:
        if not self._parameterNode:
            return
        combo = self.ui.backendComboBox
        combo.blockSignals(True)
        combo.setCurrentIndex(parameters.BACKENDS.index(self._parameterNode.backend))
        combo.blockSignals(False)

    # ------------------------------------------------------------------------------------------- sampler

    def onSamplerPresetChosen(self, index) -> None:
        key = SAMPLER_PRESET_KEYS[index]
        if key != "custom" and self._parameterNode:
            chosen = parameters.sampler_presets(self.currentCard())[key]
            self._parameterNode.sampler = chosen["sampler"]
            self._parameterNode.steps = chosen["steps"]

    def updateSamplerPreset(self, *_args) -> None:
        if not self._parameterNode:
            return
        current = {"sampler": self._parameterNode.sampler, "steps": self._parameterNode.steps}
        presets = parameters.sampler_presets(self.currentCard())
        key = next((k for k, v in presets.items() if v == current), "custom")
        combo = self.ui.samplerPresetComboBox
        combo.blockSignals(True)
        fast = presets["fast"]
        text = (
            _("Fast ({steps} steps)")
            if fast == parameters.SAMPLER_PRESETS["fast"]
            else _("Fast (the model's {steps} steps)")
        )
        combo.setItemText(SAMPLER_PRESET_KEYS.index("fast"), text.format(steps=fast["steps"]))
        combo.setCurrentIndex(SAMPLER_PRESET_KEYS.index(key))
        combo.blockSignals(False)

    def onRandomSeed(self) -> None:
        self._parameterNode.seed = random.randrange(0, 2**31 - 1)

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

    def onProgress(self, job, event) -> None:
        if event.get("task") == "download":
            self.ui.statusLabel.text = _("Downloading the model... {percent:.0f} %").format(percent=100 * job.fraction)
            return
        self.ui.progressBar.value = int(1000 * job.fraction)
        eta = event.get("eta_s")
        etaText = "" if eta is None else _(", about {duration} left").format(duration=formatDuration(eta))
        volume = int(event.get("volume", 0)) + 1
        self.ui.statusLabel.text = (
            _("Volume {volume} of {count}: step {step} of {steps}").format(
                volume=volume,
                count=event.get("num", job.params.count),
                step=event.get("step"),
                steps=event.get("steps"),
            )
            + etaText
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
            self.ui.statusLabel.text = _("Cancelling... (press Cancel again to stop the worker at once)")
            self.logic.cancel(self._job)
