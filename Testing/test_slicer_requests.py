# ruff: noqa: F811 - the scene fixture of slicer_support is an argument of the tests
"""Every request of both modules' logic passes one dependency gate, and the panel's *Live preview* reaches the
worker's request. Real MRML nodes of slicer-core; no worker or training process is started: the gate refuses,
or the request is captured where it would be sent.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from slicer_support import require_slicer, scene  # noqa: F401

slicer = require_slicer()

from WaveletDiffusionCommonLib import dependencies  # noqa: E402
from WaveletDiffusionCommonLib.volumes import add_volume_from_array  # noqa: E402
from WaveletDiffusionLib import WaveletDiffusionLogic, taskpanel  # noqa: E402
from WaveletDiffusionLib.parameters import GenerationParameters  # noqa: E402
from WaveletDiffusionTrainingLib import TrainingParameters, WaveletDiffusionTrainingLogic  # noqa: E402

# The logic's public methods, sorted: those that send something to a process (and so must pass the gate) and the
# others. A new public method must be put in one of them, and if it is a request, given its arguments below.
GENERATION_REQUESTS = {"generate", "start_generation", "synthesize", "start_synthesize", "inpaint", "start_inpaint",
                       "vary", "start_vary", "download", "start_download", "list_models", "device_info",
                       "request"}  # fmt: skip
GENERATION_OTHERS = {"poll", "wait", "cancel", "shutdown", "memory_warning", "task_memory_warning",
                     "remove_preview", "configure", "require_dependencies", "require_backend", "worker", "busy",
                     "scene"}  # fmt: skip
TRAINING_REQUESTS = {"start_training", "train", "resume", "start_scan", "scan"}
TRAINING_OTHERS = {"poll", "wait", "stop", "shutdown", "cancel_scan", "memory_warning", "configure",
                   "require_dependencies", "runs", "busy", "scene",
                   # trainers left by an earlier session: found and ended, nothing started
                   "left_trainers", "offer_to_stop_left_trainers", "stop_left_trainers"}  # fmt: skip


def public_names(cls) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} - {"poll_interval_ms"}


class MissingEverything:
    """Slicer's installers on a machine without PyTorch, where the user declines: the gate asks and refuses."""

    def __init__(self):
        self.questions: list[str] = []

    def gate(self, **kwargs):
        installers = dependencies.Installers(
            confirm=lambda question: self.questions.append(question) or False,
            install_torch=lambda requirement: None,
            version_of=lambda name: None,
        )
        return dependencies.ensure_dependencies(installers, **kwargs)


def volume(scene, name, shape=(8, 8, 8)):
    return add_volume_from_array(scene, np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4), name)


def test_every_generation_request_passes_the_dependency_gate(scene, tmp_path):
    assert public_names(WaveletDiffusionLogic) == GENERATION_REQUESTS | GENERATION_OTHERS, (
        "sort the new public method into GENERATION_REQUESTS (and call it below) or GENERATION_OTHERS"
    )
    image, t2, flair = (volume(scene, n) for n in ("image", "t2", "flair"))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    from WaveletDiffusionCommonLib.volumes import update_volume_node

    update_volume_node(labelmap, labels, np.eye(4))
    calls = {
        "generate": lambda logic: logic.generate(model="demo_phantom_64"),
        "start_generation": lambda logic: logic.start_generation(GenerationParameters()),
        "synthesize": lambda logic: logic.synthesize("m", {"t2": t2, "flair": flair}),
        "start_synthesize": lambda logic: logic.start_synthesize("m", {"t2": t2, "flair": flair}),
        "inpaint": lambda logic: logic.inpaint("m", image, labelmap=labelmap),
        "start_inpaint": lambda logic: logic.start_inpaint("m", image, labelmap=labelmap),
        "vary": lambda logic: logic.vary("m", image, strength=0.3),
        "start_vary": lambda logic: logic.start_vary("m", image, strength=0.3),
        "download": lambda logic: logic.download("brats_unet_128_1200k"),
        "start_download": lambda logic: logic.start_download("brats_unet_128_1200k"),
        "list_models": lambda logic: logic.list_models(),
        "device_info": lambda logic: logic.device_info(),
        "request": lambda logic: logic.request("info"),
        "worker": lambda logic: logic.worker,  # the property that starts the worker process
    }
    assert set(calls) == GENERATION_REQUESTS | {"worker"}
    for name, call in calls.items():
        missing = MissingEverything()
        logic = WaveletDiffusionLogic(scene)
        logic.configure(dependency_gate=missing.gate)
        with pytest.raises(dependencies.DependencyError, match="PyTorch is needed"):
            call(logic)
        assert len(missing.questions) == 1 and "Install it now?" in missing.questions[0], name
        assert logic._worker is None, f"{name} started the worker before the gate"


