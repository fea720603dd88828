"""Static checks of the Slicer extension: UI names, CMake file lists, the extension descriptor, icons."""

from __future__ import annotations

import ast
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_support import REPO_ROOT

MODULES = ("WaveletDiffusion", "WaveletDiffusionTraining")
ENGINE = REPO_ROOT / "WDMCore"
COMMON = REPO_ROOT / "WaveletDiffusionCommon"
COMMON_PACKAGES = ("WaveletDiffusionCommonLib", "WaveletDiffusionCommonWidgets")

# Widget classes each .ui may use: Qt's own and those Slicer's CTK/MRML libraries provide.
ALLOWED_WIDGETS = {
    "WaveletDiffusion": {"qMRMLWidget", "ctkCollapsibleButton", "QComboBox", "QPushButton", "QLabel", "QSpinBox",
                         "QProgressBar", "QLineEdit", "QCheckBox", "QPlainTextEdit", "QWidget", "qMRMLNodeComboBox",
                         "qMRMLSegmentSelectorWidget", "ctkSliderWidget"},
    "WaveletDiffusionTraining": {"qMRMLWidget", "ctkCollapsibleButton", "ctkPathLineEdit",
                                 "qMRMLCheckableNodeComboBox", "QComboBox", "QPushButton", "QLabel", "QSpinBox",
                                 "QDoubleSpinBox", "QProgressBar", "QLineEdit", "QCheckBox", "QPlainTextEdit"},
}  # fmt: skip


def module_file(name: str) -> Path:
    return REPO_ROOT / name / f"{name}.py"


def widget_files(name: str) -> list[Path]:
    """The module file and its panels (the ``{name}Widgets`` package, mixed into the widget class)."""
    return [module_file(name), *sorted((REPO_ROOT / name / f"{name}Widgets").glob("*.py"))]


def module_source(name: str) -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in widget_files(name))


def ui_file(name: str) -> Path:
    return REPO_ROOT / name / "Resources" / "UI" / f"{name}.ui"


def ui_widgets(name: str = "WaveletDiffusion") -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(ui_file(name)).getroot().iter("widget")}


def cmake_text(path: Path) -> str:
    return re.sub(r"#.*", "", path.read_text(encoding="utf-8"))


def listed_files(cmake: str, variable: str) -> set[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmake, re.S)
    assert match, f"{variable} not set"
    return set(match.group(1).split())


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_module_uses_exists_in_the_ui(name):
    used = set(re.findall(r"self\.ui\.(\w+)", module_source(name)))
    missing = used - set(ui_widgets(name))
    assert used and not missing, f"widgets used in the code but missing from the .ui: {sorted(missing)}"


@pytest.mark.parametrize("name", MODULES)
def test_ui_parameter_names_are_fields_of_the_parameter_node(name):
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == f"{name}ParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    named = set()
    for widget in ui_widgets(name).values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                named.add(prop.find("string").text)
    assert named and named <= fields, f"unknown parameter names in the .ui: {sorted(named - fields)}"


@pytest.mark.parametrize("name", MODULES)
def test_ui_choices_match_the_parameter_choices(name):
    """A combo box bound to a Choice parameter must offer exactly the allowed values, as its item texts."""
    source = module_file(name).read_text(encoding="utf-8")
    for widget in ui_widgets(name).values():
        names = [p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        if widget.get("class") != "QComboBox" or not names:
            continue
        items = [i.find("property/string").text for i in widget.findall("item")]
        match = re.search(rf"{names[0]}: Annotated\[str, Choice\(list\(parameters\.(\w+)\)\)\]", source)
        assert match, f"{names[0]} is bound to a combo box but is not a Choice of a parameters constant"
        module = __import__(f"{name}Lib.parameters", fromlist=["parameters"])
        assert items == [v for v in getattr(module, match.group(1)) if v], (names[0], items)


@pytest.mark.parametrize("name", MODULES)
def test_ui_uses_only_widgets_slicer_provides(name):
    classes = {w.get("class") for w in ui_widgets(name).values()}
    assert classes <= ALLOWED_WIDGETS[name], classes - ALLOWED_WIDGETS[name]
    declared = {c.find("class").text for c in ET.parse(ui_file(name)).getroot().iter("customwidget")}
    assert {c for c in classes if not c.startswith("Q")} <= declared


@pytest.mark.parametrize("name", MODULES)
def test_module_cmake_lists_every_script_and_resource(name):
    module = REPO_ROOT / name
    cmake = cmake_text(module / "CMakeLists.txt").replace("${MODULE_NAME}", name)
    assert re.search(rf"set\(MODULE_NAME {name}\)", cmake)
    scripts = {p.relative_to(module).as_posix() for p in module.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {p.relative_to(module).as_posix() for p in (module / "Resources").rglob("*") if p.is_file()}
    assert listed_files(cmake, "MODULE_PYTHON_SCRIPTS") == scripts
    assert listed_files(cmake, "MODULE_PYTHON_RESOURCES") == resources
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module.joinpath("CMakeLists.txt").read_text(
        encoding="utf-8"
    )


def test_training_module_depends_on_the_generation_module():
    """Its "Open in Wavelet Diffusion" selects that module."""
    tree = ast.parse(module_file("WaveletDiffusionTraining").read_text(encoding="utf-8"))
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]).endswith(
        "parent.dependencies")]  # fmt: skip
    assert [ast.literal_eval(a.value) for a in assigns] == [["WaveletDiffusion"]]
    assert function("WaveletDiffusion", "WaveletDiffusionWidget", "useCheckpoint")


