"""The logic of the *Wavelet Diffusion Training* Slicer module, importable without Slicer's GUI (no qt, no ctk).

* :mod:`.logic` - :class:`WaveletDiffusionTrainingLogic`: ``wdm train`` and ``wdm summarize`` in child
  processes (the generation module's :class:`WaveletDiffusionLib.process.ChildProcess`), runs and their events
* :mod:`.plots` - the loss curve as table, plot series and plot chart nodes
* :mod:`.datasource` - volume nodes -> files with their geometry; the text of a data summary
* :mod:`.runfolder` - checkpoints, resumable state and loss history of a run folder, read without torch
* :mod:`.parameters` - the training settings, their ``wdm train`` command line and their persistence
"""

from .logic import ScanJob, TrainingError, TrainingRun, WaveletDiffusionTrainingLogic
from .parameters import TrainingParameters

__all__ = ["ScanJob", "TrainingError", "TrainingParameters", "TrainingRun", "WaveletDiffusionTrainingLogic"]
