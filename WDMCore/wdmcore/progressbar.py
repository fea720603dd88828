"""Progress events drawn as tqdm bars on stderr: the `wdm` command's default display (``--progress bar``) and
what ``progress=True`` of the Python API shows.

One bar per task ("prepare", "train", "sample", "embed-real", ...), created on the task's first event; a
task's events carrying a loss show it after the bar; checkpoints, previews and skipped files are written as
lines above the bars.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from .events import Event, ProgressCallback

# Units and labels of the tasks the engine reports.
_UNITS = {
    "download": "B",
    "train": "step",
    "sample": "step",
    "synthesize": "step",
    "inpaint": "step",
    "vary": "step",
    "ms-ssim": "pair",
    "summarize": "file",
    "headers": "file",
    "preprocess-lidc": "series",
}
_LABELS = {
    "prepare": "preprocessing",
    "headers": "reading headers",
    "embed-real": "features (real)",
    "embed-fake": "features (generated)",
    "read-fake": "reading (generated)",
}
_NOTES = ("checkpoint", "preview", "nonfinite", "skipped", "warning")


class ProgressBars:
    """A progress callback that draws tqdm bars; call :meth:`close` when the job ends (or use ``with``)."""

    def __init__(self, file: IO[str] | None = None):
        self.file = file if file is not None else sys.stderr
        self.bars: dict[str, Any] = {}

    def __call__(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._progress(event)
        elif kind == "start" and "max_steps" in event:  # training: show the bar before the first step ends
            self._progress({"task": "train", "done": event.get("step", 0), "total": event["max_steps"]})
        elif kind == "warning" and "message" in event:  # a sentence for the user, not a record
            self._write(f"warning: {event['message']}")
        elif kind in _NOTES:
            text = f"{kind}: " + ", ".join(f"{k}={v}" for k, v in event.items() if k != "event")
            self._write(text)

    def _progress(self, event: Event) -> None:
        from tqdm.auto import tqdm

        task = str(event.get("task", ""))
        bar = self.bars.get(task)
        done = int(event.get("done", 0))
        if bar is None:
            unit = _UNITS.get(task, "vol")
            bar = tqdm(
                total=event.get("total"),
                initial=done,  # a resumed job starts where it stopped
                desc=_LABELS.get(task, task),
                unit=unit,
                unit_scale=unit == "B",
                file=self.file,
                dynamic_ncols=True,
            )
            self.bars[task] = bar
        bar.n = done
        if "loss" in event:
            bar.set_postfix(loss=f"{event['loss']:.4g}", refresh=False)
        bar.refresh()
        if bar.total is not None and done >= bar.total:
            bar.close()
            del self.bars[task]

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def combine(*callbacks: ProgressCallback | None) -> ProgressCallback | None:
    """One callback that forwards each event to every given callback (``None`` entries are skipped)."""
    present = [c for c in callbacks if c is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def forward(event: Event) -> None:
        for callback in present:
            callback(event)

    return forward