def test_generation_module_depends_on_segmentations_for_its_segment_selector():
    """qMRMLSegmentSelectorWidget and the segment export come from Slicer's Segmentations module."""
    ui = (REPO_ROOT / "WaveletDiffusion" / "Resources" / "UI" / "WaveletDiffusion.ui").read_text(encoding="utf-8")
    assert "qMRMLSegmentSelectorWidget" in ui
    tree = ast.parse(module_file("WaveletDiffusion").read_text(encoding="utf-8"))
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]).endswith(
        "parent.dependencies")]  # fmt: skip
    assert [ast.literal_eval(a.value) for a in assigns] == [["Segmentations"]]


def test_engine_cmake_installs_the_whole_package():
    cmake = cmake_text(ENGINE / "CMakeLists.txt")
    package = ENGINE / "wdmcore"
    scripts = {p.relative_to(ENGINE).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed_files(cmake, "WDMCORE_PYTHON_SCRIPTS") == scripts
    # Data files: pyproject's package-data patterns; assets/* is globbed by CMake itself.
    pyproject = (ENGINE / "pyproject.toml").read_text(encoding="utf-8")
    patterns = re.search(r"wdmcore = \[(.*?)\]", pyproject).group(1)
    assert set(re.findall(r'"([^"]+)"', patterns)) == {"hub/*.json", "assets/*"}
    data = {p.relative_to(ENGINE).as_posix() for p in package.rglob("*.json") if "assets" not in p.parts}
    assert listed_files(cmake, "WDMCORE_PYTHON_RESOURCES") - {"${_wdmcore_assets}"} == data
    assert "wdmcore/assets/*" in cmake
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in cmake


def test_common_cmake_installs_both_shared_packages_beside_the_modules():
    cmake = cmake_text(COMMON / "CMakeLists.txt")
    scripts = {p.relative_to(COMMON).as_posix() for package in COMMON_PACKAGES
               for p in (COMMON / package).rglob("*.py") if "__pycache__" not in p.parts}  # fmt: skip
    assert {p.split("/")[0] for p in scripts} == set(COMMON_PACKAGES)
    assert listed_files(cmake, "COMMON_PYTHON_SCRIPTS") == scripts
    assert "ctkMacroCompilePythonScript(" in cmake and "NO_INSTALL_SUBDIR" in cmake
    # The modules' own folder: both modules, the engine and the shared packages import one another from there.
    assert "Slicer_QTSCRIPTEDMODULES_LIB_DIR" in cmake and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in cmake


def test_top_level_cmake_metadata_and_subdirectories():
    cmake = cmake_text(REPO_ROOT / "CMakeLists.txt")
    assert re.search(r"project\(WaveletDiffusion\)", cmake)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', cmake), key
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):  # fmt: skip
        assert line in cmake
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", cmake)
    for name in subdirs:
        assert (REPO_ROOT / name / "CMakeLists.txt").is_file(), name
    expected = ["WDMCore", "WaveletDiffusionCommon", "WaveletDiffusion", "WaveletDiffusionTraining"]
    assert subdirs == expected


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_extension_descriptor_follows_the_extensions_index_rules():
    entry = json.loads((REPO_ROOT / "Resources" / "WaveletDiffusion.json").read_text(encoding="utf-8"))
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}  # fmt: skip
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    cmake = cmake_text(REPO_ROOT / "CMakeLists.txt")
    assert entry["category"] == re.search(r'EXTENSION_CATEGORY "([^"]+)"', cmake).group(1)
    assert entry["build_dependencies"] == re.search(r'EXTENSION_DEPENDS "([^"]+)"', cmake).group(1).split()
    assert entry["scm_url"].startswith("https://") and entry["tier"] in (1, 3, 5)


