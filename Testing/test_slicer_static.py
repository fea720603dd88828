"""Static checks of the Slicer extension: UI names, CMake file lists, the extension descriptor, icons."""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from slicer_support import REPO_ROOT

MODULES = ("WaveletDiffusion", "WaveletDiffusionTraining")
ENGINE = REPO_ROOT / "WDMCore"

# Widget classes each .ui may use: Qt's own and those Slicer's CTK/MRML libraries provide.
ALLOWED_WIDGETS = {
    "WaveletDiffusion": {"qMRMLWidget", "ctkCollapsibleButton", "QComboBox", "QPushButton", "QLabel", "QSpinBox",
                         "QProgressBar", "QLineEdit", "QCheckBox", "QPlainTextEdit"},
    "WaveletDiffusionTraining": {"qMRMLWidget", "ctkCollapsibleButton", "ctkPathLineEdit",
                                 "qMRMLCheckableNodeComboBox", "QComboBox", "QPushButton", "QLabel", "QSpinBox",
                                 "QDoubleSpinBox", "QProgressBar", "QLineEdit", "QCheckBox", "QPlainTextEdit"},
}  # fmt: skip


def module_file(name: str) -> Path:
    return REPO_ROOT / name / f"{name}.py"


def ui_file(name: str) -> Path:
    return REPO_ROOT / name / "Resources" / "UI" / f"{name}.ui"


def ui_widgets(name: str = "WaveletDiffusion") -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(ui_file(name)).getroot().iter("widget")}


def cmake_text(path: Path) -> str:
    return re.sub(r"#.*", "", path.read_text())


def listed_files(cmake: str, variable: str) -> set[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmake, re.S)
    assert match, f"{variable} not set"
    return set(match.group(1).split())


@pytest.mark.parametrize("name", MODULES)
def test_every_widget_the_module_uses_exists_in_the_ui(name):
    used = set(re.findall(r"self\.ui\.(\w+)", module_file(name).read_text()))
    missing = used - set(ui_widgets(name))
    assert used and not missing, f"widgets used in the code but missing from the .ui: {sorted(missing)}"


@pytest.mark.parametrize("name", MODULES)
def test_ui_parameter_names_are_fields_of_the_parameter_node(name):
    tree = ast.parse(module_file(name).read_text())
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
    source = module_file(name).read_text()
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
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module.joinpath("CMakeLists.txt").read_text()


def test_training_module_depends_on_the_generation_module():
    """Its Lib imports WaveletDiffusionLib and its "Open in Wavelet Diffusion" selects that module."""
    tree = ast.parse(module_file("WaveletDiffusionTraining").read_text())
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]).endswith(
        "parent.dependencies")]  # fmt: skip
    assert [ast.literal_eval(a.value) for a in assigns] == [["WaveletDiffusion"]]
    generation = ast.parse(module_file("WaveletDiffusion").read_text())
    widget = next(n for n in ast.walk(generation) if isinstance(n, ast.ClassDef) and n.name == "WaveletDiffusionWidget")
    assert "useCheckpoint" in {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}


def test_engine_cmake_installs_the_whole_package():
    cmake = cmake_text(ENGINE / "CMakeLists.txt")
    package = ENGINE / "wdmcore"
    scripts = {p.relative_to(ENGINE).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed_files(cmake, "WDMCORE_PYTHON_SCRIPTS") == scripts
    # Data files: pyproject's package-data patterns; assets/* is globbed by CMake itself.
    pyproject = (ENGINE / "pyproject.toml").read_text()
    patterns = re.search(r"wdmcore = \[(.*?)\]", pyproject).group(1)
    assert set(re.findall(r'"([^"]+)"', patterns)) == {"hub/*.json", "assets/*"}
    data = {p.relative_to(ENGINE).as_posix() for p in package.rglob("*.json") if "assets" not in p.parts}
    assert listed_files(cmake, "WDMCORE_PYTHON_RESOURCES") - {"${_wdmcore_assets}"} == data
    assert "wdmcore/assets/*" in cmake
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in cmake


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
    expected = [d for d in ("WDMCore", "WaveletDiffusion", "WaveletDiffusionTraining") if (REPO_ROOT / d).is_dir()]
    assert subdirs == expected


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_extension_descriptor_follows_the_extensions_index_rules():
    entry = json.loads((REPO_ROOT / "Resources" / "WaveletDiffusion.json").read_text())
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


LIB_FILES = sorted(p for name in MODULES for p in (REPO_ROOT / name / f"{name}Lib").glob("*.py"))


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lib_never_imports_gui_parts(path):
    # wdmcore imports torch: Slicer's own process never loads it (the child processes do).
    forbidden = ("qt", "ctk", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "wdmcore")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"
