"""The panels of the *Wavelet Diffusion* widget, one file per task; the widget class (in ``WaveletDiffusion.py``)
mixes them in and keeps the set-up, the parameter node and the buttons' state.

* :mod:`.models` - the model catalogue, downloads and the preset box
* :mod:`.checkpoints` - checkpoint files as models (also the training module's "Open in Wavelet Diffusion")
* :mod:`.generation` - device, sampler and seed; generating volumes, with progress, previews and cancel
* :mod:`.tasks` - synthesize, inpaint and vary: the task's inputs, their check and the run
"""

from .checkpoints import CheckpointPanel
from .generation import GenerationPanel
from .models import ModelPanel
from .tasks import TaskPanel

__all__ = ["CheckpointPanel", "GenerationPanel", "ModelPanel", "TaskPanel"]