def test_icon_and_screenshot_urls_point_at_files_in_the_repository():
    cmake = cmake_text(REPO_ROOT / "CMakeLists.txt")
    urls = [re.search(r'EXTENSION_ICONURL "([^"]+)"', cmake).group(1)]
    urls += re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', cmake).group(1).split()
    for url in urls:
        relative = url.split("/main/", 1)[1]
        assert (REPO_ROOT / relative).is_file(), relative
    assert png_size(REPO_ROOT / "Resources" / "Icons" / "WaveletDiffusion.png") == (128, 128)
    for name in MODULES:
        assert png_size(REPO_ROOT / name / "Resources" / "Icons" / f"{name}.png") == (128, 128)


LIB_FILES = sorted([*(p for name in MODULES for p in (REPO_ROOT / name / f"{name}Lib").glob("*.py")),
                    *(COMMON / "WaveletDiffusionCommonLib").glob("*.py")])  # fmt: skip
SLICER_FILES = sorted(p for folder in (*MODULES, COMMON.name) for p in (REPO_ROOT / folder).rglob("*.py")
                      if "__pycache__" not in p.parts)  # fmt: skip
MAX_LINES = 600


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_slicer_file_is_over_the_size_limit(path):
    """Split along ideas (a widget's panels, a logic's requests) before a file grows past this."""
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"


def test_each_module_imports_only_its_own_lib_and_the_shared_packages():
    """What both modules use lives in WaveletDiffusionCommon; neither module borrows the other's Lib or panels,
    and the shared packages import neither module."""
    own = {name: {f"{name}Lib", f"{name}Widgets"} for name in MODULES}
    modules = {n for name in MODULES for n in (name, *own[name])}
    for path in SLICER_FILES:
        folder = path.relative_to(REPO_ROOT).parts[0]
        allowed = own.get(folder, set()) | {folder}
        for name in imported_names(path):
            top = name.split(".")[0]
            assert top not in modules or top in allowed, f"{path.relative_to(REPO_ROOT)} imports {name}"


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lib_never_imports_gui_parts(path):
    # wdmcore imports torch: Slicer's own process never loads it (the child processes do), except the engine's
    # torch-free tables (TORCH_FREE_ENGINE_MODULES, checked by test_the_engine_tables_the_lib_reads_need_no_torch).
    forbidden = ("qt", "ctk", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "wdmcore")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name in TORCH_FREE_ENGINE_MODULES:
                continue
            assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"


# Engine modules the Lib may import (inside functions: the engine is found once Slicer's paths are set up).
TORCH_FREE_ENGINE_MODULES = ("wdmcore.limits",)


def test_the_engine_tables_the_lib_reads_need_no_torch():
    code = (
        "import sys\n"
        f"for name in {TORCH_FREE_ENGINE_MODULES!r}:\n"
        "    __import__(name)\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'nibabel', 'SimpleITK') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "WDMCore")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------- the widget layer
# The widgets are thin; what they must do the way Slicer runs them is checked here from their source.


def function(name: str, cls: str, func: str) -> ast.FunctionDef:
    """``cls.func`` of the module, also where ``cls`` has it from one of its panels (a base class of the widget)."""
    classes = {n.name: n for path in widget_files(name) for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(n, ast.ClassDef)}  # fmt: skip
    pending = [cls]
    while pending:
        klass = classes.get(pending.pop(0))
        if klass is None:
            continue
        found = [n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == func]
        if found:
            return found[0]
        pending += [ast.unparse(base) for base in klass.bases]
    raise AssertionError(f"{cls}.{func} not found in {name}")


def calls_in(node: ast.AST) -> list[str]:
    return [ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)]


