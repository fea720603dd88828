"""wdmcore: 3-D wavelet diffusion models (WDM) for medical volumes."""

from .errors import CheckpointError, ConfigError, InputShapeError, WDMError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "InputShapeError", "WDMError", "__version__"]
