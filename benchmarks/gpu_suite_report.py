"""Recording for benchmarks/gpu_suite.py: parts with time budgets, rows, and the JSON and Markdown files.

Imports no torch: the suite prints its first progress line before the seconds-long torch import.
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

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f} s] {message}", flush=True)


class BudgetExceeded(Exception):
    """The part's time is up (raised between steps of a timing loop)."""


# ------------------------------------------------------------------------------------------------- recording


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


# ---------------------------------------------------------------------------------------------------- markdown

# Columns shown per part in the Markdown (the JSON holds every field).
COLUMNS = {
    "gen128": ["network", "image", "batch", "precision", "channels_last", "compile", "cudnn_benchmark", "what",
               "step_ms", "volume_s_default", "volume_s", "compile_s", "peak_allocated_gb", "peak_reserved_gb",
               "achieved_tflops", "pct_of_bf16_matmul_peak", "status"],
    "train": ["network", "image", "batch", "precision", "activation_checkpointing", "compile", "it_per_s", "step_s",
              "compile_s", "peak_allocated_gb", "peak_reserved_gb", "status"],
}  # fmt: skip
COLUMNS["gen256"] = COLUMNS["gen128"]


def markdown(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    lines = [
        f"# GPU suite: {env.get('device_name', '?')}",
        "",
        f"* command: `{data['command']}`",
        f"* started {data['started']}, {data.get('elapsed_s', '?')} s; tiny: {data['tiny']}; "
        f"budget scale {data['budget_scale']}",
        f"* torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, driver {env.get('driver')}, "
        f"GPU memory {env.get('gpu_memory_gb')} GB, commit {env.get('git_commit')}",
        "",
    ]
    summary = _summary(data)
    if summary:
        lines += ["## Summary (batch 1)", "", *summary, ""]
    for name, part in data["parts"].items():
        lines += [f"## {name}: {part['status']}", ""]
        lines += [f"* {note}" for note in part["notes"]]
        rows = part["rows"]
        if rows and name in COLUMNS:
            columns = [c for c in COLUMNS[name] if any(c in r for r in rows)]
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for row in rows:
                lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        elif rows:  # rows of different kinds: one line each
            lines.append("")
            for row in rows:
                fields = ", ".join(f"{k} {_cell(v)}" for k, v in row.items() if k not in ("traceback", "wall_s"))
                lines.append(f"* {fields}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _summary(data: dict[str, Any]) -> list[str]:
    """Per resolution: the fastest batch-1 sampling configuration (time per volume and its memory)."""
    out = []
    for name in ("gen128", "gen256"):
        rows = [r for r in data["parts"].get(name, {}).get("rows", []) if r.get("status") == "ok"]
        step_rows = [r for r in rows if r.get("batch") == 1 and "volume_s_default" in r]
        if not step_rows:
            continue
        best = min(step_rows, key=lambda r: r["volume_s_default"])
        e2e = next((r for r in rows if "volume_s" in r), None)
        if not out:
            out = ["| image | fastest setting | s / volume (default sampler, 25 calls) | peak allocated GB | "
                   "peak reserved GB | generate() end to end s | its peak GB |",
                   "|---|---|---|---|---|---|---|"]  # fmt: skip
        setting = f"{best['precision']}, {'channels-last' if best['channels_last'] else 'contiguous'}" + (
            ", compiled" if best["compile"] else ""
        )
        out.append(
            f"| {best['image']}^3 | {setting} | {best['volume_s_default']} | {best.get('peak_allocated_gb', '')} | "
            f"{best.get('peak_reserved_gb', '')} | {e2e.get('volume_s', '') if e2e else ''} | "
            f"{e2e.get('peak_allocated_gb', '') if e2e else ''} |"
        )
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")
