"""wdmcore: 3-D wavelet diffusion models (WDM) for medical volumes.

Main entry points: :func:`load_model` (released ``.pt`` checkpoints or our ``.safetensors`` files) and
:meth:`WDMModel.sample`. Lower-level pieces live in ``wdmcore.wavelets``, ``wdmcore.networks``,
``wdmcore.diffusion`` and ``wdmcore.samplers``.
"""

from .errors import CheckpointError, ConfigError, InputShapeError, WDMError
from .model import WDMModel, load_model

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "InputShapeError", "WDMError", "WDMModel", "__version__", "load_model"]
