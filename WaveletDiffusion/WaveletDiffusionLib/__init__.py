"""The logic of the *Wavelet Diffusion* Slicer module, importable without Slicer's GUI (no qt, no ctk).

* :mod:`.logic` - :class:`WaveletDiffusionLogic`: jobs on the worker, results as volume nodes, built from
  :mod:`.client` (the worker, its jobs and events, simple requests), :mod:`.generation` (generating, the
  preview, memory) and :mod:`.taskrequests` (synthesize / inpaint / vary)
* :mod:`.jobs` - a job on the worker, and how a job fails
* :mod:`.tasks` - synthesize / inpaint / vary: inputs to files, a segment's mask on a volume's grid, results shown
* :mod:`.parameters` - the generation settings and their persistence
* :mod:`.taskpanel` - what the panel asks for per task (from the model's card), input checks, the call to make

The worker process, volume nodes, the dependency gate and what else the training module shares are in
``WaveletDiffusionCommonLib``.
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
