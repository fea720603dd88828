"""scripts/install_in_slicer.py, run as Slicer's users run it outside Slicer: a venv stands in for Slicer's Python and
an INI file for Slicer's revision settings file (docs/slicer.md, *Install*)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from slicer_support import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "install_in_slicer.py"
SPEC = importlib.util.spec_from_file_location("install_in_slicer", SCRIPT)
installer = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(installer)

OTHER_PATH = "/opt/other extension/lib/Slicer-5.10/qt-scripted-modules"
SETTINGS = f"""[General]
language=en_US

[Modules]
AdditionalPaths={installer.format_qt_string_list([OTHER_PATH, "C:/Ext, with comma"])}
HomeModule=Welcome

[Python]
DockableWindow=true
"""


def bin_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture
def slicer_python(tmp_path) -> Path:
    """A venv without packages standing in for Slicer's Python. It gets this interpreter's pip and setuptools
    through a .pth file naming a folder that holds only them (offline, and no wdmcore comes with them): Slicer's
    Python bundles both (setuptools 80.9), so pip builds the engine there with --no-build-isolation, as here."""
    venv = tmp_path / "slicer-python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = bin_python(venv)
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    tools = tmp_path / "build-tools"
    tools.mkdir()
    # Found without importing them: importing setuptools here would install its distutils shim into this process.
    site = Path(importlib.util.find_spec("setuptools").origin).parent.parent
    assert Path(importlib.util.find_spec("pip").origin).parent.parent == site
    for item in site.iterdir():
        if item.name.split("-")[0] in ("pip", "setuptools", "_distutils_hack", "pkg_resources"):
            (tools / item.name).symlink_to(item)
    Path(purelib, "build-tools.pth").write_text(f"{tools}\n", encoding="utf-8")
    return python


def run_script(*args, env=None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_INDEX")}
    environment.update(env or {})
    # pip's messages hold non-ASCII characters (box drawing) whatever the locale: read them as UTF-8.
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=environment, timeout=300)  # fmt: skip


def imports(python: Path, module: str) -> str | None:
    """Where ``module`` comes from in that Python (started clean, in an empty folder), or None."""
    code = f"import importlib.util as u; s = u.find_spec({module!r}); print(s.origin if s else '')"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    return out or None


def test_install_twice_then_uninstall_changes_exactly_what_it_says(tmp_path, slicer_python):
    settings = tmp_path / "Slicer-34045.ini"
    settings.write_text(SETTINGS, encoding="utf-8")
    assert imports(slicer_python, "wdmcore") is None

    first = run_script("--settings", settings, "--python", slicer_python)
    assert first.returncode == 0, first.stderr
    second = run_script("--settings", settings, "--python", slicer_python)  # idempotent
    assert second.returncode == 0, second.stderr
    assert "already in the additional module paths" in second.stdout

    written = installer.SettingsFile(settings).read()
    ours = [(REPO_ROOT / name).resolve().as_posix() for name in ("WaveletDiffusion", "WaveletDiffusionTraining")]
    assert written == [OTHER_PATH, "C:/Ext, with comma", *ours]
    text = settings.read_text(encoding="utf-8")
    for kept in ("language=en_US", "HomeModule=Welcome", "DockableWindow=true", "[General]", "[Python]"):
        assert kept in text
    assert text.count("AdditionalPaths=") == 1
    assert not list(tmp_path.glob(".Slicer-34045.ini.*"))  # no temporary file left behind

    # The engine is a real installed copy in that Python, not this checkout seen through a path.
    origin = imports(slicer_python, "wdmcore")
    assert origin and Path(origin).resolve().is_relative_to((tmp_path / "slicer-python").resolve())
    assert imports(slicer_python, "wdmcore.hub") is not None
    version = subprocess.run([slicer_python, "-c", "import wdmcore.version as v; print(v.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert version == re.search(r'version = "([^"]+)"', (REPO_ROOT / "WDMCore/pyproject.toml").read_text()).group(1)
    common = imports(slicer_python, "WaveletDiffusionCommonLib")
    assert common and Path(common).resolve().is_relative_to(REPO_ROOT / "WaveletDiffusionCommon")

    out = run_script("--uninstall", "--settings", settings, "--python", slicer_python)
    assert out.returncode == 0, out.stderr
    assert installer.SettingsFile(settings).read() == [OTHER_PATH, "C:/Ext, with comma"]
    assert imports(slicer_python, "wdmcore") is None
    assert imports(slicer_python, "WaveletDiffusionCommonLib") is None
    assert settings.read_text(encoding="utf-8") == SETTINGS  # the line is written back as it was


def test_install_adds_the_section_to_a_settings_file_without_one(tmp_path, slicer_python):
    settings = tmp_path / "Slicer-1.ini"
    settings.write_text("[General]\r\nlanguage=de_DE", encoding="utf-8")  # Windows line ends, no final newline
    assert run_script("--settings", settings, "--python", slicer_python).returncode == 0
    text = settings.read_bytes().decode()
    assert text.startswith("[General]\r\nlanguage=de_DE\r\n\r\n[Modules]\r\nAdditionalPaths=")
    assert len(installer.SettingsFile(settings).read()) == 2
    assert run_script("--uninstall", "--settings", settings, "--python", slicer_python).returncode == 0
    assert installer.SettingsFile(settings).read() == []


def test_without_slicer_or_settings_it_says_how_to_run_it(tmp_path):
    out = run_script()
    assert out.returncode == 2
    assert "not running inside Slicer and no --settings given" in out.stderr
    assert "--python-script scripts/install_in_slicer.py" in out.stderr
    settings = tmp_path / "Slicer.ini"
    settings.write_text("", encoding="utf-8")
    out = run_script("--settings", settings)
    assert out.returncode == 2 and "--settings needs --python too" in out.stderr
    out = run_script("--settings", tmp_path / "missing.ini", "--python", sys.executable)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_an_incomplete_archive_is_refused_before_anything_changes(tmp_path, slicer_python):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("WaveletDiffusion", "WaveletDiffusionTraining", "WaveletDiffusionCommon"):
        (archive / name).symlink_to(REPO_ROOT / name)
    (archive / "WDMCore").mkdir()
    (archive / "WDMCore" / "pyproject.toml").write_text("[project]\n", encoding="utf-8")  # wdmcore/ missing
    (archive / "scripts").mkdir()
    script = archive / "scripts" / SCRIPT.name
    script.write_text(SCRIPT.read_text(encoding="utf-8"), encoding="utf-8")  # it finds its folder from its own path
    settings = tmp_path / "Slicer-1.ini"
    settings.write_text(SETTINGS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(script), "--settings", str(settings), "--python", str(slicer_python)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 2
    assert "wdmcore" in out.stderr and "is not a complete copy of the extension" in out.stderr
    assert settings.read_text(encoding="utf-8") == SETTINGS
    assert imports(slicer_python, "wdmcore") is None


def test_pip_failing_leaves_the_settings_alone_and_says_why(tmp_path, slicer_python):
    """An offline Slicer Python without setuptools: pip must fetch the build tools and cannot."""
    tools_pth = next(Path(p) for p in tmp_path.glob("slicer-python/**/build-tools.pth"))
    tools = Path(tools_pth.read_text().strip())
    for item in tools.iterdir():
        if item.name.startswith(("setuptools", "_distutils_hack", "pkg_resources")):
            item.unlink()
    settings = tmp_path / "Slicer-1.ini"
    settings.write_text(SETTINGS, encoding="utf-8")
    out = run_script("--settings", settings, "--python", slicer_python,
                     env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""})  # fmt: skip
    assert out.returncode == 2
    assert "pip could not install the engine" in out.stderr and "connect to the internet" in out.stderr
    assert settings.read_text(encoding="utf-8") == SETTINGS
    assert imports(slicer_python, "wdmcore") is None


@pytest.mark.parametrize(
    "items",
    [[], ["/a/b"], ["/a/b", "/c d/e"], ["C:/x,y", " lead", 'quote"d', "back\\slash", "über/ß", "@at", "semi;colon"]],
)
def test_qt_string_list_round_trip(items):
    assert installer.parse_qt_string_list(installer.format_qt_string_list(items)) == items


def test_qt_string_lists_as_qt_writes_them():
    # Lines QSettings (Qt 5) writes for these lists.
    assert installer.parse_qt_string_list("/a, /b") == ["/a", "/b"]
    assert installer.parse_qt_string_list('"C:/x,y", /b') == ["C:/x,y", "/b"]
    assert installer.parse_qt_string_list("/\\xfc\\x62\\x65r") == ["/über"]
    assert installer.parse_qt_string_list("@Invalid()") == []
    assert installer.format_qt_string("/über") == "/\\xfc\\x62\\x65r"  # a hex digit after \x is escaped too


def test_the_script_knows_the_folders_the_extension_builds():
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    subdirs = re.findall(r"add_subdirectory\((\w+)\)", cmake)
    modules = [
        d for d in subdirs if "slicerMacroBuildScriptedModule(" in (REPO_ROOT / d / "CMakeLists.txt").read_text()
    ]
    assert list(installer.MODULE_FOLDERS) == modules
    assert installer.COMMON_FOLDER in subdirs and installer.ENGINE_FOLDER in subdirs
    common = sorted(p.name for p in (REPO_ROOT / installer.COMMON_FOLDER).iterdir() if (p / "__init__.py").is_file())
    assert list(installer.COMMON_PACKAGES) == common


def test_the_install_section_names_what_the_script_does():
    docs = (REPO_ROOT / "docs" / "slicer.md").read_text(encoding="utf-8")
    section = docs.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    assert docs.index("\n## Install\n") < docs.index("\n## Using the module\n")
    for text in ("--python-script SlicerWaveletDiffusion/scripts/install_in_slicer.py", '["install"]()',
                 '["uninstall"]()', "--uninstall", "--settings", "--python", installer.PTH_NAME, "3d-slicer-extension",
                 "Modules/AdditionalPaths"):  # fmt: skip
        assert text in section, text
    for option in ("--uninstall", "--settings", "--python"):
        assert option in SCRIPT.read_text(encoding="utf-8")
    entry = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    assert entry == json.loads((REPO_ROOT / "Resources" / "WaveletDiffusion.json").read_text(encoding="utf-8"))
    assert "docs/slicer.md#install" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_pip_builds_offline_only_with_a_setuptools_that_can_build_the_engine():
    """setuptools 65.5 (what Python 3.11's ensurepip brings) refuses the engine's `license = "MIT"`; Slicer 5.10
    bundles 80.9. Below pyproject's floor pip must build in isolation, fetching a setuptools that can."""
    pyproject = (REPO_ROOT / "WDMCore" / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = "MIT"' in pyproject and installer.required_setuptools(REPO_ROOT) >= (77,)
    info = {"setuptools": "80.9.0"}
    assert "--no-build-isolation" in installer.pip_install_command("py", info, REPO_ROOT)
    for old in ("65.5.0", None):
        command = installer.pip_install_command("py", {"setuptools": old}, REPO_ROOT)
        assert "--no-build-isolation" not in command and "--no-deps" in command
