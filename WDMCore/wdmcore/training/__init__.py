"""Training: the loop (:func:`train`, :class:`TrainConfig`) and the ``wdm train`` command.

See ``docs/training.md`` and the docstring of :mod:`wdmcore.training.loop`.
"""

from .loop import (
    EMA,
    StreamBatches,
    TrainConfig,
    TrainingError,
    TrainResult,
    list_checkpoints,
    load_training_state,
    mid_slices,
    train,
    write_png_gray,
    write_preview,
)

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
