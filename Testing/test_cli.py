import json

import pytest
import torch

from wdmcore.cli import main
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
