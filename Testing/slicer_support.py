"""Helpers shared by the Slicer-side test suites (``test_slicer_*.py``): paths and the MRML scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "WaveletDiffusion"
TRAINING_MODULE_DIR = REPO_ROOT / "WaveletDiffusionTraining"
# Inside Slicer both modules are installed into one scripted-modules folder, so each Lib can import the other.
for _folder in (MODULE_DIR, TRAINING_MODULE_DIR):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def require_slicer():
    """The slicer-core package (real MRML classes, no application); skip the caller when it is absent."""
    return pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")


@pytest.fixture
def scene():
    slicer = require_slicer()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(True)
    slicer.mrmlScene = previous
