"""The child-process plumbing both Slicer modules share (no torch: small Python children).

Inside Slicer the child is PythonSlicer, a launcher that runs the real interpreter as its own child and forwards
no signal. Most tests here run the children through a launcher of that shape (``slicer_support.make_launcher``).
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest
import slicer_support  # noqa: F401 - puts the module folders on sys.path
from slicer_support import make_launcher, process_alive, tree, wait_dead
from WaveletDiffusionCommonLib.process import ChildProcess, child_environment

psutil = pytest.importorskip("psutil")

TIMEOUT = 60

# Starts a grandchild, prints an event, a stray line and a line on stderr, then fails, or waits: in "graceful"
# mode until its stop file (argv[2]) appears, else until it is killed. It installs no signal handler.
CHILD = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    print("not json", flush=True)
    print("a warning", file=sys.stderr, flush=True)
    print(json.dumps({"event": "hello", "pid": os.getpid(), "grandchild": grandchild.pid}), flush=True)
    if sys.argv[1] == "fail":
        print(json.dumps({"event": "error", "kind": "DataError", "message": "bad file x"}), flush=True)
        sys.exit(2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sys.argv[1] == "graceful" and os.path.exists(sys.argv[2]):
            os.remove(sys.argv[2])
            grandchild.kill()
            grandchild.wait()
            print(json.dumps({"event": "bye"}), flush=True)
            sys.exit(0)
        time.sleep(0.05)
    """
)


def start(mode: str, python: str | None = None, stop_file=None) -> tuple[ChildProcess, dict, list[dict]]:
    """The started child, its hello event and the events that came after it in the same batch."""
    child = ChildProcess(python, name="the test child", stop_file=stop_file)
    child.start(["-c", CHILD, mode, str(stop_file)])
    events, deadline = [], time.monotonic() + TIMEOUT
    while not any(e["event"] == "hello" for e in events):
        assert time.monotonic() < deadline
        events += child.poll(0.1)
    index = next(i for i, e in enumerate(events) if e["event"] == "hello")
    return child, events[index], events[index + 1 :]


def drain(child: ChildProcess, events: list[dict] | None = None) -> list[dict]:
    events, deadline = list(events or []), time.monotonic() + TIMEOUT
    while not events or events[-1]["event"] != "exit":
        assert time.monotonic() < deadline
        events += child.poll(0.1)
    return events


@pytest.fixture
def launcher(tmp_path):
    return make_launcher(tmp_path)


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_interrupt_through_a_launcher_is_a_graceful_stop_of_the_real_interpreter(launcher, tmp_path):
    child, hello, after = start("graceful", launcher, tmp_path / "STOP")
    assert hello["pid"] != child.pid  # the launcher's child is the real interpreter
    assert child.interrupt()
    events = drain(child, after)
    assert [e["event"] for e in events] == ["bye", "exit"]
    exit_event = events[-1]
    assert exit_event["returncode"] == 0 and exit_event["interrupted"] and not exit_event["crashed"]
    assert not process_alive(hello["pid"]) and not process_alive(child.pid)
    assert not (tmp_path / "STOP").exists()  # read and removed by the child
    assert "[stdout] not json" in child.stderr_tail() and "a warning" in child.stderr_tail()


def test_interrupt_without_a_stop_file_sends_nothing():
    child, hello, _ = start("wait")
    try:
        assert not child.interrupt()
        time.sleep(0.3)
        assert child.running and process_alive(hello["pid"])
    finally:
        child.kill()


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_kill_through_a_launcher_ends_the_whole_tree(launcher):
    child, hello, after = start("wait", launcher)
    pids = [child.pid, hello["pid"], hello["grandchild"]]
    started = time.monotonic()
    child.kill()
    assert time.monotonic() - started < 3
    exit_event = drain(child, after)[-1]
    assert exit_event["killed"] and not exit_event["crashed"]
    assert wait_dead(pids, 0.5) == []


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_a_launcher_that_dies_does_not_end_the_run_until_its_child_is_gone(launcher):
    """Killing only the launcher (what a signal to PythonSlicer does) orphans the real interpreter: the exit
    is reported only after the logic ended that orphan too."""
    child, hello, after = start("wait", launcher)
    deadline = time.monotonic() + 10
    while len(tree(child.pid)) < 3 and time.monotonic() < deadline:  # the tree is remembered every 0.5 s
        time.sleep(0.1)
    time.sleep(1.0)
    os.kill(child.pid, signal.SIGKILL)
    events = drain(child, after)
    assert events[-1]["event"] == "exit"
    assert not process_alive(hello["pid"]) and not process_alive(hello["grandchild"])
    assert child.ended


def test_a_failing_child_is_reported_with_its_last_error():
    child, hello, after = start("fail")
    events = drain(child, after)
    assert [e["event"] for e in events] == ["error", "exit"]
    exit_event = events[-1]
    assert exit_event["crashed"] and exit_event["returncode"] == 2
    assert "the test child exited (code 2); its last error: DataError: bad file x" in exit_event["message"]
    assert exit_event["last_error"]["message"] == "bad file x"
    child.kill()


def test_a_missing_interpreter_is_a_clear_error(tmp_path):
    from WaveletDiffusionCommonLib.process import WorkerError

    child = ChildProcess(str(tmp_path / "no-python"), name="the test child")
    with pytest.raises(WorkerError, match="cannot start the test child"):
        child.start(["-c", "pass"])


def test_an_exit_is_reported_even_while_a_grandchild_holds_the_output_open():
    """A grandchild that outlives the child belongs to the run: it is ended, and the exit is reported."""
    child = ChildProcess(name="the test child")
    script = ("import json, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)']); print(json.dumps({'event': 'hello', 'grandchild': p.pid}), flush=True); "
              "time.sleep(1.5)")  # fmt: skip
    child.start(["-c", script])
    try:
        started = time.monotonic()
        events = drain(child)
        assert events[-1]["event"] == "exit" and events[-1]["returncode"] == 0
        assert time.monotonic() - started < 30
        assert not process_alive(events[0]["grandchild"])
    finally:
        child.kill()


def test_the_environment_starts_from_the_given_base_and_adds_only_what_is_missing(tmp_path):
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/slicer/lib"}
    env = child_environment(base, str(tmp_path / "site"), overrides={"OMP_NUM_THREADS": "1"})
    assert env["PATH"] == "/usr/bin" and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "site"), "/slicer/lib"])
    assert env["PYTORCH_ENABLE_MPS_FALLBACK"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    # Installed by the Extensions Manager: the launcher already puts it on the path.
    provided = child_environment(base, str(tmp_path / "ext" / "lib" / "qt-scripted-modules"),
                                 provided_root=str(tmp_path / "ext"))  # fmt: skip
    assert provided["PYTHONPATH"] == "/slicer/lib"
    assert "SLICER_ONLY" not in child_environment({"PATH": "/bin"}, None)


def test_the_child_gets_the_base_environment_not_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("WDM_FROM_SLICER_PROCESS", "1")
    child = ChildProcess(name="the test child", base_env=lambda: {"WDM_STARTUP": "yes", "PATH": os.environ["PATH"]})
    child.start(["-c", "import json, os; print(json.dumps({'event': 'env', 'env': dict(os.environ)}))"])
    events = drain(child)
    env = next(e for e in events if e["event"] == "env")["env"]
    assert env["WDM_STARTUP"] == "yes" and "WDM_FROM_SLICER_PROCESS" not in env
