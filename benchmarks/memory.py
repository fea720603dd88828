"""Process memory measurement shared by the benchmark scripts (Linux: reads /proc/self/status)."""

from __future__ import annotations

import threading


def rss_mb() -> float:
    """This process's resident memory in MB (NaN where /proc is not available)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class PeakRSS:
    """Context manager sampling this process's RSS every 5 ms in a thread; ``.peak`` is the highest (MB)."""

    def __enter__(self):
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
