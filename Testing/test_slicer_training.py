"""The training module's logic driving the real `wdm train` process, against real MRML nodes (slicer-core).

No stand-ins: `python -m wdmcore train --progress jsonl` trains a tiny network (8 channels, 16^3 volumes) on
small phantom volumes; the logic turns its events into table/plot nodes and preview volume nodes, stops it with
its stop file (or kills it), resumes it, and reports its errors. The trainer also runs behind a launcher shaped like
PythonSlicer (it starts the real interpreter as its child and forwards no signal).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from slicer_support import make_launcher, process_alive, require_slicer, scene, tree, wait_dead  # noqa: F401

slicer = require_slicer()
nib = pytest.importorskip("nibabel")

from WaveletDiffusionCommonLib import volumes  # noqa: E402
from WaveletDiffusionTrainingLib import TrainingParameters, WaveletDiffusionTrainingLogic, runfolder  # noqa: E402
from WaveletDiffusionTrainingLib.datasource import describe_nodes, export_volume_nodes  # noqa: E402

from wdmcore import load_model  # noqa: E402
from wdmcore.data import load_volume  # noqa: E402
from wdmcore.data.phantoms import generate_phantom, phantom_affine  # noqa: E402

TIMEOUT = 300
TINY = ["--model-channels", "8", "--channel-mult", "1,2", "--num-groups", "4", "--num-res-blocks", "1",
        "--no-tensorboard"]  # fmt: skip
# One thread per process: the CI machine has two cores, shared with pytest itself.
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    """Four 20^3 head phantoms as NIfTI files with the phantoms' geometry (resampled to 16^3 by `fit`)."""
    folder = tmp_path_factory.mktemp("phantoms")
    for i in range(4):
        volume = np.asarray(generate_phantom(20, seed=i), dtype=np.float32)
        nib.save(nib.Nifti1Image(volume, phantom_affine(20)), str(folder / f"phantom_{i}.nii.gz"))
    return folder


@pytest.fixture
def logic(scene):  # noqa: F811
    instance = WaveletDiffusionTrainingLogic(scene, env=ENV)
    yield instance
    instance.shutdown(timeout=30)


def tiny(out, **fields) -> TrainingParameters:
    values = {"data_path": "", "output_dir": str(out), "image_size": 16, "batch_size": 2, "max_steps": 4,
              "lr": 1e-3, "device": "cpu", "checkpoint_interval": 2, "preview_interval": 0, "preview_steps": 2,
              "log_interval": 1, "extra_args": list(TINY)}  # fmt: skip
    values.update(fields)
    return TrainingParameters(**values)


