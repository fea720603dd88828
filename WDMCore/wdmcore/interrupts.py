"""SIGTERM as an exception, so that long operations unwind like Ctrl-C.

By default SIGTERM (``kill``, ``docker stop``, SLURM) ends a Python process at once: ``finally`` blocks do not
run, so temporary files stay behind. Inside :func:`sigterm_unwinds` it raises :class:`Terminated` instead, the
stack unwinds (temporary files are removed, finished files are kept) and the command exits with 143.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from .vocabulary import EXIT_TERMINATED

EXIT_CODE = EXIT_TERMINATED  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class Terminated(BaseException):  # noqa: N818 - named after the signal's meaning, like KeyboardInterrupt
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that ``except Exception`` does not swallow it."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM while inside this block.

    Does nothing outside the main thread or when the process already handles SIGTERM itself (a caller's handler
    is never replaced). A second SIGTERM during the unwinding ends the process at once."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated("stopped by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
