"""Few-call students: progressive distillation (Salimans & Ho 2022) of any model of the family.

>>> from wdmcore.distill import DistillConfig, distill
>>> result = distill("demo_phantom_64", dataset, "runs/student", DistillConfig(calls=4, teacher_calls=16))
>>> # result.model_path: an ordinary model file whose card says {"distilled": {"sampler": "ddim", "calls": 4, ...}}

Each *round* trains a student, initialised from its teacher, to do in ONE deterministic DDIM step what the
teacher does in TWO; the student then becomes the next round's teacher, so the rounds halve the calls from the
teacher's start (16 -> 8 -> 4). Everything happens in the model's wavelet-coefficient space with the engine's own
DDIM arithmetic: x0 prediction (every member of the family predicts x0), clipped in image space before each
teacher step as the sampler does.

The grid: the teacher's ``teacher_calls`` levels are the first ``teacher_calls`` of the DDIM grid of
``teacher_calls + 1`` calls (log-SNR spacing from T - 1 towards 0, :func:`wdmcore.samplers.solver_timesteps`),
and the last call jumps from the lowest of them straight to the clean volume (noise level 0). A student of ``n``
calls keeps every ``teacher_calls / n``-th level, so each of its steps covers exactly two steps of its teacher.
The student's card records its timesteps; the engine's DDIM sampler runs them when a student is sampled with the
sampler and calls it was distilled for (:meth:`wdmcore.models.model.WDMModel.distilled_timesteps`).

The target (Salimans & Ho, eq. 8 in x-space): from z_t, the teacher's two steps reach z_s; the student's x0
prediction x~ must make one DDIM step from z_t land on z_s, so x~ = (z_s - (sigma_s / sigma_t) z_t) /
(alpha_s - (sigma_s / sigma_t) alpha_t) (at the clean end: x~ = z_s). The loss is the per-band MSE of the
student's raw x0 prediction against x~, weighted by max(SNR_t, 1) ("truncated SNR" weighting of the paper).

Each round is an ordinary run of the trainer (:func:`wdmcore.training.train`) with
:class:`DistillationObjective` as its loss, in its own folder ``round<r>_<calls>calls`` of the output folder:
data order, EMA, checkpoints, exact resume, ``torchrun``, progress events and Stop are the trainer's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .diffusion import Diffusion
from .errors import ConfigError
from .events import ProgressCallback
from .models.model import WDMModel
from .samplers import Denoiser, solver_timesteps
from .training.checkpoints import atomic_write_text, list_checkpoints
from .training.config import TrainConfig
from .training.objectives import check_item
from .training.schedule import sample_draws
from .wavelets import dwt3, to_coefficients

log = logging.getLogger(__name__)

SAMPLER = "ddim"  # the deterministic sampler the students are distilled for
METHOD = "progressive distillation (Salimans & Ho 2022), x0 target, truncated-SNR weighting"
GRID_SPACING = "logsnr"


# -- the grid and the target -----------------------------------------------------------------------------------


def check_calls(calls: int, teacher_calls: int) -> int:
    """The number of halving rounds from ``teacher_calls`` to ``calls`` (both powers of two, calls below)."""

    def power_of_two(n: Any) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0

    if not power_of_two(calls):
        raise ConfigError(f"the student's calls must be a power of two (1, 2, 4, 8, ...), got {calls!r}.")
    if not power_of_two(teacher_calls):
        raise ConfigError(f"the teacher's calls must be a power of two (e.g. 16), got {teacher_calls!r}.")
    if calls >= teacher_calls:
        raise ConfigError(
            f"the student's calls ({calls}) must be fewer than the teacher's ({teacher_calls}); each round halves them."
        )
    return int(teacher_calls // calls).bit_length() - 1


def teacher_grid(diffusion: Diffusion, teacher_calls: int) -> list[int]:
    """The teacher's ``teacher_calls`` decreasing timesteps (the last call goes from the lowest to noise level 0)."""
    if teacher_calls + 1 > diffusion.num_timesteps:
        raise ConfigError(
            f"a model of {diffusion.num_timesteps} diffusion steps cannot be run with {teacher_calls} distinct DDIM "
            f"calls; give --teacher-calls below {diffusion.num_timesteps}."
        )
    return solver_timesteps(diffusion, teacher_calls + 1, GRID_SPACING)[:-1]


