"""The logic of the *Wavelet Diffusion* Slicer module, importable without Slicer's GUI (no qt, no ctk).

* :mod:`.logic` - :class:`WaveletDiffusionLogic`: jobs on the worker, results as volume nodes
* :mod:`.process` - the worker process (``python -m wdmcore.worker``) and its JSON-lines events
* :mod:`.volumes` - arrays, files and geometry -> scalar volume nodes (the one (i,j,k) <-> (k,j,i) swap)
* :mod:`.parameters` - the generation settings and their persistence
* :mod:`.taskpanel` - what the panel asks for per task (from the model's card), input checks, the call to make
* :mod:`.dependencies` - what to install on first use, and through which of Slicer's installers
"""

from .logic import GenerationCancelled, GenerationError, Job, WaveletDiffusionLogic
from .parameters import GenerationParameters

__all__ = ["GenerationCancelled", "GenerationError", "GenerationParameters", "Job", "WaveletDiffusionLogic"]
