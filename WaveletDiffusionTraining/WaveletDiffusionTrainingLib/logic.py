"""The logic of the *Wavelet Diffusion Training* module: ``wdm train`` in a child process, watched from Slicer.

Usable without the module's GUI, from Slicer's Python console::

    from WaveletDiffusionTrainingLib import TrainingParameters, WaveletDiffusionTrainingLogic
    logic = WaveletDiffusionTrainingLogic()
    run = logic.start_training(TrainingParameters(data_path="/data/brats", output_dir="/runs/brats"))
    ...
    logic.stop(run)          # graceful: the trainer writes a checkpoint, then exits
    run = logic.resume(run.params)

Training runs as ``python -m wdmcore train --progress jsonl`` (PythonSlicer inside Slicer) in its own process
group. A stop is a file in the run folder (``STOP``) that the trainer checks every step (no signal: inside
Slicer it would reach the PythonSlicer launcher, not the trainer); after a timeout the whole process tree is
ended. Its events arrive through :class:`WaveletDiffusionCommonLib.process.ChildProcess`, and whoever calls
:meth:`WaveletDiffusionTrainingLogic.poll` (the widget from a QTimer, or the logic itself when given a
``schedule`` callback) turns them into the state of a :class:`TrainingRun`, points of a loss curve
(table + plot nodes) and preview volume nodes. The logic never deletes anything in the output folder: the
trainer writes every file atomically, so whatever happens to the process, the checkpoints already there stay
usable and *Resume* continues from the newest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from WaveletDiffusionCommonLib import memory, volumes
from WaveletDiffusionCommonLib.polling import PolledLogic
from WaveletDiffusionCommonLib.process import ChildProcess, WorkerError

from . import runfolder
from .datasource import SCENE_VOLUMES_FOLDER, export_volume_nodes
from .parameters import TrainingParameters
from .plots import LossCurve
from .runs import TrainingError, TrainingRun
from .scans import DataScans, ScanJob

log = logging.getLogger(__name__)

# How long a graceful stop may take before the process tree is killed: the step in progress and a checkpoint
# write (a full-size step on a CPU takes minutes; on a GPU, seconds).
DEFAULT_STOP_TIMEOUT_S = 300.0
# What shutdown() (Slicer closing) may take in all: a graceful stop if it comes quickly, then the process trees
# are ended. The GUI waits for it, so it stays short; the checkpoints already written stay usable either way.
SHUTDOWN_TIMEOUT_S = 4.5
# The part of it kept for ending the process trees.
KILL_BUDGET_S = 1.5
# How long a trainer left running by an earlier session gets to answer its stop file (write a checkpoint and
# exit) before its processes are ended: the user is waiting for it.
LEFT_TRAINER_STOP_TIMEOUT_S = 60.0


class WaveletDiffusionTrainingLogic(DataScans, PolledLogic):
    """Training runs and data scans in child processes; curves, previews and errors as Slicer sees them."""

    poll_interval_ms = 200

    def __init__(
        self,
        scene: Any = None,
        *,
        python: str | None = None,
        env: dict[str, str] | None = None,
        idle: Callable[[], None] | None = None,
        schedule: Callable[[int, Callable[[], None]], None] | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
        base_env: Callable[[], dict[str, str]] | None = None,
        provided_root: str | None = None,
    ):
        super().__init__(scene, schedule)
        self.python = python
        self.env = dict(env or {})
        self.base_env = base_env
        """The environment children start from (``slicer.util.startupEnvironment`` in Slicer; else ours)."""
        self.provided_root = provided_root
        self.idle = idle
        self.stop_timeout = stop_timeout
        self.left_trainer_timeout = LEFT_TRAINER_STOP_TIMEOUT_S
        self._runs: list[TrainingRun] = []
        self._scans: list[ScanJob] = []

    # ------------------------------------------------------------------------------------------- plumbing

    @property
    def busy(self) -> bool:
        return any(not r.finished for r in self._runs) or any(not s.finished for s in self._scans)

    @property
    def runs(self) -> list[TrainingRun]:
        """The runs of this session that have not finished yet."""
        return [r for r in self._runs if not r.finished]

    def _child(self, name: str, stop_file: Path | None = None) -> ChildProcess:
        self.require_dependencies()  # every training run and data scan starts its process through here
        return ChildProcess(self.python, env=self.env, name=name, stop_file=stop_file, base_env=self.base_env,
                            provided_root=self.provided_root)  # fmt: skip

    def poll(self) -> bool:
        """Handle every event that has arrived (and overdue stops). Returns True while work is running."""
        for job in list(self._scans):
            if job.process is not None:
                for event in job.process.poll():
                    self._scan_event(job, event)
        self._scans = [j for j in self._scans if not j.finished]
        now = time.monotonic()
        for run in list(self._runs):
            if run.process is not None:
                for event in run.process.poll():
                    self._dispatch(run, event)
            if (
                not run.finished
                and run.stop_requested_at is not None
                and not run.killed_after_timeout
                and now - run.stop_requested_at > self.stop_timeout
            ):
                self._log(f"the training process did not stop within {self.stop_timeout:.0f} s: ending it")
                run.killed_after_timeout = True
                assert run.process is not None
                run.process.kill(wait=0.5)
        self._runs = [r for r in self._runs if not r.finished]
        return self.busy

    def _wait_for(self, finished: Callable[[], bool], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not finished():
            self.poll()
            if finished():
                break
            if deadline is not None and time.monotonic() > deadline:
                return False
            if self.idle is not None:
                self.idle()
            time.sleep(0.02)
        return True

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """End every scan and run within about ``timeout`` seconds: a graceful stop (a checkpoint) if it comes
        quickly, else the process trees are ended. When it returns, no process of this logic is left."""
        deadline = time.monotonic() + timeout
        for job in list(self._scans):
            self.cancel_scan(job)
        for run in list(self._runs):
            self.stop(run)
        self._wait_for(lambda: not self._runs, max(0.0, deadline - KILL_BUDGET_S - time.monotonic()))
        for run in list(self._runs):
            if run.process is not None:
                run.process.kill(wait=max(0.1, deadline - time.monotonic()))
        self._wait_for(lambda: not self._runs, max(0.0, deadline - time.monotonic()))
        for run in list(self._runs):  # ended, but their last output did not come in time
            run.message = run.message or "the training process was ended"
            self._finish(run, "stopped" if run.error is None else "failed", run.error)
        self._runs = []

    # ------------------------------------------------------------------------------------------- training

    def start_training(
        self,
        params: TrainingParameters | None = None,
        *,
        resume: bool = False,
        nodes: list[Any] | None = None,
        curve: bool = True,
        on_event: Callable[[TrainingRun, dict], None] | None = None,
        on_progress: Callable[[TrainingRun, dict], None] | None = None,
        on_checkpoint: Callable[[TrainingRun, Path], None] | None = None,
        on_preview: Callable[[TrainingRun, Any], None] | None = None,
        on_finished: Callable[[TrainingRun], None] | None = None,
        **overrides: Any,
    ) -> TrainingRun:
        """Start ``wdm train`` (or ``--resume``); returns the :class:`TrainingRun` at once.

        ``nodes``: the scalar volume nodes to train on when ``params.data_source == "nodes"``. Raises
        ``ValueError`` for settings that cannot work (with what to change) and :class:`TrainingError` when the
        process cannot be started; problems found by the trainer arrive later as the run's ``error``.
        """
        params = dataclasses.replace(params or TrainingParameters(), **overrides)
        if (params.data_source == "nodes" or resume) and not params.data_path:
            # Not used: scene volumes are exported to a folder of the run, and a resumed run reads its own
            # data path from its config.json.
            params.data_path = "(not used)"
        params.validate()
        self.require_dependencies()  # before scene volumes are written to the run folder
        out_dir = Path(params.output_dir).expanduser().resolve()
        params.output_dir = str(out_dir)
        self._refuse_if_training(out_dir)
        resume_from = runfolder.resumable(out_dir)
        if resume:
            if resume_from is None:
                raise ValueError(
                    f"nothing to resume in {out_dir}: it holds no checkpoint with its training state "
                    "(state_<step>.pt). Press Start for a new run, or choose the folder of an earlier run."
                )
            args = ["-m", "wdmcore", "train", *params.resume_args()]
        else:
            existing = runfolder.checkpoints(out_dir)
            if existing:
                raise ValueError(
                    f"{out_dir} already holds checkpoints of a run (the newest at step {existing[-1].step}). "
                    "Press Resume to continue it, or choose an empty output folder for a new run."
                )
            if params.data_source == "nodes":
                exported = export_volume_nodes(list(nodes or []), out_dir / SCENE_VOLUMES_FOLDER)
                self._log(f"wrote {len(exported)} scene volume(s) to {out_dir / SCENE_VOLUMES_FOLDER}")
                args = ["-m", "wdmcore", "train",
                        *params.train_args(str(out_dir / SCENE_VOLUMES_FOLDER), "folder")]  # fmt: skip
            else:
                if not Path(params.data_path).expanduser().exists():
                    raise ValueError(f"the data folder {params.data_path} does not exist; choose another")
                args = ["-m", "wdmcore", "train", *params.train_args()]
            out_dir.mkdir(parents=True, exist_ok=True)
        run = TrainingRun(params, out_dir, resume=resume, on_event=on_event, on_progress=on_progress,
                          on_checkpoint=on_checkpoint, on_preview=on_preview, on_finished=on_finished)  # fmt: skip
        if resume_from is not None and resume:
            run.checkpoint, run.step = resume_from.model, resume_from.step
        if curve:
            run.curve = LossCurve(self.scene, f"{run.name} loss")
            if resume:
                run.curve.set_points(runfolder.loss_history(out_dir))
            curve_nodes = [run.curve.table_node, run.curve.series_node, run.curve.chart_node]
            run.folder_item = volumes.place_in_folder(self.scene, curve_nodes, f"{run.name} training")
        run.process = self._child("the training process", stop_file=runfolder.stop_file(out_dir))
        try:
            run.process.start(args)
        except WorkerError as exc:
            run.state = "failed"
            raise TrainingError(str(exc), kind="WorkerError") from exc
        verb = f"resuming {out_dir} from step {run.step}" if resume else f"training into {out_dir}"
        self._log(f"{verb} (pid {run.process.pid}): {' '.join(args[3:])}")
        self._runs.append(run)
        self._ensure_polling()
        return run

    def memory_warning(self, params: TrainingParameters, available: float | None = None) -> str | None:
        """A warning with a remedy when one training step with ``params`` would not fit the device's free memory
        (``available`` bytes; by default the GPU's free memory from nvidia-smi, or the available RAM on the CPU).
        None when it fits or when the free memory cannot be told."""
        device = params.device
        if available is None:
            if device == "cpu":
                available = memory.available_ram()
            elif device == "mps":
                available = None  # shares the RAM with everything else: no useful figure
            else:
                index = int(device.split(":")[1]) if ":" in device else 0
                available = memory.cuda_free_bytes(index)
                if available is None and device == "auto":
                    device, available = "cpu", memory.available_ram()
        precision = params.precision
        if precision == "auto":
            precision = "fp32" if device == "cpu" else "bf16"
        size = params.image_size or memory.PRESET_SIZE[params.preset]
        batch = params.batch_size or (10 if memory.PRESET_SIZE[params.preset] == 128 else 1)

        def needed(b: int) -> float:
            return memory.training_bytes(params.preset, size, b, precision)

        remedies = []
        if available:
            fits = memory.largest_batch(needed, 0.9 * available, batch)
            if 0 < fits < batch:
                remedies.append(f"set the batch size to {fits}")
        if precision == "fp32" and device != "cpu":
            remedies.append("choose bf16 precision")
        if size > 64:
            remedies.append(f"train at a smaller image size (e.g. {size // 2})")
        return memory.warning(needed(batch), available, device, remedies=remedies)

    def _refuse_if_training(self, out_dir: Path) -> None:
        """A second trainer in a run folder would mix two runs: refuse while one is alive (ours or not)."""
        ours = [r for r in self._runs if not r.finished and r.out_dir == out_dir]
        others = runfolder.live_trainers(out_dir)
        if ours or others:
            pids = ", ".join(str(p) for p in others) or str(ours[0].process.pid if ours[0].process else "?")
            raise ValueError(
                f"a training process of {out_dir} is still running (process {pids}). Stop it first (or wait "
                "until it has ended), then try again."
            )

    def left_trainers(self, out_dir: str | Path) -> list[int]:
        """The live trainers of ``out_dir`` that this logic did not start (left running by a Slicer that crashed,
        or started from a terminal); each keeps Start and Resume refused until it ends."""
        out_dir = Path(out_dir).expanduser().resolve()
        ours = set()
        for run in self._runs:
            if not run.finished and run.process is not None:
                ours.update(p.pid for p in run.process.tree_alive())
                ours.add(run.process.pid)
        return [pid for pid in runfolder.live_trainers(out_dir) if pid not in ours]

    def offer_to_stop_left_trainers(self, out_dir: str | Path, confirm: Callable[[str], bool]) -> bool:
        """When a trainer of ``out_dir`` that this logic did not start is running, ask ``confirm(question)``
        and, on yes, stop it (:meth:`stop_left_trainers`). True when no such trainer is left running."""
        pids = self.left_trainers(out_dir) if out_dir else []
        if not pids:
            return True
        question = (
            f"A training process of {out_dir} is still running (process {', '.join(map(str, pids))}): it was left by "
            "an earlier Slicer session or started elsewhere, and keeps the folder. Stop it?\n\nIt is asked to write "
            f"a checkpoint and exit; if it is still running after {self.left_trainer_timeout:.0f} s, it is ended with "
            "every process it started. The checkpoints on disk stay usable."
        )
        if not confirm(question):
            return False
        self.stop_left_trainers(out_dir, self.left_trainer_timeout)
        return True

    def stop_left_trainers(self, out_dir: str | Path, timeout: float = LEFT_TRAINER_STOP_TIMEOUT_S) -> list[int]:
        """Stop the trainers of ``out_dir`` that this logic did not start: the stop file asks them to write a
        checkpoint and exit; those still running after ``timeout`` seconds are ended with every process they
        started. Only a process whose command line still says it trains into ``out_dir`` (and that is the very
        process found at first, not a later one with its id) is ended. Returns the ids of the processes that
        had to be ended; raises :class:`TrainingError` when one survives. Blocks (``idle`` runs meanwhile)."""
        try:
            import psutil
        except ImportError as exc:
            raise TrainingError("cannot stop the training process without psutil; install it (pip_install('psutil')) "
                                "or end the process yourself", kind="MissingDependency") from exc  # fmt: skip
        out_dir = Path(out_dir).expanduser().resolve()
        found = {}
        for pid in self.left_trainers(out_dir):
            try:
                found[pid] = psutil.Process(pid)  # remembers its start time: is_running() is false for a reused id
            except psutil.Error:
                continue

        def alive(proc: Any) -> bool:
            try:
                return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False

        if not found:
            return []
        stop = runfolder.stop_file(out_dir)
        try:
            stop.write_bytes(b"")
            self._log(f"asked the training process {', '.join(map(str, found))} of {out_dir} to stop (its "
                      f"checkpoint first; ended after {timeout:.0f} s)")  # fmt: skip
        except OSError as exc:
            self._log(f"cannot write {stop} ({exc.strerror or exc}): ending the training process at once")
            timeout = 0.0
        self._wait_for(lambda: not any(alive(p) for p in found.values()), timeout)
        still_training = set(runfolder.live_trainers(out_dir))
        victims = []
        for pid, proc in found.items():
            if not alive(proc) or pid not in still_training:
                continue
            try:
                victims.extend([*proc.children(recursive=True), proc])
            except psutil.Error:
                continue
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _, survivors = psutil.wait_procs(victims, timeout=5.0)
        survivors = [p for p in survivors if alive(p)]
        if not any(alive(p) for p in found.values()):
            stop.unlink(missing_ok=True)  # not answered by a process that was ended: it is not for the next run
        ended = sorted(p.pid for p in victims if p.pid in found)
        if ended:
            self._log(f"ended the training process {', '.join(map(str, ended))} of {out_dir}: it did not stop "
                      f"within {timeout:.0f} s; the checkpoints on disk stay usable")  # fmt: skip
        if survivors:
            raise TrainingError(
                f"the training process {', '.join(str(p.pid) for p in survivors)} of {out_dir} could not be ended; "
                "end it with the system's task manager, then try again",
                kind="StopFailed",
            )
        return ended

    def resume(self, params: TrainingParameters | None = None, **kwargs: Any) -> TrainingRun:
        """Continue the run in ``params.output_dir`` from its newest checkpoint, with the run's own settings
        (the number of steps, the intervals, the data workers and the device may change)."""
        return self.start_training(params, resume=True, **kwargs)

    def stop(self, run: TrainingRun | None = None, *, force: bool = False) -> None:
        """Ask ``run`` (every run when None) to write a checkpoint and exit; ``force`` ends its process tree
        at once (the newest checkpoint on disk stays usable). A graceful stop that takes longer than
        ``stop_timeout`` seconds becomes a forced one."""
        for item in [run] if run is not None else list(self._runs):
            if item is None or item.finished or item.process is None:
                continue
            # No step yet: nothing to checkpoint, and the stop file is read by the training loop only.
            if force or item.state in ("starting", "preparing"):
                self._log("ending the training process")
                item.process.kill(wait=0.5)
                continue
            if item.stop_requested_at is None:
                item.stop_requested_at = time.monotonic()
                item.state = "stopping"
                if item.process.interrupt():
                    self._log("stop requested: the trainer writes a checkpoint after the current step")
                else:
                    self._log("cannot ask the trainer to stop (its stop file cannot be written): ending it")
                    item.process.kill(wait=0.5)
        self._ensure_polling()

    def wait(self, run: TrainingRun, timeout: float | None = None) -> TrainingRun:
        """Handle events until ``run`` has finished (``idle`` is called between polls). After ``timeout``
        seconds the run is stopped by force and fails with kind ``Timeout``."""
        if not self._wait_for(lambda: run.finished, timeout):
            self.stop(run, force=True)
            self._wait_for(lambda: run.finished, 30.0)
            run.state = "failed"
            run.error = TrainingError(f"training did not finish within {timeout} s", kind="Timeout")
        return run

    def train(self, params: TrainingParameters | None = None, *, timeout: float | None = None, **kwargs: Any):
        """Blocking :meth:`start_training`: returns the finished run; raises :class:`TrainingError` on failure."""
        run = self.wait(self.start_training(params, **kwargs), timeout)
        if run.error is not None:
            raise run.error
        return run

    # ------------------------------------------------------------------------------------------- events

    def _dispatch(self, run: TrainingRun, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "exit":
            self._on_exit(run, event)
            return
        run.events.append(event)
        handler = getattr(self, f"_on_{kind}", None)
        try:
            if handler is not None:
                handler(run, event)
            if run.on_event is not None:
                run.on_event(run, event)
        except Exception as exc:  # a node update or a callback failed: report it, the training goes on
            log.exception("handling the %s event failed", kind)
            self._log(f"handling the {kind} event failed: {type(exc).__name__}: {exc}")

    def _on_start(self, run: TrainingRun, event: dict[str, Any]) -> None:
        if run.state != "stopping":
            run.state = "running"
        run.phase = "training"
        run.step, run.total = int(event.get("step", 0)), int(event.get("max_steps", 0))
        run.device = event.get("device")
        self._log(f"training on {run.device}: {int(event.get('parameters', 0)):,} parameters, "
                  f"step {run.step} of {run.total}")  # fmt: skip

    def _on_progress(self, run: TrainingRun, event: dict[str, Any]) -> None:
        if event.get("task") == "train":
            run.step, run.total = int(event["done"]), int(event["total"])
            run.loss = float(event["loss"]) if event.get("loss") is not None else None
            run.lr, run.it_s, run.eta_s = event.get("lr"), event.get("it_s"), event.get("eta_s")
            run.gpu_mem_gb = event.get("gpu_mem_gb")
            run.skipped_steps = int(event.get("skipped", 0))
            if run.curve is not None and run.loss is not None:
                run.curve.add(run.step, run.loss)
        elif event.get("task") == "prepare":
            if run.state == "starting":
                run.state = "preparing"
            run.phase = f"preparing the volumes ({event.get('done')} of {event.get('total')})"
        if run.on_progress is not None:
            run.on_progress(run, event)

    def _on_checkpoint(self, run: TrainingRun, event: dict[str, Any]) -> None:
        run.checkpoint = Path(event["path"])
        self._log(f"checkpoint at step {event.get('step')}: {run.checkpoint}")
        if run.on_checkpoint is not None:
            run.on_checkpoint(run, run.checkpoint)

    def _on_preview(self, run: TrainingRun, event: dict[str, Any]) -> None:
        step = int(event.get("step", run.step))
        paths = [str(p) for p in event.get("paths", [])]
        nifti = next((p for p in paths if p.endswith((".nii.gz", ".nii"))), None)
        if nifti is None:
            self._log(f"preview at step {step}: {', '.join(paths)} (no volume file to load)")
            return
        node = volumes.load_volume_file(self.scene, nifti, f"{run.name} preview step {step}")
        volumes.set_attributes(node, {"trainingRun": str(run.out_dir), "trainingStep": step, "preview": 1})
        run.previews.append(node)
        run.folder_item = volumes.place_in_folder(self.scene, [node], f"{run.name} training", run.folder_item)
        self._log(f"preview at step {step}: {node.GetName()}")
        if run.on_preview is not None:
            run.on_preview(run, node)

    def _on_nonfinite(self, run: TrainingRun, event: dict[str, Any]) -> None:
        message = (f"step {event.get('step')}: the loss was not finite ({event.get('loss')}); the step was "
                   f"skipped ({event.get('in_a_row')} in a row)")  # fmt: skip
        run.warnings.append(message)
        self._log(message)

    def _on_result(self, run: TrainingRun, event: dict[str, Any]) -> None:
        run.result_path = Path(event["path"]) if event.get("path") else None
        run.stopped_early = bool(event.get("stopped"))
        run.step = int(event.get("step", run.step))
        if run.result_path is not None:
            run.checkpoint = run.result_path

    def _on_error(self, run: TrainingRun, event: dict[str, Any]) -> None:
        run.error = self._error_from_event(run, event)
        self._log(f"training error ({run.error.kind}): {run.error}")

    def _error_from_event(self, run: TrainingRun, event: dict[str, Any]) -> TrainingError:
        kind = str(event.get("kind") or "Error")
        message = str(event.get("message") or "unknown error")
        # The engine's messages name command-line options; say what to press in the module as well.
        message = message.replace("pass --skip-bad-files", "tick 'Skip unusable files' (--skip-bad-files)")
        if kind in ("OutOfMemory", "OutOfMemoryError"):
            message = "The device ran out of memory. " + message[:1].upper() + message[1:]
        return TrainingError(message + self._kept_note(run), kind, str(event.get("detail", "")))

    def _kept_note(self, run: TrainingRun) -> str:
        kept = runfolder.resumable(run.out_dir)
        if kept is None:
            return ""
        return (f"\nThe checkpoints in {run.out_dir} are kept; Resume continues from step {kept.step} "
                "(the number of steps, the intervals, the data workers and the device may change).")  # fmt: skip

    def _on_exit(self, run: TrainingRun, event: dict[str, Any]) -> None:
        if run.finished:
            return
        returncode = int(event.get("returncode", 0))
        if run.error is not None:
            self._finish(run, "failed", run.error)
        elif run.result_path is not None:
            self._finish(run, "stopped" if run.stopped_early else "finished")
        elif event.get("killed") or (
            event.get("interrupted") and returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
        ):
            # Ended by a stop before the trainer wrote a checkpoint (while preparing the data, or forced).
            note = self._kept_note(run)
            why = f"did not stop within {self.stop_timeout:.0f} s and was ended" if run.killed_after_timeout else (
                "was ended")  # fmt: skip
            run.message = f"the training process {why}" + (note or "; no checkpoint was written in this session")
            self._finish(run, "stopped")
        else:
            message = str(event.get("message") or f"the training process exited (code {returncode})")
            self._finish(run, "failed", TrainingError(message + self._kept_note(run), kind="Crashed",
                                                      detail=str(event.get("stderr_tail", ""))))  # fmt: skip

    def _finish(self, run: TrainingRun, state: str, error: TrainingError | None = None) -> None:
        run.state, run.error = state, error
        if error is not None:
            run.message = str(error)
        elif not run.message:
            where = run.model_path
            run.message = f"{state} at step {run.step}" + (f": {where}" if where else "")
        self._log(f"training {state}: {run.message}")
        if run.on_finished is not None:
            try:
                run.on_finished(run)
            except Exception as exc:
                log.exception("on_finished failed")
                self._log(f"on_finished failed: {type(exc).__name__}: {exc}")
