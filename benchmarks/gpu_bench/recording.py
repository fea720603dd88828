"""Recording: parts with time budgets, their rows, and the JSON and Markdown files rewritten after each row.

Imports no torch: the launcher prints its first progress line from here before the seconds-long torch import.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import markdown

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f} s] {message}", flush=True)


class BudgetExceeded(Exception):
    """The part's time is up (raised between steps of a timing loop)."""


class Recorder:
    """Holds every result and rewrites the JSON and Markdown files after each measurement."""

    def __init__(self, out: str | Path, device_name: str, tiny: bool, budget_scale: float,
                 cleanup: Callable[[], None] = lambda: None):  # fmt: skip
        self.cleanup = cleanup  # frees device memory after a failed measurement
        self.data: dict[str, Any] = {
            "suite": "gpu_suite",
            "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tiny": bool(tiny),
            "budget_scale": budget_scale,
            "parts": {},
        }
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() + ("-tiny" if tiny else "")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.json_path = out / f"gpu_suite_{slug}_{stamp}.json"
        self.md_path = out / f"gpu_suite_{slug}_{stamp}.md"

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - _T0, 1)
        self.json_path.write_text(json.dumps(self.data, indent=1, default=_json_default) + "\n")
        self.md_path.write_text(markdown(self.data))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


class Part:
    """One part's rows, notes and deadline."""

    def __init__(self, name: str, budget_s: float, recorder: Recorder, global_deadline: float):
        self.name = name
        self.budget_s = budget_s
        self.started = time.monotonic()
        self.deadline = min(self.started + budget_s, global_deadline)
        self.recorder = recorder
        self.record: dict[str, Any] = {"status": "running", "budget_s": round(budget_s, 1), "rows": [], "notes": []}
        recorder.data["parts"][name] = self.record

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise BudgetExceeded

    def note(self, text: str) -> None:
        self.record["notes"].append(text)
        say(f"{self.name}: note: {text}")

    def row(self, **fields: Any) -> dict[str, Any]:
        self.record["rows"].append(fields)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
        say(f"{self.name}: {shown}")
        self.recorder.write()
        return fields

    def measure(self, what: dict[str, Any], fn, need_s: float = 0.0) -> dict[str, Any] | None:
        """Run one measurement: ``fn()`` returns a dict of figures. Budget, out-of-memory and any other error
        are recorded in the row's ``status`` and the part goes on."""
        if self.left() < need_s or self.left() <= 0:
            self.row(**what, status="skipped: budget")
            return None
        started = time.monotonic()
        try:
            figures = fn()
        except BudgetExceeded:
            self.row(**what, status="skipped: budget (stopped part-way)")
            return None
        except Exception as exc:  # recorded, never fatal: the suite must go on
            status = "out of memory" if _is_oom(exc) else f"error: {type(exc).__name__}: {exc}"
            self.recorder.cleanup()
            self.row(**what, status=status[:400], traceback=traceback.format_exc(limit=6)[-2000:])
            return None
        row = self.row(**what, **figures, status="ok", wall_s=round(time.monotonic() - started, 2))
        return row


def part_status(rows: list[dict[str, Any]]) -> str:
    """ "ok", "ok (N skipped)" or "N of M failed" from the rows' statuses."""
    statuses = [str(r.get("status", "")) for r in rows]
    failed = sum(not (s == "ok" or s.startswith("skipped")) for s in statuses)
    skipped = sum(s.startswith("skipped") for s in statuses)
    if failed:
        return f"{failed} of {len(statuses)} failed"
    return f"ok ({skipped} skipped)" if skipped else "ok"


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) < 120 else text[:117] + "..."


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
