"""The real generation worker process (``python -m wdmcore.worker``) driven by the Lib, end to end.

No stand-ins: the worker runs wdmcore in a child process; downloads come from a local HTTP server through
wdmcore.hub; generation uses a small real model file and, when present, the bundled demo model.
"""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from slicer_support import make_launcher, process_alive, require_slicer, scene, tree, wait_dead  # noqa: F401

slicer = require_slicer()

from WaveletDiffusionCommonLib import volumes  # noqa: E402
from WaveletDiffusionCommonLib.process import WorkerProcess  # noqa: E402
from WaveletDiffusionLib import GenerationCancelled, GenerationError, WaveletDiffusionLogic  # noqa: E402

import wdmcore  # noqa: E402
from wdmcore import hub  # noqa: E402

TIMEOUT = 300


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("WDM_CACHE_DIR", str(folder))  # inherited by the worker
    return folder


@pytest.fixture
def logic(scene, cache):  # noqa: F811
    instance = WaveletDiffusionLogic(scene)
    yield instance
    instance.shutdown()


class SlowServer:
    """Serves a big file slowly, so a download is still running when the test acts on it."""

    size = 20 * 2**20

    def __init__(self):
        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(outer.size))
                self.end_headers()
                chunk = b"\0" * 65536
                try:
                    for _ in range(outer.size // len(chunk)):
                        self.wfile.write(chunk)
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def slow_hub(monkeypatch):
    server = SlowServer()
    monkeypatch.setenv("WDM_HUB_URL", server.url)
    yield server
    server.close()


def wait_for_progress(logic, job, minimum=1):
    deadline = time.monotonic() + TIMEOUT
    seen = []
    job.on_progress = lambda j, event: seen.append(event)
    while len(seen) < minimum and not job.finished and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.02)
    return seen


# ------------------------------------------------------------------------------------------- the process


def test_worker_reports_ready_and_devices_and_stops_on_shutdown(cache):
    worker = WorkerProcess()
    worker.start()
    try:
        request = worker.send("info")
        events = {}
        for event in worker.events(TIMEOUT):
            events[event["event"]] = event
            if "info" in events:
                break
        assert events["ready"]["protocol"] == 1 and events["ready"]["pid"] == worker.pid
        info = events["info"]
        assert info["id"] == request and info["torch"] == torch.__version__
        assert info["devices"][-1]["id"] == "cpu"
        worker.send("no-such-request")
        error = next(e for e in worker.events(TIMEOUT) if e["event"] == "error")
        assert error["kind"] == "BadRequest" and worker.running  # a bad request does not end the worker
    finally:
        worker.shutdown(timeout=10)
    assert not worker.running
    exit_event = worker.poll(timeout=5)[-1]
    assert exit_event["event"] == "exit" and not exit_event["crashed"]


def test_worker_exits_when_its_parent_closes_stdin(cache):
    worker = WorkerProcess()
    worker.start()
    next(e for e in worker.events(TIMEOUT) if e["event"] == "ready")
    worker._proc.stdin.close()
    assert worker._proc.wait(30) == 0


def test_model_list_comes_from_the_catalogue(logic, cache):
    models = {m["name"]: m for m in logic.list_models()}
    assert set(hub.load_catalogue().names()) <= set(models)
    brats = models["brats_unet_128_1200k"]
    assert not brats["cached"] and brats["license"] == "MIT" and brats["size_bytes"] > 100e6


def test_download_reports_progress_and_cancel_stops_it(logic, slow_hub, cache):
    job = logic.start_download("brats_unet_128_1200k")
    events = wait_for_progress(logic, job, minimum=2)
    assert events and events[-1]["task"] == "download" and events[-1]["total"] == SlowServer.size
    logic.cancel(job)
    logic.wait(job, timeout=30)
    assert job.state == "cancelled"
    assert not (cache / "models" / "brats_unet_128_1200k.pt").exists()
    assert logic.worker.running  # cancelling a download keeps the worker


def test_a_killed_worker_is_reported_with_the_reason_and_the_scene_is_untouched(logic, slow_hub, scene):  # noqa: F811
    before = scene.GetNumberOfNodes()
    job = logic.start_download("brats_unet_128_1200k")
    assert wait_for_progress(logic, job)
    os.killpg(logic.worker.pid, signal.SIGKILL)
    logic.wait(job, timeout=30)
    assert job.state == "failed" and job.error.kind == "WorkerCrashed"
    assert "killed by signal 9" in str(job.error)
    assert scene.GetNumberOfNodes() == before
    # The next request starts a fresh worker.
    assert logic.device_info()["devices"]


# ------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def generate_module():
    return pytest.importorskip("wdmcore.tasks.generate", reason="wdmcore.tasks.generate is not on this branch yet")


@pytest.fixture(scope="module")
def tiny_model_file(generate_module, tmp_path_factory, reference_dir):
    """A real (small) model file: the released tiny fixture network saved in our .safetensors format."""
    fixture = torch.load(reference_dir / "unet_tiny_additive.pt", weights_only=True)
    model = wdmcore.load_model(
        reference_dir / "unet_tiny_additive_state_dict.pt", official_args=dict(fixture["config"])
    )
    return model.save(tmp_path_factory.mktemp("model") / "tiny.safetensors", name="tiny")


