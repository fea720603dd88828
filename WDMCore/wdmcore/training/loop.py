"""The training loop: the paper's recipe on one CPU/GPU or several processes under ``torchrun``.

>>> from wdmcore.training import TrainConfig, train
>>> from wdmcore.data.phantoms import PhantomDataset
>>> config = TrainConfig(preset="unet-128", image_size=32, batch_size=2, max_steps=100)
>>> result = train(config, PhantomDataset(64, 32), "runs/try")      # result.model_path: EMA weights + card

Recipe (reference facts §7): AdamW (lr 1e-5, weight decay 0), t uniform over the diffusion's steps, x0 target
in wavelet-coefficient space, loss = mean over the eight sub-bands of their MSE. Added here: EMA weights (the
checkpoint's main weights), optional LR warm-up and gradient clipping, bf16 autocast on CUDA, activation
checkpointing, skipping of non-finite steps, exact resume, previews.

Determinism: the data stream is an endless sequence of per-epoch permutations (seed + epoch, the order torch's
``DistributedSampler`` uses); step ``s`` reads stream positions ``[s*B, (s+1)*B)`` of the global batch ``B``.
The timestep and noise of the sample at stream position ``q`` come from a generator seeded by ``(seed, q)``,
so a run does not depend on how the global batch is split over processes, and a resumed run repeats exactly
what an uninterrupted one would do (bit-identical weights on the CPU).

Files in the output folder::

    config.json                   the resolved configuration
    model_<step>.safetensors      EMA weights + model card (open with wdmcore.load_model)
    state_<step>.pt               raw weights, optimiser, EMA, step, RNG states, data order (for --resume)
    previews/preview_<step>.nii.gz, .png
    events.jsonl, tensorboard/    (TensorBoard only when installed)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..checkpoints import save_model_file
from ..diffusion import Diffusion, DiffusionConfig
from ..errors import CheckpointError, ConfigError, WDMError
from ..events import ProgressCallback, emit
from ..networks import PRESETS, DiffusionNetwork, NetworkConfig, build_network, preset_config
from ..outputs import save_nifti

log = logging.getLogger(__name__)

STATE_FORMAT = 1
_MODEL_RE = re.compile(r"^model_(\d+)\.safetensors$")
_STATE_RE = re.compile(r"^state_(\d+)\.pt$")

# Batch sizes of the released recipe by image size (run.sh): 10 at 128^3, 1 at 256^3.
_PRESET_BATCH = {128: 10, 256: 1}


class TrainingError(WDMError):
    """Training cannot go on (non-finite losses, a broken resume state, ...)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields are filled by :meth:`resolved`."""

    preset: str | None = "unet-128"  # network preset; ``network`` overrides its fields
    network: dict[str, Any] = field(default_factory=dict)  # NetworkConfig fields (all of them without a preset)
    image_size: int | None = None  # default: the preset's (128 or 256)
    diffusion: dict[str, Any] = field(default_factory=dict)  # DiffusionConfig fields
    lr: float = 1e-5
    batch_size: int | None = None  # global batch; default 10 at 128^3, 1 at 256^3 (released recipe)
    max_steps: int = 100_000
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    ema_warmup: bool = True  # effective rate min(ema_rate, (1 + n) / (10 + n)) after n updates
    grad_clip: float | None = None  # max global gradient norm
    lr_warmup_steps: int = 0  # linear warm-up from lr / warmup to lr
    checkpoint_interval: int = 5000
    keep_last: int = 3
    preview_interval: int = 0  # 0: no previews
    preview_steps: int = 10  # DDIM steps of a preview sample
    log_interval: int = 10
    seed: int = 0
    num_workers: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16"
    activation_checkpointing: bool = False
    max_nonfinite_steps: int = 10  # raise after this many non-finite losses in a row
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    tensorboard: bool = True  # when the tensorboard package is installed
    # Model card fields of the checkpoints.
    name: str | None = None
    description: str = ""
    data_description: str = ""
    geometry: dict[str, Any] = field(default_factory=dict)
    intensity: Any = "[0, 1] (network space 2x - 1)"
    data: dict[str, Any] = field(default_factory=dict)  # where the data came from (informational, for the record)

    def resolved(self) -> TrainConfig:
        """A copy with defaults filled in and every value checked."""
        c = dataclasses.replace(self, network=dict(self.network), diffusion=dict(self.diffusion), data=dict(self.data))
        c.adam_betas = tuple(float(b) for b in c.adam_betas)
        if c.preset is not None and c.preset not in PRESETS:
            raise ConfigError(f"unknown preset {c.preset!r}; choose one of {', '.join(PRESETS)} (or give a network).")
        if c.preset is None and not c.network:
            raise ConfigError("give a preset (e.g. unet-128) or a network configuration.")
        if c.image_size is None:
            if c.preset is None:
                raise ConfigError("image_size is required when no preset is given.")
            c.image_size = PRESETS[c.preset][1]
        if c.batch_size is None:
            c.batch_size = _PRESET_BATCH.get(c.image_size, 1)
        net = c.network_config()  # validates the network fields
        DiffusionConfig.from_dict(c.diffusion)
        factor = 2 * net.downsampling_factor
        if c.image_size % factor:
            raise ConfigError(
                f"image size {c.image_size} must be a multiple of {factor} for this network "
                f"({len(net.channel_mult)} levels); choose e.g. {factor * max(1, round(c.image_size / factor))}."
            )
        checks = [
            (c.lr > 0, "lr must be positive"),
            (c.batch_size >= 1, "batch_size must be at least 1"),
            (c.max_steps >= 1, "max_steps must be at least 1"),
            (0.0 <= c.ema_rate < 1.0, "ema_rate must lie in [0, 1)"),
            (c.checkpoint_interval >= 1, "checkpoint_interval must be at least 1"),
            (c.keep_last >= 1, "keep_last must be at least 1"),
            (c.preview_interval >= 0, "preview_interval must be 0 (off) or positive"),
            (c.preview_steps >= 1, "preview_steps must be at least 1"),
            (c.log_interval >= 1, "log_interval must be at least 1"),
            (c.num_workers >= 0, "num_workers must be 0 or more"),
            (c.max_nonfinite_steps >= 1, "max_nonfinite_steps must be at least 1"),
            (c.lr_warmup_steps >= 0, "lr_warmup_steps must be 0 or more"),
            (c.grad_clip is None or c.grad_clip > 0, "grad_clip must be positive (or unset)"),
            (c.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message}.")
        return c

    def network_config(self) -> NetworkConfig:
        base = preset_config(self.preset).to_dict() if self.preset is not None else {}
        fields = {**base, **self.network}
        fields["use_checkpoint"] = bool(self.activation_checkpointing)
        if "channel_mult" in fields:
            fields["channel_mult"] = tuple(fields["channel_mult"])
        return NetworkConfig.from_dict(fields)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` did."""

    model_path: Path | None  # the last checkpoint (EMA weights + card), None on non-zero ranks
    step: int
    stopped: bool  # True when a stop request ended the run before max_steps
    skipped_steps: int  # non-finite steps skipped in this session
    last_loss: float | None


