"""*Reload* in developer mode: Slicer reloads the module file only; the Libs it imports must be reloaded too, or
the reloaded module keeps running the old Lib code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence


def reload_packages(packages: Sequence[str]) -> list[str]:
    """Reload every loaded module of ``packages`` (``importlib.reload``): submodules first, deepest first, each
    package last, so that a package's ``from .x import y`` picks up the reloaded ``x``. Returns their names."""
    names = [n for n in list(sys.modules) if any(n == p or n.startswith(p + ".") for p in packages)]
    names.sort(key=lambda n: (n.split(".")[0], -n.count("."), n))
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            importlib.reload(module)
    return names
