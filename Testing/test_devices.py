"""Device names: auto is CUDA, then Apple's MPS, then the CPU; an absent device is a clear error, also from `wdm`."""

from __future__ import annotations

import json

import pytest
import torch
from test_generate import tiny_model

from wdmcore.cli.main import main
from wdmcore.devices import resolve_device
from wdmcore.errors import ConfigError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_prefers_cuda_then_mps_then_cpu(no_gpu, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_an_absent_device_says_what_to_use(no_gpu):
    with pytest.raises(ConfigError, match="MPS was requested but PyTorch sees no MPS device.*use device 'cpu'"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="CUDA was requested"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_wdm_sample_on_an_absent_mps_is_an_error_event_not_a_traceback(no_gpu, tmp_path, capsys):
    model = tiny_model().save(tmp_path / "tiny.safetensors", name="tiny")
    code = main(["sample", "--model", str(model), "--device", "mps", "--out", str(tmp_path), "--progress", "jsonl"])
    out = capsys.readouterr()
    error = json.loads(out.out.strip().splitlines()[-1])
    assert code == 2 and error["event"] == "error" and "MPS" in error["message"]
    assert "Traceback" not in out.err


def test_training_on_an_absent_mps_is_a_clear_error(no_gpu, tmp_path):
    from training_helpers import tiny_config

    from wdmcore.data.phantoms import PhantomDataset
    from wdmcore.training import train

    with pytest.raises(ConfigError, match="MPS was requested"):
        train(tiny_config(device="mps"), PhantomDataset(2, 16), tmp_path)


def test_training_on_cuda_without_an_index_sets_the_current_gpu(monkeypatch):
    """torch.cuda.set_device refuses torch.device("cuda") (no index): the trainer names the current GPU.

    Seen on an H200 with `--device cuda` and with auto; here the CUDA calls are stood in for, since CI has no GPU.
    """
    from wdmcore.training import loop

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:  # what torch raises, in short
            raise ValueError("Expected a torch.device with a specified index or an integer")
        chosen.append(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for request in ("cuda", "auto", "cuda:0"):
        dist, device = loop._setup_distributed(request)
        assert device == torch.device("cuda", 0) and dist.world == 1
    assert chosen == [torch.device("cuda", 0)] * 3
