"""Child processes that speak JSON lines, as seen from Slicer: the generation worker and ``wdm`` commands.

:class:`ChildProcess` starts ``python ARGS...`` (PythonSlicer inside Slicer) with ``wdmcore`` on its path and
hands back the child's events without ever blocking: a reader thread turns stdout lines into a queue that the
caller drains with :meth:`ChildProcess.poll` (a module widget does it from a QTimer, a script from a loop).
When the child exits, :meth:`poll` yields an ``exit`` event that says whether it crashed, with its last error
and the tail of its stderr. :meth:`ChildProcess.kill` ends the child and every process it started;
:meth:`ChildProcess.interrupt` asks it to stop on its own by writing its stop file.

Inside Slicer the child is ``PythonSlicer``, a launcher that starts the real interpreter as *its* child and
forwards no signal: a signal sent to the launcher ends the launcher only and orphans the real process. So no
stop here relies on signals. A graceful stop is a request the child reads itself (a stop file for ``wdm train``,
a line on stdin for the worker), and the processes of the tree are remembered while the launcher lives (psutil),
so that a kill ends all of them, also those that were re-parented when the launcher died. The ``exit`` event
comes only when no process of the tree is left.

:class:`WorkerProcess` is the generation worker (``python -m wdmcore.worker``): requests on its stdin. The
training module runs ``python -m wdmcore train --progress jsonl`` as a plain :class:`ChildProcess`.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import itertools
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]

# No console window for children of a GUI process (and for taskkill) on Windows; 0 elsewhere.
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)
_WINDOWS = os.name == "nt"

# How long after the child's exit its output may still arrive (see ChildProcess._with_exit).
EXIT_GRACE_S = 2.0
# How often the process tree is read while the child lives (a launcher's child appears within a second).
TREE_INTERVAL_S = 0.5
# How long the exit of a child whose left-over processes are being ended may be held back.
ORPHAN_WAIT_S = 10.0
# How long kill() waits for the ended processes (it runs on the GUI thread, also when Slicer closes).
KILL_WAIT_S = 2.0


class WorkerError(RuntimeError):
    """A child process could not be started, or it died."""


def wdmcore_search_path() -> str | None:
    """The folder that holds the ``wdmcore`` package (without importing it), for the child's PYTHONPATH."""
    spec = importlib.util.find_spec("wdmcore")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)