def test_the_gate_asks_once_it_has_passed(scene):
    calls = []
    logic = WaveletDiffusionLogic(scene)
    logic.configure(dependency_gate=lambda: calls.append(1))
    logic.require_dependencies()
    logic.require_dependencies()
    assert calls == [1]


def test_every_training_request_passes_the_dependency_gate(scene, tmp_path):
    assert public_names(WaveletDiffusionTrainingLogic) == TRAINING_REQUESTS | TRAINING_OTHERS, (
        "sort the new public method into TRAINING_REQUESTS (and call it below) or TRAINING_OTHERS"
    )
    nodes = [volume(scene, f"v{i}") for i in range(2)]
    (tmp_path / "data").mkdir()
    scene_run = TrainingParameters(data_source="nodes", output_dir=str(tmp_path / "scene_run"), device="cpu")
    calls = {
        "start_training": lambda logic: logic.start_training(scene_run, nodes=nodes),
        "train": lambda logic: logic.train(scene_run, nodes=nodes),
        "resume": lambda logic: logic.resume(scene_run),
        "start_scan": lambda logic: logic.start_scan(str(tmp_path / "data")),
        "scan": lambda logic: logic.scan(str(tmp_path / "data")),
    }
    assert set(calls) == TRAINING_REQUESTS
    for name, call in calls.items():
        missing = MissingEverything()
        logic = WaveletDiffusionTrainingLogic(scene)
        logic.configure(dependency_gate=lambda m=missing: m.gate(extra=dependencies.TRAINING_PACKAGES))
        with pytest.raises(dependencies.DependencyError, match="PyTorch is needed"):
            call(logic)
        assert len(missing.questions) == 1, name
        assert not logic._runs and not logic._scans, name
    assert not (tmp_path / "scene_run").exists(), "scene volumes were written before the gate"


def test_the_modules_wire_their_logic_to_the_gate():
    """Both module files give their logic the gate (a test cannot import them without Slicer's application)."""
    from slicer_support import MODULE_DIR, TRAINING_MODULE_DIR

    for path in (MODULE_DIR / "WaveletDiffusion.py", TRAINING_MODULE_DIR / "WaveletDiffusionTraining.py"):
        text = path.read_text(encoding="utf-8")
        assert "dependency_gate=lambda: dependencies.ensure_dependencies(" in text, path.name
        # No request method of its own that could skip or duplicate the Lib's gate.
        for method in ("def generate", "def start_generation", "def start_training", "def start_scan"):
            assert method not in text, f"{path.name} overrides {method[4:]}"


# ------------------------------------------------------------------------------------------- live preview


class CapturingLogic(WaveletDiffusionLogic):
    """Records the worker request instead of sending it."""

    def __init__(self, scene):
        super().__init__(scene)
        self.sent: list[tuple[str, dict]] = []

    def _submit(self, job, request_type, **fields):
        self.sent.append((request_type, fields))
        return job


