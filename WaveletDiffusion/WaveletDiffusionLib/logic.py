"""The logic of the *Wavelet Diffusion* module: jobs on the generation worker, results as volume nodes.

Usable without the module's GUI, from Slicer's Python console::

    from WaveletDiffusionLib import WaveletDiffusionLogic
    logic = WaveletDiffusionLogic()
    nodes = logic.generate(model="demo_phantom_64", count=2, seed=7, steps=25, device="cpu")
    t1 = logic.synthesize(model="demo_phantom_synthesize_32", inputs={"t2": t2, "flair": flair, "pd": pd})
    filled = logic.inpaint(model="demo_phantom_inpaint_32", volume=t1, segmentation=seg, segment_id="lesion")
    variations = logic.vary(model="demo_phantom_64", volume=volume, strength=0.3, count=2)

The tasks' results are new volume nodes in the grid of their input (same IJK-to-RAS and dimensions); their
inputs are written to files with their geometry for the worker and never modified.

:meth:`WaveletDiffusionLogic.generate` blocks (keeping the application responsive when an ``idle`` callback
such as ``slicer.app.processEvents`` is given); :meth:`WaveletDiffusionLogic.start_generation` returns at once
and reports through callbacks while someone calls :meth:`WaveletDiffusionLogic.poll` (the module widget does
from a QTimer; a ``schedule`` callback makes the logic arrange it itself).

The heavy work happens in a separate process (:mod:`WaveletDiffusionCommonLib.process`), never in the caller's
thread. Nodes are added to the scene only from complete result files, so a cancelled or crashed job leaves
the scene as it was apart from the volumes that were already finished.
"""

from __future__ import annotations

from .generation import preset_of_model
from .jobs import GenerationCancelled, GenerationError, Job
from .taskrequests import TaskRequests
from .tasks import TaskInputError, TaskParameters, show_task_result

__all__ = [
    "GenerationCancelled",
    "GenerationError",
    "Job",
    "TaskInputError",
    "TaskParameters",
    "WaveletDiffusionLogic",
    "preset_of_model",
    "show_task_result",
]


class WaveletDiffusionLogic(TaskRequests):
    """Generation jobs on a persistent worker process, results as scalar volume nodes.

    Built up by idea: the worker client (:mod:`.client`: the process, jobs, events, simple requests), generating
    (:mod:`.generation`) and the other tasks (:mod:`.taskrequests`)."""
