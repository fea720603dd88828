"""When the training module describes the data folder again: only when what a scan reads changed, and only after
the changes settled.

Binding a parameter node to the panel (module enter, scene close) clears and refills combo boxes, which writes
transient values to the node; a user typing a path changes it on every key. Each of those would start (and
kill) a ``wdm summarize`` process. :class:`ScanScheduler` waits until the values are quiet for ``delay_ms`` and
scans only when they differ from those of the last scan.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

DEBOUNCE_MS = 600


class ScanScheduler:
    def __init__(
        self,
        schedule: Callable[[int, Callable[[], None]], Any],
        start: Callable[[Hashable], None],
        delay_ms: int = DEBOUNCE_MS,
    ):
        self.schedule = schedule
        self.start = start
        self.delay_ms = delay_ms
        self._last: Hashable = None
        self._pending: Hashable = None
        self._generation = 0

    def seed(self, key: Hashable) -> None:
        """What the panel shows now counts as scanned (a parameter node was bound): no scan for it."""
        self._last = key
        self._pending = None
        self._generation += 1  # a scan waiting for the previous node is dropped

    def changed(self, key: Hashable) -> None:
        """The values a scan reads may have changed: scan ``delay_ms`` after the last change, if they differ."""
        self._pending = key
        self._generation += 1
        generation = self._generation
        self.schedule(self.delay_ms, lambda: self._fire(generation))

    def forget(self) -> None:
        """The next change scans even if it returns to the last scanned values (e.g. after a failed scan)."""
        self._last = None

    def _fire(self, generation: int) -> None:
        if generation != self._generation:
            return  # a newer change restarted the wait
        key, self._pending = self._pending, None
        if key is None or key == self._last:
            return
        self._last = key
        self.start(key)