@pytest.mark.parametrize("preview", [False, True])
def test_live_preview_reaches_the_task_requests(scene, preview):
    card_vary = {"task": "generate"}
    image = volume(scene, "image")
    t2, flair = volume(scene, "t2"), volume(scene, "flair")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    from WaveletDiffusionCommonLib.volumes import update_volume_node

    update_volume_node(labelmap, labels, np.eye(4))
    settings = GenerationParameters(model="m", preview=preview, preview_every=5)
    synth_card = {"task": "synthesize", "inputs": [{"name": "t2"}, {"name": "flair"}], "output": {"name": "t1"}}
    plans = [
        taskpanel.run_plan(taskpanel.VARY, card_vary, "m", taskpanel.Selection(taskpanel.VARY, volume=image), settings),
        taskpanel.run_plan(taskpanel.INPAINT, card_vary, "m",
                           taskpanel.Selection(taskpanel.INPAINT, volume=image, labelmap=labelmap), settings),
        taskpanel.run_plan(taskpanel.SYNTHESIZE, synth_card, "m",
                           taskpanel.Selection(taskpanel.SYNTHESIZE, inputs={"t2": t2, "flair": flair}), settings),
    ]  # fmt: skip
    logic = CapturingLogic(scene)
    for plan in plans:
        job = getattr(logic, plan.method)(*plan.args, **plan.kwargs, on_progress=None, on_preview=None,
                                          on_finished=None)  # fmt: skip
        assert inspect.isclass(type(job))
    assert [kind for kind, _fields in logic.sent] == ["vary", "inpaint", "synthesize"]
    for _kind, fields in logic.sent:
        assert fields["preview_every"] == (5 if preview else 0)


# ------------------------------------------------------------------------------------------- memory of the tasks

GB = 1e9


def test_the_tasks_warn_before_a_run_that_cannot_fit(scene):
    logic = WaveletDiffusionLogic(scene)
    devices = [{"id": "cuda:0", "free_bytes": 2 * GB}, {"id": "cuda:1", "free_bytes": 9 * GB}]
    cwdm = {"task": "synthesize", "image_size": [224, 224, 160]}
    # cWDM works on the inputs' grid fitted to multiples of 32: 240 x 240 x 155 -> 224 x 224 x 160.
    message = logic.task_memory_warning("synthesize", "cwdm_t1n", cwdm, device="cuda:0", grid=(240, 240, 155),
                                        preset="cwdm-224", devices=devices)  # fmt: skip
    assert "needs about 3.1 GB" in message and "cuda:0 has 2.0 GB of free GPU memory" in message
    assert "choose bf16 precision" in message and "on the CPU" in message
    bigger = logic.task_memory_warning("synthesize", "cwdm_t1n", cwdm, device="cuda:0", grid=(256, 256, 256),
                                       preset="cwdm-224", devices=devices)  # fmt: skip
    assert "needs about 4.8 GB" in bigger
    assert logic.task_memory_warning("synthesize", "cwdm_t1n", cwdm, device="cuda:1", grid=(240, 240, 155),
                                     preset="cwdm-224", devices=devices) is None  # fmt: skip
    # Inpainting and variations work on a crop of the model's size, whatever the volume's.
    vary = logic.task_memory_warning("vary", "brats_unet_256_1200k", {}, device="cuda:0", grid=(512, 512, 400),
                                     devices=devices)  # fmt: skip
    assert "needs about 4.8 GB" in vary
    assert logic.task_memory_warning("vary", "brats_unet_256_1200k", {}, device="cuda:1", devices=devices) is None
    fast = logic.task_memory_warning("inpaint", "fastwdm3d", {"image_size": [128, 128, 128]}, device="cuda:0",
                                     precision="bf16", preset="fastwdm3d-128",
                                     devices=[{"id": "cuda:0", "free_bytes": 0.5 * GB}])  # fmt: skip
    assert "needs about 0.5 GB" in fast and "bf16" not in fast
    # A network known only after loading it (the demo models): no estimate, as for generation.
    assert logic.task_memory_warning("vary", "demo_phantom_64", {"image_size": [64] * 3}, device="cuda:0",
                                     devices=devices) is None  # fmt: skip


