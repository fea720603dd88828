"""Models: checkpoint files (released ``.pt`` state dicts, our ``.safetensors`` with a model card) and the
loaded model (:class:`WDMModel`, :func:`load_model`)."""

from .model import WDMModel, load_model

__all__ = ["WDMModel", "load_model"]
