"""Hints that work when pasted (the import command of an offline download names the model's real preset and
file) and `wdm inspect NAME`, which describes a catalogue model without downloading it."""

from __future__ import annotations

import json
import re
import shlex
import socket
from pathlib import Path

import pytest
import test_hub
from test_hub import PAYLOAD, PAYLOAD_SHA, _records

from wdmcore import hub
from wdmcore.cli.main import main
from wdmcore.errors import CheckpointError, DownloadError

# test_hub's fixtures: the local server, the stand-in checkpoint reader, and a cache in the test's own folder
server = test_hub.server
load_calls = test_hub.load_calls
_isolated_cache = test_hub._isolated_cache

BRATS_PATH = "/pfriedri/wdm-3d/resolve/main/brats_unet_128_1200k.pt"


def _refused_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _suggested_command(message: str) -> list[str]:
    commands = re.findall(r"`(wdm import-model [^`]*)`", message)
    assert len(commands) == 1, message
    return shlex.split(commands[0])


def test_offline_hint_is_an_import_command_that_works_as_pasted(tmp_path, monkeypatch, capsys, load_calls):
    assert hub.cache_dir().is_relative_to(tmp_path)
    monkeypatch.setenv(hub.HUB_URL_ENV, f"http://127.0.0.1:{_refused_port()}")
    with pytest.raises(DownloadError) as info:
        hub.fetch("lidc-idri_unet_128_1200k")
    command = _suggested_command(str(info.value))
    assert command == [
        "wdm",
        "import-model",
        "lidc-idri_unet_128_1200k.pt",  # the name the file has when downloaded from the URL in the message
        "--name",
        "lidc-idri_unet_128_1200k",
        "--preset",
        "unet-128",  # the catalogue's preset, not a placeholder
    ]
    assert "PRESET" not in str(info.value)

    monkeypatch.chdir(tmp_path)  # the folder the file was downloaded into by hand
    Path(command[2]).write_bytes(PAYLOAD)
    assert main(command[1:]) == 0
    capsys.readouterr()
    assert load_calls == [(Path(command[2]), "unet-128")]
    assert hub.fetch("lidc-idri_unet_128_1200k").read_bytes() == PAYLOAD  # now found without any network


def test_http_error_hint_names_the_catalogue_preset(server):
    server.files.clear()
    with pytest.raises(DownloadError, match=r"answered 404") as info:
        hub.fetch("fastwdm3d")
    command = _suggested_command(str(info.value))
    assert command[2:] == ["brats3dimage120000.pt", "--name", "fastwdm3d", "--preset", "fastwdm3d-128"]


def test_hint_for_a_lost_imported_file_names_its_source_and_preset(tmp_path, load_calls):
    src = tmp_path / "my weights.pt"
    src.write_bytes(PAYLOAD)
    hub.import_model(src, name="mine", preset="wavunet-128")
    (hub.cache_dir() / "mine.pt").unlink()
    with pytest.raises(CheckpointError) as info:
        hub.fetch("mine")
    assert _suggested_command(str(info.value))[2:] == [str(src.resolve()), "--name", "mine", "--preset", "wavunet-128"]


# ------------------------------------------------------------------------------------------ inspect NAME


def test_inspect_name_shows_the_catalogue_entry_without_downloading(server, capsys):
    server.files[BRATS_PATH] = PAYLOAD
    assert main(["inspect", "brats_unet_128_1200k"]) == 0
    out = capsys.readouterr().out
    assert server.requests == []  # nothing was downloaded
    assert not (hub.cache_dir() / "brats_unet_128_1200k.pt").exists()
    for text in (
        "brats_unet_128_1200k: WDM U-Net",
        "task: generate",
        "preset: unet-128",
        "size: ~231.8 MB",
        "sha256: not in the catalogue",
        "license: MIT (https://github.com/pfriedri/wdm-3d/blob/main/LICENSE)",
        "spacing_mm: [2.0, 2.0, 2.0]",
        "file: not downloaded; `wdm download brats_unet_128_1200k` fetches it",
    ):
        assert text in out, text

    assert main(["inspect", "cwdm_t2f", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert (entry["name"], entry["task"], entry["preset"], entry["cached"], entry["file"]) == (
        "cwdm_t2f",
        "synthesize",
        "cwdm-224",
        False,
        None,
    )
    assert entry["license"] and entry["url"] and server.requests == []


def test_inspect_name_of_a_cached_model_shows_the_file(server, capsys):
    server.files[BRATS_PATH] = PAYLOAD  # not a real checkpoint: inspect still shows what it knows
    assert main(["download", "brats_unet_128_1200k", "--progress", "none"]) == 0
    capsys.readouterr()
    requests = len(server.requests)
    assert main(["inspect", "brats_unet_128_1200k", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert len(server.requests) == requests
    file = entry["file"]
    assert entry["cached"] and file["path"] == str(hub.cache_dir() / "brats_unet_128_1200k.pt")
    assert (file["size_bytes"], file["sha256"], file["sha256_matches"]) == (len(PAYLOAD), PAYLOAD_SHA, True)
    assert file["recorded_at"] == _records()["brats_unet_128_1200k"]["recorded_at"] and "error" in file

    assert main(["inspect", "brats_unet_128_1200k"]) == 0
    out = capsys.readouterr().out
    assert f"sha256: {PAYLOAD_SHA} (matches)" in out and "cannot be loaded" in out


def test_inspect_name_of_an_imported_model_describes_its_network(capsys, load_calls):
    hub.import_model(hub.get_model_info("demo_phantom_64").path, name="demo-copy")
    assert main(["inspect", "demo-copy"]) == 0
    out = capsys.readouterr().out
    assert "demo-copy:" in out and str(hub.cache_dir() / "demo-copy.safetensors") in out
    assert re.search(r"network: UNet, [\d,]+ parameters", out)


def test_inspect_of_a_file_is_unchanged(capsys):
    demo = hub.get_model_info("demo_phantom_64").path
    assert main(["inspect", str(demo)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{demo}: UNet, ") and "parameters" in out