def wait_until(logic, condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        logic.poll()
        time.sleep(0.02)


def test_scan_describes_the_folder_and_its_unusable_files(logic, phantom_folder, tmp_path):
    job = logic.scan(str(phantom_folder), timeout=TIMEOUT)
    assert job.state == "done" and job.layout == "folder"
    assert job.summary["count"] == 4 and job.summary["shapes"] == {"20x20x20": 4}
    low, high = job.summary["intensity_range"]
    assert low == 0.0 and 0.8 <= high <= 1.0
    assert "4 usable volume(s), 0 skipped" in job.text and "20x20x20 (4)" in job.text

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    os.symlink(phantom_folder / "phantom_0.nii.gz", bad / "good.nii.gz")
    job = logic.scan(str(bad), timeout=TIMEOUT)
    assert job.summary["count"] == 1 and "broken.nii.gz" in job.text and "Skip unusable files" in job.text

    with pytest.raises(Exception, match="no such file or folder") as caught:
        logic.scan(str(tmp_path / "missing"), timeout=TIMEOUT)
    assert caught.value.kind == "DataError"


def test_a_tiny_run_becomes_a_loss_curve_previews_and_a_checkpoint(logic, scene, phantom_folder, tmp_path):  # noqa: F811
    progress, checkpoints, previews, finished = [], [], [], []
    run = logic.start_training(
        tiny(tmp_path / "run", data_path=str(phantom_folder), preview_interval=2),
        on_progress=lambda r, e: progress.append(e),
        on_checkpoint=lambda r, p: checkpoints.append(p),
        on_preview=lambda r, n: previews.append(n),
        on_finished=finished.append,
    )
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "finished" and finished == [run] and run.error is None, run.message
    assert [e["done"] for e in progress if e.get("task") == "train"] == [1, 2, 3, 4]
    assert [e["done"] for e in progress if e.get("task") == "prepare"] == [1, 2, 3, 4]
    assert (run.step, run.total, run.device) == (4, 4, "cpu") and run.it_s > 0 and run.loss > 0
    assert run.model_path == tmp_path / "run" / "model_0000004.safetensors" and run.model_path.is_file()
    assert [p.name for p in checkpoints] == ["model_0000002.safetensors", "model_0000004.safetensors"]
    assert "Step 4 of 4" in run.status_text() and "loss" in run.status_text()

    # The curve: a table node with one row per progress event, drawn by a plot series in a chart.
    losses = [e["loss"] for e in progress if e.get("task") == "train"]
    curve = run.curve
    assert scene.GetNodeByID(curve.table_node.GetID()) is curve.table_node
    table = curve.table_node.GetTable()
    assert table.GetNumberOfRows() == 4
    assert [table.GetValueByName(i, "step").ToDouble() for i in range(4)] == [1, 2, 3, 4]
    np.testing.assert_allclose([table.GetValueByName(i, "loss").ToDouble() for i in range(4)], losses)
    assert curve.series_node.GetTableNodeID() == curve.table_node.GetID()
    assert (curve.series_node.GetXColumnName(), curve.series_node.GetYColumnName()) == ("step", "loss")
    assert curve.chart_node.GetPlotSeriesNodeID() == curve.series_node.GetID()

    # Previews: volume nodes with the card's geometry (the phantoms' frame, resampled to 16^3).
    assert len(previews) == 2 and previews == run.previews
    for node, step in zip(previews, (2, 4), strict=True):
        assert scene.GetNodeByID(node.GetID()) is node and node.GetName() == f"run preview step {step}"
        assert volumes.get_attributes(node)["trainingStep"] == str(step)
        array = volumes.array_ijk_from_node(node)
        assert array.shape == (16, 16, 16) and np.isfinite(array).all()
        saved, affine = load_volume(tmp_path / "run" / "previews" / f"preview_{step:07d}.nii.gz")
        np.testing.assert_allclose(array, saved, atol=1e-6)
        np.testing.assert_allclose(volumes.ijk_to_ras(node), affine, atol=1e-4)
    spacing = np.linalg.norm(np.asarray(load_model(run.model_path).card["geometry"]["affine"])[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [240 / 16] * 3, rtol=0.05)  # `fit`: the 240 mm phantoms span 16 voxels


def test_stop_writes_a_checkpoint_and_resume_continues_the_curve(logic, scene, phantom_folder, tmp_path):  # noqa: F811
    params = tiny(tmp_path / "run", data_path=str(phantom_folder), max_steps=100_000, checkpoint_interval=100_000)
    run = logic.start_training(params)
    wait_until(logic, lambda: run.step >= 3)
    logic.stop(run)
    assert run.state == "stopping" and "Stopping" in run.status_text()
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "stopped" and run.stopped_early and run.error is None
    stopped_at = run.step
    assert run.model_path == tmp_path / "run" / f"model_{stopped_at:07d}.safetensors"
    assert runfolder.resumable(tmp_path / "run").step == stopped_at
    assert [s for s, _ in run.curve.points()] == list(range(1, stopped_at + 1))

    # A new run in the same folder is refused (it would mix two runs); Resume continues it.
    with pytest.raises(ValueError, match="Press Resume"):
        logic.start_training(params)
    resumed = logic.resume(params, max_steps=stopped_at + 2)
    assert resumed.step == stopped_at and resumed.curve.points() == run.curve.points()  # the history is redrawn
    logic.wait(resumed, timeout=TIMEOUT)
    assert resumed.state == "finished" and resumed.step == stopped_at + 2, resumed.message
    steps = [s for s, _ in resumed.curve.points()]
    assert steps == list(range(1, stopped_at + 3))
    assert load_model(resumed.model_path).card["training"]["step"] == stopped_at + 2


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_a_stop_that_takes_too_long_ends_the_process_tree_and_keeps_the_checkpoints(scene, phantom_folder, tmp_path):  # noqa: F811
    logic = WaveletDiffusionTrainingLogic(scene, env=ENV, stop_timeout=0.0)  # no time for a graceful stop
    try:
        # One data-loader worker: the trainer has a child process of its own, which must end with it.
        params = tiny(tmp_path / "run", data_path=str(phantom_folder), max_steps=100_000, checkpoint_interval=2,
                      num_workers=1)  # fmt: skip
        run = logic.start_training(params)
        wait_until(logic, lambda: runfolder.resumable(tmp_path / "run") is not None and run.step >= 3)
        pid = run.process.pid
        assert len(process_group(pid)) >= 2
        logic.stop(run)
        logic.wait(run, timeout=60)
        assert run.killed_after_timeout and run.state == "stopped" and run.error is None
        assert "did not stop within 0 s" in run.message and "Resume continues from step" in run.message
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        deadline = time.monotonic() + 10
        while process_group(pid) and time.monotonic() < deadline:  # orphans are reaped by init
            time.sleep(0.05)
        assert process_group(pid) == []
        kept = runfolder.resumable(tmp_path / "run")
        assert kept is not None and load_model(kept.model).card["training"]["step"] == kept.step
        assert run.model_path is not None and run.model_path.is_file()
    finally:
        logic.shutdown(timeout=10)


def test_bad_data_reaches_the_logic_as_a_clear_error(logic, scene, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(generate_phantom(16, seed=3)), np.eye(4)), str(data / "good.nii.gz"))
    (data / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    before = scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems()
    run = logic.start_training(tiny(tmp_path / "run", data_path=str(data)))
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "failed" and run.error.kind == "DataError"
    message = str(run.error)
    assert "broken.nii.gz" in message and "tick 'Skip unusable files'" in message and "pass --skip" not in message
    assert runfolder.checkpoints(tmp_path / "run") == []
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == before
    # With the box ticked it trains on the usable volume.
    run = logic.start_training(tiny(tmp_path / "run2", data_path=str(data), skip_bad_files=True, max_steps=1))
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "finished", run.message


def test_diverging_training_is_reported_and_earlier_checkpoints_are_kept(logic, phantom_folder, tmp_path, monkeypatch):
    # The trainer's loss stops being finite from its fourth call on (a start-up hook of the child Python: every
    # learning rate the settings accept is finite, so an absurd one can no longer force a divergence).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('WDM_TEST_NAN_FROM_CALL'):\n"
        "    from wdmcore.diffusion import Diffusion\n"
        "    original, calls = Diffusion.training_loss, [0]\n"
        "    def training_loss(self, *args, **kwargs):\n"
        "        calls[0] += 1\n"
        "        loss, per_band = original(self, *args, **kwargs)\n"
        "        if calls[0] >= int(os.environ['WDM_TEST_NAN_FROM_CALL']):\n"
        "            return loss * float('nan'), per_band\n"
        "        return loss, per_band\n"
        "    Diffusion.training_loss = training_loss\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("WDM_TEST_NAN_FROM_CALL", "4")
    params = tiny(tmp_path / "run", data_path=str(phantom_folder), max_steps=50, checkpoint_interval=1,
                  extra_args=[*TINY, "--max-nonfinite-steps", "2"])  # fmt: skip
    run = logic.start_training(params)
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "failed" and run.error.kind == "TrainingError", run.message
    assert "non-finite loss" in str(run.error) and "Lower the learning rate" in str(run.error)
    assert run.warnings and "not finite" in run.warnings[0]
    kept = runfolder.resumable(tmp_path / "run")
    assert kept is not None and f"Resume continues from step {kept.step}" in str(run.error)


def test_scene_volumes_are_exported_with_their_geometry_and_trained_on(logic, scene, tmp_path):  # noqa: F811
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -5], [0, 0, 1.25, 3], [0, 0, 0, 1]])
    nodes = []
    for i in range(3):
        array = np.asarray(generate_phantom(18, seed=10 + i), dtype=np.float32) * 100
        nodes.append(volumes.add_volume_from_array(scene, array, affine, "scan/ä"))  # names are made file-safe
    assert "3 volume(s)" in describe_nodes(nodes) and "18x18x18 (3)" in describe_nodes(nodes)
    files = export_volume_nodes(nodes, tmp_path / "exported")
    assert [f.name for f in files] == ["scan.nrrd", "scan_1.nrrd", "scan_2.nrrd"]
    for node, path in zip(nodes, files, strict=True):
        array, file_affine = load_volume(path)
        np.testing.assert_allclose(array, volumes.array_ijk_from_node(node), atol=1e-5)
        np.testing.assert_allclose(file_affine, affine, atol=1e-5)
    with pytest.raises(ValueError, match="select at least one volume"):
        export_volume_nodes([], tmp_path / "none")

    run = logic.start_training(tiny(tmp_path / "run", data_source="nodes", max_steps=2), nodes=nodes)
    logic.wait(run, timeout=TIMEOUT)
    assert run.state == "finished", run.message
    assert sorted(p.name for p in (tmp_path / "run" / "scene_volumes").iterdir()) == sorted(f.name for f in files)
    assert load_model(run.model_path).card["training"]["volumes"] == 3


