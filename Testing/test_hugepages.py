"""Transparent huge pages for the processes wdmcore starts (``wdmcore.hugepages``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wdmcore import hugepages
from wdmcore.cli.main import main as wdm_main

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Allocates and fills a 128 MiB tensor after `import torch` and after wdm's start-up hook, and prints the page
# faults that cost.
FAULTS = """
import resource, sys, torch
from wdmcore import hugepages
if sys.argv[1] == "hook":
    hugepages.enable_for_this_process()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(32 * 1024 * 1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_wdm_asks_for_huge_pages_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(hugepages.VARIABLE, raising=False)
    with pytest.raises(SystemExit):
        wdm_main(["--version"])
    assert os.environ.get(hugepages.VARIABLE) == ("1" if sys.platform.startswith("linux") else None)

    monkeypatch.setenv(hugepages.VARIABLE, "0")
    assert hugepages.enable_for_this_process() is False
    assert os.environ[hugepages.VARIABLE] == "0"


@pytest.mark.skipif(
    not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(encoding="utf-8"),
    reason="this kernel has no transparent huge pages",
)
def test_the_hook_cuts_page_faults_even_after_torch_is_imported(monkeypatch):
    monkeypatch.delenv(hugepages.VARIABLE, raising=False)

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    plain, hooked = faults("plain"), faults("hook")
    # 128 MiB in 4 KiB pages is 32768 faults; in 2 MiB pages, 64 (plus a little of PyTorch's own).
    assert plain > 30000
    assert hooked < plain / 5
