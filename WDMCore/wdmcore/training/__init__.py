"""Training: the loop (:func:`train`), its configuration (:class:`TrainConfig`), EMA weights, the run folder's
checkpoint files and previews. The ``wdm train`` command is :mod:`wdmcore.cli.train`.

See ``docs/training.md`` and the docstring of :mod:`wdmcore.training.loop`.
"""

from .checkpoints import list_checkpoints, load_training_state
from .config import TrainConfig, TrainingError
from .ema import EMA
from .loop import StreamBatches, TrainResult, train
from .previews import mid_slices, write_png_gray, write_preview

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
