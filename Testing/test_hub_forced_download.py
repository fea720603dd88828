"""`wdm download --force` over a recorded digest: new content is accepted only with a warning naming both digests,
and the records keep the old digest in the model's history. Against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import test_hub
from test_hub import PAYLOAD, PAYLOAD_SHA, URL_PATH_A, _catalogue, _parse, _records

from wdmcore import hub
from wdmcore.errors import DownloadError

# test_hub's fixtures: the local server, the stand-in checkpoint reader, and a cache in the test's own folder
server = test_hub.server
load_calls = test_hub.load_calls
_isolated_cache = test_hub._isolated_cache

NEW_PAYLOAD = PAYLOAD[::-1]
NEW_SHA = hashlib.sha256(NEW_PAYLOAD).hexdigest()


def test_forced_download_of_new_content_warns_with_both_digests_and_keeps_the_history(tmp_path, server, caplog):
    assert hub.cache_dir().is_relative_to(tmp_path)  # never the user's own cache
    cat = _catalogue(tmp_path, None)
    hub.fetch("model_a", catalogue=cat).unlink()  # downloaded once, then the file is cleaned up; the record stays
    first = _records()["model_a"]
    server.files[URL_PATH_A] = NEW_PAYLOAD  # the file on the server changed

    with pytest.raises(DownloadError, match=r"digest recorded in .*--force` to accept it"):
        hub.fetch("model_a", catalogue=cat)  # refused without --force; the record stays as it was
    assert not (hub.cache_dir() / "model_a.pt").exists() and _records()["model_a"] == first

    events = []
    with caplog.at_level(logging.WARNING, logger="wdmcore.hub"):
        path = hub.fetch("model_a", catalogue=cat, force=True, on_progress=events.append)
    assert path.read_bytes() == NEW_PAYLOAD
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1
    message = warnings[0]["message"]
    assert "first download" not in message  # it is a replacement, not a first use
    assert PAYLOAD_SHA in message and NEW_SHA in message and "differs" in message
    assert (warnings[0]["sha256"], warnings[0]["previous_sha256"]) == (NEW_SHA, PAYLOAD_SHA)
    assert PAYLOAD_SHA in caplog.text and NEW_SHA in caplog.text

    record = _records()["model_a"]
    assert record["sha256"] == NEW_SHA and record["recorded_at"]
    assert [h["sha256"] for h in record["history"]] == [PAYLOAD_SHA]
    assert record["history"][0]["recorded_at"] == first["recorded_at"] and record["history"][0]["replaced_at"]
    assert hub.fetch("model_a", catalogue=cat) == path  # the new digest guards the cached file from now on

    server.files[URL_PATH_A] = PAYLOAD  # and back: the history grows, oldest first
    hub.fetch("model_a", catalogue=cat, force=True)
    assert [h["sha256"] for h in _records()["model_a"]["history"]] == [PAYLOAD_SHA, NEW_SHA]


def test_forced_download_of_the_same_content_says_nothing(tmp_path, server):
    cat = _catalogue(tmp_path, None)
    hub.fetch("model_a", catalogue=cat)
    events = []
    hub.fetch("model_a", catalogue=cat, force=True, on_progress=events.append)
    assert [e for e in events if e["event"] == "warning"] == []
    record = _records()["model_a"]
    assert record["sha256"] == PAYLOAD_SHA and "history" not in record


def test_download_command_force_reports_the_replacement(tmp_path, server, capsys):
    server.files["/pfriedri/wdm-3d/resolve/main/brats_unet_128_1200k.pt"] = PAYLOAD
    args = _parse(["download", "brats_unet_128_1200k", "--progress", "none"])
    assert args.handler(args) == 0
    capsys.readouterr()
    server.files["/pfriedri/wdm-3d/resolve/main/brats_unet_128_1200k.pt"] = NEW_PAYLOAD

    (hub.cache_dir() / "brats_unet_128_1200k.pt").unlink()
    args = _parse(["download", "brats_unet_128_1200k", "--progress", "jsonl"])
    assert args.handler(args) == 2  # without --force a different digest stays refused
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert error["event"] == "error" and "--force" in error["message"]

    args = _parse(["download", "brats_unet_128_1200k", "--force", "--progress", "jsonl"])
    assert args.handler(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warning = next(e for e in events if e["event"] == "warning")
    assert PAYLOAD_SHA in warning["message"] and NEW_SHA in warning["message"]
    assert events[-1]["event"] == "result"


def test_importing_other_content_under_a_recorded_name_keeps_the_old_digest(tmp_path, load_calls):
    cat = _catalogue(tmp_path, None)
    for payload in (PAYLOAD, NEW_PAYLOAD):
        src = tmp_path / "mine.pt"
        src.write_bytes(payload)
        hub.import_model(src, name="mine", preset="unet-128", catalogue=cat)
    record = _records()["mine"]
    assert record["sha256"] == NEW_SHA and [h["sha256"] for h in record["history"]] == [PAYLOAD_SHA]
