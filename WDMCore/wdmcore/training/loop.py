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
what an uninterrupted one would do (bit-identical weights on the CPU). Those draws and the learning rate of each
step are :mod:`.schedule`'s; the events a run sends and the cost it announces are :mod:`.reporting`'s.

Files in the output folder::

    config.json                   the resolved configuration
    model_<step>.safetensors      EMA weights + model card (open with wdmcore.load_model)
    state_<step>.pt               raw weights, optimiser, step, RNG states, data order (for --resume; the EMA
                                  weights are the model file's)
    previews/preview_<step>.nii.gz, .png
    events.jsonl, tensorboard/    (TensorBoard only when installed)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..devices import resolve_device
from ..diffusion import DiffusionConfig
from ..errors import ConfigError, DataError
from ..events import ProgressCallback
from ..models.cards import validate_card
from ..models.checkpoints import shared_parameter_aliases
from ..networks import NetworkConfig, build_network
from .checkpoints import (
    atomic_write_text,
    clear_stop_request,
    latest_state,
    list_checkpoints,
    prune,
    save_checkpoint,
    set_rng_state,
    stop_requested,
)
from .checkpoints import model_path as checkpoint_path
from .config import TrainConfig, TrainingError, check_same_data
from .ema import EMA
from .objectives import DiffusionObjective, Objective
from .previews import write_preview
from .reporting import RunLog, training_cost
from .schedule import StreamBatches, lr_at

log = logging.getLogger(__name__)


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
    if world > 1:  # torchrun: one CUDA GPU per process, or CPU processes (gloo)
        use_cuda = torch.cuda.is_available() if device_request == "auto" else device_request.startswith("cuda")
        if use_cuda and not torch.cuda.is_available():
            raise ConfigError(f"device {device_request!r} was requested but CUDA is not available; use --device cpu.")
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        device = resolve_device(device_request)  # auto: CUDA, then Apple's MPS, then the CPU
    if device.type == "cuda" and device.index is None:
        # torch.cuda.set_device refuses a device without an index ("cuda"): name the current one.
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = _Dist(rank, world, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
        dist.initialized_here = True
    return dist, device


# -- precision ---------------------------------------------------------------------------------------------


# bf16 autocast of the network on the CPU is refused: the CPUs with native bf16 kernels (AVX-512 BF16) gave a
# non-finite loss within a few steps at the default learning rate, which a CPU without them (where PyTorch
# emulates bf16) cannot reproduce, so no run here can show that the native path trains as fp32 does.
CPU_BF16_REFUSAL = (
    "bf16 training is not supported on the CPU (its bf16 kernels differ from one CPU to the next and diverged "
    "within a few steps on CPUs with AVX-512 BF16); use --precision fp32 (the CPU's default) or bf16 on a CUDA GPU."
)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the network is autocast to in training (None: fp32); bf16 on the CPU is refused."""
    if precision == "bf16" and device.type == "cpu":
        raise ConfigError(CPU_BF16_REFUSAL)
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _make_card(config: TrainConfig, network_config: NetworkConfig, step: int, dataset: Dataset) -> dict[str, Any]:
    card_network = dataclasses.replace(network_config, use_checkpoint=False)
    card = {
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
            **({"low_noise_share": config.low_noise_share} if config.low_noise_share else {}),
            "optimizer": f"AdamW betas {list(config.adam_betas)} eps {config.adam_eps} "
            f"weight_decay {config.weight_decay}",
            "ema_rate": config.ema_rate,
            "seed": config.seed,
        },
    }
    # Checked now rather than when the first checkpoint is read back: a bad --geometry fails before training.
    return validate_card(card, source="the model card of this training run")


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


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    on_event: ProgressCallback | None = None,
    stop: Callable[[], bool] | None = None,
    allow_new_data: bool = False,
    initial_weights: Mapping[str, torch.Tensor] | None = None,
    objective: Objective | None = None,
    card: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train a WDM network on ``dataset`` (items ``(image [1, S, S, S] in [-1, 1], index)``).

    Writes checkpoints into ``out_dir`` every ``checkpoint_interval`` steps and at the end; ``resume=True``
    continues from the newest training state there, with the same settings and the same data (the
    ``config.data`` fields that choose and prepare the volumes) unless ``allow_new_data`` (fine-tuning on other
    volumes; the checkpoints' card then describes the new data). ``on_event`` receives progress events (task "train":
    loss, it/s, ETA, lr, GPU memory), "checkpoint", "preview", "nonfinite" and a final "result" event.
    ``stop()`` is polled every step, and so is the stop file ``out_dir/STOP``: when either asks, a checkpoint is
    written and the run returns (the stop file is removed then).
    Under ``torchrun`` (WORLD_SIZE > 1) the global batch is split over the processes and rank 0 writes files.
    ``initial_weights`` (a state dict of the same network, e.g. a model file's tensors) starts a new run from
    those weights instead of a random initialisation, for network and EMA alike; a resumed run ignores it.
    ``objective`` is the loss of each step (default: the diffusion loss, :class:`DiffusionObjective`; distillation
    passes its own); ``card`` replaces the model card the run would write (its ``training.step`` is kept current).
    """
    config = config.resolved()
    out_dir = Path(out_dir)
    dist, device = _setup_distributed(config.device)
    try:
        with _run_folder_lock(out_dir, dist.main):
            return _train(config, dataset, out_dir, resume, on_event, stop, dist, device, allow_new_data,
                          initial_weights, objective, card)  # fmt: skip
    finally:
        if dist.initialized_here:
            torch.distributed.destroy_process_group()


RUN_LOCK = ".wdm-train.lock"


@contextlib.contextmanager
def _run_folder_lock(out_dir: Path, main: bool):
    """One training run per folder: a second one would mix its checkpoints and events with the first's."""
    if not main:
        yield
        return
    from filelock import FileLock, Timeout

    from ..volumes.writing import describe_os_error, ensure_output_folder

    ensure_output_folder(out_dir)  # DataError for a file, a read-only folder, a full disk
    lock = FileLock(out_dir / RUN_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"another training run holds {out_dir} (lock file {out_dir / RUN_LOCK}); wait for it to finish, "
            "or choose another output folder."
        ) from None
    except OSError as exc:
        raise DataError(f"cannot lock the output folder {out_dir}: {describe_os_error(exc)}.") from exc
    try:
        yield
    finally:
        lock.release()


def _ignore_stop_signals(worker_id: int) -> None:
    # DataLoader workers share the process group: on SIGTERM/SIGINT to the group (docker stop, SLURM, Ctrl-C)
    # only the main process acts (final checkpoint, then it shuts the workers down); a worker that died of the
    # signal would instead abort the run with "DataLoader worker exited unexpectedly".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _train(
    config, dataset, out_dir, resume, on_event, stop, dist: _Dist, device, allow_new_data, initial_weights=None,
    objective=None, card=None,
) -> TrainResult:  # fmt: skip
    if len(dataset) < 1:
        raise ConfigError("the dataset is empty.")
    network_dtype = autocast_dtype(config.precision, device)  # before anything is read or written
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.glob(".model_*.tmp"), *out_dir.glob(".state_*.tmp")]:
            log.info("removing %s, left by an interrupted checkpoint write", stale)
            stale.unlink(missing_ok=True)
        if stop_requested(out_dir):  # left by a stop the previous session never read: it is not for this one
            log.info("removing a stop request left in %s by an earlier session", out_dir)
            clear_stop_request(out_dir)
    network_config = config.network_config()
    if objective is None:
        objective = DiffusionObjective(config)

    start_step, state = 0, None
    if resume:
        state_path, state = latest_state(out_dir)
        saved = TrainConfig.from_dict(state["config"]).to_dict()
        changed = _changed_for_resume(saved, config.to_dict())
        if changed:
            raise ConfigError(
                f"the run in {out_dir} was started with other settings ({', '.join(changed)}); resume with "
                "the same settings (max_steps, intervals, keep_last, num_workers, device and activation "
                "checkpointing may change), "
                "or start a new run in another folder."
            )
        if not allow_new_data:
            check_same_data(saved.get("data") or {}, config.data or {}, out_dir)
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
    if initial_weights is not None and state is None:
        try:
            network.load_state_dict(initial_weights, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"the initial weights do not fit this run's network: {exc}") from None
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
        ema_weights = dict(state["ema"])  # a model file leaves out the names of tied tensors: name them again
        ema_weights.update({alias: ema_weights[first] for alias, first in shared_parameter_aliases(ema.network).items()
                            if alias not in ema_weights})  # fmt: skip
        ema.network.load_state_dict(ema_weights)
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    ema.network.to(device)
    if dist.main:
        atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    model = network
    if dist.active:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )
    logger = RunLog(config, out_dir, on_event, dist.main)
    if card is None:
        card_base = _make_card(config, network_config, 0, dataset)
    else:
        card_base = validate_card({**card, "training": {**(card.get("training") or {}), "step": 0}},
                                  source="the model card of this run")  # fmt: skip
    batches = StreamBatches(len(dataset), config.batch_size, config.seed, start_step, config.max_steps,
                            dist.rank, dist.world)  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if config.num_workers > 0 else None,
    )

    step, nonfinite_run, skipped, last_loss, stopped = start_step, 0, 0, None, False
    last_saved = start_step if resume else None
    window_start, window_steps, window_loss = time.perf_counter(), 0, []
    session_start, session_steps = time.perf_counter(), 0
    reported = {"step": step, "at": time.perf_counter()}  # the last progress event
    logger.event("start", step=step, max_steps=config.max_steps, out_dir=str(out_dir), world_size=dist.world,
                 device=str(device), parameters=sum(p.numel() for p in network.parameters()))  # fmt: skip

    def save(at_step: int) -> Path | None:
        path = None
        if dist.main:
            try:
                path = save_checkpoint(out_dir, at_step, network, ema, optimizer, config, card_base)
            except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
                from ..volumes.writing import describe_os_error

                # Its state was not written, so it is not a checkpoint: remove the half.
                checkpoint_path(out_dir, at_step).unlink(missing_ok=True)
                previous = [c for c in list_checkpoints(out_dir) if c[2] is not None]
                if previous:
                    kept = f"the previous checkpoint {previous[-1][1]} is intact. Free space (or fix the folder) and "
                    kept += "continue with --resume."
                else:
                    kept = "no checkpoint exists yet. Free space (or fix the folder) and start the run again."
                raise DataError(
                    f"cannot write the checkpoint of step {at_step} into {out_dir}: {describe_os_error(exc, out_dir)}; "
                    f"{kept}"
                ) from exc
            prune(out_dir, config.keep_last)
            logger.event("checkpoint", step=at_step, path=str(path))
        if dist.active:
            torch.distributed.barrier()
        return path

    def stop_now() -> bool:
        return stop_requested(out_dir) or (stop is not None and bool(stop()))

    def forward_backward(item: Any, at_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, network_dtype):
            loss, per_band = objective(model, item, batches.positions(at_step), device)
        loss.backward()
        return loss, per_band

    def report(now: float, per_band: torch.Tensor | None) -> None:
        nonlocal window_start, window_steps, window_loss
        it_s = window_steps / max(now - window_start, 1e-9)
        session_rate = session_steps / max(now - session_start, 1e-9)
        fields = {
            "loss": sum(window_loss) / len(window_loss) if window_loss else last_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "it_s": round(it_s, 4),
            "elapsed_s": round(now - session_start, 3),
            "eta_s": round((config.max_steps - step) / session_rate, 1) if session_steps else None,
            "skipped": skipped,
        }
        if device.type == "cuda":
            fields["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        logger.event("progress", task="train", done=step, total=config.max_steps, **fields)
        if per_band is not None and fields["loss"] is not None:
            scalars = {"loss": fields["loss"], "lr": fields["lr"], "it_per_s": it_s}
            scalars.update({f"loss_band/{i}": float(v) for i, v in enumerate(per_band.detach().cpu())})
            logger.scalars(step, scalars)
        window_start, window_steps, window_loss = now, 0, []
        reported.update(step=step, at=now)

    model.train()
    model_path = None
    try:
        step_start = time.perf_counter()
        for item in loader:
            if _should_stop(stop_now, dist, device):
                stopped = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, step)
            loss, per_band = forward_backward(item, step)
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
                    if last_saved is None:  # nothing to resume: a resume would only say so
                        then = "then start the run again (no checkpoint was written yet)."
                    else:
                        then = f"then continue from the checkpoint of step {last_saved} with --resume."
                    raise TrainingError(
                        f"{nonfinite_run} steps in a row had a non-finite loss (last at step {step}); training "
                        "diverged. Lower the learning rate, enable grad_clip (e.g. 1.0), use fp32 precision, "
                        f"or check the data for NaN/inf values; {then}"
                    )
                step_start = time.perf_counter()
                continue
            nonfinite_run = 0
            optimizer.step()
            ema.update(network)
            last_loss = loss_value
            window_steps += 1
            session_steps += 1
            window_loss.append(loss_value)
            if session_steps == 1:
                # The cost first, before the first step's result: the whole first step (reading its batch, the
                # optimiser's and the EMA's update included) is the warm-up that measures the time per step.
                seconds = time.perf_counter() - step_start
                cost = training_cost(seconds, config, start_step, network, ema, len(_complete_checkpoints(out_dir)))
                log.info("%s", cost["message"])
                logger.event("cost", **cost)

            # Every log_interval steps, and every step that comes a second or more after the last report, so that
            # the bar of a slow run moves every step while a fast one does not flood the events.
            now = time.perf_counter()
            if (
                step % config.log_interval == 0
                or step == config.max_steps
                or session_steps == 1
                or now - reported["at"] >= REPORT_EVERY_S
            ):
                report(now, per_band)

            if config.preview_interval and step % config.preview_interval == 0 and dist.main:
                card = {**card_base, "training": {**card_base["training"], "step": step}}
                paths = write_preview(ema.network, card, out_dir / "previews" / f"preview_{step:07d}",
                                      config.preview_steps)  # fmt: skip
                logger.event("preview", step=step, paths=[str(p) for p in paths])
            if step % config.checkpoint_interval == 0 and step != config.max_steps:
                save(step)
                last_saved = step
            step_start = time.perf_counter()
        if step != reported["step"]:  # the last event says where the run really ended (a stop, skipped steps)
            report(time.perf_counter(), None)
        model_path = save(step) if step != last_saved else checkpoint_path(out_dir, step)
        if dist.main:
            if stopped:
                clear_stop_request(out_dir)  # answered: a later resume must not stop at once
            logger.event("result", path=str(model_path), step=step, stopped=stopped, loss=last_loss)
    finally:
        logger.close()
    return TrainResult(model_path if dist.main else None, step, stopped, skipped, last_loss)


REPORT_EVERY_S = 1.0  # a progress event at least this often (every step when steps are slower)


def _complete_checkpoints(out_dir: Path) -> list[tuple[int, Path, Path | None]]:
    return [c for c in list_checkpoints(out_dir) if c[2] is not None]


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
