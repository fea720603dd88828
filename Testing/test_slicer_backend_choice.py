"""The module's *Backend* and *precision* settings: the parameter node's fields and the offer to install
OpenVINO, with the module file imported as Slicer imports it (the stand-ins of test_slicer_selftests for what
slicer-core lacks; Slicer's installer dialogs and pip are recording stand-ins)."""

from __future__ import annotations

import typing

import pytest
from slicer_support import require_slicer
from test_slicer_selftests import app  # noqa: F401 - the module files imported on the stand-ins

slicer = require_slicer()


def test_the_parameter_node_defaults_to_auto_and_carries_backend_and_precision(app):  # noqa: F811
    from WaveletDiffusionLib import parameters
    from WaveletDiffusionLib.parameters import GenerationParameters

    import WaveletDiffusion as module

    cls = module.WaveletDiffusionParameterNode
    hints = typing.get_type_hints(cls, include_extras=True)
    # The stand-in Choice returns its arguments: the allowed values as the wrapper gets them.
    assert hints["backend"].__metadata__ == ((list(parameters.BACKENDS),),)
    assert hints["precision"].__metadata__ == ((list(parameters.PRECISIONS),),)
    node = cls.__new__(cls)  # the stand-in wrapper leaves the class as written: the defaults are class attributes
    assert (node.backend, node.precision) == ("auto", "auto")
    node.setFromGenerationParameters(GenerationParameters(backend="openvino", precision="bf16"))
    params = node.toGenerationParameters()
    assert (params.backend, params.precision) == ("openvino", "bf16")


@pytest.fixture
def openvino_absent(monkeypatch):
    """OpenVINO not installed; Slicer's dialogs (answering OK) and pip_install record their calls."""
    from WaveletDiffusionCommonLib import dependencies

    real = dependencies.installed_version
    monkeypatch.setattr(dependencies, "installed_version", lambda name: None if name == "openvino" else real(name))
    calls = []
    for name in ("pip_install", "confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay"):
        monkeypatch.setattr(slicer.util, name, lambda *a, _name=name, **k: calls.append((_name, a)) or True,
                            raising=False)  # fmt: skip
    return calls


def test_in_testing_mode_choosing_openvino_installs_nothing(app, openvino_absent):  # noqa: F811
    import WaveletDiffusion as module

    logic = module.WaveletDiffusionLogic()
    logs = []
    logic.log_callback = logs.append
    logic.require_backend("openvino", again=True)
    assert openvino_absent == []
    assert any("PyTorch runs the network instead (testing mode installs nothing)" in line for line in logs)


def test_choosing_openvino_offers_the_engines_openvino_extra(app, openvino_absent, monkeypatch):  # noqa: F811
    import WaveletDiffusion as module

    monkeypatch.setattr(app, "testing", False)
    logic = module.WaveletDiffusionLogic()
    logic.require_backend("openvino", again=True)
    # slicer-core has no slicer.packaging: the path of Slicer 5.10 (the module's question, then pip_install).
    assert [name for name, _args in openvino_absent] == ["confirmOkCancelDisplay", "pip_install"]
    question = openvino_absent[0][1][0]
    assert "The OpenVINO backend needs openvino>=2024.0 (not installed)" in question and "Install it now?" in question
    assert openvino_absent[1][1] == ("openvino>=2024.0",)
    openvino_absent.clear()
    logic.require_backend("torch", again=True)
    logic.require_backend("auto", again=True)
    assert openvino_absent == []
