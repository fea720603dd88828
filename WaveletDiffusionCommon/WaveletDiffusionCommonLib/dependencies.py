"""Which Python packages the generation worker needs, and how to get them into Slicer's Python.

Nothing here runs at import time: the module calls :func:`ensure_dependencies` when the user first presses
a button that needs the engine. The decision (what is missing, whom to ask, which installer, whether a restart
is needed) lives here; the installers themselves are Slicer's and come in through :class:`Installers`:

* PyTorch through the SlicerPyTorch extension (``PyTorchUtilsLogic().installTorch``), which picks the CUDA
  build that fits the machine's driver, after asking the user;
* everything else through ``slicer.packaging.pip_ensure`` (Slicer 5.12 and later: it asks, installs and offers
  the restart itself) or, on older Slicer, ``slicer.util.pip_install`` after our own confirmation.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TORCH_REQUIREMENT = ">=2.1"


@dataclass(frozen=True)
class Requirement:
    distribution: str
    """The name pip installs (and importlib.metadata knows)."""
    minimum: str | None = None
    module: str | None = None
    """The import name when it differs from the distribution name."""

    @property
    def spec(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution

    @property
    def import_name(self) -> str:
        return self.module or self.distribution.replace("-", "_").lower()


# Keep in step with [project.dependencies] of WDMCore/pyproject.toml (a test checks it).
TORCH = Requirement("torch", "2.1")
PACKAGES: tuple[Requirement, ...] = (
    Requirement("numpy", "1.24"),
    Requirement("safetensors", "0.4"),
    Requirement("tqdm", "4.60"),
    Requirement("pooch", "1.8"),
    Requirement("platformdirs", "3"),
    Requirement("filelock", "3.12"),  # the model cache's records and one training run per folder
)
# What the modules themselves need in Slicer's process: psutil finds and ends every process of a child's tree
# (PythonSlicer is a launcher whose child is the real interpreter).
MODULE_PACKAGES: tuple[Requirement, ...] = (Requirement("psutil", "5.9"),)


@dataclass(frozen=True)
class Missing:
    requirement: Requirement
    installed: str | None
    """The version present (too old), or None when absent."""

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.requirement.spec} (not installed)"
        return f"{self.requirement.spec} (installed: {self.installed})"


@dataclass
class Installers:
    """The boundary to Slicer. Every callable is Slicer's own (or a test's stand-in)."""

    confirm: Callable[[str], bool]
    """Show a question, return True for OK/Yes."""
    install_torch: Callable[[str], object] | None
    """``PyTorchUtilsLogic().installTorch`` bound to askConfirmation=False; receives the version requirement
    and returns the torch module or None. None here: the PyTorch extension is not installed."""
    pip_ensure: Callable[[list[str]], object] | None = None
    """``slicer.packaging.pip_ensure`` (prompts, installs, offers restart); None on Slicer before 5.12."""
    pip_install: Callable[[str], object] | None = None
    """``slicer.util.pip_install`` (a single command-line string of requirements)."""
    offer_restart: Callable[[str], object] | None = None
    """Tell the user a restart is needed (and offer it)."""
    version_of: Callable[[str], str | None] = field(default=lambda name: installed_version(name))
    loaded_modules: Callable[[], Sequence[str]] = field(default=lambda: list(sys.modules))


class DependencyError(RuntimeError):
    """Dependencies are missing and could not (or may not) be installed."""


@dataclass
class Outcome:
    installed: list[str] = field(default_factory=list)
    upgraded_loaded: list[str] = field(default_factory=list)
    restart_needed: bool = False


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.5.1+cu121"`` -> (2, 5, 1); good enough for ">=" checks of release numbers."""
    numbers = []
    for part in re.split(r"[.+-]", version):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def satisfied(installed: str | None, minimum: str | None) -> bool:
    if installed is None:
        return False
    return minimum is None or version_tuple(installed) >= version_tuple(minimum)


def missing(
    requirements: Sequence[Requirement], version_of: Callable[[str], str | None] = installed_version
) -> list[Missing]:
    """The requirements that are absent or too old."""
    result = []
    for req in requirements:
        version = version_of(req.distribution)
        if not satisfied(version, req.minimum):
            result.append(Missing(req, version))
    return result


# What training needs beyond generation: NIfTI files are read with nibabel, which Slicer's Python lacks
# (SimpleITK, for NRRD/MHA, comes with Slicer).
TRAINING_PACKAGES: tuple[Requirement, ...] = (Requirement("nibabel", "5"),)
# The packages of the engine's optional network backends: its extras of the same name (keep in step with
# [project.optional-dependencies] of WDMCore/pyproject.toml; a test checks it). PyTorch needs nothing more.
BACKEND_PACKAGES: dict[str, tuple[Requirement, ...]] = {"openvino": (Requirement("openvino", "2024.0"),)}


