"""A trainer left running by an earlier Slicer session (it crashed; the trainer lives on and owns its run folder):
the training module's logic finds it, asks it to stop through its stop file, and ends what does not stop in time,
with every process it started, and nothing else.

The left trainer is a real child process standing in for ``wdm train``: its command line is a trainer's
(``... train --out OUT``), it starts a process of its own (as a data-loader worker would), and it either obeys
the stop file as the trainer does (removes it and exits) or ignores it (a trainer stuck in a long step).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slicer_support import process_alive, require_slicer, tree, wait_dead

psutil = pytest.importorskip("psutil")
require_slicer()

from WaveletDiffusionTrainingLib import WaveletDiffusionTrainingLogic, runfolder  # noqa: E402

STAND_IN = """
import os, subprocess, sys, time
mode, out = sys.argv[1], sys.argv[sys.argv.index("--out") + 1]
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.path.join(out, "ready"), "w").close()
stop = os.path.join(out, "STOP")
while True:
    if os.path.exists(stop):
        open(os.path.join(out, "saw-stop"), "w").close()
        if mode == "obeys":
            os.remove(stop)
            worker.kill()
            sys.exit(0)
    time.sleep(0.05)
"""


def start_left_trainer(tmp_path: Path, out: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "left_trainer.py"
    script.write_text(STAND_IN)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(script), mode, "train", "--out", str(out)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (out / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


@pytest.fixture
def started():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        for pid in tree(proc.pid):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        proc.wait(5)


def test_a_left_trainer_that_ignores_its_stop_file_is_ended_with_its_processes(tmp_path, started):
    out, other = tmp_path / "run", tmp_path / "other run"
    left = start_left_trainer(tmp_path, out, "ignores")
    bystander = start_left_trainer(tmp_path, other, "ignores")  # a trainer of another folder: not to be touched
    started.extend([left, bystander])
    pids = tree(left.pid)
    assert len(pids) == 2  # the trainer and its worker
    logic = WaveletDiffusionTrainingLogic()
    assert logic.left_trainers(out) == [left.pid]
    with pytest.raises(ValueError, match="still running"):
        logic._refuse_if_training(out.resolve())

    ended = logic.stop_left_trainers(out, timeout=1.0)

    assert ended == [left.pid]
    assert (out / "saw-stop").exists()  # asked through its stop file before it was ended
    assert wait_dead(pids, 5) == []
    assert not runfolder.stop_file(out).exists()  # unanswered: not left for the next run to obey
    assert logic.left_trainers(out) == []
    logic._refuse_if_training(out.resolve())  # Start and Resume are no longer refused
    assert process_alive(bystander.pid) and logic.left_trainers(other) == [bystander.pid]
    assert not (other / "saw-stop").exists()


def test_a_left_trainer_that_obeys_its_stop_file_is_not_ended(tmp_path, started):
    out = tmp_path / "run"
    left = start_left_trainer(tmp_path, out, "obeys")
    started.append(left)
    logic = WaveletDiffusionTrainingLogic()
    began = time.monotonic()

    ended = logic.stop_left_trainers(out, timeout=60.0)

    assert ended == [] and time.monotonic() - began < 30  # it exited on its own, long before the timeout
    assert left.wait(5) == 0  # exited by itself, not killed
    assert logic.left_trainers(out) == [] and not runfolder.stop_file(out).exists()


def test_a_folder_without_a_left_trainer_is_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    logic = WaveletDiffusionTrainingLogic()
    assert logic.stop_left_trainers(out, timeout=1.0) == []
    assert not runfolder.stop_file(out).exists()


def test_the_module_asks_before_it_stops_a_left_trainer(tmp_path, started):
    out = tmp_path / "run"
    left = start_left_trainer(tmp_path, out, "ignores")
    started.append(left)
    logic = WaveletDiffusionTrainingLogic()
    logic.left_trainer_timeout = 0.5
    questions = []
    assert logic.offer_to_stop_left_trainers(out, lambda q: questions.append(q) or False) is False
    assert f"(process {left.pid})" in questions[0] and process_alive(left.pid)  # "no": nothing is touched
    assert not runfolder.stop_file(out).exists()
    assert logic.offer_to_stop_left_trainers(out, lambda q: True) is True
    assert wait_dead([left.pid], 5) == [] and logic.left_trainers(out) == []
    assert logic.offer_to_stop_left_trainers(out, lambda q: pytest.fail("nothing to ask")) is True
