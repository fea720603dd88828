"""What the modules do the way Slicer expects, decided in the Libs: the supported Slicer, settings that fill only a
new parameter node, results grouped in subject-hierarchy folders, memory warnings before a run, the logic's
construction through ScriptedLoadableModuleLogic, the download promise, and Windows process handling."""

from __future__ import annotations

import ast
import subprocess
import sys
import time

import pytest
from slicer_support import REPO_ROOT, require_slicer, scene  # noqa: F401 - the fixture
from WaveletDiffusionCommonLib import memory, settings, support
from WaveletDiffusionLib.logic import WaveletDiffusionLogic, preset_of_model
from WaveletDiffusionLib.parameters import GenerationParameters
from WaveletDiffusionTrainingLib import TrainingParameters, WaveletDiffusionTrainingLogic

MODULES = ("WaveletDiffusion", "WaveletDiffusionTraining")
GB = 1e9


# ------------------------------------------------------------------------------------------- Slicer and Python


def test_an_older_slicer_gets_one_clear_message():
    message = support.unsupported_message((3, 9, 10))
    assert "Slicer 5.10 or later" in message and "Python 3.9.10" in message and "download.slicer.org" in message
    assert support.unsupported_message((3, 12, 10)) is None and support.unsupported_message((3, 10, 0)) is None
    assert support.unsupported_message() is None  # this Python runs the engine


@pytest.mark.parametrize("path", sorted(p for m in MODULES for p in (REPO_ROOT / m).rglob("*.py")),
                         ids=lambda p: p.relative_to(REPO_ROOT).as_posix())  # fmt: skip
def test_module_files_parse_on_python_3_9_so_that_the_message_can_be_shown(path):
    ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))


# ------------------------------------------------------------------------------------------- parameter nodes


def test_settings_fill_only_a_new_parameter_node(scene):  # noqa: F811
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    assert settings.is_new_parameter_node(node)
    node.SetParameter("device", "cuda:0")  # what a loaded scene's node holds
    assert not settings.is_new_parameter_node(node)


# ------------------------------------------------------------------------------------------- subject hierarchy


def test_results_of_one_run_are_grouped_in_one_folder(scene):  # noqa: F811
    import numpy as np
    import slicer
    from WaveletDiffusionCommonLib import volumes

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    a = volumes.add_volume_from_array(scene, np.zeros((4, 4, 4), np.float32), np.eye(4), "a")
    b = volumes.add_volume_from_array(scene, np.ones((4, 4, 4), np.float32), np.eye(4), "b")
    folder = volumes.place_in_folder(scene, [a], "run 1")
    assert volumes.place_in_folder(scene, [b], "run 1", folder) == folder
    assert hierarchy.GetItemName(folder) == "run 1"
    for node in (a, b):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == folder
    other = volumes.place_in_folder(scene, [], "run 2")
    assert other != folder


# ------------------------------------------------------------------------------------------- memory


def test_memory_estimates_follow_the_measurements():
    # unet-128, 128^3, batch 1, fp32: 0.93 GB of weights/gradients/AdamW plus about 6.3 GB (docs/training.md).
    assert memory.training_bytes("unet-128", 128, 1) == pytest.approx(7.25 * GB, rel=0.02)
    assert memory.training_bytes("unet-128", 128, 10, "bf16") == pytest.approx(0.93 * GB + 31.5 * GB, rel=0.02)
    assert memory.sampling_bytes("unet-256", 256, 1) == pytest.approx(4.5 * GB + 0.33 * GB, rel=0.02)
    assert memory.largest_batch(lambda b: b * 10.0, 35.0) == 3


def test_generation_warns_before_a_run_that_cannot_fit(scene):  # noqa: F811
    logic = WaveletDiffusionLogic(scene)
    assert preset_of_model("brats_unet_256_1200k") == "unet-256" and preset_of_model("demo_phantom_64") is None
    devices = [{"id": "cuda:0", "free_bytes": 4 * GB}, {"id": "cpu"}]
    params = GenerationParameters(model="brats_unet_256_1200k", device="cuda:0", batch_size=4)
    message = logic.memory_warning(params, devices)
    assert "needs about 18.3 GB" in message and "cuda:0 has 4.0 GB of free GPU memory" in message
    assert "choose bf16 precision" in message and "on the CPU" in message
    params = GenerationParameters(model="brats_unet_128_1200k", device="cuda:0", batch_size=1)
    assert logic.memory_warning(params, devices) is None


def test_training_warns_with_the_batch_size_that_fits(scene):  # noqa: F811
    logic = WaveletDiffusionTrainingLogic(scene)
    params = TrainingParameters(data_path="x", output_dir="y", preset="unet-128", device="cuda:0", precision="bf16")
    message = logic.memory_warning(params, available=24 * GB)  # the recipe's batch of 10
    assert "needs about 32.4 GB" in message and "set the batch size to 6" in message
    params.batch_size = 4
    assert logic.memory_warning(params, available=24 * GB) is None


# ------------------------------------------------------------------------------------------- logic construction


