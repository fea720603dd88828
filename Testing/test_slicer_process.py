"""The child-process plumbing both Slicer modules share (no torch: small Python children)."""

from __future__ import annotations

import os
import textwrap
import time

import pytest
import slicer_support  # noqa: F401 - puts the module folders on sys.path
from WaveletDiffusionLib.process import ChildProcess

TIMEOUT = 60

# Starts a grandchild, prints an event, a stray line and a line on stderr, then fails, or waits to be stopped.
CHILD = textwrap.dedent(
    """
    import json, signal, subprocess, sys, time
    if sys.argv[1] == "graceful":
        signal.signal(signal.SIGTERM, lambda *a: (print(json.dumps({"event": "bye"}), flush=True), sys.exit(0)))
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    print("not json", flush=True)
    print("a warning", file=sys.stderr, flush=True)
    print(json.dumps({"event": "hello", "grandchild": grandchild.pid}), flush=True)
    if sys.argv[1] == "fail":
        print(json.dumps({"event": "error", "kind": "DataError", "message": "bad file x"}), flush=True)
        sys.exit(2)
    time.sleep(120)
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def start(mode: str) -> tuple[ChildProcess, dict, list[dict]]:
    """The started child, its hello event and the events that came after it in the same batch."""
    child = ChildProcess(name="the test child")
    child.start(["-c", CHILD, mode])
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


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")
def test_interrupt_is_a_graceful_stop_not_a_crash():
    child, hello, after = start("graceful")
    assert child.interrupt()
    events = drain(child, after)
    assert [e["event"] for e in events] == ["bye", "exit"]
    exit_event = events[-1]
    assert exit_event["returncode"] == 0 and exit_event["interrupted"] and not exit_event["crashed"]
    assert "[stdout] not json" in child.stderr_tail() and "a warning" in child.stderr_tail()
    child.kill()  # the grandchild still runs in the child's process group
    deadline = time.monotonic() + 10
    while alive(hello["grandchild"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(hello["grandchild"])


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")
def test_kill_ends_the_whole_tree():
    child, hello, after = start("wait")
    pid = child.pid
    child.kill()
    exit_event = drain(child, after)[-1]
    assert exit_event["killed"] and not exit_event["crashed"] and exit_event["returncode"] == -9
    deadline = time.monotonic() + 10
    while (alive(pid) or alive(hello["grandchild"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not alive(hello["grandchild"])


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
    from WaveletDiffusionLib.process import WorkerError

    child = ChildProcess(str(tmp_path / "no-python"), name="the test child")
    with pytest.raises(WorkerError, match="cannot start the test child"):
        child.start(["-c", "pass"])


def test_an_exit_is_reported_even_while_a_grandchild_holds_the_output_open():
    child = ChildProcess(name="the test child")
    script = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    child.start(["-c", script])
    try:
        started = time.monotonic()
        events = drain(child)
        assert events[-1]["event"] == "exit" and events[-1]["returncode"] == 0
        assert time.monotonic() - started < 30
    finally:
        child.kill()
