"""What both modules' logic classes share: the scene they write to, their log, the dependency gate every request
passes, and polling that schedules itself (a ``schedule(ms, callback)`` such as ``qt.QTimer.singleShot``) while
child processes are working."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class PolledLogic:
    """Base of the modules' logic classes; subclasses implement :meth:`poll`."""

    poll_interval_ms = 100

    def __init__(self, scene: Any = None, schedule: Callable[[int, Callable[[], None]], None] | None = None):
        self._scene = scene
        self.schedule = schedule
        self.log_callback: Callable[[str], None] | None = None
        self._polling_scheduled = False
        self.dependency_gate: Callable[[], Any] | None = None
        """Called before a request first needs the engine (in Slicer: offer to install PyTorch and the engine's
        packages, :func:`WaveletDiffusionCommonLib.dependencies.ensure_dependencies`); raises when they stay
        missing. Once it has passed it is not called again."""
        self._dependencies_ready = False

    def require_dependencies(self) -> None:
        """The one dependency gate: every request that starts a process, or writes files for one, passes here
        first, so that a missing PyTorch is offered for installation instead of failing in the process."""
        if self._dependencies_ready or self.dependency_gate is None:
            return
        self.dependency_gate()
        self._dependencies_ready = True

    def configure(self, **settings: Any) -> PolledLogic:
        """Set constructor settings after construction. A Slicer module's logic inherits from
        ScriptedLoadableModuleLogic, whose ``__init__`` already runs this class's ``__init__`` (with the defaults)
        through ``super()``: the module then configures it instead of running ``__init__`` a second time."""
        for name, value in settings.items():
            if name.startswith("_") or not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} has no setting {name!r}")
            setattr(self, name, value)
        return self

    @property
    def scene(self) -> Any:
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    def poll(self) -> bool:
        """Handle every event that has arrived; True while work is still running."""
        raise NotImplementedError

    def _log(self, message: str) -> None:
        log.info(message)
        if self.log_callback is not None:
            self.log_callback(message)

    def _ensure_polling(self) -> None:
        if self.schedule is None or self._polling_scheduled:
            return
        self._polling_scheduled = True

        def tick() -> None:
            self._polling_scheduled = False
            try:
                busy = self.poll()
            except Exception as exc:  # a callback failed: keep watching the processes all the same
                log.exception("polling failed")
                self._log(f"polling failed: {type(exc).__name__}: {exc}")
                busy = True
            if busy:
                self._ensure_polling()

        self.schedule(self.poll_interval_ms, tick)