# ------------------------------------------------------------------------------------------- through a launcher


def start_behind_launcher(scene, tmp_path, phantom_folder, **fields):  # noqa: F811
    logic = WaveletDiffusionTrainingLogic(scene, python=make_launcher(tmp_path), env=ENV)
    params = tiny(tmp_path / "run", data_path=str(phantom_folder), max_steps=100_000, **fields)
    run = logic.start_training(params)
    wait_until(logic, lambda: run.step >= 2)
    pids = tree(run.process.pid)
    assert len(pids) >= 2  # the launcher and the real trainer
    return logic, params, run, pids


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_stop_through_a_launcher_ends_the_real_trainer_after_its_checkpoint(scene, phantom_folder, tmp_path):  # noqa: F811
    logic, params, run, pids = start_behind_launcher(scene, tmp_path, phantom_folder, checkpoint_interval=100_000)
    try:
        logic.stop(run)
        logic.wait(run, timeout=TIMEOUT)
        assert run.state == "stopped" and run.stopped_early and not run.killed_after_timeout, run.message
        assert run.model_path == tmp_path / "run" / f"model_{run.step:07d}.safetensors"
        assert runfolder.resumable(tmp_path / "run").step == run.step
        assert [p for p in pids if process_alive(p)] == []  # "stopped" is true: nothing of the run is left
        assert not runfolder.stop_file(tmp_path / "run").exists()
        assert runfolder.live_trainers(tmp_path / "run") == []
    finally:
        logic.shutdown()


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_shutdown_through_a_launcher_leaves_no_process_and_returns_quickly(scene, phantom_folder, tmp_path):  # noqa: F811
    logic, params, run, pids = start_behind_launcher(scene, tmp_path, phantom_folder, checkpoint_interval=100_000,
                                                     num_workers=1)  # fmt: skip
    started = time.monotonic()
    logic.shutdown()  # what closing Slicer does
    assert time.monotonic() - started < 5.5
    assert run.finished and wait_dead(pids, 0.5) == []
    assert not logic.busy


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_resume_is_refused_while_a_trainer_of_the_folder_is_alive(scene, phantom_folder, tmp_path):  # noqa: F811
    """A trainer left behind (its launcher was killed, as a signal to PythonSlicer does) still owns the folder."""
    import subprocess
    import sys

    launcher = make_launcher(tmp_path)
    params = tiny(tmp_path / "run", data_path=str(phantom_folder), max_steps=100_000, checkpoint_interval=2)
    import wdmcore

    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(Path(wdmcore.__file__).parents[1]), *sys.path])}
    proc = subprocess.Popen([launcher, "-m", "wdmcore", "train", *params.train_args()], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while runfolder.resumable(tmp_path / "run") is None:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        pids = tree(proc.pid)
        os.kill(proc.pid, 9)  # the launcher only: the real trainer goes on
        proc.wait()
        trainer = [p for p in pids if p != proc.pid and process_alive(p)]
        assert trainer
        logic = WaveletDiffusionTrainingLogic(scene, env=ENV)
        assert set(runfolder.live_trainers(tmp_path / "run")) >= set(trainer)
        with pytest.raises(ValueError, match="still running"):
            logic.resume(params)
        assert not logic.busy
    finally:
        os.killpg(proc.pid, 9)
    assert wait_dead(pids) == []
    assert runfolder.live_trainers(tmp_path / "run") == []