class CooperativeBase:
    """Shaped like slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic: its __init__ calls super().__init__()."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__.removesuffix("Logic")


@pytest.mark.parametrize("lib_logic", [WaveletDiffusionLogic, WaveletDiffusionTrainingLogic])
def test_the_lib_logic_runs_once_when_built_through_scripted_loadable_module_logic(lib_logic, monkeypatch):
    calls = []
    original = lib_logic.__init__

    def counting(self, *args, **kwargs):
        calls.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(lib_logic, "__init__", counting)

    class ModuleLogic(CooperativeBase, lib_logic):
        def __init__(self):
            CooperativeBase.__init__(self)  # the module's way: one __init__, then configure()
            self.configure(python="PythonSlicer", schedule=None, base_env=dict)

    logic = ModuleLogic()
    assert len(calls) == 1 and logic.python == "PythonSlicer" and logic.base_env is dict


def test_the_modules_build_their_logic_without_calling_the_lib_init_again():
    for name in MODULES:
        tree = ast.parse((REPO_ROOT / name / f"{name}.py").read_text(encoding="utf-8"))
        cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == f"{name}Logic")
        init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        calls = [ast.unparse(c.func) for c in ast.walk(init) if isinstance(c, ast.Call)]
        assert "ScriptedLoadableModuleLogic.__init__" in calls and "self.configure" in calls, calls
        assert not any(c.startswith("_") and c.endswith(".__init__") for c in calls), calls


# ------------------------------------------------------------------------------------------- folder scans


class ManualTimer:
    """QTimer.singleShot as the scheduler sees it: callbacks run when the test says time has passed."""

    def __init__(self):
        self.waiting: list = []

    def __call__(self, ms, callback):
        self.waiting.append(callback)

    def elapse(self):
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


def test_binding_a_parameter_node_starts_no_scan_and_changes_scan_once_settled():
    from WaveletDiffusionTrainingLib.scanning import ScanScheduler

    timer, scans = ManualTimer(), []
    scheduler = ScanScheduler(timer, scans.append)
    scheduler.seed(("/data", "auto", "t1n"))
    # connectGui clears and refills the format box: transient values, then the same values again.
    for key in [("/data", "", "t1n"), ("/data", "auto", "t1n"), ("/data", "auto", "t1n")]:
        scheduler.changed(key)
    timer.elapse()
    assert scans == []
    # The user types a path and then picks a layout: one scan, of the final values.
    for key in [("/d", "auto", "t1n"), ("/da", "auto", "t1n"), ("/data2", "auto", "t1n"), ("/data2", "brats", "t1n")]:
        scheduler.changed(key)
    timer.elapse()
    assert scans == [("/data2", "brats", "t1n")]
    scheduler.changed(("/data2", "brats", "t1n"))
    timer.elapse()
    assert len(scans) == 1
    scheduler.forget()  # the scan failed: the same values scan again on the next change
    scheduler.changed(("/data2", "brats", "t1n"))
    timer.elapse()
    assert len(scans) == 2


# ------------------------------------------------------------------------------------------- Reload


def test_reload_picks_up_changed_lib_code(tmp_path, monkeypatch):
    from WaveletDiffusionCommonLib import reloading

    package = tmp_path / "DemoReloadLib"
    package.mkdir()
    (package / "__init__.py").write_text("from .values import VALUE\n")
    (package / "values.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import DemoReloadLib

    assert DemoReloadLib.VALUE == 1
    time.sleep(0.01)
    (package / "values.py").write_text("VALUE = 2  # edited\n")
    reloaded = reloading.reload_packages(["DemoReloadLib"])
    assert reloaded == ["DemoReloadLib.values", "DemoReloadLib"]  # the submodule first
    assert DemoReloadLib.VALUE == 2
    for name in reloaded:
        sys.modules.pop(name, None)


# ------------------------------------------------------------------------------------------- Windows


def test_windows_kill_uses_taskkill_without_a_console_and_only_for_a_live_process(monkeypatch):
    from WaveletDiffusionCommonLib import process

    runs = []
    real_run = subprocess.run

    def recording_run(args, **kwargs):
        if args and args[0] == "taskkill":
            runs.append((args, kwargs))
            return subprocess.CompletedProcess(args, 0)
        return real_run(args, **kwargs)

    monkeypatch.setattr(process, "_WINDOWS", True)
    monkeypatch.setattr(process, "CREATE_NO_WINDOW", 0x08000000)
    monkeypatch.setattr(process.subprocess, "run", recording_run)

    exited = process.ChildProcess(name="the test child")
    monkeypatch.setattr(process, "_WINDOWS", False)  # started as on POSIX: Popen's creationflags are Windows-only
    exited.start(["-c", "pass"])
    exited._proc.wait(30)
    monkeypatch.setattr(process, "_WINDOWS", True)
    exited.kill()
    assert runs == []  # nothing to end: no taskkill for a process that already exited

    running = process.ChildProcess(name="the test child")
    monkeypatch.setattr(process, "_WINDOWS", False)
    running.start(["-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(process, "_WINDOWS", True)
    running.kill()
    assert len(runs) == 1
    args, kwargs = runs[0]
    assert args == ["taskkill", "/F", "/T", "/PID", str(running.pid)] and kwargs["creationflags"] == 0x08000000
    assert not running.running  # ended all the same (psutil)


# ------------------------------------------------------------------------------------------- preview


def test_the_preview_counts_its_updates_so_that_the_views_are_fitted_once(scene, tmp_path):  # noqa: F811
    import numpy as np
    from WaveletDiffusionLib.logic import Job

    logic = WaveletDiffusionLogic(scene)  # no worker needed: the preview event is handled as it arrives
    job = Job(kind="generate", params=GenerationParameters())
    seen = []
    job.on_preview = lambda j, node: seen.append(j.preview_updates)
    path = tmp_path / "preview.npy"
    for value in (0.0, 1.0, 2.0):
        np.save(path, np.full((4, 4, 4), value, np.float32))
        logic._on_generate_preview(job, {"path": str(path), "affine": np.eye(4).tolist()})
    assert seen == [1, 2, 3]
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1  # updated in place