def child_environment(
    base: Mapping[str, str],
    wdmcore_dir: str | None,
    *,
    extra_path: Sequence[str] = (),
    provided_root: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a child process.

    ``base`` is Slicer's *startup* environment inside Slicer (``slicer.util.startupEnvironment()``): PythonSlicer
    sets up its own paths from the launcher settings, and Slicer's modified environment would leak the GUI
    process's paths into it. ``wdmcore_dir`` is added to PYTHONPATH unless it lies under ``provided_root`` (the
    Extensions Manager's install folder, whose module paths the launcher already provides)."""
    env = dict(base)
    env.update(overrides or {})
    paths = list(extra_path)
    if wdmcore_dir and not _inside(wdmcore_dir, provided_root):
        paths.append(wdmcore_dir)
    if paths:
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    # Apple GPUs: operations that MPS lacks run on the CPU instead of failing.
    env.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    return env


def _inside(path: str, root: str | None) -> bool:
    if not root:
        return False
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def default_python() -> str:
    """The interpreter for children: PythonSlicer inside Slicer (``sys.executable`` is set to it there)."""
    executable = Path(sys.executable)
    if executable.stem.lower().startswith("slicerapp"):
        candidate = executable.with_name("PythonSlicer" + executable.suffix)
        if candidate.exists():
            return str(candidate)
    return str(executable)


class ChildProcess:
    """One child process whose stdout carries one JSON event per line (anything else goes to the log)."""

    def __init__(
        self,
        python: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        extra_path: Sequence[str] = (),
        stderr_lines: int = 200,
        name: str = "the child process",
        stop_file: str | os.PathLike | None = None,
        base_env: Callable[[], Mapping[str, str]] | None = None,
        provided_root: str | None = None,
    ):
        self.python = python or default_python()
        self.name = name
        self.stop_file = None if stop_file is None else Path(stop_file)
        """Written by :meth:`interrupt`: the child checks it and stops on its own (None: no graceful stop)."""
        self._env_overrides = dict(env or {})
        self._extra_path = list(extra_path)
        self._base_env = base_env
        self._provided_root = provided_root
        self._tree: dict[int, Any] = {}  # pid -> psutil.Process: every process of the child's tree seen so far
        self._tree_lock = threading.Lock()
        self._ending_orphans_since: float | None = None
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._threads: list[threading.Thread] = []
        self.last_error: Event | None = None
        self._exit_reported = False
        self._exited_at: float | None = None
        self._killed = False
        self._interrupted = False

    # ----------------------------------------------------------------------------------------- lifetime

    def start(self, args: Sequence[str], *, stdin: bool = False, cwd: str | os.PathLike | None = None) -> None:
        """Run ``python -u ARGS``; ``stdin=True`` keeps a pipe to the child's stdin (else it reads nothing)."""
        if self.running:
            return
        base = self._base_env() if self._base_env is not None else os.environ
        env = child_environment(base, wdmcore_search_path(), extra_path=self._extra_path,
                                provided_root=self._provided_root, overrides=self._env_overrides)  # fmt: skip
        kwargs: dict[str, Any] = {}
        if _WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # its own process group: killed as a whole
        self._events = queue.Queue()
        self._stderr.clear()
        self.last_error = None
        self._exit_reported = False
        self._exited_at = None
        self._killed = False
        self._interrupted = False
        self._ending_orphans_since = None
        with self._tree_lock:
            self._tree = {}
        self._reset()
        if self.stop_file is not None:
            # A stop request that a previous process never read would end this one at once.
            with contextlib.suppress(FileNotFoundError):
                self.stop_file.unlink()
        try:
            self._proc = subprocess.Popen(
                [self.python, "-u", *args],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=None if cwd is None else os.fspath(cwd),
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as exc:
            raise WorkerError(f"cannot start {self.name} with {self.python}: {exc}") from exc
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self._proc,), daemon=True, name="wdm-child-stdout"),
            threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True, name="wdm-child-stderr"),
        ]
        for thread in self._threads:
            thread.start()
        threading.Thread(target=self._watch_tree, args=(self._proc,), daemon=True, name="wdm-child-tree").start()

    def _reset(self) -> None:
        """Subclasses clear their per-run state here."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def interrupt(self) -> bool:
        """Ask the child to stop on its own: write its stop file (no signal: inside Slicer it would reach the
        launcher, not the interpreter). False when the child is not running or has no stop file."""
        proc = self._proc
        if proc is None or proc.poll() is not None or self.stop_file is None:
            return False
        try:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.write_text("stop requested by the module\n", encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the stop file %s: %s", self.stop_file, exc)
            return False
        self._interrupted = True
        return True

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    # ----------------------------------------------------------------------------------------- the tree

    def _watch_tree(self, proc: subprocess.Popen) -> None:
        """Remember every process of the tree while the child lives: after a launcher dies, its child is
        re-parented and cannot be found from the launcher any more."""
        while proc.poll() is None:
            self._refresh_tree(proc)
            time.sleep(TREE_INTERVAL_S)

    def _refresh_tree(self, proc: subprocess.Popen) -> None:
        psutil = _psutil()
        if psutil is None:
            return
        try:
            root = psutil.Process(proc.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:  # the child is gone
            return
        with self._tree_lock:
            for item in found:
                self._tree.setdefault(item.pid, item)

    def tree_alive(self) -> list[Any]:
        """The processes of the child's tree that are still alive (psutil processes; empty without psutil)."""
        psutil = _psutil()
        if psutil is None:
            return []
        with self._tree_lock:
            known = list(self._tree.values())
        alive = []
        for item in known:
            try:  # is_running() also tells a re-used pid from the process that was seen
                if item.is_running() and item.status() != psutil.STATUS_ZOMBIE:
                    alive.append(item)
            except psutil.Error:
                pass
        return alive

    @property
    def ended(self) -> bool:
        """True when the child and every process of its tree have exited."""
        return self._proc is not None and self._proc.poll() is not None and not self.tree_alive()

    def kill(self, wait: float = KILL_WAIT_S) -> None:
        """End the child and every process of its tree (also those re-parented after a launcher died); waits up
        to ``wait`` seconds for them."""
        proc = self._proc
        if proc is None:
            return
        root_running = proc.poll() is None
        if root_running:
            self._killed = True
            self._refresh_tree(proc)
        elif self.tree_alive():
            self._killed = True
        if not _WINDOWS:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        elif root_running:  # taskkill /T walks the tree from a live parent; a dead one has none
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False,
                           creationflags=CREATE_NO_WINDOW)  # fmt: skip
        remaining = self.tree_alive()
        for item in remaining:
            with contextlib.suppress(Exception):  # already gone
                item.kill()
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        deadline = time.monotonic() + wait
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        psutil = _psutil()
        if psutil is not None and remaining:
            psutil.wait_procs(remaining, timeout=max(0.0, deadline - time.monotonic()))
        if proc.poll() is None or self.tree_alive():
            log.warning("%s (pid %s) or one of its processes did not exit after being killed", self.name, proc.pid)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    @property
    def killed(self) -> bool:
        return self._killed

    # ----------------------------------------------------------------------------------------- events

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Every event that has arrived; waits up to ``timeout`` seconds for the first one."""
        events: list[Event] = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
        except queue.Empty:
            return self._with_exit(events)
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return self._with_exit(events)

    def events(self, timeout: float) -> Iterator[Event]:
        """Yield events until ``timeout`` seconds pass without any (a blocking reader for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            batch = self.poll(min(remaining, 0.1))
            for event in batch:
                deadline = time.monotonic() + timeout
                yield event

    def _with_exit(self, events: list[Event]) -> list[Event]:
        proc = self._proc
        if proc is None or self._exit_reported or proc.poll() is None or not self._events.empty():
            return events
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        # The run has ended only when no process of its tree is left. A launcher that died (killed from
        # outside) leaves its child running: that child is part of this run and is ended too.
        orphans = self.tree_alive()
        if orphans:
            if self._ending_orphans_since is None:
                self._ending_orphans_since = time.monotonic()
                log.warning("%s exited and left %d process(es) of its tree running: ending them", self.name,
                            len(orphans))  # fmt: skip
                for item in orphans:
                    with contextlib.suppress(Exception):
                        item.kill()
            if time.monotonic() - self._ending_orphans_since < ORPHAN_WAIT_S:
                return events
            log.warning("%s: %d process(es) of its tree could not be ended", self.name, len(orphans))
        # The readers end when the pipes close. A grandchild that outlives the child keeps them open: after a
        # grace period the exit is reported anyway.
        readers_done = not any(t.is_alive() for t in self._threads)
        if readers_done or time.monotonic() - self._exited_at > EXIT_GRACE_S:
            self._exit_reported = True
            events.append(self._exit_event(proc.returncode))
        return events

    def _expected_exit(self, returncode: int) -> bool:
        """Whether the exit was asked for (a kill or an interrupt, or what a subclass knows)."""
        return self._killed or self._interrupted

    def _exit_event(self, returncode: int) -> Event:
        crashed = not self._expected_exit(returncode)
        message = f"{self.name} exited (code {returncode})"
        if crashed:
            if returncode < 0:
                message = f"{self.name} was killed by signal {-returncode}"
            if self.last_error:
                message += f"; its last error: {self.last_error.get('kind')}: {self.last_error.get('message')}"
            tail = self.stderr_tail(5)
            if tail:
                message += f"\n{tail}"
        return {
            "event": "exit",
            "returncode": returncode,
            "crashed": crashed,
            "killed": self._killed,
            "interrupted": self._interrupted,
            "message": message,
            "last_error": self.last_error,
            "stderr_tail": self.stderr_tail(),
        }

    def _note(self, event: Event) -> None:
        """Subclasses look at each event here before it is queued."""

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self._stderr.append(f"[stdout] {line}")
                    continue
                if event.get("event") == "error":
                    self.last_error = event
                self._note(event)
                self._events.put(event)
        except (OSError, ValueError):
            pass

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                line = line.rstrip()
                if line:
                    self._stderr.append(line)
                    log.debug("%s: %s", self.name, line)
        except (OSError, ValueError):
            pass


class WorkerProcess(ChildProcess):
    """The generation worker (``python -m wdmcore.worker``): requests on stdin, events on stdout."""

    def __init__(
        self,
        python: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        extra_path: Sequence[str] = (),
        stderr_lines: int = 200,
        base_env: Callable[[], Mapping[str, str]] | None = None,
        provided_root: str | None = None,
    ):
        super().__init__(python, env=env, extra_path=extra_path, stderr_lines=stderr_lines,
                         name="the generation worker", base_env=base_env, provided_root=provided_root)  # fmt: skip
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self.ready: Event | None = None
        self._said_bye = False

    def start(self) -> None:  # type: ignore[override] - the worker's command line is fixed
        super().start(["-m", "wdmcore.worker"], stdin=True)

    def _reset(self) -> None:
        self.ready = None
        self._said_bye = False

    def _note(self, event: Event) -> None:
        if event.get("event") == "ready":
            self.ready = event
        elif event.get("event") == "bye":
            self._said_bye = True

    def _expected_exit(self, returncode: int) -> bool:
        return self._killed or self._interrupted or self._said_bye

    def send(self, request_type: str, **fields: Any) -> int:
        """Send one request; returns its id (events caused by it carry the same id)."""
        if not self.running:
            raise WorkerError("the generation worker is not running")
        request_id = fields.pop("id", None) or next(self._ids)
        line = json.dumps({"type": request_type, "id": request_id, **fields}, default=str)
        assert self._proc is not None and self._proc.stdin is not None
        with self._write_lock:
            try:
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise WorkerError(f"the generation worker stopped listening: {exc}") from exc
        return request_id

    def cancel(self, request_id: int | None = None) -> None:
        """Ask the worker to stop a job (the running one when ``request_id`` is None)."""
        if self.running:
            with contextlib.suppress(WorkerError):
                self.send("cancel", id=None, **({} if request_id is None else {"target": request_id}))

    def shutdown(self, timeout: float = 2.0) -> None:
        """Ask the worker to leave (a request on its stdin, which reaches it through a launcher); end its whole
        process tree if it has not left within ``timeout`` seconds."""
        if self._proc is None:
            return
        if self.running:
            try:
                self.send("shutdown")
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            except (WorkerError, OSError):
                pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self.kill()


def _psutil() -> Any:
    """psutil when installed (the module installs it on first use), else None: then a kill reaches the process
    group (POSIX) or the live tree (Windows) only."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil
