"""First-use dependency decisions, with stand-ins only for Slicer's installers and the packages they add."""

from __future__ import annotations

import pytest
from slicer_support import REPO_ROOT
from WaveletDiffusionCommonLib import dependencies as deps

tomllib = pytest.importorskip("tomllib")

ALL_PRESENT = {"torch": "2.5.1+cu121", "numpy": "1.26.4", "safetensors": "0.4.5", "tqdm": "4.66.0",
               "pooch": "1.8.2", "platformdirs": "4.2.0", "filelock": "3.16.1", "psutil": "6.0.0"}  # fmt: skip


class FakeSlicer:
    """Slicer's installers as seen by the Lib: they record calls and change the installed versions."""

    def __init__(self, installed, *, answer=True, has_pytorch_extension=True, has_pip_ensure=True, loaded=()):
        self.installed = dict(installed)
        self.answer = answer
        self.questions: list[str] = []
        self.calls: list[tuple] = []
        self.loaded = list(loaded)
        self.has_pytorch_extension = has_pytorch_extension
        self.has_pip_ensure = has_pip_ensure

    def confirm(self, question):
        self.questions.append(question)
        return self.answer

    def install_torch(self, requirement):
        self.calls.append(("installTorch", requirement))
        self.installed["torch"] = "2.5.1+cu121"
        return object()  # PyTorchUtils returns the torch module

    def pip_ensure(self, specs):
        self.calls.append(("pip_ensure", list(specs)))
        for spec in specs:
            name, _, version = spec.partition(">=")
            self.installed[name] = version + ".9"

    def pip_install(self, command):
        self.calls.append(("pip_install", command))
        for spec in command.split():
            name, _, version = spec.partition(">=")
            self.installed[name] = version + ".9"

    def offer_restart(self, message):
        self.calls.append(("restart", message))

    def installers(self):
        return deps.Installers(
            confirm=self.confirm,
            install_torch=self.install_torch if self.has_pytorch_extension else None,
            pip_ensure=self.pip_ensure if self.has_pip_ensure else None,
            pip_install=self.pip_install,
            offer_restart=self.offer_restart,
            version_of=self.installed.get,
            loaded_modules=lambda: self.loaded,
        )


