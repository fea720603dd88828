"""Install the WaveletDiffusion extension from this folder (a clone or a release archive) into a downloaded 3D Slicer
5.10 or later, without the Extensions Manager; ``--uninstall`` takes it out again.

Run it with Slicer's own Python (docs/slicer.md, *Install*):

    Slicer --no-main-window --python-script scripts/install_in_slicer.py [--uninstall]

or in Slicer's Python console:

    import runpy; runpy.run_path(r"/path/to/scripts/install_in_slicer.py")["install"]()   # or ["uninstall"]()

What it changes, and nothing else:

* the engine ``WDMCore/`` (package ``wdmcore``) is pip-installed into Slicer's Python without its dependencies
  (PyTorch comes from the PyTorch extension, the engine's other packages from the modules' first-use check);
* a ``WaveletDiffusionCommon.pth`` file in Slicer's site-packages puts ``WaveletDiffusionCommon/`` on Python's
  path: it holds no module, only the packages both modules import, and Slicer adds a folder to ``sys.path`` only
  for the modules it finds in it;
* the folders ``WaveletDiffusion/`` and ``WaveletDiffusionTraining/`` are added to Slicer's additional module
  paths (``Modules/AdditionalPaths`` of the revision-specific settings, where Slicer's module factories read
  them), each once, keeping the other paths and settings.

Outside Slicer (tests, or a Slicer that is not running) name Slicer's revision settings file and its Python:

    python scripts/install_in_slicer.py --settings .../slicer.org/Slicer-NNNNN.ini --python .../bin/PythonSlicer

Exit status 0 on success, 2 with one ``install_in_slicer: error: ...`` line when something is wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = ("WaveletDiffusion", "WaveletDiffusionTraining")
COMMON_FOLDER = "WaveletDiffusionCommon"
COMMON_PACKAGES = ("WaveletDiffusionCommonLib", "WaveletDiffusionCommonWidgets")
ENGINE_FOLDER = "WDMCore"
ENGINE_DISTRIBUTION = "wdmcore"
PTH_NAME = "WaveletDiffusionCommon.pth"
EXTENSION_NAME = "WaveletDiffusion"
SETTINGS_SECTION = "Modules"
SETTINGS_KEY = "AdditionalPaths"
MINIMUM_SLICER = (5, 10)
MINIMUM_PYTHON = (3, 10)
PROG = "install_in_slicer"

# What the target interpreter reports about itself: its version, where pip puts pure-Python packages, and its
# setuptools (with a recent enough one pip builds the engine without fetching build tools from the network).
PROBE = """
import json, sys, sysconfig
try:
    import setuptools
    setuptools_version = setuptools.__version__
except Exception:
    setuptools_version = None
try:
    import pip
    pip_version = pip.__version__
except Exception:
    pip_version = None
print(json.dumps({"version": list(sys.version_info[:2]), "purelib": sysconfig.get_paths()["purelib"],
                  "setuptools": setuptools_version, "pip": pip_version}))
"""


class InstallError(Exception):
    """Something the user must fix; the message says what was wrong and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Qt's INI encoding of a string list (QSettings::IniFormat), for the settings file outside Slicer. Inside Slicer the
# script goes through Slicer's own QSettings object instead.


def parse_qt_string_list(value: str) -> list[str]:
    """The string list a QSettings INI value holds (Qt's iniUnescapedStringList, then stringToVariant)."""
    value = value.strip(" \t")
    if value == "@Invalid()" or value == "":
        return []
    if value.startswith("@") and not value.startswith("@@"):
        raise InstallError(
            f"the settings value {value[:40]!r} is not a list of folders; fix Modules/AdditionalPaths in Slicer's "
            "Application Settings (Modules) and run this script again."
        )
    items: list[str] = []
    current: list[str] = []
    quoted_item = in_quotes = False
    chop_limit = 0
    i, n = 0, len(value)
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", '"': '"', "?": "?",
              "'": "'", "\\": "\\"}  # fmt: skip

    def chop(limit: int) -> None:
        while len(current) > limit and current[-1] in (" ", "\t"):
            current.pop()

    while i < n:
        ch = value[i]
        if ch == "\\":
            i += 1
            if i >= n:
                break
            ch = value[i]
            i += 1
            if ch in simple:
                current.append(simple[ch])
            elif ch == "x":
                digits = re.match(r"[0-9a-fA-F]*", value[i:]).group(0)
                if digits:
                    current.append(chr(int(digits, 16)))
                    i += len(digits)
            elif ch in "01234567":
                digits = re.match(r"[0-7]*", value[i:]).group(0)
                current.append(chr(int(ch + digits, 8)))
                i += len(digits)
            chop_limit = len(current)
        elif ch == '"':
            i += 1
            quoted_item = True
            in_quotes = not in_quotes
            if not in_quotes:
                while i < n and value[i] in " \t":
                    i += 1
        elif ch == "," and not in_quotes:
            if not quoted_item:
                chop(chop_limit)
            items.append("".join(current))
            current, quoted_item, chop_limit = [], False, 0
            i += 1
            while i < n and value[i] in " \t":
                i += 1
        else:
            end = i + 1
            while end < n and value[end] not in '\\",':
                end += 1
            current.append(value[i:end])
            i = end
    if not quoted_item:
        chop(chop_limit)
    items.append("".join(current))
    # Qt doubles a leading "@" of each item (a single "@" starts a typed value such as @Variant(...)).
    return [item[1:] if item.startswith("@@") else item for item in items if item]


def format_qt_string(text: str) -> str:
    """One string as QSettings writes it into an INI file (Qt's iniEscapedString; non-ASCII as \\x escapes,
    which every Qt version reads)."""
    if text.startswith("@"):
        text = "@" + text
    out: list[str] = []
    needs_quotes = False
    escape_next_if_hex = False
    escapes = {"\0": "\\0", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}  # fmt: skip
    for ch in text:
        if ch in ";,=":
            needs_quotes = True
        if escape_next_if_hex and ch in "0123456789abcdefABCDEF":
            out.append(f"\\x{ord(ch):x}")
            continue
        escape_next_if_hex = False
        if ch in escapes:
            out.append(escapes[ch])
            escape_next_if_hex = ch == "\0"
        elif ord(ch) <= 0x1F or ord(ch) >= 0x7F:
            out.append(f"\\x{ord(ch):x}")
            escape_next_if_hex = True
        else:
            out.append(ch)
    result = "".join(out)
    if needs_quotes or (result and (result[0] == " " or result[-1] == " ")):
        result = f'"{result}"'
    return result


def format_qt_string_list(items: list[str]) -> str:
    return "@Invalid()" if not items else ", ".join(format_qt_string(item) for item in items)


# ---------------------------------------------------------------------------------------------------------------
# Where the additional module paths live: Slicer's settings object, or the settings file itself.


