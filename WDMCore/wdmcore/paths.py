"""Where wdmcore keeps files on this machine: one cache root for models, evaluation statistics and, when asked,
preprocessed volumes.

``$WDM_CACHE_DIR`` when that variable is set, otherwise the user's cache folder for ``wdmcore``
(``~/.cache/wdmcore`` on Linux, ``~/Library/Caches/wdmcore`` on macOS, ``%LOCALAPPDATA%\\wdmcore\\Cache`` on
Windows). Everything below it can be deleted: models are downloaded again, statistics recomputed.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "WDM_CACHE_DIR"


def cache_root() -> Path:
    """The cache root (not created here)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("wdmcore", appauthor=False)


def cache_subdir(name: str) -> Path:
    """A folder of the cache root: ``models``, ``evaluation-stats`` or ``preprocessed``."""
    return cache_root() / name