def bound_widgets(name: str) -> set[str]:
    return {w for w, e in ui_widgets(name).items()
            if any(p.get("name") == "SlicerParameterName" for p in e.findall("property"))}  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_no_handler_listens_to_a_widget_that_connect_gui_binds(name):
    """PythonQt calls slots in connection order: a handler connected in setup() runs before connectGui's slot
    has written the new value, and connectGui's refill of a combo box fires it as if the user had chosen."""
    connected = re.findall(r"self\.ui\.(\w+)\.\w+\.connect\(", module_source(name))
    assert connected and not set(connected) & bound_widgets(name)


@pytest.mark.parametrize("name", MODULES)
def test_values_are_shown_from_the_parameter_node_after_it_changed(name):
    source = ast.unparse(function(name, f"{name}Widget", "setParameterNode"))
    assert "self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)" in (
        source)  # fmt: skip


# Signals of the widget classes the module connects to (qMRMLSegmentSelectorWidget.h, qMRMLNodeComboBox.h,
# ctkSliderWidget.h and Qt's own).
SIGNALS = {
    "QPushButton": {"clicked"},
    "QComboBox": {"activated", "currentIndexChanged"},
    "qMRMLNodeComboBox": {"currentNodeChanged", "currentNodeIDChanged", "nodeActivated"},
    "qMRMLSegmentSelectorWidget": {"currentNodeChanged", "currentSegmentChanged"},
    "ctkSliderWidget": {"valueChanged", "valueIsChanging"},
}


def test_every_connected_signal_exists_on_its_widget_class():
    widgets = ui_widgets("WaveletDiffusion")
    source = module_source("WaveletDiffusion")
    connected = re.findall(r"self\.ui\.(\w+)\.(\w+)\.connect\(", source)
    assert connected
    for name, signal in connected:
        assert signal in SIGNALS[widgets[name].get("class")], (name, signal)
    # The synthesis inputs made in code are node combo boxes too.
    assert re.findall(r"selector\.(\w+)\.connect\(", source) == ["currentNodeChanged"]


def test_every_mrml_selector_in_the_ui_gets_the_scene():
    """setMRMLScene on the panel reaches a child selector only through a mrmlSceneChanged connection."""
    root = ET.parse(ui_file("WaveletDiffusion")).getroot()
    top = root.find("widget").get("name")
    selectors = {n for n, w in ui_widgets("WaveletDiffusion").items()
                 if w.get("class").startswith("qMRML") and n != top}  # fmt: skip
    connected = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                 for c in root.iter("connection")}  # fmt: skip
    assert selectors == {"inputVolumeSelector", "segmentSelectorWidget", "labelmapSelector"}
    for name in selectors:
        assert (top, "mrmlSceneChanged(vtkMRMLScene*)", name, "setMRMLScene(vtkMRMLScene*)") in connected, name
    assert "uiWidget.setMRMLScene(slicer.mrmlScene)" in ast.unparse(
        function("WaveletDiffusion", "WaveletDiffusionWidget", "setup"))  # fmt: skip


def test_volume_selectors_list_the_right_node_types():
    widgets = ui_widgets("WaveletDiffusion")

    def prop(name, key):
        element = widgets[name].find(f"property[@name='{key}']")
        return [s.text for s in element.iter("string")] or element[0].text

    assert prop("inputVolumeSelector", "nodeTypes") == ["vtkMRMLScalarVolumeNode"]
    assert prop("inputVolumeSelector", "showChildNodeTypes") == "false"  # no labelmaps among the volumes
    assert prop("labelmapSelector", "nodeTypes") == ["vtkMRMLLabelMapVolumeNode"]
    slider = {p.get("name"): p[0].text for p in widgets["strengthSliderWidget"].findall("property")}
    assert (float(slider["minimum"]), float(slider["maximum"])) == (0.01, 1.0)  # strength is in (0, 1]


def test_synthesis_selectors_are_made_anew_with_the_scene_for_each_model():
    made = function("WaveletDiffusion", "WaveletDiffusionWidget", "setSynthesisSlots")
    source = ast.unparse(made)
    calls = calls_in(made)
    assert "slicer.qMRMLNodeComboBox" in calls and "selector.setMRMLScene" in calls
    assert "selector.setMRMLScene(slicer.mrmlScene)" in source
    assert source.index("widget.deleteLater()") < source.index("self._synthesisSlots = []") < source.index(
        "slicer.qMRMLNodeComboBox()")  # fmt: skip
    # Redrawn when the model changes and when the parameter node changes (a loaded scene, a removed node).
    for caller in ("onModelChanged", "onParameterNodeModified"):
        assert "self.showTask" in calls_in(function("WaveletDiffusion", "WaveletDiffusionWidget", caller)), caller
    assert "self.setSynthesisSlots" in calls_in(function("WaveletDiffusion", "WaveletDiffusionWidget", "showTask"))


