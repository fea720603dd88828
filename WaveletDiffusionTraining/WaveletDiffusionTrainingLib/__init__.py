"""The logic of the *Wavelet Diffusion Training* Slicer module, importable without Slicer's GUI (no qt, no ctk).

* :mod:`.logic` - :class:`WaveletDiffusionTrainingLogic`: ``wdm train`` and ``wdm summarize`` in child
  processes (:class:`WaveletDiffusionCommonLib.process.ChildProcess`), runs and their events
* :mod:`.runs` - a training run's state, progress and results (:class:`TrainingRun`), and training errors
* :mod:`.scans` - data scans (``wdm summarize`` in a child process) before training
* :mod:`.scanning` - when the panel scans the data folder again (debounced)
* :mod:`.plots` - the loss curve as table, plot series and plot chart nodes
* :mod:`.datasource` - volume nodes -> files with their geometry; the text of a data summary
* :mod:`.runfolder` - checkpoints, resumable state and loss history of a run folder, read without torch
* :mod:`.parameters` - the training settings, their ``wdm train`` command line and their persistence
"""

from .logic import WaveletDiffusionTrainingLogic
from .parameters import TrainingParameters
from .runs import TrainingError, TrainingRun
from .scans import ScanJob

__all__ = ["ScanJob", "TrainingError", "TrainingParameters", "TrainingRun", "WaveletDiffusionTrainingLogic"]