class SettingsFile:
    """``[Modules] AdditionalPaths`` of a QSettings INI file; every other line is kept as it is. The file is
    replaced in one step (a temporary file beside it, then a rename), never half-written."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise InstallError(
                f"the settings file {path} does not exist; start that Slicer once (it writes the file) or give "
                "the file that Slicer's Python console shows for slicer.app.slicerRevisionUserSettingsFilePath."
            )

    def _lines(self) -> list[str]:
        return self.path.read_bytes().decode("utf-8", errors="surrogateescape").splitlines(keepends=True)

    def _find(self, lines: list[str]) -> tuple[int | None, int | None, int]:
        """(index of the [Modules] header, index of the AdditionalPaths line, index after the section's last
        non-blank line)."""
        header = key = None
        end = len(lines)
        for index, line in enumerate(lines):
            section = re.match(r"\s*\[(.*)\]\s*$", line)
            if section:
                if header is not None and end == len(lines):
                    end = index
                if section.group(1) == SETTINGS_SECTION:
                    if header is not None:
                        raise InstallError(
                            f"{self.path} holds two [{SETTINGS_SECTION}] sections; open Slicer's Application "
                            "Settings once (it rewrites the file) and run this script again."
                        )
                    header, end = index, len(lines)
            elif header is not None and end == len(lines) and re.match(rf"\s*{SETTINGS_KEY}\s*=", line):
                if key is not None:
                    raise InstallError(
                        f"{self.path} names {SETTINGS_KEY} twice; open Slicer's Application Settings once (it "
                        "rewrites the file) and run this script again."
                    )
                key = index
        if header is not None:
            while end - 1 > header and not lines[end - 1].strip():
                end -= 1
        return header, key, end

    def read(self) -> list[str]:
        lines = self._lines()
        _, key, _ = self._find(lines)
        if key is None:
            return []
        return parse_qt_string_list(lines[key].split("=", 1)[1].rstrip("\r\n"))

    def write(self, paths: list[str]) -> None:
        lines = self._lines()
        newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
        header, key, end = self._find(lines)
        entry = f"{SETTINGS_KEY}={format_qt_string_list(paths)}{newline}"
        if key is not None:
            lines[key] = entry
        elif header is not None:
            if not lines[end - 1].endswith(("\n", "\r")):
                lines[end - 1] += newline
            lines.insert(end, entry)
        else:
            if lines and not lines[-1].endswith(("\n", "\r")):
                lines[-1] += newline
            if lines and lines[-1].strip():
                lines.append(newline)
            lines += [f"[{SETTINGS_SECTION}]{newline}", entry]
        replace_file(self.path, "".join(lines).encode("utf-8", errors="surrogateescape"))

    def absolute(self, path: str) -> str:
        return path

    def describe(self) -> str:
        return str(self.path)


class SlicerSettings:
    """The running Slicer's revision-specific settings (``slicer.app.revisionUserSettings()``), where its module
    factories read ``Modules/AdditionalPaths``; going through Slicer's own QSettings object keeps what Slicer holds
    in memory and the file in step (QSettings writes the file atomically)."""

    def __init__(self, app):
        self.app = app
        self.settings = app.revisionUserSettings()

    def read(self) -> list[str]:
        value = self.settings.value(f"{SETTINGS_SECTION}/{SETTINGS_KEY}")
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        return [str(path) for path in value if str(path)]

    def write(self, paths: list[str]) -> None:
        # As Slicer's own writers store them (ExtensionWizard.py, qSlicerExtensionsManagerModel.cxx): relative to
        # Slicer's folder where they lie in it.
        self.settings.setValue(f"{SETTINGS_SECTION}/{SETTINGS_KEY}", self.app.toSlicerHomeRelativePaths(list(paths)))
        self.settings.sync()

    def absolute(self, path: str) -> str:
        return self.app.toSlicerHomeAbsolutePath(path)

    def describe(self) -> str:
        return self.settings.fileName()


def replace_file(path: Path, data: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def same_folder(a: str, b: str) -> bool:
    return os.path.normcase(os.path.normpath(a)) == os.path.normcase(os.path.normpath(b))


def module_paths(root: Path) -> list[str]:
    """The module folders as Slicer stores paths (forward slashes on every system)."""
    return [(root / name).as_posix() for name in MODULE_FOLDERS]


def add_paths(settings, wanted: list[str]) -> list[str]:
    """Append the folders that are not there yet; returns those added."""
    current = settings.read()
    added = [p for p in wanted if not any(same_folder(settings.absolute(c), p) for c in current)]
    if added:
        settings.write(current + added)
    return added


def remove_paths(settings, unwanted: list[str]) -> list[str]:
    """Remove exactly these folders (every spelling of them); returns the entries removed."""
    current = settings.read()
    removed = [c for c in current if any(same_folder(settings.absolute(c), p) for p in unwanted)]
    if removed:
        settings.write([c for c in current if c not in removed])
    return removed


# ---------------------------------------------------------------------------------------------------------------
# Slicer's Python: checking it, pip, and the .pth file.


def check_sources(root: Path) -> None:
    """Every folder the install points at exists: an incomplete archive is caught before anything changes."""
    needed = [root / ENGINE_FOLDER / "pyproject.toml", root / ENGINE_FOLDER / "wdmcore" / "__init__.py"]
    needed += [root / name / f"{name}.py" for name in MODULE_FOLDERS]
    needed += [root / COMMON_FOLDER / package / "__init__.py" for package in COMMON_PACKAGES]
    for path in needed:
        if not path.is_file():
            raise InstallError(
                f"{path} is missing, so {root} is not a complete copy of the extension; download the release "
                "archive again (or clone the repository) and run the script from its scripts/ folder."
            )


def run_quietly(command: list[str]) -> subprocess.CompletedProcess:
    flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window flashing up over Slicer on Windows
    return subprocess.run(command, capture_output=True, text=True, creationflags=flags, check=False)


def probe(python: str) -> dict:
    try:
        result = run_quietly([python, "-c", PROBE])
    except OSError as error:
        raise InstallError(
            f"cannot run the Python {python} ({error.strerror or error}); name Slicer's PythonSlicer executable "
            "with --python."
        ) from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"the Python {python} failed to start ({last}); name Slicer's PythonSlicer with --python.")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    if tuple(info["version"]) < MINIMUM_PYTHON:
        raise InstallError(
            f"{python} is Python {'.'.join(map(str, info['version']))}, and the engine needs Python 3.10 or later; "
            "install Slicer 5.10 or later (it ships Python 3.12)."
        )
    if info["pip"] is None:
        raise InstallError(
            f"{python} has no pip; run the script with Slicer's own Python (PythonSlicer), which has it."
        )
    return info


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def required_setuptools(root: Path) -> tuple[int, ...]:
    """The setuptools the engine's pyproject.toml asks for to build (one home for that number)."""
    text = (root / ENGINE_FOLDER / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'"setuptools\s*>=\s*([\d.]+)"', text)
    return version_tuple(match.group(1)) if match else (0,)


