"""Shared pytest fixtures: the reference data of the released code lives in Testing/reference (made by running
the released code on CPU; see Testing/reference/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("WDM_REFERENCE_DIR", Path(__file__).resolve().parent / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(
            f"reference fixtures not found at {REFERENCE_DIR}; they ship in Testing/reference "
            "(WDM_REFERENCE_DIR overrides the location)"
        )
    return REFERENCE_DIR


def load_reference(name: str) -> dict:
    return torch.load(REFERENCE_DIR / name, weights_only=True)


@pytest.fixture(autouse=True)
def _isolated_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in an empty folder of its own: no test may depend on what the working directory holds
    (e.g. the ./wdm_samples that scripts/demo.sh leaves in the repository root)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Small tensors: more threads only add noise on the 2-core CI machine.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """For long loops over tiny tensors: one thread, since waking a second one costs more than it computes
    (measured: a tiny cWDM forward 0.05 s on one thread, 0.7 s on two of a busy 2-core machine)."""
    torch.set_num_threads(1)
    yield
