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

MODULE = REPO_ROOT / "WaveletDiffusion"
MODULE_FILE = MODULE / "WaveletDiffusion.py"
UI_FILE = MODULE / "Resources" / "UI" / "WaveletDiffusion.ui"
ENGINE = REPO_ROOT / "WDMCore"


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def cmake_text(path: Path) -> str:
    return re.sub(r"#.*", "", path.read_text())


def listed_files(cmake: str, variable: str) -> set[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", cmake, re.S)
    assert match, f"{variable} not set"
    return set(match.group(1).split())


def test_every_widget_the_module_uses_exists_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    missing = used - set(ui_widgets())
    assert used and not missing, f"widgets used in the code but missing from the .ui: {sorted(missing)}"


def test_ui_parameter_names_are_fields_of_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "WaveletDiffusionParameterNode")
    fields = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    named = set()
    for widget in ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                named.add(prop.find("string").text)
    assert named and named <= fields, f"unknown parameter names in the .ui: {sorted(named - fields)}"


def test_ui_uses_only_widgets_slicer_provides():
    allowed = {"qMRMLWidget", "ctkCollapsibleButton", "QComboBox", "QPushButton", "QLabel", "QSpinBox",
               "QProgressBar", "QLineEdit", "QCheckBox", "QPlainTextEdit"}  # fmt: skip
    classes = {w.get("class") for w in ui_widgets().values()}
    assert classes <= allowed, classes - allowed


def test_module_cmake_lists_every_script_and_resource():
    cmake = cmake_text(MODULE / "CMakeLists.txt").replace("${MODULE_NAME}", "WaveletDiffusion")
    scripts = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    resources = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert listed_files(cmake, "MODULE_PYTHON_SCRIPTS") == scripts
    assert listed_files(cmake, "MODULE_PYTHON_RESOURCES") == resources


def test_engine_cmake_installs_the_whole_package():
    cmake = cmake_text(ENGINE / "CMakeLists.txt")
    package = ENGINE / "wdmcore"
    scripts = {p.relative_to(ENGINE).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed_files(cmake, "WDMCORE_PYTHON_SCRIPTS") == scripts
    # Data files: pyproject's package-data patterns; assets/* is globbed by CMake itself.
    pyproject = (ENGINE / "pyproject.toml").read_text()
    patterns = re.search(r"wdmcore = \[(.*?)\]", pyproject).group(1)
    assert set(re.findall(r'"([^"]+)"', patterns)) == {"*.json", "assets/*"}
    data = {f"wdmcore/{p.name}" for p in package.glob("*.json")}
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
    assert png_size(MODULE / "Resources" / "Icons" / "WaveletDiffusion.png") == (128, 128)


@pytest.mark.parametrize("path", sorted((MODULE / "WaveletDiffusionLib").glob("*.py")), ids=lambda p: p.name)
def test_lib_never_imports_gui_parts(path):
    forbidden = ("qt", "ctk", "slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"
