"""The modules' in-Slicer self-tests (WaveletDiffusionTest, WaveletDiffusionTrainingTest), run here as Slicer's
ctest runs them: ``slicer.testing.runUnitTest`` loads the module by name with unittest's TestLoader and runs
every ``test_*`` method with TextTestRunner(verbosity=2) (Base/Python/slicer/testing.py:25-28 at v5.10.0 and
v5.12.3). The module files are imported for real, on slicer-core's MRML classes and real worker and trainer child
processes; only what slicer-core lacks stands in: ``qt`` (a timer and settings that are never reached by the
blocking calls the tests use), ``slicer.app`` (testing mode on), ``slicer.i18n``, ``slicer.parameterNodeWrapper``
and ``slicer.ScriptedLoadableModule`` (the test base is unittest.TestCase, as in Slicer).
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
import time
import types
import unittest

import pytest
from slicer_support import MODULE_DIR, TRAINING_MODULE_DIR, register_segmentation_converters, require_slicer

slicer = require_slicer()

STANDIN_MODULES = ("qt", "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule")
MODULES = ("WaveletDiffusion", "WaveletDiffusionTraining")


class App:
    """``slicer.app`` as the self-tests use it."""

    def __init__(self):
        self.testing = True
        self.extensionsInstallPath = ""

    def testingEnabled(self):
        return self.testing

    def processEvents(self):
        pass


def standins() -> dict[str, types.ModuleType]:
    qt = types.ModuleType("qt")
    qt.QTimer = type("QTimer", (), {"singleShot": staticmethod(lambda ms, callback: None)})
    qt.QSettings = type("QSettings", (), {"value": lambda self, key, default=None: default,
                                          "setValue": lambda self, key, value: None})  # fmt: skip

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = wrapper.WithinRange = lambda *args: args

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()  # as Slicer's (ScriptedLoadableModule.py:297-298): the Lib logic's __init__ runs

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None):
            print(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):  # fmt: skip
        setattr(scripted, cls.__name__, cls)
    return {"qt": qt, "slicer.i18n": i18n, "slicer.parameterNodeWrapper": wrapper,
            "slicer.ScriptedLoadableModule": scripted}  # fmt: skip


@pytest.fixture(scope="module")
def app():
    """Both module files imported on the stand-ins, with a fresh MRML scene; everything is undone afterwards."""
    patch = pytest.MonkeyPatch()
    for name, module in standins().items():
        patch.setitem(sys.modules, name, module)
    instance = App()
    patch.setattr(slicer, "app", instance, raising=False)
    patch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    # Slicer's launcher environment: outside Slicer there is none, the test's own is the one children start from.
    patch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    register_segmentation_converters()  # as the Segmentations module does when Slicer starts
    for folder in (MODULE_DIR, TRAINING_MODULE_DIR):
        patch.syspath_prepend(str(folder))
    for name in MODULES:
        patch.delitem(sys.modules, name, raising=False)
        importlib.import_module(name)
    yield instance
    for name in MODULES:
        sys.modules.pop(name, None)
    slicer.mrmlScene.Clear(True)
    patch.undo()


def run_as_slicer_does(name: str) -> tuple[unittest.TestResult, str]:
    """``slicer.testing.runUnitTest``'s two lines, on a test name (module, module.Class or module.Class.method)."""
    stream = io.StringIO()
    suite = unittest.TestLoader().loadTestsFromName(name)
    result = unittest.TextTestRunner(stream=stream, verbosity=2).run(suite)
    return result, stream.getvalue()


def skip_expression(module: str) -> str:
    """The SKIP_REGULAR_EXPRESSION the module's CMakeLists gives ctest."""
    text = (MODULE_DIR.parent / module / "CMakeLists.txt").read_text(encoding="utf-8")
    return re.search(r'SKIP_REGULAR_EXPRESSION "([^"]+)"', text).group(1)


