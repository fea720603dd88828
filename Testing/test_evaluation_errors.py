"""`wdm evaluate` errors a user can act on: a missing optional package names itself and the pip command (never a
traceback), too few volumes says how to make more, and MedicalNet's weights errors give the URL and the real
reason a file cannot be read."""

from __future__ import annotations

import json
import re
import shlex
import sys
import zipfile

import numpy as np
import pytest
import torch

from wdmcore.cli.main import build_parser, main
from wdmcore.errors import CheckpointError
from wdmcore.evaluation.medicalnet import load_medicalnet_state_dict

nib = pytest.importorskip("nibabel")

URL = "https://github.com/Tencent/MedicalNet"


def _volumes(folder, count, model=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"sample_seed{i:04d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((16, 16, 16)).astype(np.float32), np.eye(4)), path)
        if model is not None:  # the sidecar `wdm sample` writes beside each volume
            (folder / f"sample_seed{i:04d}.json").write_text(json.dumps({"model": model, "seed": i}))
    return folder


def _block(monkeypatch, package):
    """Make ``import package`` (and its submodules) fail as if the package were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def _evaluate(*argv):
    return main(["evaluate", *argv, "--device", "cpu", "--no-stats-cache"])


# ------------------------------------------------------------------------------------------ missing packages


@pytest.mark.parametrize("progress", ["bar", "jsonl"])
def test_missing_monai_is_one_error_line_with_the_pip_command(tmp_path, monkeypatch, capsys, progress):
    fake = _volumes(tmp_path / "wdm_samples", 2)
    _block(monkeypatch, "monai")
    out = tmp_path / "report.json"
    assert _evaluate("--fake", str(fake), "--ms-ssim-reduced", "--out", str(out), "--progress", progress) == 2
    captured = capsys.readouterr()
    if progress == "jsonl":
        event = json.loads(captured.out.splitlines()[-1])
        assert event["event"] == "error" and event["kind"] == "ConfigError"
        message = event["message"]
    else:
        assert captured.err.startswith("wdm: error: ") and "Traceback" not in captured.err
        message = captured.err
    assert "MS-SSIM" in message and "needs the monai package" in message
    assert "`pip install 'wdmcore[eval]'`" in message
    assert not out.exists()


def test_missing_nibabel_and_the_fid_network_name_their_package(tmp_path, monkeypatch, capsys):
    fake = _volumes(tmp_path / "fake", 2)
    weights = tmp_path / "resnet_50_23dataset.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, weights)
    _block(monkeypatch, "monai")
    args = ["--fake", str(fake), "--real", str(fake), "--medicalnet", str(weights), "--progress", "none"]
    assert _evaluate(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: The FID feature network") and "needs the monai package" in err
    assert "wdmcore[eval]" in err

    monkeypatch.undo()
    _block(monkeypatch, "nibabel")
    assert _evaluate("--fake", str(fake), "--ms-ssim-pairs", "none", "--progress", "none") == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: Reading NIfTI files needs the nibabel package") and "wdmcore[eval]" in err


# ------------------------------------------------------------------------------------------ too few volumes


def test_one_volume_says_how_to_make_more_with_a_command_that_parses(tmp_path, monkeypatch, capsys):
    pytest.importorskip("monai")
    monkeypatch.chdir(tmp_path)  # the folder demo.sh leaves: ./wdm_samples with one volume and its sidecar
    _volumes(tmp_path / "wdm_samples", 1, model="demo_phantom_64")
    assert _evaluate("--fake", "wdm_samples/", "--ms-ssim-reduced", "--progress", "none") == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: MS-SSIM diversity needs at least 2 generated volumes, got 1 in wdm_samples")
    commands = re.findall(r"`([^`]*)`", err)
    assert "wdm sample --model demo_phantom_64 --num 4 --out wdm_samples_4" in commands
    assert "--fake wdm_samples_4" in commands and "--ms-ssim-pairs none" in commands
    args = build_parser().parse_args(shlex.split(commands[0])[1:])  # the suggestion is a valid command
    assert (args.model, args.num, str(args.out)) == ("demo_phantom_64", 4, "wdm_samples_4")
    assert not (tmp_path / "wdm_samples_evaluation.json").exists()


def test_one_volume_without_a_sidecar_still_gets_the_command(tmp_path, capsys):
    pytest.importorskip("monai")
    fake = _volumes(tmp_path / "mine", 1)
    assert _evaluate("--fake", str(fake), "--ms-ssim-reduced", "--progress", "none") == 2
    err = capsys.readouterr().err
    assert f"`wdm sample --num 4 --out {tmp_path / 'mine_4'}`" in err


# ------------------------------------------------------------------------------------------ MedicalNet weights


def _read_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_medicalnet_state_dict(path)
    message = str(info.value)
    assert URL in message and "resnet_50_23dataset.pth" in message, message
    assert "()" not in message, message
    return message


def test_missing_weights_name_the_url_and_the_file(tmp_path):
    assert "not found at" in _read_error(tmp_path / "resnet_50_23dataset.pth")
    assert "is a folder" in _read_error(tmp_path)


def test_unreadable_weights_give_the_real_reason(tmp_path, monkeypatch):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert re.search(r"Could not read MedicalNet weights from .*empty\.pth: the file is empty", _read_error(empty))

    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 1, 7, 7, 7)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated or corrupt" in _read_error(truncated)

    page = tmp_path / "page.pth"  # what a browser saves from a share link that wants a click first
    page.write_text("<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>")
    assert "not a PyTorch checkpoint" in (message := _read_error(page)) and "web page" in message

    archive = tmp_path / "MedicalNet_pytorch_files2.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("MedicalNet_pytorch_files2/pretrain/resnet_50_23dataset.pth", b"weights")
    assert "MedicalNet's archive, not the weights: unpack it" in _read_error(archive)

    # Permission errors cannot be made with file modes when the tests run as root: torch.load raises what
    # open() raises for a file the user may not read.
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    assert "Permission denied (PermissionError)" in _read_error(good)


def test_evaluate_command_reports_unreadable_weights_with_the_url(tmp_path, capsys):
    fake = _volumes(tmp_path / "fake", 2)
    weights = tmp_path / "resnet_50_23dataset.pth"
    weights.write_bytes(b"")
    args = ["--fake", str(fake), "--real", str(fake), "--medicalnet", str(weights), "--ms-ssim-pairs", "none"]
    assert _evaluate(*args, "--progress", "none") == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: Could not read MedicalNet weights") and "the file is empty" in err
    assert URL in err
