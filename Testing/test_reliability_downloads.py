"""Downloads from servers that misbehave on 127.0.0.1 end on their own, quickly, with a message that says what
happened, and leave no file behind: a server that ignores Range and drops, one that stalls, one that streams
forever, one that announces too much, a redirect to another host, no network at all, and SIGTERM mid-download."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wdmcore import hub
from wdmcore.cli.main import main
from wdmcore.errors import DownloadError

WDMCORE = Path(__file__).parent.parent / "WDMCore"
SIZE = 200_000
BODY = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)
FILE = "model_a.pt"


class _Server:
    """One behaviour per server: 'drop' (ignores Range, sends 50 kB then closes), 'stall' (sends 20 kB then
    nothing), 'endless' (no length, never stops), 'huge' (announces 10 GB), 'redirect' (302 to ``target``),
    'ok' (the file)."""

    def __init__(self, mode: str, target: str | None = None):
        self.mode, self.target = mode, target
        self.requests = 0
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                if server.requests > 50:  # a retry loop gone wrong must not run the test forever
                    self.send_error(503)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "redirect":
            h.send_response(302)
            h.send_header("Location", self.target + h.path)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        if mode == "huge":
            h.send_header("Content-Length", str(10 << 30))
        elif mode != "endless":
            h.send_header("Content-Length", str(SIZE))
        h.end_headers()
        if mode == "ok":
            h.wfile.write(BODY)
        elif mode == "drop":
            h.wfile.write(BODY[:50_000])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
        elif mode == "stall":
            h.wfile.write(BODY[:20_000])
            h.wfile.flush()
            self.stop.wait(10)
            h.close_connection = True
        elif mode in ("endless", "slow-endless"):
            chunk = b"\0" * 16384
            while not self.stop.is_set():
                h.wfile.write(chunk)
                if mode == "slow-endless":
                    time.sleep(0.01)
            h.close_connection = True

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve():
    servers = []

    def start(mode: str, target: str | None = None) -> _Server:
        servers.append(_Server(mode, target))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _fast_limits(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hub.download, "RETRY_WAIT_S", 0.0)
    monkeypatch.setattr(hub.download, "CHUNK_SIZE", 4096)
    monkeypatch.setattr(hub.download, "TIMEOUT_S", (2.0, 0.3))
    monkeypatch.setattr(hub.download, "STALL_LIMIT_S", 1.0)


def _catalogue(tmp_path: Path, url: str, size: int | None = SIZE) -> hub.Catalogue:
    data = {
        "schema": 1,
        "hub_url": url,
        "models": [
            {
                "name": "model_a",
                "description": "test model",
                "preset": "unet-128",
                "source": {"kind": "huggingface", "repo": "o/r", "revision": "main", "filename": FILE},
                "format": "state-dict-pt",
                "sha256": None,
                "size_bytes": None,
                "approx_size_bytes": size,
                "license": "MIT",
                "card": {},
            }
        ],
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    return hub.load_catalogue(path)


def _cache_files() -> list[str]:
    cache = hub.cache_dir()
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _timed_fetch(cat: hub.Catalogue, limit_s: float) -> DownloadError:
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        hub.fetch("model_a", catalogue=cat)
    assert time.monotonic() - started < limit_s
    return info.value


def test_resending_the_same_prefix_is_not_progress(tmp_path, serve):
    server = serve("drop")
    error = _timed_fetch(_catalogue(tmp_path, server.url()), 10)
    assert "kept failing at" in str(error) and "without getting further" in str(error)
    assert server.requests == hub.download.DOWNLOAD_RETRIES + 1  # the first try, then 5 that add nothing
    assert _cache_files() == []


def test_a_stalling_server_is_not_answering(tmp_path, serve):
    server = serve("stall")
    error = _timed_fetch(_catalogue(tmp_path, server.url()), 10)
    assert "is not answering" in str(error)
    assert server.requests <= hub.download.DOWNLOAD_RETRIES + 1 and _cache_files() == []


def test_an_endless_stream_stops_at_the_expected_size(tmp_path, serve):
    server = serve("endless")
    error = _timed_fetch(_catalogue(tmp_path, server.url()), 10)
    assert "sent more than" in str(error) and "nothing was kept" in str(error)
    assert server.requests == 1 and _cache_files() == []


def test_a_file_announced_far_too_big_is_refused_at_once(tmp_path, serve):
    server = serve("huge")
    error = _timed_fetch(_catalogue(tmp_path, server.url()), 10)
    assert "announces 10737418240 bytes" in str(error)
    assert server.requests == 1 and _cache_files() == []


def test_a_redirect_to_another_host_records_where_the_file_came_from(tmp_path, serve):
    origin = serve("ok")
    redirect = serve("redirect", target=origin.url("localhost"))
    path = hub.fetch("model_a", catalogue=_catalogue(tmp_path, redirect.url()))
    assert path.read_bytes() == BODY
    record = json.loads((hub.cache_dir() / hub.RECORDS_FILE).read_text(encoding="utf-8"))["models"]["model_a"]
    assert record["url"].startswith(redirect.url())
    assert record["final_url"] == f"{origin.url('localhost')}/o/r/resolve/main/{FILE}"


def test_no_network_is_said_once_without_retries(tmp_path, monkeypatch, capsys, caplog):
    calls = []

    def no_dns(*args, **kwargs):
        calls.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv(hub.HUB_URL_ENV, "http://hub.example.invalid")
    started = time.monotonic()
    code = main(["download", "brats_unet_128_1200k", "--progress", "none"])
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wdm: error: no network") and err.count("no network") == 1
    assert "could not be resolved" in err
    assert len(calls) == 1 and "retrying" not in caplog.text
    assert _cache_files() == []


def test_sigterm_during_a_download_leaves_no_temporary_file(tmp_path, serve):
    server = serve("slow-endless")
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(WDMCORE), hub.CACHE_ENV: str(cache), hub.HUB_URL_ENV: server.url()}
    proc = subprocess.Popen([sys.executable, "-m", "wdmcore.cli", "download", "brats_unet_128_1200k", "--progress",
                             "none"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    models = cache / "models"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.stat().st_size > 0 for p in models.glob("*")):
        time.sleep(0.05)
    assert any(models.glob("*")), "the download did not start"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 143, stderr
    assert list(models.iterdir()) == []
