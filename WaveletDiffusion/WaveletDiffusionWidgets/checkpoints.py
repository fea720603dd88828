"""Checkpoint files as models: *Open checkpoint*, and the training module's "Open in Wavelet Diffusion"."""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _


class CheckpointPanel:
    """Mixed into :class:`WaveletDiffusion.WaveletDiffusionWidget`."""

    def onOpenCheckpoint(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Open a WDM checkpoint"), "", _("Checkpoints (*.safetensors *.pt *.pth)")
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
