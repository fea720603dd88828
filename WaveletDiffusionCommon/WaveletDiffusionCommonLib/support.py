"""Which Slicer the modules run in: Slicer 5.10 or later (Python 3.12). Older Slicer (5.8 ships Python 3.9) is
told so in the module panel, once, instead of failing later in the engine (which needs Python 3.10)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = "5.10"


def unsupported_message(version_info: Sequence[int] | None = None, module: str = "Wavelet Diffusion") -> str | None:
    """The message to show instead of the module's panel, or None when this Python can run the engine."""
    version = tuple(version_info if version_info is not None else sys.version_info)[:3]
    if version[:2] >= MINIMUM_PYTHON:
        return None
    found = ".".join(str(v) for v in version)
    return (
        f"{module} needs Slicer {MINIMUM_SLICER} or later. This Slicer runs Python {found}; the generation and "
        f"training engine needs Python {'.'.join(map(str, MINIMUM_PYTHON))} or later (Slicer {MINIMUM_SLICER} "
        "ships Python 3.12). Install a current Slicer from https://download.slicer.org and this extension again "
        "from its Extensions Manager."
    )