def round_grids(grid: Sequence[int], calls: int) -> list[list[int]]:
    """The teacher levels of each round, from the teacher's grid to the final student's (one more entry: it)."""
    levels, out = list(grid), []
    while len(levels) >= calls:
        out.append(levels)
        levels = levels[::2]
    return out


class _Levels:
    """sqrt(abar) and sqrt(1 - abar) of each timestep, and of the clean end (index ``steps``: 1 and 0)."""

    def __init__(self, diffusion: Diffusion):
        abar = np.append(diffusion.alphas_cumprod, 1.0)
        self.clean = len(abar) - 1
        self._alpha = torch.from_numpy(np.sqrt(abar))  # float64, cast per use like the engine's schedule arrays
        self._sigma = torch.from_numpy(np.sqrt(1.0 - abar))

    def __call__(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1, 1, 1)
        return (self._alpha.to(level.device)[level].float().view(shape),
                self._sigma.to(level.device)[level].float().view(shape))  # fmt: skip


def ddim_move(levels: _Levels, x: torch.Tensor, x0: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
    """One deterministic DDIM step from level ``start`` to level ``end`` with the x0 estimate ``x0``."""
    a_t, s_t = levels(start)
    a_s, s_s = levels(end)
    eps = (x - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


def two_step_target(
    teacher: Denoiser, diffusion: Diffusion, levels: Sequence[int], z: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """The x0 a student must predict at z (at the teacher's level ``2k`` of ``levels``) to land in one DDIM step
    where the teacher's two steps (levels 2k -> 2k+1 -> 2k+2, past the end: noise level 0) land.

    ``teacher(x, t)`` returns the raw x0 prediction at original timesteps ``t`` (conditioning already bound); it
    is clipped in image space as the sampler clips it."""
    table = _Levels(diffusion)
    grid = torch.tensor([*levels, table.clean], dtype=torch.long, device=z.device)
    t, mid, end = grid[2 * k], grid[2 * k + 1], grid[torch.clamp(2 * k + 2, max=len(levels))]

    def x0(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        out = teacher(x, at).float()
        return diffusion.clip_x0(out) if diffusion.config.clip_denoised else out

    z_mid = ddim_move(table, z, x0(z, t), t, mid)
    z_end = ddim_move(table, z_mid, x0(z_mid, mid), mid, end)
    a_t, s_t = table(t)
    a_s, s_s = table(end)
    ratio = s_s / s_t
    return (z_end - ratio * z) / (a_s - ratio * a_t)


class DistillationObjective:
    """The loss of one distillation step (see the module's docstring), as :func:`wdmcore.training.train` calls it.

    ``teacher``: the teacher network (frozen); ``levels``: this round's teacher levels (the student is trained on
    every second one); conditional teachers take data items ``(image, condition coefficients, ...)``."""

    def __init__(self, teacher: torch.nn.Module, diffusion: Diffusion, levels: Sequence[int], seed: int,
                 image_size: int, condition_channels: int = 0):  # fmt: skip
        if len(levels) < 2 or len(levels) % 2:
            raise ConfigError(f"a round needs an even number of teacher levels, got {len(levels)}.")
        self.teacher = teacher.eval().requires_grad_(False)
        self.diffusion, self.levels, self.seed = diffusion, list(levels), seed
        self.image_size, self.condition_channels = image_size, condition_channels
        self.table = _Levels(diffusion)

    def __call__(self, model, item, positions, device):
        c = self.diffusion.config
        image = check_item(item, self.image_size).to(device, non_blocking=True)
        condition = self._condition(item, image, device)
        k, noise = sample_draws(self.seed, positions, tuple(image.shape[1:]), len(self.levels) // 2)
        k, noise = k.to(device), noise.to(device)
        grid = torch.tensor(self.levels, dtype=torch.long, device=device)
        t = grid[2 * k]

        def with_condition(x: torch.Tensor) -> torch.Tensor:
            return x if condition is None else torch.cat([x, condition.to(x.dtype)], dim=1)

        with torch.autocast(device.type, enabled=False):  # the arithmetic in fp32, as in the trainer's loss
            x_start = to_coefficients(image, c.lll_scale, c.high_scale)
            a_t, s_t = self.table(t)
            z = a_t * x_start + s_t * dwt3(noise)[:, :, 0]
        with torch.no_grad(), torch.autocast(device.type, enabled=False):  # the teacher in fp32: exact targets
            target = two_step_target(lambda x, at: self.teacher(with_condition(x), at), self.diffusion,
                                     self.levels, z, k)  # fmt: skip
        prediction = model(with_condition(z), t)
        with torch.autocast(device.type, enabled=False):
            weight = torch.clamp((a_t / s_t) ** 2, min=1.0)
            per_sample_band = (weight * (target.float() - prediction.float()).pow(2)).mean(dim=(2, 3, 4))
            per_band = per_sample_band.mean(dim=0)
        return per_band.mean(), per_band

    def _condition(self, item: Any, image: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        if not self.condition_channels:
            return None
        condition = item[1] if isinstance(item, (tuple, list)) and len(item) > 2 else None
        if condition is None or condition.dim() != 5 or condition.shape[1] != self.condition_channels:
            raise ConfigError(
                f"this conditional teacher needs data items (image, condition [B, {self.condition_channels}, ...], "
                "index); use a paired dataset (PairedPhantomDataset, or your own) rather than single volumes."
            )
        return condition.to(device, non_blocking=True)


# -- data for conditional teachers -------------------------------------------------------------------------------


class PairedPhantomDataset(Dataset):
    """Paired phantoms (:mod:`wdmcore.data.contrasts`) for a ``synthesize`` model: items (the card's output
    contrast [1, S, S, S] in [0, 1], the card's input contrasts as coefficients [8 x inputs, S/2, ...], index)."""

    def __init__(self, card: dict[str, Any], count: int, seed: int = 0):
        from .data.contrasts import CONTRASTS

        self.size = int(card["image_size"])
        self.inputs = [item["name"] for item in card.get("inputs") or []]
        self.output = (card.get("output") or {}).get("name")
        unknown = [n for n in [*self.inputs, self.output] if n not in CONTRASTS]
        if unknown:
            raise ConfigError(
                f"phantom data has the contrasts {', '.join(CONTRASTS)}, but this teacher takes or makes "
                f"{', '.join(map(str, unknown))}; give a paired dataset of its own inputs through the Python API."
            )
        self.count, self.seed = int(count), int(seed)
        diffusion = card.get("diffusion") or {}
        self.scales = (float(diffusion.get("lll_scale", 3.0)), float(diffusion.get("high_scale", 1.0)))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        from .data.contrasts import paired_phantom

        contrasts, _ = paired_phantom(self.size, self.seed, int(index), names=(*self.inputs, self.output))
        packs = [to_coefficients(torch.from_numpy(contrasts[n])[None, None], *self.scales)[0] for n in self.inputs]
        return torch.from_numpy(contrasts[self.output])[None], torch.cat(packs), index


# -- the rounds ------------------------------------------------------------------------------------------------


@dataclass
class DistillConfig:
    """What a distillation depends on besides the teacher and the data (training fields as :class:`TrainConfig`)."""

    calls: int = 4
    teacher_calls: int = 16
    steps_per_round: int = 2000
    lr: float = 5e-5
    batch_size: int = 4
    ema_rate: float = 0.999
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    checkpoint_interval: int = 500
    keep_last: int = 2
    log_interval: int = 10
    num_workers: int = 0
    tensorboard: bool = True
    name: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the data options (for the record and resume)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DistillResult:
    model_path: Path | None  # the student (None on non-zero ranks, or when stopped before the last round ended)
    calls: int  # the calls of the newest finished student (the teacher's when no round finished)
    stopped: bool
    rounds_done: int


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_teacher(source: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[Path, WDMModel]:
    """(file, model) of a teacher given as a model file or a catalogue name; refuses what cannot be distilled."""
    from .loading import is_model_name, load_model

    path = Path(source).expanduser()
    if not path.exists() and is_model_name(os.fspath(source)):
        from . import hub

        path = hub.fetch(os.fspath(source))
    model = load_model(source, device=device)  # its card is the one the engine samples with
    card = model.card
    task = card.get("task", "generate")
    if task == "inpaint":
        raise ConfigError(
            "an inpaint model cannot be distilled: it runs its released 2 steps already (fastWDM3D) and its "
            "conditioning depends on the mask; distil a generate or synthesize model."
        )
    if card.get("distilled"):
        log.info("the teacher is itself a student (%s calls)", card["distilled"].get("calls"))
    return path, model


def _round_dir(out_dir: Path, r: int, calls: int) -> Path:
    return out_dir / f"round{r}_{calls}calls"


def _finished_model(folder: Path, steps: int) -> Path | None:
    complete = [c for c in list_checkpoints(folder) if c[2] is not None and c[0] >= steps]
    return complete[-1][1] if complete else None


_IDENTITY = ("calls", "teacher_calls", "steps_per_round", "seed", "lr", "batch_size", "ema_rate")


def distill(
    teacher: str | os.PathLike,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    config: DistillConfig | None = None,
    *,
    resume: bool = False,
    on_event: ProgressCallback | None = None,
    stop: Callable[[], bool] | None = None,
) -> DistillResult:
    """Distil ``teacher`` (a model file or catalogue name) into a student of ``config.calls`` DDIM calls.

    ``dataset``: items as for :func:`wdmcore.training.train` (images in the teacher's cube), plus the
    conditioning coefficients for a conditional teacher (:class:`PairedPhantomDataset`). Rounds run in
    ``out_dir/round<r>_<calls>calls``; ``resume=True`` continues the unfinished round and skips finished ones.
    ``on_event`` receives a ``{"event": "round", ...}`` event per round and the trainer's events."""
    from .models.model import load_checkpoint
    from .training import train
    from .training.loop import _setup_distributed

    config = DistillConfig() if config is None else config
    rounds = check_calls(config.calls, config.teacher_calls)
    out_dir = Path(out_dir)
    teacher_path, teacher_model = resolve_teacher(teacher)
    teacher_card = teacher_model.card
    teacher_sha = file_sha256(teacher_path)
    record = {**config.to_dict(), "teacher": os.fspath(teacher), "teacher_sha256": teacher_sha}
    record_path = out_dir / "distill.json"
    existing = sorted(out_dir.glob("round*_*calls")) if out_dir.is_dir() else []
    if resume:
        if not record_path.is_file():
            raise ConfigError(
                f"{out_dir} holds no distillation to resume (no distill.json); start one without --resume."
            )
        saved = json.loads(record_path.read_text(encoding="utf-8"))
        changed = [k for k in (*_IDENTITY, "teacher_sha256") if saved.get(k) != record.get(k)]
        if changed:
            raise ConfigError(
                f"the distillation in {out_dir} was started with other settings ({', '.join(changed)}); resume "
                "with the same teacher and settings, or start a new one in another folder."
            )
    elif any(list_checkpoints(folder) for folder in existing):
        raise ConfigError(
            f"{out_dir} already holds a distillation; pass --resume to continue it, or choose an empty folder."
        )

    dist, device = _setup_distributed(config.device)
    try:
        if dist.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
        if dist.active:
            torch.distributed.barrier()
        diffusion = teacher_model.diffusion
        grids = round_grids(teacher_grid(diffusion, config.teacher_calls), config.calls)
        condition_channels = teacher_model.condition_channels
        current, calls = teacher_model.network, config.teacher_calls
        model_path: Path | None = None
        for r in range(1, rounds + 1):
            levels, calls_after = grids[r - 1], calls // 2
            folder = _round_dir(out_dir, r, calls_after)
            if on_event is not None and dist.main:
                on_event({"event": "round", "round": r, "rounds": rounds, "calls": calls_after, "teacher_calls": calls})
            finished = _finished_model(folder, config.steps_per_round)
            if finished is None:
                train_config = round_config(config, teacher_card)
                objective = DistillationObjective(current.to(device), diffusion, levels, config.seed,
                                                  train_config.image_size, condition_channels)  # fmt: skip
                card = student_card(teacher_card, config, teacher_sha, grids[r], dataset, r)
                weights = {k: v.detach().clone() for k, v in current.state_dict().items()}
                result = train(train_config, dataset, folder, resume=bool(list_checkpoints(folder)) and resume,
                               on_event=on_event, stop=stop, initial_weights=weights, objective=objective,
                               card=card)  # fmt: skip
                if result.stopped:
                    return DistillResult(None, calls, True, r - 1)
                finished = _finished_model(folder, config.steps_per_round)
            current = load_checkpoint(finished).network.to(device)
            calls, model_path = calls_after, finished
        final = out_dir / f"student_{config.calls}calls.safetensors"
        if dist.main and model_path is not None:
            temporary = final.with_name(f".{final.name}.tmp")
            shutil.copyfile(model_path, temporary)
            os.replace(temporary, final)
        if dist.active:
            torch.distributed.barrier()
        return DistillResult(final if dist.main else None, calls, False, rounds)
    finally:
        if dist.initialized_here:
            torch.distributed.destroy_process_group()


def round_config(config: DistillConfig, card: dict[str, Any]) -> TrainConfig:
    network = {k: v for k, v in card["network"].items() if k != "use_checkpoint"}
    return TrainConfig(
        preset=None, network=network, image_size=int(card["image_size"]), diffusion=dict(card.get("diffusion") or {}),
        lr=config.lr, batch_size=config.batch_size, max_steps=config.steps_per_round, ema_rate=config.ema_rate,
        seed=config.seed, device=config.device, precision=config.precision,
        checkpoint_interval=config.checkpoint_interval, keep_last=config.keep_last, log_interval=config.log_interval,
        num_workers=config.num_workers, tensorboard=config.tensorboard, data=dict(config.data),
    ).resolved()  # fmt: skip


def student_card(teacher_card: dict[str, Any], config: DistillConfig, teacher_sha: str, timesteps: Sequence[int],
                 dataset: Dataset, round_number: int) -> dict[str, Any]:  # fmt: skip
    """The card of a round's student: the teacher's, with what it was distilled for and how."""
    calls = len(timesteps)
    base = {k: v for k, v in teacher_card.items() if k not in ("network", "format", "training", "distilled")}
    teacher_name = teacher_card.get("name") or "model"
    name = config.name if config.name and calls == config.calls else f"{teacher_name}_{calls}step"
    first_teacher = (teacher_card.get("distilled") or {}).get("teacher_sha256") and teacher_card["distilled"]
    return {
        **base,
        "name": name,
        "description": f"{teacher_name} distilled to {calls} DDIM calls ({teacher_card.get('description') or ''})",
        "weights": "EMA",
        "distilled": {
            "sampler": SAMPLER,
            "calls": calls,
            "timesteps": [int(t) for t in timesteps],
            "teacher": teacher_name,
            "teacher_sha256": teacher_sha,
            "teacher_calls": config.teacher_calls,
            "round": round_number,
            "method": METHOD,
            **({"teacher_distilled_from": first_teacher["teacher_sha256"]} if first_teacher else {}),
        },
        "training": {
            "data": (config.data or {}).get("description") or f"{len(dataset)} volumes ({type(dataset).__name__})",
            "volumes": len(dataset),
            "batch_size": config.batch_size,
            "lr": config.lr,
            "ema_rate": config.ema_rate,
            "seed": config.seed,
            "steps_per_round": config.steps_per_round,
            "teacher_training": teacher_card.get("training"),
        },
    }