def test_a_task_run_checks_the_inputs_then_makes_the_planned_call():
    run = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "onRunTask"))
    order = ["taskpanel.check_selection(", "if problems:", "self.logic.ensureDependencies()", "taskpanel.run_plan(",
             "getattr(self.logic, plan.method)("]  # fmt: skip
    positions = [run.index(step) for step in order]
    assert positions == sorted(positions)
    for callback in ("on_progress=self.onTaskProgress", "on_finished=self.onTaskFinished", "on_preview="):
        assert callback in run
    # A job that fails to start finishes inside the call: its task must be known then, and it is not kept running.
    assert run.index("self._runningTask = task") < run.index("getattr(self.logic, plan.method)(")
    assert "self._job = None if job.finished else job" in run
    generate = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "onGenerate"))
    assert generate.index("self.onRunTask()") < generate.index("self.logic.memory_warning(")


def test_preset_and_device_boxes_follow_the_parameter_node():
    assert {"self.showPresetAndDevice", "self.updateSamplerPreset"} <= set(
        calls_in(function("WaveletDiffusion", "WaveletDiffusionWidget", "onParameterNodeModified")))  # fmt: skip
    shown = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "showPresetAndDevice"))
    assert "self._parameterNode.preset" in shown and "self.setDeviceItems" in shown
    devices = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "setDeviceItems"))
    assert "combo.findData(wanted) < 0" in devices and "combo.addItem(label, wanted)" in devices


def test_the_backend_box_follows_the_parameter_node_and_choosing_offers_the_install():
    """The backend box is not bound by connectGui (connectGui's refill would look like a choice): its items are
    the backends in order, the user's choice is stored and offers OpenVINO's install, the node's value is shown."""
    from WaveletDiffusionLib import parameters

    widget = ui_widgets()["backendComboBox"]
    assert widget.get("class") == "QComboBox" and "backendComboBox" not in bound_widgets("WaveletDiffusion")
    assert [i.find("property/string").text for i in widget.findall("item")] == list(parameters.BACKENDS)
    assert "self.ui.backendComboBox.activated.connect(self.onBackendChosen)" in module_source("WaveletDiffusion")
    chosen = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "onBackendChosen"))
    assert "self._parameterNode.backend = backend" in chosen
    assert "self.logic.require_backend(backend, again=True)" in chosen
    assert "self.showBackend" in calls_in(function("WaveletDiffusion", "WaveletDiffusionWidget",
                                                   "onParameterNodeModified"))  # fmt: skip
    shown = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "showBackend"))
    assert "parameters.BACKENDS.index(self._parameterNode.backend)" in shown


def test_the_data_folder_is_scanned_only_through_the_debounced_scheduler():
    source = module_source("WaveletDiffusionTraining")
    scans = re.findall(r"self\.startScan\((.*?)\)", source)
    assert sorted(scans) == ["readVoxels=False", "readVoxels=True"]  # the scheduler, and Check data
    assert "ScanScheduler(" in source
    widget = "WaveletDiffusionTrainingWidget"
    modified = calls_in(function("WaveletDiffusionTraining", widget, "onParameterNodeModified"))
    assert modified == ["self.scanScheduler.changed", "self.scanKey"]
    bind = ast.unparse(function("WaveletDiffusionTraining", "WaveletDiffusionTrainingWidget", "setParameterNode"))
    assert bind.index("self.scanScheduler.seed") < bind.index("= self._parameterNode.connectGui")


@pytest.mark.parametrize("name", MODULES)
def test_error_dialogs_never_show_none_as_details(name):
    source = module_source(name)
    assert not re.search(r"detailedText\s*=", source.replace('{"detailedText": str(detail)}', ""))
    assert "**errorDetails(detail)" in source


def test_the_preview_fits_the_views_once():
    source = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "onPreview"))
    assert "fit=job.preview_updates == 1" in source and "fit=True" not in source