def test_the_task_panel_checks_memory_before_it_starts():
    """The Run button of a task asks, like Generate, before the logic call (the widget needs Slicer's GUI)."""
    from slicer_support import MODULE_DIR

    text = (MODULE_DIR / "WaveletDiffusionWidgets" / "tasks.py").read_text(encoding="utf-8")
    run = text[text.index("def onRunTask") :]
    run = run[: run.index("\n    def ", 10)]
    assert run.index("self.taskMemoryWarning()") < run.index("getattr(self.logic, plan.method)")
    assert "confirmOkCancelDisplay(" in run
    shown = text[text.index("def showSelectionCheck") :]
    assert "self.taskMemoryWarning()" in shown[: shown.index("\n    def ", 10)]


# ------------------------------------------------------------------------------------------- strength slider


def test_the_strength_slider_cannot_reach_zero():
    import xml.etree.ElementTree as ElementTree

    from slicer_support import MODULE_DIR
    from WaveletDiffusionLib.tasks import TaskParameters

    low, high = taskpanel.strength_range()
    assert (low, high) == (0.01, 1.0)
    # Every value the slider can show is one the engine takes; the one below it is refused.
    assert TaskParameters("vary", "m", strength=low).validate() and TaskParameters("vary", "m", strength=high)
    with pytest.raises(ValueError, match="strength"):
        TaskParameters("vary", "m", strength=round(low - 10.0**-taskpanel.STRENGTH_DECIMALS, 6)).validate()
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "WaveletDiffusion.ui")
    slider = next(w for w in ui.iter("widget") if w.get("name") == "strengthSliderWidget")
    values = {p.get("name"): p[0].text for p in slider.findall("property")}
    assert int(values["decimals"]) == taskpanel.STRENGTH_DECIMALS
    assert (float(values["minimum"]), float(values["maximum"])) == (low, high)
    setup = (MODULE_DIR / "WaveletDiffusion.py").read_text(encoding="utf-8")
    assert "self.ui.strengthSliderWidget.maximum = taskpanel.strength_range()" in setup


# ------------------------------------------------------------------------------------------- the GUI thread


def test_nvidia_smi_is_bounded_and_asked_once(tmp_path, monkeypatch):
    from WaveletDiffusionCommonLib import memory

    calls = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho 2048\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(memory, "_cuda_free_cache", {})
    assert memory.cuda_free_bytes(0) == 2048 * 2**20
    assert memory.cuda_free_bytes(0) == 2048 * 2**20  # the cached answer: nvidia-smi ran once
    assert calls.read_text().count("x") == 1
    assert memory.cuda_free_bytes(1) == 2048 * 2**20 and calls.read_text().count("x") == 2  # per GPU
    # A GPU that does not answer in time: None, and it is not asked again at once (no second wait).
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\nexec sleep 30\n")
    monkeypatch.setattr(memory, "_cuda_free_cache", {})
    assert memory.cuda_free_bytes(0, timeout=0.5) is None
    assert memory.cuda_free_bytes(0, timeout=0.5) is None
    assert calls.read_text().count("x") == 3
    assert memory.NVIDIA_SMI_TIMEOUT_S <= 3


def test_scene_volumes_for_training_are_written_uncompressed(scene, tmp_path):
    from WaveletDiffusionTrainingLib.datasource import export_volume_nodes

    written = export_volume_nodes([volume(scene, "ct")], tmp_path / "scene_volumes")
    header = written[0].read_bytes()[:400].decode("latin-1")
    assert "encoding: raw" in header


# ------------------------------------------------------------------------------------------- backend and precision


def task_plans(scene, settings):
    """The panel's calls for vary, inpaint and synthesize with ``settings``."""
    image, t2, flair = volume(scene, "image"), volume(scene, "t2"), volume(scene, "flair")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    from WaveletDiffusionCommonLib.volumes import update_volume_node

    update_volume_node(labelmap, labels, np.eye(4))
    synth_card = {"task": "synthesize", "inputs": [{"name": "t2"}, {"name": "flair"}], "output": {"name": "t1"}}
    unconditional = {"task": "generate"}
    return [
        taskpanel.run_plan(taskpanel.VARY, unconditional, "m", taskpanel.Selection(taskpanel.VARY, volume=image),
                           settings),
        taskpanel.run_plan(taskpanel.INPAINT, unconditional, "m",
                           taskpanel.Selection(taskpanel.INPAINT, volume=image, labelmap=labelmap), settings),
        taskpanel.run_plan(taskpanel.SYNTHESIZE, synth_card, "m",
                           taskpanel.Selection(taskpanel.SYNTHESIZE, inputs={"t2": t2, "flair": flair}), settings),
    ]  # fmt: skip


