"""What a training run folder holds, read without the engine (no torch in Slicer's own process).

``wdm train`` writes ``model_<step>.safetensors`` (EMA weights + model card), ``state_<step>.pt`` (what
``--resume`` needs; written after its model file), ``config.json`` and ``events.jsonl`` (every event of every
session of the run). The module reads them to offer *Resume*, to open the newest model, and to redraw the loss
curve of a run that was started before.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_MODEL_RE = re.compile(r"^model_(\d+)\.safetensors$")
_STATE_RE = re.compile(r"^state_(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    model: Path
    state: Path | None
    """The training state for resuming; None when it was not written (yet) or was removed."""


def checkpoints(out_dir: str | os.PathLike) -> list[Checkpoint]:
    """The checkpoints of a run folder, oldest first (the same rule as ``wdmcore.training.list_checkpoints``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    states = {int(m.group(1)): out_dir / m.group(0) for p in out_dir.iterdir() if (m := _STATE_RE.match(p.name))}
    found = [
        Checkpoint(int(m.group(1)), p, states.get(int(m.group(1))))
        for p in out_dir.iterdir()
        if (m := _MODEL_RE.match(p.name))
    ]
    return sorted(found, key=lambda c: c.step)


def latest_model(out_dir: str | os.PathLike) -> Path | None:
    """The newest model file (what *Open in Wavelet Diffusion* offers), or None."""
    found = checkpoints(out_dir)
    return found[-1].model if found else None


def resumable(out_dir: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint ``wdm train --resume`` would continue from (newest with a state file), or None."""
    complete = [c for c in checkpoints(out_dir) if c.state is not None]
    return complete[-1] if complete else None


def read_config(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The resolved configuration of the run, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def loss_history(out_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, loss) of every training progress event in ``events.jsonl``, in order.

    A resumed run repeats the steps after its checkpoint, so a step that comes again replaces the points from
    that step on (the curve shows what the final weights went through).
    """
    path = Path(out_dir) / "events.jsonl"
    points: list[tuple[int, float]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return points
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed process
        if not isinstance(event, dict) or event.get("event") != "progress" or event.get("task") != "train":
            continue
        try:
            step, loss = int(event["done"]), float(event["loss"])
        except (KeyError, TypeError, ValueError):
            continue
        while points and points[-1][0] >= step:
            points.pop()
        points.append((step, loss))
    return points


# The stop request of ``wdm train``: the trainer checks for this file every step, writes a checkpoint, removes
# the file and exits (docs/training.md). It works whatever process sits between the module and the trainer.
STOP_FILE = "STOP"


def stop_file(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / STOP_FILE


def live_trainers(out_dir: str | os.PathLike) -> list[int]:
    """The ids of the live processes that train into ``out_dir`` (``... train ... --out OUT``), whoever
    started them: a trainer left running by a launcher that died, or one started from a terminal. A second
    trainer in the same folder would mix two runs. Empty without psutil."""
    try:
        import psutil
    except ImportError:
        log.warning("psutil is not installed: cannot tell whether a trainer of %s is still running", out_dir)
        return []
    target = Path(out_dir).expanduser().resolve()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            args = proc.info["cmdline"] or []
            if "train" not in args:
                continue
            if "--out" in args[:-1]:
                out = Path(args[args.index("--out") + 1]).expanduser()
            else:
                given = next((a[len("--out=") :] for a in args if a.startswith("--out=")), None)
                if given is None:
                    continue
                out = Path(given).expanduser()
            if not out.is_absolute():
                out = Path(proc.cwd()) / out
            if out.resolve() == target and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.Error, OSError, ValueError):
            continue  # gone, or another user's process
    return found
