"""The generation worker (``python -m wdmcore.worker``, a real process) survives every line on its stdin:
ids that are lists or objects, a list as cancel target, bytes that are not UTF-8, JSON nested 100000 levels
deep, ``num`` 0 or negative each get one error event and the worker answers the next request. A cancel for a
job that has already ended does not cancel a later job reusing its id."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_generate import tiny_model

WDMCORE = Path(__file__).parent.parent / "WDMCore"
TIMEOUT_S = 120


class _Worker:
    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "wdmcore.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def send(self, line: bytes | dict) -> None:
        if isinstance(line, dict):
            line = json.dumps(line).encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def next(self, *kinds: str) -> dict:
        while True:
            event = self.events.get(timeout=TIMEOUT_S)
            assert event is not None, "the worker closed its stdout"
            if not kinds or event["event"] in kinds:
                return event


@pytest.fixture
def worker(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(WDMCORE), "WDM_CACHE_DIR": str(tmp_path / "cache")}
    w = _Worker(env)
    assert w.next()["event"] == "ready"
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
    w.proc.wait(timeout=30)


HOSTILE = [
    ({"type": "ping", "id": [1, 2]}, "'id' must be a string"),
    ({"type": "ping", "id": {"a": 1}}, "'id' must be a string"),
    ({"type": "cancel", "target": [1]}, "'target' must be a string"),
    (b'\xff\xfe{"type": "ping"}', "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ({"type": "generate", "id": "g0", "num": 0}, "'num' must be a whole number from 1 to 100000"),
    ({"type": "generate", "id": "g-1", "num": -3}, "'num' must be a whole number from 1 to 100000"),
    ({"type": "generate", "id": "g-2", "num": "many"}, "'num' must be a whole number from 1 to 100000"),
]


def test_every_hostile_line_gets_an_error_and_the_worker_lives_on(worker):
    for line, message in HOSTILE:
        worker.send(line)
        error = worker.next()
        assert error["event"] == "error" and error["kind"] == "BadRequest", (line[:50], error)
        assert message in error["message"]
        worker.send({"type": "ping", "id": "alive"})
        assert worker.next() == {"event": "pong", "id": "alive"}
    worker.send({"type": "shutdown", "id": "end"})
    assert worker.next()["event"] == "bye"
    assert worker.proc.wait(timeout=30) == 0


def test_a_stale_cancel_does_not_cancel_a_later_job_with_the_same_id(worker, tmp_path):
    model = tiny_model().save(tmp_path / "tiny.safetensors")
    worker.send({"type": "cancel", "target": "job-1"})  # nothing called job-1 runs or waits: ignored
    request = {"type": "generate", "id": "job-1", "model": str(model), "num": 1, "steps": 2,
               "sampler": "ddim", "output_dir": str(tmp_path / "out")}  # fmt: skip
    worker.send(request)
    end = worker.next("done", "cancelled", "error")
    assert end["event"] == "done" and end["id"] == "job-1", end
    assert [Path(p).name for p in end["paths"]] == ["volume_seed0.nii.gz"]