SELF_TESTS = [
    ("WaveletDiffusion", "WaveletDiffusionTest", "test_GenerateDemoVolumes"),
    ("WaveletDiffusion", "WaveletDiffusionTest", "test_SynthesizeDemoPhantom"),
    ("WaveletDiffusion", "WaveletDiffusionTest", "test_InpaintSegmentOfDemoPhantom"),
    ("WaveletDiffusion", "WaveletDiffusionTest", "test_VaryDemoPhantom"),
    ("WaveletDiffusionTraining", "WaveletDiffusionTrainingTest", "test_TrainResumeOnSceneVolumes"),
    ("WaveletDiffusionTraining", "WaveletDiffusionTrainingTest", "test_StopDuringTraining"),
]


def test_the_loader_finds_every_self_test_that_ctest_runs(app):
    def flat(suite):
        return [t for item in suite for t in (flat(item) if isinstance(item, unittest.TestSuite) else [item])]

    found = sorted(t.id() for m in MODULES for t in flat(unittest.TestLoader().loadTestsFromName(m)))
    assert found == sorted(".".join(t) for t in SELF_TESTS)


@pytest.fixture(scope="module")
def outcomes(app):
    """Each module's whole self-test run as ctest runs it (one worker for a class, as in Slicer): per test id,
    "passed", "skipped" or the traceback; and the runner's output."""

    class Recording(unittest.TextTestResult):
        def startTest(self, test):
            super().startTest(test)
            self.started = time.monotonic()

        def stopTest(self, test):
            super().stopTest(test)
            print(f"{test.id()}: {time.monotonic() - self.started:.1f} s")  # shown by pytest -s

        def addSuccess(self, test):
            super().addSuccess(test)
            self.passed.append(test.id())

    runs = {}
    for module in MODULES:
        stream = io.StringIO()
        runner = unittest.TextTestRunner(stream=stream, verbosity=2, resultclass=Recording)
        Recording.passed = []
        result = runner.run(unittest.TestLoader().loadTestsFromName(module))
        states = {name: "passed" for name in Recording.passed}
        states.update({t.id(): "skipped: " + reason for t, reason in result.skipped})
        states.update({t.id(): trace for t, trace in [*result.failures, *result.errors]})
        runs[module] = (states, stream.getvalue())
    return runs


@pytest.mark.parametrize(("module", "cls", "method"), SELF_TESTS, ids=[t[2] for t in SELF_TESTS])
def test_self_test_passes_with_everything_installed(outcomes, module, cls, method):
    states, output = outcomes[module]
    assert states.get(f"{module}.{cls}.{method}") == "passed", output
    assert not re.search(skip_expression(module), output)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("absent", ["torch", "psutil"])
def test_a_missing_requirement_skips_every_self_test_in_testing_mode_and_installs_nothing(app, module, absent,
                                                                                           monkeypatch):  # fmt: skip
    from WaveletDiffusionCommonLib import dependencies

    real = dependencies.installed_version
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None if name == absent else real(name))
    calls = []
    for name in ("pip_install", "confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay"):
        monkeypatch.setattr(slicer.util, name, lambda *a, _name=name, **k: calls.append(_name), raising=False)
    result, output = run_as_slicer_does(module)
    assert result.testsRun == len([t for t in SELF_TESTS if t[0] == module])
    assert len(result.skipped) == result.testsRun and not result.failures and not result.errors, output
    assert all(f"{absent}>=" in reason and "not installed" in reason for _, reason in result.skipped)
    assert calls == []  # no installer, no dialog
    assert re.search(skip_expression(module), output)  # ctest reports it as skipped, not passed


def test_outside_testing_mode_a_missing_requirement_is_offered_not_skipped(app, monkeypatch):
    """Reload and Test in a running Slicer: the test asks as the module's buttons do (and fails when declined)."""
    from WaveletDiffusionCommonLib import dependencies

    real = dependencies.installed_version
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None if name == "psutil" else real(name))
    monkeypatch.setattr(app, "testing", False)
    questions = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **k: questions.append(text) or False, raising=False)  # fmt: skip
    result, output = run_as_slicer_does("WaveletDiffusion.WaveletDiffusionTest.test_VaryDemoPhantom")
    assert len(result.errors) == 1 and not result.skipped, output
    assert "psutil" in questions[0] and "installation was declined" not in questions[0]
