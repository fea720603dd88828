"""Helpers shared by the Slicer-side test suites (``test_slicer_*.py``): paths and the MRML scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "WaveletDiffusion"
TRAINING_MODULE_DIR = REPO_ROOT / "WaveletDiffusionTraining"
COMMON_DIR = REPO_ROOT / "WaveletDiffusionCommon"
# Inside Slicer both modules and their shared WaveletDiffusionCommonLib are installed into one scripted-modules
# folder, so each module imports the shared library (and the training module the generation module).
for _folder in (COMMON_DIR, MODULE_DIR, TRAINING_MODULE_DIR):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def require_slicer():
    """The slicer-core package (real MRML classes, no application); skip the caller when it is absent."""
    return pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")


def register_segmentation_converters():
    """The conversion rules between segment representations, as Slicer's Segmentations module registers them
    when it starts (vtkSlicerSegmentationsModuleLogic::RegisterNodes); without them a segment cannot be copied
    or converted. Returns the slicer package."""
    slicer = require_slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    return slicer


@pytest.fixture
def scene():
    slicer = require_slicer()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(True)
    slicer.mrmlScene = previous


# Shaped like Slicer's PythonSlicer (a CTKAppLauncher): it starts the real interpreter as its child with the same
# arguments, passes its stdin/stdout/stderr through, installs no signal handler and forwards no signal. A signal
# sent to it ends the launcher only.
LAUNCHER = """#!{python}
import subprocess, sys
sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))
"""


def make_launcher(folder: Path) -> str:
    """An executable launcher script in ``folder``, to be used as the logic's ``python``."""
    path = Path(folder) / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_dead(pids, timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` lives; returns those still alive after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if process_alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def tree(pid: int) -> list[int]:
    """``pid`` and every process it started (now)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []
