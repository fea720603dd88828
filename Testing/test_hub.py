"""wdmcore.hub: catalogue, verified and resumable downloads against a local HTTP server, cache, import."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wdmcore import hub
from wdmcore.errors import CheckpointError, ConfigError, DownloadError

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
REPO = "test-owner/test-repo"
FILE_A = "model_a.pt"
URL_PATH_A = f"/{REPO}/resolve/main/{FILE_A}"
MAX_REQUESTS = 20  # every test needs far fewer; more means a retry loop went wrong


# ------------------------------------------------------------------------------------------ local server


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drops: list[int] = []  # for the next requests: close the connection after this many body bytes
        self.support_range = True
        self.after_first_request = None  # called once the first request has been answered
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass

    def do_GET(self):
        state: _State = self.server.state
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
            count = len(state.requests)
            drop = state.drops.pop(0) if state.drops else None
        if count > MAX_REQUESTS:
            self.send_error(503, "request budget of the test server exhausted")
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start, status = 0, 200
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and state.support_range and (if_range is None or if_range == etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.wfile.write(payload)
        if count == 1 and state.after_first_request is not None:
            state.after_first_request(state)


@pytest.fixture
def server(monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()
    httpd.state.files[URL_PATH_A] = PAYLOAD
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv(hub.HUB_URL_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub.download, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(hub.download, "CHUNK_SIZE", 4096)  # several chunks, so a dropped transfer has written some
    monkeypatch.setattr(hub.download, "EVENT_INTERVAL_S", 0.0)
    monkeypatch.delenv(hub.HUB_URL_ENV, raising=False)


def _catalogue(tmp_path: Path, sha256: str | None) -> hub.Catalogue:
    data = {
        "schema": 1,
        "hub_url": "http://127.0.0.1:9/unused",
        "models": [
            {
                "name": "model_a",
                "description": "test model",
                "preset": "unet-128",
                "source": {
                    "kind": "huggingface",
                    "repo": REPO,
                    "revision": "main",
                    "filename": FILE_A,
                },
                "format": "state-dict-pt",
                "sha256": sha256,
                "size_bytes": None,
                "approx_size_bytes": 300_000,
                "license": "MIT",
                "card": {"spacing_mm": [2.0, 2.0, 2.0]},
            },
            {
                "name": "demo",
                "description": "bundled",
                "preset": None,
                "source": {"kind": "bundled", "path": "assets/demo_test.safetensors"},
                "format": "safetensors",
                "sha256": None,
                "license": "MIT",
            },
        ],
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(data))
    return hub.load_catalogue(path)


def _cache_files() -> list[str]:
    """The cache's files, less the lock file that guards records.json (it stays, empty, by design)."""
    from wdmcore.hub.cache import RECORDS_LOCK

    cache = hub.cache_dir()
    return sorted(p.name for p in cache.iterdir() if p.name != RECORDS_LOCK) if cache.exists() else []


def _records() -> dict:
    return json.loads((hub.cache_dir() / hub.RECORDS_FILE).read_text(encoding="utf-8"))["models"]


# ------------------------------------------------------------------------------------------ catalogue


def test_shipped_catalogue_lists_released_and_bundled_models():
    cat = hub.load_catalogue()
    assert cat.names() == [
        "brats_unet_128_1200k",
        "lidc-idri_unet_128_1200k",
        "demo_phantom_64",
        "demo_phantom_synthesize_32",
        "demo_phantom_inpaint_32",
        "cwdm_t1n",
        "cwdm_t1c",
        "cwdm_t2w",
        "cwdm_t2f",
        "fastwdm3d",
    ]
    brats = cat.get("brats_unet_128_1200k.pt")  # the file name works too
    assert brats is cat.get("brats_unet_128_1200k")
    assert brats.url(cat.hub_url) == "https://huggingface.co/pfriedri/wdm-3d/resolve/main/brats_unet_128_1200k.pt"
    lidc = cat.get("lidc-idri_unet_128_1200k")
    assert lidc.url("https://mirror.example/") == (
        "https://mirror.example/pfriedri/wdm-3d/resolve/main/lidc-idri_unet_128_1200k.pt"
    )
    for entry in (brats, lidc):
        assert entry.preset == "unet-128"
        assert entry.license == "MIT"
        assert entry.sha256 is None  # not known: recorded on first download instead
        assert entry.card["image_size"] == [128, 128, 128]
        assert entry.card["spacing_mm"] == [2.0, 2.0, 2.0]
        assert entry.card["intensity"]["range"] == [0.0, 1.0]
        assert entry.card["unknown"]
    assert brats.card["source_voxel_of_output_voxel"]["offset"] == [-7.5, -7.5, -49.5]
    assert brats.card["modality"] == "MRI" and lidc.card["modality"] == "CT"
    demo = cat.get("demo_phantom_64")
    assert demo.kind == "bundled" and demo.source["path"] == "assets/demo_phantom_64.safetensors"
    files = {"cwdm_t1n": "t1_gen.pt", "cwdm_t1c": "t1ce_gen.pt", "cwdm_t2w": "t2_gen.pt", "cwdm_t2f": "flair_gen.pt"}
    for name, filename in files.items():
        entry = cat.get(name)
        assert entry.source["repo"] == "pfriedri/cwdm" and entry.filename == filename and entry.preset == "cwdm-224"
        assert entry.license == "MIT" and entry.sha256 is None and entry.approx_size_bytes == 326198507
        target = name.split("_")[1]
        assert entry.card["task"] == "synthesize" and entry.card["output"]["name"] == target
        assert [i["name"] for i in entry.card["inputs"]] == [s for s in ("t1n", "t1c", "t2w", "t2f") if s != target]
    fast = cat.get("fastwdm3d")
    assert fast.source["repo"] == "AliciaDurrer/fastWDM3D" and fast.preset == "fastwdm3d-128"
    assert fast.card["task"] == "inpaint" and [i["name"] for i in fast.card["inputs"]] == ["image", "mask"]


def test_malformed_catalogue_is_a_config_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema": 1, "models": [{"name": "x", "source": {"kind": "ftp"}}]}))
    with pytest.raises(ConfigError, match="source.kind"):
        hub.load_catalogue(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        hub.load_catalogue(path)


def test_cache_dir_follows_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert hub.cache_dir() == tmp_path / "elsewhere" / "models"
    monkeypatch.delenv(hub.CACHE_ENV)
    default = hub.cache_dir()
    assert default.name == "models" and "wdmcore" in default.parts


def test_unknown_model_names_the_known_ones(tmp_path):
    cat = _catalogue(tmp_path, None)
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*model_a.*import-model"):
        hub.fetch("nope", catalogue=cat)


# ------------------------------------------------------------------------------------------ downloads


def test_good_download_is_verified_cached_and_not_fetched_again(tmp_path, server):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    events = []
    path = hub.fetch("model_a", catalogue=cat, on_progress=events.append)
    assert path == hub.cache_dir() / FILE_A
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 1
    assert _cache_files() == [FILE_A, hub.RECORDS_FILE]  # no temporary file left behind
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["done"] == 0 and progress[-1]["done"] == len(PAYLOAD)
    assert all(e["total"] == len(PAYLOAD) and e["task"] == "download" for e in progress)
    assert progress[-1]["model"] == "model_a" and progress[-1]["eta_s"] == 0
    assert not [e for e in events if e["event"] == "warning"]  # the catalogue had the digest
    assert _records()["model_a"]["sha256"] == PAYLOAD_SHA

    assert hub.fetch("model_a", catalogue=cat) == path
    assert len(server.requests) == 1  # served from the cache


def test_corrupted_download_is_rejected_and_nothing_is_kept(tmp_path, server):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    server.files[URL_PATH_A] = PAYLOAD[:-1] + b"\x00"
    with pytest.raises(
        DownloadError,
        match=r"does not match the SHA-256 of the catalogue.*nothing was kept",
    ):
        hub.fetch("model_a", catalogue=cat)
    assert _cache_files() == []
    assert not hub.get_model_info("model_a", catalogue=cat).cached


def test_interrupted_download_resumes_with_range(tmp_path, server):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    server.drops = [120_000]
    path = hub.fetch("model_a", catalogue=cat)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    resumed_at = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 120_000
    assert _cache_files() == [FILE_A, hub.RECORDS_FILE]


def test_interrupted_download_restarts_when_server_ignores_range(tmp_path, server):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    server.support_range = False
    server.drops = [100_000, 30_000]
    events = []
    path = hub.fetch("model_a", catalogue=cat, on_progress=events.append)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 3
    assert server.requests[1][1] is not None  # it asked to resume, got the whole file, started over
    assert events[-1]["done"] == len(PAYLOAD)


def test_file_changed_on_server_during_resume_is_read_again_whole(tmp_path, server):
    new = PAYLOAD[::-1]
    server.drops = [120_000]
    server.after_first_request = lambda state: state.files.__setitem__(URL_PATH_A, new)
    path = hub.fetch("model_a", catalogue=_catalogue(tmp_path, None))
    assert path.read_bytes() == new  # not the first part of the old file glued to the rest of the new one
    assert len(server.requests) == 2 and server.requests[1][1].startswith("bytes=")


def test_download_that_keeps_failing_gives_up_and_leaves_nothing(tmp_path, server, monkeypatch):
    monkeypatch.setattr(hub.download, "DOWNLOAD_RETRIES", 2)
    cat = _catalogue(tmp_path, None)
    server.drops = [0, 0, 0, 0]
    with pytest.raises(
        DownloadError,
        match=r"kept failing.*3 attempts.*wdm import-model model_a.pt --name model_a --preset unet-128",
    ):
        hub.fetch("model_a", catalogue=cat)
    assert len(server.requests) == 3
    assert _cache_files() == []


def test_offline_gives_a_clear_message_naming_the_manual_route(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.download, "DOWNLOAD_RETRIES", 1)
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(hub.HUB_URL_ENV, f"http://127.0.0.1:{port}")
    cat = _catalogue(tmp_path, None)
    with pytest.raises(DownloadError) as info:
        hub.fetch("model_a", catalogue=cat)
    message = str(info.value)
    assert "connection refused" in message and "offline" in message
    assert "wdm import-model model_a.pt --name model_a --preset unet-128" in message
    assert f"127.0.0.1:{port}/{REPO}/resolve/main/{FILE_A}" in message
    assert _cache_files() == []


def test_missing_file_on_server_is_not_retried(tmp_path, server):
    cat = _catalogue(tmp_path, None)
    server.files.clear()
    with pytest.raises(DownloadError, match=r"answered 404.*catalogue may be outdated"):
        hub.fetch("model_a", catalogue=cat)
    assert len(server.requests) == 1
    assert _cache_files() == []


def test_base_url_argument_overrides_environment(tmp_path, server, monkeypatch):
    url = os.environ[hub.HUB_URL_ENV]
    monkeypatch.setenv(hub.HUB_URL_ENV, "http://127.0.0.1:9")
    path = hub.fetch("model_a", catalogue=_catalogue(tmp_path, PAYLOAD_SHA), base_url=url)
    assert path.read_bytes() == PAYLOAD


def test_digest_is_recorded_on_first_download_and_checked_afterwards(tmp_path, server, caplog):
    cat = _catalogue(tmp_path, None)
    events = []
    with caplog.at_level(logging.WARNING, logger="wdmcore.hub"):
        path = hub.fetch("model_a", catalogue=cat, on_progress=events.append)
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["sha256"] == PAYLOAD_SHA
    assert "recorded the digest of this first download" in warnings[0]["message"]
    assert PAYLOAD_SHA in caplog.text
    record = _records()["model_a"]
    assert record["sha256"] == PAYLOAD_SHA and record["size_bytes"] == len(PAYLOAD)
    info = hub.get_model_info("model_a", catalogue=cat)
    assert (info.sha256, info.sha256_origin) == (PAYLOAD_SHA, "recorded")

    events.clear()
    assert hub.fetch("model_a", catalogue=cat, on_progress=events.append) == path
    assert events == [] and len(server.requests) == 1

    with open(path, "r+b") as f:  # tamper with the cached file
        f.seek(1000)
        f.write(b"\xff\xfe")
    with pytest.raises(
        DownloadError,
        match=r"does not match the digest recorded.*wdm download model_a --force",
    ):
        hub.fetch("model_a", catalogue=cat)

    server.files.clear()  # a forced download that fails keeps the cached file and its record
    with pytest.raises(DownloadError, match="404"):
        hub.fetch("model_a", catalogue=cat, force=True)
    assert _cache_files() == [FILE_A, hub.RECORDS_FILE] and _records()["model_a"]["sha256"] == PAYLOAD_SHA

    server.files[URL_PATH_A] = PAYLOAD
    assert hub.fetch("model_a", catalogue=cat, force=True).read_bytes() == PAYLOAD
    assert len(server.requests) == 3
    assert _cache_files() == [FILE_A, hub.RECORDS_FILE]


def test_recorded_digest_guards_a_later_download(tmp_path, server):
    cat = _catalogue(tmp_path, None)
    path = hub.fetch("model_a", catalogue=cat)
    path.unlink()  # the user cleans up the file; the record stays
    server.files[URL_PATH_A] = PAYLOAD[::-1]
    with pytest.raises(DownloadError, match=r"digest recorded in .*records.json.*--force"):
        hub.fetch("model_a", catalogue=cat)
    assert _cache_files() == [hub.RECORDS_FILE]


def test_listing_shows_cached_state(tmp_path, server):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    before = {m.name: m for m in hub.list_models(catalogue=cat)}
    a = before["model_a"]
    assert (a.cached, a.path, a.size_bytes, a.size_exact) == (
        False,
        None,
        300_000,
        False,
    )
    assert a.url.endswith(URL_PATH_A) and a.sha256_origin == "catalogue" and a.license == "MIT"
    assert a.preset == "unet-128" and a.source == "huggingface"
    hub.fetch("model_a", catalogue=cat)
    after = {m.name: m for m in hub.list_models(catalogue=cat)}
    a = after["model_a"]
    assert a.cached and a.path == hub.cache_dir() / FILE_A
    assert (a.size_bytes, a.size_exact) == (len(PAYLOAD), True)


def test_progressbar_draws_on_stderr(tmp_path, server, capsys):
    hub.fetch("model_a", catalogue=_catalogue(tmp_path, PAYLOAD_SHA), progressbar=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "model_a" in captured.err and "100%" in captured.err


# ------------------------------------------------------------------------------------------ bundled


def test_bundled_model_is_returned_from_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.catalogue, "PACKAGE_DIR", tmp_path / "pkg")
    cat = _catalogue(tmp_path, None)
    with pytest.raises(CheckpointError, match=r"bundled model 'demo' is missing.*reinstall"):
        hub.fetch("demo", catalogue=cat)
    assert not hub.get_model_info("demo", catalogue=cat).cached
    bundled = tmp_path / "pkg" / "assets" / "demo_test.safetensors"
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(b"weights")
    assert hub.fetch("demo", catalogue=cat) == bundled
    info = hub.get_model_info("demo", catalogue=cat)
    assert info.cached and info.path == bundled and info.source == "bundled"
    assert _cache_files() == []  # nothing copied into the cache


# ------------------------------------------------------------------------------------------ import


@pytest.fixture
def load_calls(monkeypatch):
    """Stand-in for the checkpoint reader, so these tests exercise the copy, digest and record logic."""
    calls = []
    monkeypatch.setattr(hub.importing, "_check_loadable", lambda path, preset: calls.append((Path(path), preset)))
    return calls


def test_import_model_copies_records_and_fetch_finds_it(tmp_path, load_calls):
    src = tmp_path / "downloads" / "my_weights.pt"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    card = {
        "spacing_mm": [1.0, 1.0, 1.0],
        "description": "my own model",
        "license": "CC-BY-4.0",
    }
    cat = _catalogue(tmp_path, None)
    dest = hub.import_model(src, name="mine", preset="unet-256", card=card, catalogue=cat)
    assert dest == hub.cache_dir() / "mine.pt" and dest.read_bytes() == PAYLOAD
    assert src.exists()  # copied, not moved
    assert load_calls == [(src, "unet-256")]
    record = _records()["mine"]
    assert record["sha256"] == PAYLOAD_SHA and record["preset"] == "unet-256" and record["card"] == card
    assert record["source"] == "import"

    info = hub.get_model_info("mine", catalogue=cat)
    assert (info.source, info.cached, info.path, info.preset) == (
        "imported",
        True,
        dest,
        "unet-256",
    )
    assert info.license == "CC-BY-4.0" and info.description == "my own model"
    assert "mine" in [m.name for m in hub.list_models(catalogue=cat)]
    assert hub.fetch("mine", catalogue=cat) == dest

    dest.write_bytes(PAYLOAD[:10])
    with pytest.raises(DownloadError, match=r"imported model 'mine' does not match.*import-model"):
        hub.fetch("mine", catalogue=cat)
    dest.unlink()
    with pytest.raises(CheckpointError, match="no longer in the cache"):
        hub.fetch("mine", catalogue=cat)


def test_import_released_file_checks_catalogue_digest_and_serves_fetch(tmp_path, server, load_calls):
    cat = _catalogue(tmp_path, PAYLOAD_SHA)
    wrong = tmp_path / FILE_A
    wrong.write_bytes(PAYLOAD[:-1])
    with pytest.raises(CheckpointError, match=r"is not the released 'model_a'.*catalogue expects"):
        hub.import_model(wrong, preset="unet-128", catalogue=cat)
    assert _cache_files() == [] and load_calls == []

    good = tmp_path / "elsewhere" / FILE_A
    good.parent.mkdir()
    good.write_bytes(PAYLOAD)
    dest = hub.import_model(good, preset="unet-128", catalogue=cat)  # the name comes from the file name
    assert dest == hub.cache_dir() / FILE_A
    assert hub.fetch("model_a", catalogue=cat) == dest
    assert server.requests == []  # no download needed


def test_import_model_rejects_wrong_preset_bad_name_and_missing_file(tmp_path, load_calls):
    cat = _catalogue(tmp_path, None)
    src = tmp_path / "x.pt"
    src.write_bytes(b"abc")
    with pytest.raises(ConfigError, match="pass --preset unet-128"):
        hub.import_model(src, name="model_a", preset="wavunet-128", catalogue=cat)
    with pytest.raises(ConfigError, match="invalid model name"):
        hub.import_model(src, name="../evil", preset="unet-128", catalogue=cat)
    with pytest.raises(ConfigError, match="bundled"):
        hub.import_model(src, name="demo", preset="unet-128", catalogue=cat)
    with pytest.raises(CheckpointError, match="is not a file"):
        hub.import_model(tmp_path / "missing.pt", preset="unet-128", catalogue=cat)
    assert _cache_files() == []


def test_import_refuses_a_checkpoint_that_does_not_fit_the_preset(tmp_path, reference_dir):
    src = reference_dir / "unet_tiny_additive_state_dict.pt"
    with pytest.raises(CheckpointError, match=r"does not fit the network: .*input_blocks"):
        hub.import_model(src, preset="unet-128", catalogue=_catalogue(tmp_path, None))
    with pytest.raises(ConfigError, match="unknown preset 'unet-512'"):
        hub.import_model(src, preset="unet-512", catalogue=_catalogue(tmp_path, None))
    assert _cache_files() == []


def test_import_of_a_real_checkpoint_loads_it(tmp_path):
    import torch

    from wdmcore.networks import build_network, preset_config

    src = tmp_path / "by_hand.pt"
    torch.save(build_network(preset_config("unet-128")).state_dict(), src)
    dest = hub.import_model(src, name="mine", preset="unet-128", catalogue=_catalogue(tmp_path, None))
    assert dest.is_file() and dest.read_bytes() == src.read_bytes()
    # The preset is detected from the file when not given, and a preset the file contradicts is refused.
    hub.import_model(src, name="detected", catalogue=_catalogue(tmp_path, None))
    assert _records()["detected"]["preset"] == "unet-128"
    with pytest.raises(ConfigError, match=r"holds a unet-128 network, not wavunet-128; pass --preset unet-128"):
        hub.import_model(src, name="wrong", preset="wavunet-128", catalogue=_catalogue(tmp_path, None))
    assert "wrong" not in _records()


def test_import_of_our_safetensors_needs_no_preset_and_refuses_a_wrong_one(tmp_path, capsys):
    from wdmcore.cli.main import main

    demo = hub.get_model_info("demo_phantom_64").path  # the bundled file: a custom network with a full card
    assert main(["import-model", str(demo), "--name", "demo-copy"]) == 0
    dest = Path(capsys.readouterr().out.strip())
    assert dest == hub.cache_dir() / "demo-copy.safetensors"
    assert _records()["demo-copy"]["preset"] is None and hub.fetch("demo-copy") == dest
    assert main(["import-model", str(demo), "--name", "other", "--preset", "unet-128"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: ") and "none of the presets, not unet-128; leave --preset out" in err
    assert "other" not in _records()


# ------------------------------------------------------------------------------------------ commands


def _parse(argv: list[str]):
    import argparse

    from wdmcore.cli import download, import_model, models

    parser = argparse.ArgumentParser(prog="wdm")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (models, download, import_model):
        command.add_parser(subparsers)
    return parser.parse_args(argv)


def test_download_command_writes_jsonl_events_and_models_lists_it(server, capsys):
    server.files["/pfriedri/wdm-3d/resolve/main/brats_unet_128_1200k.pt"] = PAYLOAD
    args = _parse(["download", "brats_unet_128_1200k", "--progress", "jsonl"])
    assert args.handler(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in lines]
    assert kinds[0] == "progress" and kinds[-1] == "result" and "warning" in kinds
    path = Path(lines[-1]["path"])
    assert path == hub.cache_dir() / "brats_unet_128_1200k.pt" and path.read_bytes() == PAYLOAD

    args = _parse(["models", "--json"])
    assert args.handler(args) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in listing["models"]}
    assert rows["brats_unet_128_1200k"]["cached"] and rows["brats_unet_128_1200k"]["sha256"] == PAYLOAD_SHA
    assert not rows["lidc-idri_unet_128_1200k"]["cached"]

    args = _parse(["models"])
    assert args.handler(args) == 0
    table = capsys.readouterr().out
    assert "brats_unet_128_1200k" in table and "cached" in table and "not downloaded" in table
    assert str(path) in table


def test_download_command_reports_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub.download, "DOWNLOAD_RETRIES", 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _parse(
        [
            "download",
            "lidc-idri_unet_128_1200k",
            "--hub-url",
            f"http://127.0.0.1:{port}",
        ]
    )
    assert args.progress == "bar"
    assert args.handler(args) == 2  # an input error: the one format and exit status of every command
    err = capsys.readouterr().err
    assert err.startswith("wdm: error: no network: cannot reach") and "wdm import-model" in err

    args = _parse(
        [
            "download",
            "lidc-idri_unet_128_1200k",
            "--progress",
            "jsonl",
            "--hub-url",
            "http://127.0.0.1:9",
        ]
    )
    assert args.handler(args) == 2
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "DownloadError"


def test_import_model_command(tmp_path, capsys, load_calls):
    src = tmp_path / "lidc-idri_unet_128_1200k.pt"
    src.write_bytes(PAYLOAD)
    args = _parse(
        [
            "import-model",
            str(src),
            "--preset",
            "unet-128",
            "--card",
            '{"note": "from a USB stick"}',
        ]
    )
    assert args.handler(args) == 0
    dest = Path(capsys.readouterr().out.strip())
    assert dest == hub.cache_dir() / "lidc-idri_unet_128_1200k.pt"
    assert _records()["lidc-idri_unet_128_1200k"]["card"] == {"note": "from a USB stick"}
    assert hub.fetch("lidc-idri_unet_128_1200k") == dest

    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps({"spacing_mm": [1, 1, 1]}))
    args = _parse(
        [
            "import-model",
            str(src),
            "--preset",
            "unet-128",
            "--name",
            "copy",
            "--card",
            str(card_file),
        ]
    )
    assert args.handler(args) == 0
    assert _records()["copy"]["card"] == {"spacing_mm": [1, 1, 1]}

    args = _parse(
        [
            "import-model",
            str(src),
            "--preset",
            "unet-128",
            "--name",
            "x",
            "--card",
            "[1, 2]",
        ]
    )
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wdm: error:") and "--card" in err
