"""What both modules' widgets use: the help text's link, error details, the message for an older Slicer, Slicer's
installers for the first-use dependency check, and durations as text."""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _
from WaveletDiffusionCommonLib import dependencies, support

DOCUMENTATION_URL = "https://github.com/WaveletDiffusion/SlicerWaveletDiffusion/blob/main/docs/slicer.md"
CONTRIBUTORS = ["SlicerWaveletDiffusion project (https://github.com/WaveletDiffusion/SlicerWaveletDiffusion)"]


def documentationLink(url: str = DOCUMENTATION_URL) -> str:
    """The help text's link, worded like ScriptedLoadableModule.getDefaultModuleDocumentationLink (which would
    point at Slicer's own documentation, not an extension's)."""
    text = _("For more information, see the {url_start}online documentation{url_end}.")
    return "<p>" + text.format(url_start=f'<a href="{url}">', url_end="</a>") + "</p>"


def errorDetails(detail) -> dict:
    """errorDisplay's keywords: PythonQt would show None as the text "None" under "Show Details"."""
    return {"detailedText": str(detail)} if detail else {}


def showUnsupportedPython(layout, moduleTitle: str) -> bool:
    """On a Slicer older than 5.10 (Python < 3.10) put one clear message in the panel; True when it did."""
    message = support.unsupported_message(module=moduleTitle)
    if message is None:
        return False
    label = qt.QLabel(message)
    label.wordWrap = True
    layout.addWidget(label)
    layout.addStretch(1)
    return True


def slicerInstallers() -> dependencies.Installers:
    """Slicer's installers for :func:`dependencies.ensure_dependencies`."""
    try:
        import PyTorchUtils

        torchLogic = PyTorchUtils.PyTorchUtilsLogic()

        def installTorch(requirement):
            return torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=requirement)

    except ImportError:
        installTorch = None
    try:
        import slicer.packaging as packaging

        def pipEnsure(specs):
            return packaging.pip_ensure(specs, requester="Wavelet Diffusion")

    except ImportError:
        pipEnsure = None

    def offerRestart(message):
        if slicer.util.confirmYesNoDisplay(message + "\n\n" + _("Restart Slicer now?"),
                                           windowTitle=_("Wavelet Diffusion")):  # fmt: skip
            slicer.util.restart()

    return dependencies.Installers(
        confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle=_("Wavelet Diffusion")),
        install_torch=installTorch,
        pip_ensure=pipEnsure,
        pip_install=slicer.util.pip_install,
        offer_restart=offerRestart,
    )


def formatDuration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
