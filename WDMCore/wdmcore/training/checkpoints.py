"""The files of a run folder: model checkpoints, resumable training state (optimiser, EMA, RNG), pruning."""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..filemodes import set_default_mode
from ..models.checkpoints import read_model_file, save_model_file, torch_load_reason

log = logging.getLogger(__name__)


# Format 2 leaves out the EMA weights: they are the model file's, so each checkpoint holds them once (format 1
# wrote them into both files; such states are still read).
STATE_FORMAT = 2
READABLE_STATE_FORMATS = (1, 2)
# A stop request: while a run trains, a file of this name in its folder makes it write a checkpoint after the
# current step and return (docs/training.md). It needs no signal, so it reaches the trainer whatever process
# started it (Slicer's PythonSlicer is a launcher that passes no signal on).
STOP_FILE = "STOP"
_MODEL_RE = re.compile(r"^model_(\d+)\.safetensors$")
_STATE_RE = re.compile(r"^state_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    set_default_mode(tmp)
    os.replace(tmp, path)


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path, Path | None]]:
    """(step, model file, state file or None) of the checkpoints in a run folder, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    states = {int(m.group(1)): out_dir / m.group(0) for p in out_dir.iterdir() if (m := _STATE_RE.match(p.name))}
    found = []
    for p in out_dir.iterdir():
        if m := _MODEL_RE.match(p.name):
            step = int(m.group(1))
            found.append((step, p, states.get(step)))
    return sorted(found)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )  # fmt: skip
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``state_<step>.pt`` file (tensors and plain values only; nothing is executed), with the EMA weights
    (from its model file since format 2) under ``"ema"``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"the training state {path} could not be read ({torch_load_reason(exc)}); "
            "delete it to resume from the checkpoint before it."
        ) from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_STATE_FORMATS:
        raise CheckpointError(f"{path} is not a WaveletDiffusion training state (format {STATE_FORMAT}).")
    if "ema" not in state:
        model_file = path.with_name(f"model_{int(state['step']):07d}.safetensors")
        try:
            state["ema"] = read_model_file(model_file)[0]
        except CheckpointError as exc:
            raise CheckpointError(
                f"the EMA weights of the training state {path} are in its model file, which could not be used "
                f"({str(exc).rstrip('.')}); delete both files to resume from the checkpoint before them."
            ) from None
    return state


def latest_state(out_dir: Path) -> tuple[Path, dict[str, Any]]:
    candidates = [(step, state) for step, _, state in list_checkpoints(out_dir) if state is not None]
    if not candidates:
        raise CheckpointError(
            f"nothing to resume in {out_dir}: no state_<step>.pt file with its model_<step>.safetensors. "
            "Start a new run (without --resume) or point --out at the run folder."
        )
    errors = []
    for _, path in reversed(candidates):
        try:
            return path, load_training_state(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            log.warning("skipping unreadable training state %s", path)
    raise CheckpointError("no readable training state: " + " | ".join(errors))


# -- previews -----------------------------------------------------------------------------------------------


def stop_requested(out_dir: Path) -> bool:
    return (out_dir / STOP_FILE).exists()


def clear_stop_request(out_dir: Path) -> None:
    (out_dir / STOP_FILE).unlink(missing_ok=True)


def model_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"model_{step:07d}.safetensors"


def save_checkpoint(out_dir, step, network, ema, optimizer, config, card_base) -> Path:
    card = {**card_base, "training": {**card_base["training"], "step": step}}
    path = save_model_file(model_path(out_dir, step), ema.network, card)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "config": config.to_dict(),
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "ema_updates": ema.updates,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "data_order": {"seed": config.seed, "stream_position": step * config.batch_size},
    }
    atomic_torch_save(state, out_dir / f"state_{step:07d}.pt")
    return path


def prune(out_dir: Path, keep_last: int) -> None:
    checkpoints = list_checkpoints(out_dir)
    complete = [c for c in checkpoints if c[2] is not None]
    for step, model_file, state_file in checkpoints:
        if complete and step < complete[-keep_last:][0][0]:
            model_file.unlink(missing_ok=True)
            if state_file is not None:
                state_file.unlink(missing_ok=True)
