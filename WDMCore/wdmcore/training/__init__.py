"""Training: the loop (:func:`train`), its configuration (:class:`TrainConfig`), the schedule of each step (data
order, timesteps and noise, learning rate), what a run reports (events, cost), EMA weights, the run folder's
checkpoint files and previews. The ``wdm train`` command is :mod:`wdmcore.cli.train`.

See ``docs/training.md`` and the docstring of :mod:`wdmcore.training.loop`.
"""

from .checkpoints import list_checkpoints, load_training_state
from .config import TrainConfig, TrainingError
from .ema import EMA
from .loop import TrainResult, train
from .previews import mid_slices, write_png_gray, write_preview
from .schedule import StreamBatches

__all__ = [
    "EMA",
    "StreamBatches",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "list_checkpoints",
    "load_training_state",
    "mid_slices",
    "train",
    "write_png_gray",
    "write_preview",
]
