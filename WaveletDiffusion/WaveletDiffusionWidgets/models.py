"""The model panel of the *Wavelet Diffusion* widget: the catalogue, downloads and the preset box."""

from __future__ import annotations

import os

import slicer
from slicer.i18n import tr as _
from WaveletDiffusionLib import parameters


class ModelPanel:
    """Mixed into :class:`WaveletDiffusion.WaveletDiffusionWidget`: reads ``self.ui``, ``self.logic`` and
    ``self._parameterNode`` of the widget."""

    def onRefreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot prepare the generation engine."), waitCursor=True):
            self.logic.ensureDependencies()
            self.appendLog("reading the model catalogue and the devices...")
            self.logic.request("list_models", on_finished=self.onModelsListed)
            self.logic.request("info", on_finished=self.onDeviceInfo)

    def onModelsListed(self, job) -> None:
        if job.error is not None:
            self.showError(_("Cannot list the models"), job.error)
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
            state = _("cached") if model["cached"] else _("not downloaded")
            combo.addItem(f"{model['name']} ({state})", model["name"])
        if not models:
            combo.addItem(wanted, wanted)
        for path in self._customCheckpoints:
            combo.addItem(_("{name} (file)").format(name=os.path.basename(path)), path)
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
            self.followModelSampling()
        if info is None:
            text = name if name and os.path.isfile(name) else _("Press Refresh to read the catalogue.")
        else:
            size = info.get("size_bytes")
            sizeText = _("size unknown") if not size else f"{'' if info.get('size_exact') else '~'}{size / 1e6:.0f} MB"
            state = _("cached") if info["cached"] else _("not downloaded yet")
            text = info["description"] + "\n" + _("{state}, {size}, license: {license}").format(
                state=state, size=sizeText, license=info.get("license") or _("unknown"))  # fmt: skip
        self.ui.modelInfoLabel.text = text
        self.showTask()
        self.updateButtons()

    def followModelSampling(self) -> None:
        """A distilled student runs the sampler and calls of its card by default: the settings follow the model
        when the user kept the previous model's *Fast* preset, and stay when they chose others."""
        card = self.currentCard()
        node = self._parameterNode
        switch = parameters.sampling_for_new_model(node.sampler, node.steps, self._samplingCard, card)
        self._samplingCard = card
        if switch is not None:
            node.sampler, node.steps = switch["sampler"], switch["steps"]
            self.appendLog(f"{node.model}: {switch['sampler']} with {switch['steps']} steps, the model's own default")

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
            self.showError(_("Download failed"), job.error)
        self.updateButtons()

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