def pip_install_command(python: str, info: dict, root: Path) -> list[str]:
    command = [python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-input",
               "--disable-pip-version-check", "--no-warn-script-location"]  # fmt: skip
    # Slicer 5.10 bundles setuptools 80.9 (SuperBuild/External_python-setuptools.cmake): building with it needs no
    # network. Without it pip fetches the build tools in an isolated environment, which needs the network.
    if info["setuptools"] and version_tuple(info["setuptools"]) >= required_setuptools(root):
        command.append("--no-build-isolation")
    return [*command, str(root / ENGINE_FOLDER)]


def pip_install_engine(python: str, info: dict, root: Path) -> None:
    command = pip_install_command(python, info, root)
    result = run_quietly(command)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).strip().splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {result.returncode}"
        hint = ("connect to the internet (pip needs it to fetch setuptools, which this Python lacks) and run the "
                "script again" if "--no-build-isolation" not in command else "read pip's message above and run the "
                "script again once it is fixed")  # fmt: skip
        print("\n".join(lines[-15:]), file=sys.stderr)
        raise InstallError(f"pip could not install the engine from {root / ENGINE_FOLDER} ({detail}); {hint}.")


def pip_uninstall_engine(python: str) -> bool:
    """Whether an installed wdmcore was removed."""
    command = [python, "-m", "pip", "uninstall", "--yes", "--disable-pip-version-check", ENGINE_DISTRIBUTION]
    result = run_quietly(command)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).strip().splitlines() if line.strip()]
        raise InstallError(
            f"pip could not uninstall {ENGINE_DISTRIBUTION} ({lines[-1].strip() if lines else result.returncode}); "
            "close every Slicer and run the script again."
        )
    return "Successfully uninstalled" in result.stdout


def write_pth(purelib: Path, root: Path) -> Path:
    path = purelib / PTH_NAME
    replace_file(path, (str(root / COMMON_FOLDER) + "\n").encode("utf-8"))
    return path


# ---------------------------------------------------------------------------------------------------------------


def slicer_application():
    """The running Slicer application, or None outside Slicer (PythonSlicer and plain Python have no ``slicer.app``;
    slicer-core's ``slicer`` package has none either)."""
    try:
        from slicer import app
    except ImportError:
        return None
    return app


def slicer_python() -> str:
    """Slicer's Python as Slicer's own pip helpers run it (slicer.util._executePythonModule): PythonSlicer, which
    Slicer puts on its PATH; it is a launcher that sets up the environment and starts the real interpreter."""
    python = shutil.which("PythonSlicer")
    if not python:
        raise InstallError(
            "PythonSlicer is not on this Slicer's PATH; run the script with --settings FILE --python "
            "SLICER_HOME/bin/PythonSlicer instead."
        )
    return python


def check_slicer(app) -> None:
    version = (int(app.majorVersion), int(app.minorVersion))
    if version < MINIMUM_SLICER:
        raise InstallError(
            f"this is Slicer {version[0]}.{version[1]}, and the extension needs Slicer 5.10 or later (Python 3.12); "
            "download a current Slicer from download.slicer.org."
        )
    manager = app.extensionsManagerModel() if hasattr(app, "extensionsManagerModel") else None
    if manager is not None and manager.isExtensionInstalled(EXTENSION_NAME):
        raise InstallError(
            f"the {EXTENSION_NAME} extension is already installed through the Extensions Manager; uninstall it "
            "there first, or keep it and do not run this script."
        )