# -- distributed --------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_request: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_request == "auto" else device_request.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device {device_request!r} was requested but CUDA is not available; use --device cpu.")
    if world > 1:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        device = torch.device(("cuda" if use_cuda else "cpu") if device_request == "auto" else device_request)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = _Dist(rank, world, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        dist.initialized_here = True
    return dist, device


# -- data order ---------------------------------------------------------------------------------------------


class StreamBatches:
    """Batch sampler over an endless stream of per-epoch permutations, starting at a given step.

    Yields, for each step from ``start_step`` to ``end_step``, this rank's share (a contiguous slice) of the
    global batch. Each epoch's permutation is ``torch.randperm(n)`` from a generator seeded ``seed + epoch``,
    as in ``DistributedSampler``.
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, end_step: int, rank=0, world=1):
        if global_batch % world:
            raise ConfigError(f"the batch size {global_batch} must be divisible by the number of processes ({world}).")
        self.n, self.batch, self.seed = n, global_batch, seed
        self.start, self.end, self.rank, self.world = start_step, end_step, rank, world
        self._perm: tuple[int, torch.Tensor] | None = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if self._perm is None or self._perm[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=generator))
        return int(self._perm[1][offset])

    def positions(self, step: int) -> list[int]:
        per_rank = self.batch // self.world
        first = step * self.batch + self.rank * per_rank
        return list(range(first, first + per_rank))

    def __iter__(self):
        for step in range(self.start, self.end):
            yield [self._index(q) for q in self.positions(step)]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def _sample_draws(seed: int, positions: list[int], image_shape, num_timesteps: int):
    """Timesteps [b] and image-space noise [b, 1, S, S, S] of the samples at these stream positions."""
    ts, noises = [], []
    for q in positions:
        state = np.random.SeedSequence([int(seed), int(q), 0x5744]).generate_state(2, dtype=np.uint64)
        generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        ts.append(torch.randint(0, num_timesteps, (1,), generator=generator))
        noises.append(torch.randn((1, *image_shape), generator=generator))
    return torch.cat(ts), torch.cat(noises)


# -- EMA ----------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a network's parameters, kept as a network of its own (fp32)."""

    def __init__(self, network: torch.nn.Module, rate: float, warmup: bool):
        self.network = copy.deepcopy(network).eval()
        self.network.requires_grad_(False)
        self.rate, self.warmup, self.updates = rate, warmup, 0

    def current_rate(self) -> float:
        if self.warmup:
            return min(self.rate, (1 + self.updates) / (10 + self.updates))
        return self.rate

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        weight = 1.0 - self.current_rate()
        for ema_p, p in zip(self.network.parameters(), network.parameters(), strict=True):
            ema_p.lerp_(p.detach().to(ema_p.dtype), weight)
        self.updates += 1


# -- files --------------------------------------------------------------------------------------------------


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
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


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(part) if isinstance(part, tuple) else part for part in random.getstate()],
    }  # fmt: skip


