"""The optional packages of the evaluation (MONAI, nibabel): imported where used, and a clear error naming the
package and the command that installs it when one is missing (the engine itself needs only torch and numpy)."""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError

EXTRA = "eval"  # WDMCore/pyproject.toml's extra that holds every package the evaluation uses
OPTIONAL_PACKAGES = ("monai", "nibabel", "SimpleITK", "scipy")  # the eval extra's packages, by import name


def import_optional(module: str, needed_for: str) -> ModuleType:
    """``import module``, or a :class:`ConfigError` saying that ``needed_for`` needs its package and how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise missing_package(missing.split(".")[0], needed_for) from exc


def missing_package(package: str, needed_for: str) -> ConfigError:
    """The error for an optional package that is not installed, with the pip command of the ``eval`` extra."""
    how = f"`pip install 'wdmcore[{EXTRA}]'`"
    checkout = _source_checkout()
    if checkout is not None:  # an editable install: the same extra from the checkout, into this very Python
        how += f", or from this source checkout `{shlex.quote(sys.executable)} -m pip install -e '{checkout}[{EXTRA}]'`"
    return ConfigError(f"{needed_for} needs the {package} package, which is not installed: install it with {how}.")


def _source_checkout() -> Path | None:
    """The WDMCore folder when wdmcore runs from a source checkout (its pyproject.toml beside the package)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None
