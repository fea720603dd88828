"""wdmcore: 3-D wavelet diffusion models (WDM) for medical volumes.

Main entry points: :func:`load_model` (released ``.pt`` checkpoints or our ``.safetensors`` files),
:meth:`WDMModel.sample` and :func:`generate` (volumes with their geometry), and the conditional tasks
:func:`synthesize` (a missing contrast, cWDM), :func:`inpaint` (fastWDM3D, or RePaint with any model) and
:func:`vary` (SDEdit variations). Each capability has one home:
``wavelets``, ``networks``, ``diffusion``, ``samplers`` (the engine), ``models`` (checkpoints and the loaded
model), ``tasks`` (model + inputs + settings -> volumes), ``volumes`` (reading and writing volumes with their
geometry), ``data``, ``training``, ``evaluation``, ``hub`` (catalogue, downloads, cache) and ``cli`` (the
``wdm`` command).

PyTorch is imported on first use of a name that needs it, so that ``wdm --help`` starts at once.
"""

from importlib import import_module
from typing import Any

from .errors import CheckpointError, ConfigError, InputShapeError, WDMError
from .version import __version__

# Public names served from their homes on first access (PEP 562).
_LAZY = {
    "WDMModel": ".models.model",
    "load_model": ".loading",
    "generate": ".tasks.generate",
    "GeneratedVolume": ".tasks.generate",
    "synthesize": ".tasks.synthesize",
    "inpaint": ".tasks.inpaint",
    "vary": ".tasks.vary",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "GeneratedVolume",
    "InputShapeError",
    "WDMError",
    "WDMModel",
    "__version__",
    "generate",
    "inpaint",
    "load_model",
    "synthesize",
    "vary",
]


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'wdmcore' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value