@pytest.mark.parametrize(("backend", "precision"), [("openvino", "bf16"), ("torch", "fp32"), ("auto", "auto")])
def test_backend_and_precision_reach_the_generate_and_task_requests(scene, backend, precision):
    settings = GenerationParameters(model="m", backend=backend, precision=precision)
    logic = CapturingLogic(scene)
    logic.start_generation(settings)
    for plan in task_plans(scene, settings):
        getattr(logic, plan.method)(*plan.args, **plan.kwargs, on_progress=None, on_preview=None, on_finished=None)
    assert [kind for kind, _fields in logic.sent] == ["generate", "vary", "inpaint", "synthesize"]
    for kind, fields in logic.sent:
        assert (fields["backend"], fields["precision"]) == (backend, precision), kind


def test_a_missing_openvino_is_offered_once_before_the_first_request_and_the_run_goes_on(scene):
    """The gate stands in for the module's offer (dependencies.offer_backend); declined, the request still names
    OpenVINO: the worker runs PyTorch and says so (the engine's fallback)."""
    asked = []
    logic = CapturingLogic(scene)
    logs = []
    logic.log_callback = logs.append
    logic.configure(backend_gate=lambda backend: asked.append((backend, len(logic.sent))) or "PyTorch runs instead")
    settings = GenerationParameters(model="m", backend="openvino")
    logic.start_generation(settings)
    for plan in task_plans(scene, settings):
        getattr(logic, plan.method)(*plan.args, **plan.kwargs, on_progress=None, on_preview=None, on_finished=None)
    assert asked == [("openvino", 0)]  # before anything was sent, once this session
    assert "PyTorch runs instead" in logs
    assert [fields["backend"] for _kind, fields in logic.sent] == ["openvino"] * 4
    logic.require_backend("openvino", again=True)  # the user chose it again in the panel: asked again
    assert len(asked) == 2


def test_openvino_on_a_gpu_is_refused_before_anything_is_asked_or_sent(scene):
    asked = []
    logic = CapturingLogic(scene)
    logic.configure(backend_gate=asked.append)
    settings = GenerationParameters(model="m", device="cuda:0", backend="openvino")
    with pytest.raises(ValueError, match="runs on the CPU, not on cuda:0"):
        logic.start_generation(settings)
    for plan in task_plans(scene, settings):
        with pytest.raises(ValueError, match="runs on the CPU, not on cuda:0"):
            getattr(logic, plan.method)(*plan.args, **plan.kwargs, on_progress=None, on_preview=None,
                                        on_finished=None)  # fmt: skip
    assert asked == [] and logic.sent == []


def test_a_scripted_generate_runs_a_student_with_the_sampler_and_calls_of_its_card(scene, tmp_path):
    """``logic.generate(model=student)`` without a sampler sends the card's DDIM calls, as ``wdm sample`` does; a
    sampler named by the caller, or an ordinary model, keeps the engine's defaults."""
    import json

    from safetensors.numpy import save_file
    from test_slicer_parameters import STUDENT_CARD  # a student's card as the engine checks it

    student = tmp_path / "student.safetensors"
    save_file({"w": np.zeros(1, np.float32)}, str(student), metadata={taskpanel.CARD_KEY: json.dumps(STUDENT_CARD)})
    logic = CapturingLogic(scene)
    logic.wait = lambda job, timeout=None: None
    logic.generate(model=str(student))
    logic.generate(model=str(student), sampler="unipc")
    logic.generate(model=str(student), steps=8)
    logic.generate(model="demo_phantom_64")
    sent = [(fields["sampler"], fields["steps"]) for _kind, fields in logic.sent]
    assert sent == [("ddim", 4), ("unipc", 10), ("ddim", 8), ("unipc", 10)]
