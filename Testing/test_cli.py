import json

import pytest
import torch

from wdmcore.cli.main import main
from wdmcore.networks import build_network, preset_config


def test_inspect_reports_preset_and_parameters(tmp_path, capsys):
    torch.save(build_network(preset_config("unet-128")).state_dict(), tmp_path / "m.pt")
    assert main(["inspect", str(tmp_path / "m.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "unet-128" and info["parameters"] == 57_914_824 and info["image_size"] == 128


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("nope")
    assert main(["inspect", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error:") and "not a PyTorch checkpoint" in err and "Traceback" not in err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "wdm 0.1.0" in capsys.readouterr().out


def test_unexpected_errors_are_one_jsonl_error_event_with_the_traceback(tmp_path, capsys, monkeypatch):
    """A program reading `--progress jsonl` (the Slicer modules) gets a structured error even for a bug."""
    import wdmcore.cli.train as command

    def broken(*args, **kwargs):
        raise RuntimeError("something deep inside broke\nsecond line")

    monkeypatch.setattr(command, "train", broken)
    args = ["train", "--format", "phantoms", "--phantoms", "2", "--preset", "unet-128", "--model-channels", "8",
            "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--progress", "jsonl"]) == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out.strip().splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "RuntimeError"
    assert error["message"] == "unexpected error: something deep inside broke"
    assert "Traceback" in error["detail"] and "Traceback" in captured.err
    # On a terminal a bug keeps its traceback.
    with pytest.raises(RuntimeError):
        main([*args, "--progress", "none"])


def test_device_out_of_memory_is_reported_with_what_to_do(tmp_path, capsys, monkeypatch):
    import wdmcore.cli.train as command

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(command, "train", out_of_memory)
    args = ["train", "--format", "phantoms", "--phantoms", "2", "--preset", "unet-128", "--model-channels", "8",
            "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1", "--image-size", "16",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--progress", "jsonl"]) == 3
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["kind"] == "OutOfMemory" and "smaller batch size" in error["message"]
    assert "Tried to allocate 2.00 GiB" in error["message"]
    assert main([*args, "--progress", "none"]) == 3
    assert capsys.readouterr().err.startswith("wdm: error: out of memory")


def test_summarize_reports_layout_cases_and_unusable_files(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.diag([2.0, 2, 3, 1])),
             str(data / "a.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image(np.ones((5, 5), np.float32), np.eye(4)), str(data / "flat.nii.gz"))
    assert main(["summarize", str(data), "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2]
    result = events[-1]
    assert result["event"] == "result" and result["format"] == "general"
    summary = result["summary"]
    assert summary["count"] == 1 and summary["shapes"] == {"2x3x4": 1} and summary["spacings"] == {"2x2x3": 1}
    assert summary["intensity_range"] == [0.0, 23.0]
    assert [s["path"] for s in summary["skipped"]] == [str(data / "flat.nii.gz")]
    assert "1 usable volume(s), 1 skipped" in result["text"]
    assert main(["summarize", str(data), "--headers-only"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("layout: general\n") and "intensity range" not in out
    assert main(["summarize", str(tmp_path / "missing"), "--progress", "jsonl"]) == 2
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["event"] == "error" and error["kind"] == "DataError" and "no such file or folder" in error["message"]
