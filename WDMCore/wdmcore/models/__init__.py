"""Models: checkpoint files (released ``.pt`` state dicts, our ``.safetensors`` with a model card), model cards
(:mod:`.cards`, light: the catalogue and the command line read them without PyTorch), the released families
(:mod:`.families`) and the loaded model (:class:`WDMModel`, :func:`load_checkpoint`, imported on first use). Models
by name: :func:`wdmcore.load_model` (:mod:`wdmcore.loading`), above both the models and the hub."""

from importlib import import_module
from typing import Any

__all__ = ["WDMModel", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(".model", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