def _set_rng_state(state: dict[str, Any]) -> None:
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
    """Read a ``state_<step>.pt`` file (tensors and plain values only; nothing is executed)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"the training state {path} could not be read ({type(exc).__name__}: {str(exc)[:200]}); "
            "delete it to resume from the checkpoint before it."
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a WaveletDiffusion training state (format {STATE_FORMAT}).")
    return state


def _latest_state(out_dir: Path) -> tuple[Path, dict[str, Any]]:
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


def write_png_gray(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a 2-D array with values in [0, 1] as an 8-bit grayscale PNG (no dependencies)."""
    import struct
    import zlib

    pixels = (np.clip(np.asarray(image, dtype=np.float64), 0, 1) * 255 + 0.5).astype(np.uint8)
    height, width = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def mid_slices(volume: np.ndarray) -> np.ndarray:
    """The three central slices of an (i, j, k) volume side by side (axial, coronal, sagittal), display up."""
    s0, s1, s2 = (d // 2 for d in volume.shape)
    views = [volume[:, :, s2].T[::-1], volume[:, s1, :].T[::-1], volume[s0, :, :].T[::-1]]
    height = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, height - v.shape[0]), (0, 2))) for v in views]
    return np.concatenate(padded, axis=1)


def _card_affine(card: dict[str, Any], size: int) -> np.ndarray:
    affine = card.get("geometry", {}).get("affine")
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    spacing = card.get("geometry", {}).get("spacing_mm", [1.0, 1.0, 1.0])
    return np.diag([*map(float, spacing), 1.0])


def write_preview(ema_network: DiffusionNetwork, card: dict[str, Any], path_stem: Path, steps: int) -> list[Path]:
    """Sample one volume (DDIM, seed 0) and save it as NIfTI (when nibabel is installed) and a PNG."""
    from ..model import WDMModel

    network = copy.deepcopy(ema_network).eval()
    model = WDMModel(network, card)
    volume = model.sample(1, seed=0, sampler="ddim", steps=steps)[0, 0].numpy()
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    png = path_stem.with_suffix(".png")
    write_png_gray(png, mid_slices(volume))
    written.append(png)
    nii = path_stem.parent / (path_stem.name + ".nii.gz")
    try:
        # nibabel, or SimpleITK where nibabel is missing (3D Slicer's Python), which loads the preview as a volume.
        save_nifti(volume.astype(np.float32), _card_affine(card, volume.shape[0]), nii)
    except WDMError as exc:
        log.info("preview saved as PNG only: %s", exc)
    else:
        written.append(nii)
    return written


