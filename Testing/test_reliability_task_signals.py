"""SIGTERM during `wdm synthesize`, `wdm inpaint` and `wdm vary` (real child processes, the bundled demo models):
sent to the process or to its whole process group (as a batch system does) after the first preview, it ends the
command with exit 143 and one error (a `wdm: error:` line, or one `error` event of kind `Terminated`); no preview,
result or temporary file is left and the inputs are untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wdmcore.data.contrasts import paired_phantom
from wdmcore.data.phantoms import generate_phantom, phantom_affine
from wdmcore.worker import write_nifti

WDMCORE = Path(__file__).parent.parent / "WDMCore"
DEADLINE_S = 120
# Every network call sleeps first, so that the signal reliably arrives while the task is still running; the first
# one creates the file $FIRST_CALL_MARK, so that a test without events knows that the work has begun.
SLOW_MAIN = (
    "import os, pathlib, sys, time\n"
    "from wdmcore.networks.unet import UNet\n"
    "from wdmcore.networks.wavunet import WavUNet\n"
    "for cls in (UNet, WavUNet):\n"
    "    def slow(self, *a, _orig=cls.forward, **k):\n"
    "        pathlib.Path(os.environ.get('FIRST_CALL_MARK', os.devnull)).touch()\n"
    "        time.sleep(0.5)\n"
    "        return _orig(self, *a, **k)\n"
    "    cls.forward = slow\n"
    "from wdmcore.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    contrasts, lesion = paired_phantom(32, 2, 0)
    affine = phantom_affine(32)
    paths = {name: write_nifti(folder / f"{name}.nii.gz", array, affine) for name, array in contrasts.items()}
    paths["mask"] = write_nifti(folder / "mask.nii.gz", lesion.astype(np.float32), affine)
    paths["image64"] = write_nifti(folder / "image64.nii.gz", generate_phantom(64, seed=1), phantom_affine(64))
    return paths


def command(task: str, inputs: dict[str, Path]) -> list[str]:
    """The task's command line, run by PyTorch: SLOW_MAIN slows the PyTorch forward (on a CPU with native bf16
    auto would run a cached OpenVINO conversion, which it does not reach)."""
    return [*_task_command(task, inputs), "--backend", "torch"]


def _task_command(task: str, inputs: dict[str, Path]) -> list[str]:
    if task == "synthesize":
        return ["synthesize", "--model", "demo_phantom_synthesize_32", "--t2", str(inputs["t2"]), "--flair",
                str(inputs["flair"]), "--pd", str(inputs["pd"]), "--sampler", "ddim", "--steps", "8"]  # fmt: skip
    if task == "inpaint":  # fastWDM3D: two steps, the signal comes in the second
        return ["inpaint", "--model", "demo_phantom_inpaint_32", "--image", str(inputs["t1"]), "--mask",
                str(inputs["mask"]), "--steps", "2"]  # fmt: skip
    return ["vary", "--model", "demo_phantom_64", "--image", str(inputs["image64"]), "--strength", "0.5",
            "--sampler", "ddim", "--steps", "16"]  # fmt: skip


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("to_group", [False, True], ids=["process", "group"])
@pytest.mark.parametrize("task", ["synthesize", "inpaint", "vary"])
def test_sigterm_mid_task_exits_143_and_leaves_nothing(task, to_group, inputs, tmp_path):
    before = digests(inputs["mask"].parent)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(WDMCORE), "OMP_NUM_THREADS": "1"}
    args = [*command(task, inputs), "--device", "cpu", "--out", str(out / "result.nii.gz")]
    args += ["--progress", "jsonl", "--preview-every", "1"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MAIN, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        events = []
        deadline = time.monotonic() + DEADLINE_S
        for line in proc.stdout:  # until the first preview has been written
            events.append(json.loads(line))
            if events[-1]["event"] == "preview" or time.monotonic() > deadline:
                break
        assert events and events[-1]["event"] == "preview", (events, proc.stderr.read() if proc.poll() else "")
        assert Path(events[-1]["path"]).is_file()
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 143, stderr
    errors = [json.loads(line) for line in rest.splitlines() if json.loads(line)["event"] == "error"]
    assert len(errors) == 1 and errors[0]["kind"] == "Terminated" and "SIGTERM" in errors[0]["message"], rest
    assert "Traceback" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == []  # no preview, no result, no temporary file
    assert digests(inputs["mask"].parent) == before


def test_sigterm_without_jsonl_prints_one_error_line(inputs, tmp_path):
    mark = tmp_path / "first-call"
    env = {**os.environ, "PYTHONPATH": str(WDMCORE), "OMP_NUM_THREADS": "1", "FIRST_CALL_MARK": str(mark)}
    out = tmp_path / "out" / "result.nii.gz"
    out.parent.mkdir()
    args = [*command("synthesize", inputs), "--device", "cpu", "--out", str(out), "--progress", "none"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_MAIN, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists() and proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 143, stderr
    assert [line for line in stderr.splitlines() if line.startswith("wdm: error:")] == [
        "wdm: error: stopped by SIGTERM; finished files were kept, temporary files removed"
    ]
    assert stdout == "" and list(out.parent.iterdir()) == []
