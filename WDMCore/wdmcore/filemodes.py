"""Permissions of files written through a temporary name.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a checkpoint or config.json renamed
from such a file would stay private, so others in a lab group could not read a shared run. Files are given
the mode a plain ``open()`` would have given them: 0666 without the bits of the process's umask.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    return 0o666 & ~current_umask()


def set_default_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a newly created file would have (0644 under the usual umask 022)."""
    os.chmod(Path(path), default_file_mode())
