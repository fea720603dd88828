"""The logic of the *Wavelet Diffusion* Slicer module, importable without Slicer's GUI (no qt, no ctk).

* :mod:`.logic` - :class:`WaveletDiffusionLogic`: jobs on the worker, results as volume nodes
* :mod:`.process` - the worker process (``python -m wdmcore.worker``) and its JSON-lines events
* :mod:`.volumes` - arrays, files and geometry -> scalar volume nodes (the one (i,j,k) <-> (k,j,i) swap)
* :mod:`.tasks` - synthesize / inpaint / vary: inputs to files, a segment's mask on a volume's grid, results shown
* :mod:`.parameters` - the generation settings and their persistence
* :mod:`.taskpanel` - what the panel asks for per task (from the model's card), input checks, the call to make
* :mod:`.dependencies` - what to install on first use, and through which of Slicer's installers
"""

from .logic import GenerationCancelled, GenerationError, Job, WaveletDiffusionLogic
from .parameters import GenerationParameters
from .tasks import TaskInputError, TaskParameters, show_task_result

__all__ = [
    "GenerationCancelled",
    "GenerationError",
    "GenerationParameters",
    "Job",
    "TaskInputError",
    "TaskParameters",
    "WaveletDiffusionLogic",
    "show_task_result",
]