# -- the loop -----------------------------------------------------------------------------------------------


def _precision(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "fp32" or (config.precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _lr_at(config: TrainConfig, step: int) -> float:
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    return config.lr


def _make_card(config: TrainConfig, network_config: NetworkConfig, step: int, dataset: Dataset) -> dict[str, Any]:
    card_network = dataclasses.replace(network_config, use_checkpoint=False)
    return {
        "name": config.name or f"wdm_{card_network.architecture}_{config.image_size}",
        "description": config.description or f"WDM {card_network.architecture} trained with wdm train",
        "preset": config.preset if config.network == {} else None,
        "image_size": config.image_size,
        "diffusion": DiffusionConfig.from_dict(config.diffusion).to_dict(),
        "geometry": config.geometry or _dataset_geometry(dataset, config.image_size),
        "intensity": config.intensity,
        "weights": "EMA",
        "training": {
            "step": step,
            "data": config.data_description or _dataset_description(dataset),
            "volumes": len(dataset),
            "batch_size": config.batch_size,
            "lr": config.lr,
            "optimizer": f"AdamW betas {list(config.adam_betas)} eps {config.adam_eps} "
            f"weight_decay {config.weight_decay}",
            "ema_rate": config.ema_rate,
            "seed": config.seed,
        },
    }


def _dataset_description(dataset: Dataset) -> str:
    from ..data.phantoms import PhantomDataset

    if isinstance(dataset, PhantomDataset):
        return (
            f"{len(dataset)} synthetic head phantoms of {dataset.size}^3 (wdmcore.data.phantoms, seed {dataset.seed})"
        )
    return f"{len(dataset)} volumes ({type(dataset).__name__})"


def _dataset_geometry(dataset: Dataset, size: int) -> dict[str, Any]:
    affine = None
    if hasattr(dataset, "affine"):
        affine = dataset.affine(0) if callable(dataset.affine) else dataset.affine
    if affine is None:
        return {"spacing_mm": [1.0, 1.0, 1.0], "known": False}
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return {
        "spacing_mm": [float(s) for s in spacing],
        "affine": affine.tolist(),
        "known": True,
        "note": "the geometry of the first training volume after preprocessing",
    }


def _check_item(item: Any, size: int) -> torch.Tensor:
    image = item[0] if isinstance(item, (tuple, list)) else item
    if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != (size,) * 3:
        raise ConfigError(
            f"the dataset gives batches of shape {tuple(image.shape)}, but the run trains on [B, 1, {size}, "
            f"{size}, {size}]; preprocess the data to {size}^3 or set image_size to the data's size."
        )
    return image


class _Logger:
    """Progress events, events.jsonl and TensorBoard (rank 0 only)."""

    def __init__(self, config: TrainConfig, out_dir: Path, on_event: ProgressCallback | None, enabled: bool):
        self.on_event, self.enabled, self.writer, self.file = on_event, enabled, None, None
        if not enabled:
            return
        self.file = (out_dir / "events.jsonl").open("a")
        if config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def event(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        payload = {"event": kind, **fields}
        self.file.write(json.dumps(payload, default=str) + "\n")
        self.file.flush()
        emit(self.on_event, kind, **fields)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    on_event: ProgressCallback | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a WDM network on ``dataset`` (items ``(image [1, S, S, S] in [-1, 1], index)``).

    Writes checkpoints into ``out_dir`` every ``checkpoint_interval`` steps and at the end; ``resume=True``
    continues from the newest training state there. ``on_event`` receives progress events (task "train":
    loss, it/s, ETA, lr, GPU memory), "checkpoint", "preview", "nonfinite" and a final "result" event.
    ``stop()`` is polled every step: when it returns True a checkpoint is written and the run returns.
    Under ``torchrun`` (WORLD_SIZE > 1) the global batch is split over the processes and rank 0 writes files.
    """
    config = config.resolved()
    out_dir = Path(out_dir)
    dist, device = _setup_distributed(config.device)
    try:
        return _train(config, dataset, out_dir, resume, on_event, stop, dist, device)
    finally:
        if dist.initialized_here:
            torch.distributed.destroy_process_group()


def _train(config, dataset, out_dir, resume, on_event, stop, dist: _Dist, device) -> TrainResult:
    if len(dataset) < 1:
        raise ConfigError("the dataset is empty.")
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.glob(".model_*.tmp"), *out_dir.glob(".state_*.tmp")]:
            log.info("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink(missing_ok=True)
    network_config = config.network_config()
    diffusion = Diffusion(DiffusionConfig.from_dict(config.diffusion))

    start_step, state = 0, None
    if resume:
        state_path, state = _latest_state(out_dir)
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        changed = _changed_for_resume(saved, config.to_dict())
        if changed:
            raise ConfigError(
                f"the run in {out_dir} was started with other settings ({', '.join(changed)}); resume with "
                "the same settings (max_steps, intervals, keep_last, num_workers, device and activation "
                "checkpointing may change), "
                "or start a new run in another folder."
            )
        start_step = int(state["step"])
        log.info("resuming from %s (step %d)", state_path, start_step)
    elif dist.main and list_checkpoints(out_dir):
        raise ConfigError(
            f"{out_dir} already holds checkpoints of a run; pass resume=True (--resume) to continue it, "
            "or choose an empty output folder."
        )

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    network = build_network(network_config).to(device)
    ema = EMA(network, config.ema_rate, config.ema_warmup)
    optimizer = torch.optim.AdamW(
        network.parameters(),
        lr=config.lr,
        betas=config.adam_betas,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    if state is not None:
        network.load_state_dict(state["network"])
        ema.network.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
    ema.network.to(device)
    if dist.main:
        _atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    model = network
    if dist.active:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast_dtype = _precision(config, device)
    logger = _Logger(config, out_dir, on_event, dist.main)
    card_base = _make_card(config, network_config, 0, dataset)
    batches = StreamBatches(len(dataset), config.batch_size, config.seed, start_step, config.max_steps,
                            dist.rank, dist.world)  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    image_shape = (1, config.image_size, config.image_size, config.image_size)

    step, nonfinite_run, skipped, last_loss, stopped = start_step, 0, 0, None, False
    last_saved = start_step if resume else None
    window_start, window_steps, window_loss = time.perf_counter(), 0, []
    session_start, session_steps = time.perf_counter(), 0
    logger.event("start", step=step, max_steps=config.max_steps, out_dir=str(out_dir), world_size=dist.world,
                 device=str(device), parameters=sum(p.numel() for p in network.parameters()))  # fmt: skip

    def save(at_step: int) -> Path | None:
        path = None
        if dist.main:
            path = _save_checkpoint(out_dir, at_step, network, ema, optimizer, config, card_base)
            _prune(out_dir, config.keep_last)
            logger.event("checkpoint", step=at_step, path=str(path))
        if dist.active:
            torch.distributed.barrier()
        return path

    model.train()
    model_path = None
    try:
        for item in loader:
            if stop is not None and _should_stop(stop, dist, device):
                stopped = True
                break
            image = _check_item(item, config.image_size).to(device, non_blocking=True)
            t, noise = _sample_draws(config.seed, batches.positions(step), image_shape, diffusion.num_timesteps)
            t, noise = t.to(device), noise.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, autocast_dtype):
                loss, per_band = diffusion.training_loss(model, image, t, noise_image=noise)
            loss.backward()
            grad_norm = None
            if config.grad_clip is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip))
            loss_value = _global_mean(loss.detach(), dist)
            step += 1
            if not math.isfinite(loss_value) or (grad_norm is not None and not math.isfinite(grad_norm)):
                nonfinite_run += 1
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                logger.event("nonfinite", step=step, loss=loss_value, in_a_row=nonfinite_run)
                log.warning("step %d: non-finite loss %s, step skipped (%d in a row)", step, loss_value, nonfinite_run)
                if nonfinite_run >= config.max_nonfinite_steps:
                    raise TrainingError(
                        f"{nonfinite_run} steps in a row had a non-finite loss (last at step {step}); training "
                        "diverged. Lower the learning rate, enable grad_clip (e.g. 1.0), use fp32 precision, "
                        "or check the data for NaN/inf values; then resume from the last checkpoint."
                    )
                continue
            nonfinite_run = 0
            optimizer.step()
            ema.update(network)
            last_loss = loss_value
            window_steps += 1
            session_steps += 1
            window_loss.append(loss_value)

            if step % config.log_interval == 0 or step == config.max_steps:
                now = time.perf_counter()
                it_s = window_steps / max(now - window_start, 1e-9)
                session_rate = session_steps / max(now - session_start, 1e-9)
                fields = {
                    "loss": sum(window_loss) / len(window_loss),
                    "lr": optimizer.param_groups[0]["lr"],
                    "it_s": round(it_s, 4),
                    "elapsed_s": round(now - session_start, 3),
                    "eta_s": round((config.max_steps - step) / session_rate, 1),
                    "skipped": skipped,
                }
                if device.type == "cuda":
                    fields["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                logger.event("progress", task="train", done=step, total=config.max_steps, **fields)
                scalars = {"loss": fields["loss"], "lr": fields["lr"], "it_per_s": it_s}
                scalars.update({f"loss_band/{i}": float(v) for i, v in enumerate(per_band.detach().cpu())})
                logger.scalars(step, scalars)
                window_start, window_steps, window_loss = now, 0, []

            if config.preview_interval and step % config.preview_interval == 0 and dist.main:
                card = {**card_base, "training": {**card_base["training"], "step": step}}
                paths = write_preview(ema.network, card, out_dir / "previews" / f"preview_{step:07d}",
                                      config.preview_steps)  # fmt: skip
                logger.event("preview", step=step, paths=[str(p) for p in paths])
            if step % config.checkpoint_interval == 0 and step != config.max_steps:
                save(step)
                last_saved = step
        model_path = save(step) if step != last_saved else _model_path(out_dir, step)
        if dist.main:
            logger.event("result", path=str(model_path), step=step, stopped=stopped, loss=last_loss)
    finally:
        logger.close()
    return TrainResult(model_path if dist.main else None, step, stopped, skipped, last_loss)


def _should_stop(stop: Callable[[], bool], dist: _Dist, device: torch.device) -> bool:
    flag = bool(stop())
    if dist.active:  # every process stops at the same step
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        flag = bool(value.item() > 0)
    return flag


def _global_mean(value: torch.Tensor, dist: _Dist) -> float:
    if dist.active:
        value = value.clone().float()
        torch.distributed.all_reduce(value)
        value /= dist.world
    return float(value)


_RESUME_FREE = {"max_steps", "checkpoint_interval", "keep_last", "preview_interval", "preview_steps",
                "log_interval", "num_workers", "device", "tensorboard", "name", "description", "data",
                "activation_checkpointing", "max_nonfinite_steps"}  # fmt: skip


def _changed_for_resume(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [k for k in now if k not in _RESUME_FREE and saved.get(k) != now[k]]


def _model_path(out_dir: Path, step: int) -> Path:
    return out_dir / f"model_{step:07d}.safetensors"


def _save_checkpoint(out_dir, step, network, ema, optimizer, config, card_base) -> Path:
    card = {**card_base, "training": {**card_base["training"], "step": step}}
    path = save_model_file(_model_path(out_dir, step), ema.network, card)
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "config": config.to_dict(),
        "network": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in ema.network.state_dict().items()},
        "ema_updates": ema.updates,
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        "data_order": {"seed": config.seed, "stream_position": step * config.batch_size},
    }
    _atomic_torch_save(state, out_dir / f"state_{step:07d}.pt")
    return path


def _prune(out_dir: Path, keep_last: int) -> None:
    checkpoints = list_checkpoints(out_dir)
    complete = [c for c in checkpoints if c[2] is not None]
    for step, model_file, state_file in checkpoints:
        if complete and step < complete[-keep_last:][0][0]:
            model_file.unlink(missing_ok=True)
            if state_file is not None:
                state_file.unlink(missing_ok=True)