def demo_model_path():
    try:
        info = hub.get_model_info("demo_phantom_64")
    except Exception:  # noqa: BLE001 - not in this catalogue
        return None
    return info.path if info.cached else None


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    return str(demo_model_path() or tiny_model_file)


def test_generate_two_volumes_as_nodes_with_geometry_and_attributes(logic, scene, model_file, generate_module):  # noqa: F811
    nodes = logic.generate(model=model_file, count=2, seed=11, steps=3, device="cpu", sampler="ddim")
    assert len(nodes) == 2
    direct = generate_module.generate(model_file, 2, seed=11, sampler="ddim", steps=3, device="cpu")
    for node, expected, seed in zip(nodes, direct, (11, 12), strict=True):
        assert scene.GetNodeByID(node.GetID()) is node
        assert node.GetName() == f"{os.path.basename(model_file).rsplit('.', 1)[0]}_seed{seed}"
        attributes = volumes.get_attributes(node)
        assert attributes["seed"] == str(seed) and attributes["sampler"] == "ddim" and attributes["steps"] == "3"
        assert attributes["model"] == model_file
        np.testing.assert_allclose(volumes.array_ijk_from_node(node), expected.array, atol=1e-6)
        np.testing.assert_allclose(volumes.ijk_to_ras(node), expected.affine, atol=1e-5)
        assert node.GetDisplayNode() is not None and not node.GetDisplayNode().GetAutoWindowLevel()
    assert not np.array_equal(volumes.array_ijk_from_node(nodes[0]), volumes.array_ijk_from_node(nodes[1]))
    # The preview node is gone and the worker's files are cleaned up.
    assert scene.GetFirstNodeByName("WaveletDiffusion preview") is None


def test_an_output_name_with_path_characters_names_the_node_not_a_path(logic, scene, model_file, tmp_path):  # noqa: F811
    # The worker takes plain file names only; the Lib sends one, and the node keeps the name as typed.
    (node,) = logic.generate(model=model_file, count=1, seed=2, steps=1, device="cpu", sampler="ddim",
                             output_name="../escape/x")  # fmt: skip
    assert node.GetName() == "../escape/x_seed2"
    assert not (tmp_path.parent / "escape").exists()


def test_non_blocking_generation_with_preview_and_cancel_in_the_middle(logic, scene, model_file):  # noqa: F811
    progress, previews, finished = [], [], []
    job = logic.start_generation(
        model=model_file,
        count=3,
        seed=0,
        sampler="ancestral",
        steps=200,
        preview=True,
        preview_every=1,
        on_progress=lambda j, e: progress.append(e),
        on_preview=lambda j, node: previews.append(volumes.array_ijk_from_node(node)),
        on_finished=finished.append,
    )
    deadline = time.monotonic() + TIMEOUT
    while len(progress) < 3 and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.01)
    assert progress and 0 < progress[-1]["done"] < progress[-1]["total"] and progress[-1]["eta_s"] is not None
    requested = time.monotonic()
    logic.cancel(job)
    logic.wait(job, timeout=60)
    assert job.state == "cancelled" and finished == [job]
    assert time.monotonic() - requested < 30  # stopped at a step boundary, not at the end of 600 steps
    assert job.nodes == [] and scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0
    assert previews and previews[-1].ndim == 3
    # The worker kept its model and serves the next request.
    nodes = logic.generate(model=model_file, count=1, seed=5, steps=2, sampler="ddim")
    assert len(nodes) == 1


def test_an_engine_error_is_reported_and_the_worker_lives_on(logic, scene, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    with pytest.raises(GenerationError) as caught:
        logic.generate(model=str(broken), count=1, steps=2)
    assert not isinstance(caught.value, GenerationCancelled)
    assert caught.value.kind not in ("WorkerCrashed", "Timeout") and str(caught.value)
    assert logic.worker.running and scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


# ------------------------------------------------------------------------------------------- through a launcher


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_cancel_and_shutdown_through_a_launcher_leave_no_process(scene, cache, model_file, tmp_path):  # noqa: F811
    """PythonSlicer runs the real worker as its child: cancelling, killing and shutting down must reach it."""
    logic = WaveletDiffusionLogic(scene, python=make_launcher(tmp_path))
    try:
        job = logic.start_generation(model=model_file, count=2, seed=0, sampler="ancestral", steps=200, preview=False)
        assert wait_for_progress(logic, job)
        pids = tree(logic.worker.pid)
        assert len(pids) >= 2  # the launcher and the real interpreter
        logic.cancel(job)  # a request on stdin, passed through by the launcher
        logic.wait(job, timeout=60)
        assert job.state == "cancelled" and all(process_alive(p) for p in pids)  # the worker lives on

        job = logic.start_generation(model=model_file, count=2, seed=0, sampler="ancestral", steps=200, preview=False)
        assert wait_for_progress(logic, job)
        logic.cancel(job, force=True)  # the second Cancel: the whole tree ends at once
        assert job.state == "cancelled" and wait_dead(pids, 5) == []

        job = logic.start_generation(model=model_file, count=2, seed=0, sampler="ancestral", steps=200, preview=False)
        assert wait_for_progress(logic, job)
        pids = tree(logic.worker.pid)
        started = time.monotonic()
        logic.shutdown()  # what closing the module does, while it generates
        assert time.monotonic() - started < 5
        assert job.state == "cancelled" and wait_dead(pids, 0.5) == []
    finally:
        logic.shutdown()