SELF_TESTS = [("WaveletDiffusion", "test_GenerateDemoVolumes"), ("WaveletDiffusion", "test_SynthesizeDemoPhantom"),
              ("WaveletDiffusion", "test_InpaintSegmentOfDemoPhantom"), ("WaveletDiffusion", "test_VaryDemoPhantom"),
              ("WaveletDiffusionTraining", "test_TrainResumeOnSceneVolumes"),
              ("WaveletDiffusionTraining", "test_StopDuringTraining")]  # fmt: skip


@pytest.mark.parametrize(("name", "test"), SELF_TESTS)
def test_self_tests_get_their_logic_through_the_testing_mode_check_first(name, test):
    # requireLogic skips in testing mode when something is missing (Testing/test_slicer_selftests.py runs it);
    # a logic made any other way would install (5.10) or fail (5.12) instead.
    source = ast.unparse(function(name, f"{name}Test", test))
    first = min(source.index(s) for s in ("self.requireLogic(", "self.requireModels(") if s in source)
    assert f"{name}Logic(" not in source and first < source.index("logic.")


@pytest.mark.parametrize("name", MODULES)
def test_settings_fill_only_a_new_parameter_node(name):
    assert "load_settings" not in ast.unparse(function(name, f"{name}Widget", "setup"))
    source = ast.unparse(function(name, f"{name}Logic", "getParameterNode"))
    assert "settings.is_new_parameter_node(node)" in source and "if fresh:" in source
    assert source.index("is_new_parameter_node") < source.index("load_settings")


def test_the_download_tooltip_says_what_is_checked():
    catalogue = json.loads((ENGINE / "wdmcore" / "hub" / "models.json").read_text(encoding="utf-8"))
    models = catalogue["models"] if isinstance(catalogue, dict) else catalogue
    entries = models.values() if isinstance(models, dict) else models
    assert any(entry.get("sha256") is None for entry in entries)  # so the digest cannot always be checked
    button = ui_widgets("WaveletDiffusion")["downloadButton"]
    tooltip = next(p.find("string").text for p in button.findall("property") if p.get("name") == "toolTip")
    assert "recorded on the first download" in tooltip and "checked by SHA-256" not in tooltip


# ------------------------------------------------------------------------------------------- Slicer conventions


@pytest.mark.parametrize("name", MODULES)
def test_children_start_from_slicers_startup_environment(name):
    source = ast.unparse(function(name, f"{name}Logic", "__init__"))
    assert "base_env=slicer.util.startupEnvironment" in source
    assert "provided_root=slicer.app.extensionsInstallPath" in source


@pytest.mark.parametrize(("name", "libs"), [("WaveletDiffusion", (*COMMON_PACKAGES, "WaveletDiffusionLib",
                                                                  "WaveletDiffusionWidgets")),
                                            ("WaveletDiffusionTraining", (*COMMON_PACKAGES,
                                                                          "WaveletDiffusionTrainingLib"))])  # fmt: skip
def test_reload_reloads_the_libs(name, libs):
    source = module_file(name).read_text(encoding="utf-8")
    assigned = [ast.literal_eval(n.value) for n in ast.parse(source).body
                if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "LIB_PACKAGES"]  # fmt: skip
    assert assigned == [libs]
    reload = calls_in(function(name, f"{name}Widget", "onReload"))
    assert reload == ["reloading.reload_packages", "ScriptedLoadableModuleWidget.onReload"]
    assert not re.search(r"^\s*import imp\b", source, re.M)


@pytest.mark.parametrize("name", MODULES)
def test_closing_does_not_block(name):
    cleanup = function(name, f"{name}Widget", "cleanup")
    calls = [c for c in ast.walk(cleanup) if isinstance(c, ast.Call)]
    shutdown = [c for c in calls if ast.unparse(c.func) == "self.logic.shutdown"]
    assert len(shutdown) == 1 and not shutdown[0].args and not shutdown[0].keywords  # the Lib's bounded default


@pytest.mark.parametrize("name", MODULES)
def test_status_bar_messages_and_translated_strings(name):
    source = module_source(name)
    assert source.count("slicer.util.showStatusMessage(") >= 2  # started, and finished
    assert "from slicer.i18n import tr as _" in source and "from slicer.i18n import translate" in source
    module = function(name, name, "__init__")
    titles = [n for n in ast.walk(module) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) in (
        "self.parent.title", "self.parent.helpText", "self.parent.acknowledgementText")]  # fmt: skip
    assert len(titles) == 3 and all(ast.unparse(t.value).startswith("_(") for t in titles)
    assert "documentationLink(" in ast.unparse(module)