NOT_IN_SLICER = (
    "not running inside Slicer and no --settings given; run it with Slicer "
    "(Slicer --no-main-window --python-script scripts/install_in_slicer.py) or name Slicer's settings file and "
    "Python with --settings FILE --python EXE."
)


def install_extension(settings, python: str, root: Path = REPO_ROOT, out=print) -> list[str]:
    """Install from ``root`` into ``python`` and ``settings``; returns the module paths added (none when they were
    there already). Nothing changes in the settings unless the engine was installed."""
    check_sources(root)
    info = probe(python)
    out(f"Installing the engine (wdmcore) into {python} ...")
    pip_install_engine(python, info, root)
    out(f"Installed wdmcore into {info['purelib']} (PyTorch and the engine's packages are offered on first use).")
    pth = write_pth(Path(info["purelib"]), root)
    out(f"Wrote {pth}: it puts {root / COMMON_FOLDER} on Python's path.")
    added = add_paths(settings, module_paths(root))
    for path in module_paths(root):
        state = "added to" if path in added else "already in"
        out(f"{path} {state} the additional module paths ({settings.describe()}).")
    return added


def uninstall_extension(settings, python: str, root: Path = REPO_ROOT, out=print) -> list[str]:
    """Undo :func:`install_extension`; returns the module-path entries removed."""
    removed = remove_paths(settings, module_paths(root))
    for path in removed:
        out(f"Removed {path} from the additional module paths ({settings.describe()}).")
    if not removed:
        out(f"The module folders of {root} were not among the additional module paths.")
    info = probe(python)
    pth = Path(info["purelib"]) / PTH_NAME
    if pth.exists():
        pth.unlink()
        out(f"Removed {pth}.")
    out("Uninstalled wdmcore." if pip_uninstall_engine(python) else "wdmcore was not installed.")
    return removed


def install() -> int:
    """From Slicer's Python console: install, then offer to restart."""
    return main([])


def uninstall() -> int:
    """From Slicer's Python console: uninstall, then offer to restart."""
    return main(["--uninstall"])


def ask_to_restart(message: str) -> None:
    import slicer

    if slicer.util.mainWindow() is not None:
        if slicer.util.confirmYesNoDisplay(f"{message}\n\nRestart Slicer now?", windowTitle="Wavelet Diffusion"):
            slicer.util.restart()
    else:
        print(f"{message} Restart Slicer.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--uninstall", action="store_true", help="remove what an earlier install added")
    parser.add_argument("--settings", type=Path, help="Slicer's revision settings file (outside Slicer only)")
    parser.add_argument("--python", help="Slicer's Python, e.g. SLICER_HOME/bin/PythonSlicer (outside Slicer only)")
    args = parser.parse_args(argv)
    app = slicer_application()
    try:
        if args.settings is None:
            if app is None:
                raise InstallError(NOT_IN_SLICER)
            if not args.uninstall:
                check_slicer(app)
            settings = SlicerSettings(app)
            python = args.python or slicer_python()
        else:
            if args.python is None:
                raise InstallError(
                    "--settings needs --python too: name Slicer's Python (SLICER_HOME/bin/PythonSlicer, on macOS "
                    "Slicer.app/Contents/bin/PythonSlicer), so that the engine goes into Slicer's Python."
                )
            settings, python = SettingsFile(args.settings), args.python
        if args.uninstall:
            uninstall_extension(settings, python)
            message = "WaveletDiffusion was removed; it is gone after a restart."
        else:
            install_extension(settings, python)
            message = "WaveletDiffusion is installed; its modules appear after a restart."
    except InstallError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if app is not None and args.settings is None:
        ask_to_restart(message)
    else:
        print(f"{message} Restart Slicer if it is running.")
    return 0


def _arguments_for_this_script() -> list[str]:
    """Inside Slicer sys.argv holds the script's arguments only when Slicer ran this file (--python-script)."""
    if sys.argv and Path(sys.argv[0]).name == Path(__file__).name:
        return sys.argv[1:]
    return []


if __name__ == "__main__":
    status = main(_arguments_for_this_script())
    application = slicer_application()
    if application is not None and not application.commandOptions().noMainWindow:
        pass  # started from the GUI (e.g. --python-script with a window): Slicer keeps running
    elif application is not None:
        import slicer

        slicer.util.exit(status)  # --python-script does not end Slicer by itself
    else:
        sys.exit(status)
