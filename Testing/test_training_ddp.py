"""Two processes under torchrun (gloo, CPU) train the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from wdmcore.data.phantoms import PhantomDataset
from wdmcore.training import list_checkpoints, load_training_state, train

REPO_ROOT = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    sys.path.insert(0, {testing!r})
    from training_helpers import tiny_config
    from wdmcore.data.phantoms import PhantomDataset
    from wdmcore.training import train

    torch.set_num_threads(1)
    result = train(tiny_config(batch_size=4, max_steps=4, device="cpu"), PhantomDataset(6, 16, seed=2), sys.argv[1])
    assert (result.model_path is None) == (os.environ["RANK"] != "0")
    """
)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield


def test_two_process_gloo_run_matches_a_single_process_run(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(testing=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    train(tiny_config(batch_size=4, max_steps=4, device="cpu"), PhantomDataset(6, 16, seed=2), tmp_path / "one")
    assert [c[0] for c in list_checkpoints(tmp_path / "ddp")] == [3, 4]
    ddp = load_training_state(tmp_path / "ddp" / "state_0000004.pt")
    one = load_training_state(tmp_path / "one" / "state_0000004.pt")
    for part in ("network", "ema"):
        for key, value in one[part].items():
            torch.testing.assert_close(ddp[part][key], value, atol=1e-6, rtol=0, msg=f"{part} {key}")
    # And the weights moved: the comparison is not between two untouched initialisations.
    first = load_training_state(tmp_path / "one" / "state_0000003.pt")["network"]
    assert any(not torch.equal(first[k], one["network"][k]) for k in first)