def test_requirements_match_the_engine_package():
    project = tomllib.loads((REPO_ROOT / "WDMCore" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {}
    for line in project["dependencies"]:
        name, _, minimum = line.partition(">=")
        declared[name.strip()] = minimum.strip() or None
    ours = {r.distribution: r.minimum for r in (deps.TORCH, *deps.PACKAGES)}
    assert ours == declared
    # psutil is the modules' own (Slicer's process), not the engine's; the tests need it too.
    assert any(line.startswith("psutil>=" + deps.MODULE_PACKAGES[0].minimum) for line in
               tomllib.loads((REPO_ROOT / "WDMCore" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
               ["optional-dependencies"]["test"])  # fmt: skip


def test_version_comparison():
    assert deps.satisfied("2.5.1+cu121", "2.1")
    assert deps.satisfied("2.1", "2.1")
    assert not deps.satisfied("2.0.1", "2.1")
    assert not deps.satisfied(None, "2.1")
    assert deps.version_tuple("1.26.4rc1") == (1, 26, 4)


def test_nothing_missing_means_no_question_and_no_install():
    fake = FakeSlicer(ALL_PRESENT)
    outcome = deps.ensure_dependencies(fake.installers())
    assert fake.questions == [] and fake.calls == []
    assert outcome.installed == [] and not outcome.restart_needed


def test_real_environment_check():
    # This test environment has the engine's packages: the real metadata lookup finds them.
    assert deps.missing([*deps.PACKAGES, *deps.MODULE_PACKAGES]) == []


def test_torch_comes_from_the_pytorch_extension_after_asking():
    fake = FakeSlicer({k: v for k, v in ALL_PRESENT.items() if k != "torch"})
    outcome = deps.ensure_dependencies(fake.installers())
    assert len(fake.questions) == 1 and "PyTorch" in fake.questions[0] and "CUDA" in fake.questions[0]
    assert fake.calls == [("installTorch", ">=2.1")]
    assert outcome.installed == ["torch 2.5.1+cu121"] and not outcome.restart_needed


def test_declined_torch_installs_nothing():
    fake = FakeSlicer({k: v for k, v in ALL_PRESENT.items() if k != "torch"}, answer=False)
    with pytest.raises(deps.DependencyError, match="declined"):
        deps.ensure_dependencies(fake.installers())
    assert fake.calls == []


def test_missing_pytorch_extension_says_where_to_get_it():
    fake = FakeSlicer({}, has_pytorch_extension=False)
    with pytest.raises(deps.DependencyError, match="Extensions Manager"):
        deps.ensure_dependencies(fake.installers())
    assert fake.calls == [] and fake.questions == []


def test_other_packages_go_through_pip_ensure_which_asks_itself():
    fake = FakeSlicer({"torch": "2.3.0", "numpy": "1.26.0", "tqdm": "4.66.0"})
    outcome = deps.ensure_dependencies(fake.installers())
    assert fake.questions == []  # pip_ensure shows its own prompt
    wanted = ["safetensors>=0.4", "pooch>=1.8", "platformdirs>=3", "filelock>=3.12", "psutil>=5.9"]
    assert fake.calls == [("pip_ensure", wanted)]
    assert [s.split()[0] for s in outcome.installed] == ["safetensors", "pooch", "platformdirs", "filelock", "psutil"]


def test_no_sampler_needs_diffusers():
    # Every sampler is the engine's own code; diffusers only cross-checks them in the tests.
    assert all(r.distribution != "diffusers" for r in (*deps.PACKAGES, *deps.MODULE_PACKAGES))
    project = tomllib.loads((REPO_ROOT / "WDMCore" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not any(line.startswith("diffusers") for line in project["dependencies"])


def test_older_slicer_uses_pip_install_after_confirmation_and_asks_for_restart_when_a_loaded_package_changed():
    fake = FakeSlicer({**ALL_PRESENT, "numpy": "1.21.0"}, has_pip_ensure=False, loaded=["numpy", "vtk"])
    outcome = deps.ensure_dependencies(fake.installers())
    assert len(fake.questions) == 1 and "numpy>=1.24 (installed: 1.21.0)" in fake.questions[0]
    assert fake.calls[0] == ("pip_install", "numpy>=1.24")
    assert outcome.restart_needed and outcome.upgraded_loaded == ["numpy"]
    assert fake.calls[-1][0] == "restart" and "numpy" in fake.calls[-1][1]


def test_new_package_that_was_never_loaded_needs_no_restart():
    fake = FakeSlicer({k: v for k, v in ALL_PRESENT.items() if k != "pooch"}, has_pip_ensure=False, loaded=["numpy"])
    outcome = deps.ensure_dependencies(fake.installers())
    assert not outcome.restart_needed and all(call[0] != "restart" for call in fake.calls)


def test_upgrading_a_loaded_torch_asks_for_restart():
    fake = FakeSlicer({**ALL_PRESENT, "torch": "1.13.1"}, loaded=["torch"])
    outcome = deps.ensure_dependencies(fake.installers())
    assert outcome.restart_needed and outcome.upgraded_loaded == ["torch"]
    assert fake.calls[-1][0] == "restart"


def test_declined_pip_install_raises_and_installs_nothing():
    fake = FakeSlicer({"torch": "2.3.0"}, has_pip_ensure=False, answer=False)
    with pytest.raises(deps.DependencyError, match="not installed"):
        deps.ensure_dependencies(fake.installers())
    assert fake.calls == []


def test_an_install_that_does_not_deliver_is_reported():
    fake = FakeSlicer({"torch": "2.3.0"})
    fake.pip_ensure = lambda specs: fake.calls.append(("pip_ensure", specs))  # user cancelled Slicer's dialog
    with pytest.raises(deps.DependencyError, match="still missing"):
        deps.ensure_dependencies(fake.installers())


# ------------------------------------------------------------------------------------------- network backends

QUESTION = "The OpenVINO backend needs {packages}. Install it now?"


def test_backend_packages_are_the_engines_extras():
    project = tomllib.loads((REPO_ROOT / "WDMCore" / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    for backend, requirements in deps.BACKEND_PACKAGES.items():
        assert [r.spec for r in requirements] == extras[backend], backend
    from WaveletDiffusionLib.parameters import BACKENDS

    assert set(deps.BACKEND_PACKAGES) < set(BACKENDS)


def test_an_installed_backend_or_one_without_packages_asks_nothing():
    fake = FakeSlicer({**ALL_PRESENT, "openvino": "2025.1.0"})
    assert deps.offer_backend(fake.installers(), "openvino", question=QUESTION) is None
    fake = FakeSlicer(ALL_PRESENT)  # no OpenVINO: PyTorch and auto need nothing more
    for backend in ("auto", "torch"):
        assert deps.offer_backend(fake.installers(), backend, question=QUESTION) is None
    assert fake.questions == [] and fake.calls == []


def test_openvino_is_installed_as_the_engines_extra_through_pip_ensure():
    fake = FakeSlicer(ALL_PRESENT)
    assert deps.offer_backend(fake.installers(), "openvino", question=QUESTION) is None
    assert fake.calls == [("pip_ensure", ["openvino>=2024.0"])]  # Slicer 5.12 asks itself
    assert fake.installed["openvino"] == "2024.0.9"


def test_older_slicer_asks_the_modules_question_then_pip_installs_openvino():
    fake = FakeSlicer(ALL_PRESENT, has_pip_ensure=False)
    assert deps.offer_backend(fake.installers(), "openvino", question=QUESTION) is None
    assert fake.questions == ["The OpenVINO backend needs openvino>=2024.0 (not installed). Install it now?"]
    assert fake.calls == [("pip_install", "openvino>=2024.0")]


def test_declined_openvino_installs_nothing_and_says_pytorch_runs_instead():
    fake = FakeSlicer(ALL_PRESENT, has_pip_ensure=False, answer=False)
    message = deps.offer_backend(fake.installers(), "openvino", question=QUESTION)
    assert message.startswith("the openvino backend needs openvino>=2024.0 (not installed); PyTorch runs the network")
    assert fake.calls == [] and "openvino" not in fake.installed


def test_in_testing_mode_openvino_is_neither_offered_nor_installed():
    fake = FakeSlicer(ALL_PRESENT)
    message = deps.offer_backend(fake.installers(), "openvino", question=QUESTION, testing=True)
    assert "PyTorch runs the network instead (testing mode installs nothing)" in message
    assert fake.questions == [] and fake.calls == []