@pytest.mark.parametrize("name", MODULES)
def test_an_older_slicer_gets_the_message_before_anything_else(name):
    setup = function(name, f"{name}Widget", "setup")
    first = ast.unparse(setup.body[1])
    assert first.startswith("if showUnsupportedPython(self.layout,") and "return" in first


def test_generation_checks_dependencies_and_memory_before_a_run():
    init = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionLogic", "__init__"))
    assert "dependency_gate=lambda: dependencies.ensure_dependencies(slicerInstallers())" in init
    ensure = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionLogic", "ensureDependencies"))
    assert "self.require_dependencies()" in ensure
    generate = ast.unparse(function("WaveletDiffusion", "WaveletDiffusionWidget", "onGenerate"))
    assert "self.logic.ensureDependencies()" in generate
    assert "self.logic.memory_warning(params" in generate


def test_training_warns_about_memory_before_starting():
    start = ast.unparse(function("WaveletDiffusionTraining", "WaveletDiffusionTrainingWidget", "startRun"))
    assert start.index("self.logic.memory_warning(params)") < start.index("self.logic.start_training(")


def test_extension_names_the_slicer_repository_and_its_contributors():
    cmake = cmake_text(REPO_ROOT / "CMakeLists.txt")
    entry = json.loads((REPO_ROOT / "Resources" / "WaveletDiffusion.json").read_text(encoding="utf-8"))
    assert entry["scm_url"] == "https://github.com/WaveletDiffusion/SlicerWaveletDiffusion.git"
    for key in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        for url in re.search(rf'EXTENSION_{key} "([^"]+)"', cmake).group(1).split():
            assert "/WaveletDiffusion/SlicerWaveletDiffusion/" in url, url
    contributors = re.search(r'EXTENSION_CONTRIBUTORS "([^"]+)"', cmake).group(1)
    assert "SlicerWaveletDiffusion" in contributors and "github.com" in contributors
    for name in MODULES:
        assert "/WaveletDiffusion/WaveletDiffusion/" not in module_file(name).read_text(encoding="utf-8")


def test_slicer_5_10_or_later_is_required_and_said_so():
    cmake = cmake_text(REPO_ROOT / "CMakeLists.txt")
    assert re.search(r'if\(Slicer_VERSION VERSION_LESS "5\.10"\)\s*message\(FATAL_ERROR', cmake)
    assert "Slicer 5.10 or later" in re.search(r'EXTENSION_DESCRIPTION "([^"]+)"', cmake).group(1)
    for doc in ("README.md", "docs/slicer.md"):
        assert "Slicer 5.10 or later" in (REPO_ROOT / doc).read_text(encoding="utf-8"), doc


def test_cmake_minimum_is_that_of_slicer_5_10s_extension_template():
    # Utilities/Templates/Extensions/Default/CMakeLists.txt:1 at Slicer's tag v5.10.0.
    first = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first == "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"


@pytest.mark.parametrize("folder", ["WDMCore", "WaveletDiffusionCommon"])
def test_plain_packages_land_in_the_folder_of_the_modules(folder):
    """slicerMacroBuildScriptedModule (without WITH_SUBDIR) compiles a module into
    ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR} and installs it into
    ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} with NO_INSTALL_SUBDIR; the engine and the shared packages go to
    exactly the same folder, which Slicer puts on sys.path when it loads a module from it and which
    slicer_add_python_unittest passes to the self-tests as --additional-module-paths."""
    cmake = cmake_text(REPO_ROOT / folder / "CMakeLists.txt")
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", cmake, re.S).group(1)
    assert re.search(r"DESTINATION_DIR \$\{CMAKE_BINARY_DIR\}/\$\{Slicer_QTSCRIPTEDMODULES_LIB_DIR\}\s", call)
    assert re.search(r"INSTALL_DIR \$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}\s", call)
    assert "NO_INSTALL_SUBDIR" in call
    for name in MODULES:
        module_cmake = cmake_text(REPO_ROOT / name / "CMakeLists.txt")
        assert "slicerMacroBuildScriptedModule(" in module_cmake and "WITH_SUBDIR" not in module_cmake