def ensure_dependencies(
    installers: Installers, *, requester: str = "Wavelet Diffusion", extra: Sequence[Requirement] = ()
) -> Outcome:
    """Make sure PyTorch, the engine's packages, the modules' own (psutil) and ``extra`` ones (e.g. nibabel for
    training) are importable; install them if the user agrees. Raises
    :class:`DependencyError` when something stays missing."""
    outcome = Outcome()
    version_of = installers.version_of
    loaded = set(installers.loaded_modules())

    torch_missing = missing([TORCH], version_of)
    if torch_missing:
        item = torch_missing[0]
        if installers.install_torch is None:
            raise DependencyError(
                "PyTorch is needed and the PyTorch extension (SlicerPyTorch) is not installed. Install "
                "'PyTorch' from the Extensions Manager, restart Slicer, and try again."
            )
        question = (
            f"{requester} needs PyTorch {TORCH_REQUIREMENT} ({item.describe()}). Install it now? The PyTorch "
            "extension picks the build for your GPU (CUDA) or the CPU build when there is none; the download can "
            "take several minutes and more than 2 GB."
        )
        if not installers.confirm(question):
            raise DependencyError(f"PyTorch is needed by {requester}; installation was declined.")
        torch = installers.install_torch(TORCH_REQUIREMENT)
        if torch is None or not satisfied(version_of("torch"), TORCH.minimum):
            raise DependencyError(
                "PyTorch could not be installed. Install it from the PyTorch Utils module, then try again."
            )
        outcome.installed.append(f"torch {version_of('torch')}")
        if item.installed is not None and "torch" in loaded:
            outcome.upgraded_loaded.append("torch")
            outcome.restart_needed = True

    others = missing([*PACKAGES, *MODULE_PACKAGES, *extra], version_of)
    if others:
        _install_packages(installers, others, loaded, outcome, requester)

    if outcome.restart_needed and installers.offer_restart is not None:
        installers.offer_restart(
            "Packages that Slicer had already loaded were upgraded ("
            + ", ".join(outcome.upgraded_loaded)
            + "): restart Slicer so that the new versions are used."
        )
    return outcome


def offer_backend(
    installers: Installers, backend: str, *, question: str, requester: str = "Wavelet Diffusion", testing: bool = False
) -> str | None:
    """Offer to install the packages of the network backend ``backend`` (:data:`BACKEND_PACKAGES`: the engine's
    extra of that name) when they are missing, the way the engine's own packages are offered (Slicer's
    ``pip_ensure``, or ``question`` then ``pip_install``; ``question`` may name the missing ``{packages}``).
    Returns None when the backend is ready, else one sentence for the log: the worker runs PyTorch instead (the
    engine's fallback), which is no error. In ``testing`` mode nothing is asked or installed."""
    absent = missing(BACKEND_PACKAGES.get(backend, ()), installers.version_of)
    if not absent:
        return None
    packages = ", ".join(m.describe() for m in absent)
    instead = f"the {backend} backend needs {packages}; PyTorch runs the network instead"
    if testing:
        return f"{instead} (testing mode installs nothing)."
    try:
        _install_packages(installers, absent, set(installers.loaded_modules()), Outcome(), requester,
                          question=question.format(packages=packages))  # fmt: skip
    except DependencyError as exc:
        return f"{instead} ({exc})"
    return None


def _install_packages(
    installers: Installers,
    others: list[Missing],
    loaded: set[str],
    outcome: Outcome,
    requester: str,
    question: str | None = None,
) -> None:
    version_of = installers.version_of
    specs = [m.requirement.spec for m in others]
    if installers.pip_ensure is not None:
        # Slicer's own workflow: it lists the packages, asks, installs with progress and offers the restart
        # for what it upgraded itself.
        installers.pip_ensure(specs)
    else:
        if installers.pip_install is None:
            raise DependencyError(f"missing Python packages: {', '.join(m.describe() for m in others)}")
        question = question or (
            f"{requester} needs these Python packages: {', '.join(m.describe() for m in others)}. Install them now?"
        )
        if not installers.confirm(question):
            raise DependencyError("required Python packages were not installed: " + ", ".join(specs))
        installers.pip_install(" ".join(specs))
        upgraded = [m.requirement.distribution for m in others if m.installed and m.requirement.import_name in loaded]
        if upgraded:
            outcome.upgraded_loaded.extend(upgraded)
            outcome.restart_needed = True

    still = missing([m.requirement for m in others], version_of)
    if still:
        raise DependencyError(
            "these Python packages are still missing: " + ", ".join(m.describe() for m in still) + ". "
            "Install them from the Python console with slicer.util.pip_install, then try again."
        )
    outcome.installed.extend(f"{m.requirement.distribution} {version_of(m.requirement.distribution)}" for m in others)


def testing_skip_reason(
    requester: str, extra: Sequence[Requirement] = (), version_of: Callable[[str], str | None] | None = None
) -> str | None:
    """Why a self-test in Slicer's testing mode must be skipped (None: everything is installed).

    In testing mode nothing may be installed and no dialog may wait: Slicer 5.10's confirmations answer OK by
    themselves (``slicer.util._messageDisplay`` returns its testing value) and its ``pip_install`` installs;
    5.12's ``pip_ensure`` installs nothing there and returns as if it had. So a self-test checks first and skips."""
    absent = missing([TORCH, *PACKAGES, *MODULE_PACKAGES, *extra], version_of or installed_version)
    if not absent:
        return None
    return (
        f"{requester} self-test skipped: {', '.join(m.describe() for m in absent)}; testing mode installs "
        "nothing (install PyTorch from the PyTorch Utils module and open the module once to install the rest)."
    )
