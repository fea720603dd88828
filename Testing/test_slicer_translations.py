"""Every text the modules show is wrapped in Slicer's translation function ``_()`` (``slicer.i18n.tr``), so that
Slicer's translations reach it: a static check of the module files and widget panels (they need Slicer's GUI).

A text is a string literal (or an f-string with words in it) given to a known sink: a Qt text setter or property
(``setText``, ``.text = ``, ``toolTip``, ...), ``qt.QLabel(...)``, a layout's ``addRow`` label, a combo box item,
a file dialog's title, and Slicer's message boxes and status bar (``slicer.util.errorDisplay`` and friends,
``showStatusMessage``, ``tryWithErrorDisplay``) or the modules' own ``showError`` title. Inside ``_()`` (and
``translate()``) nothing is reported; ``"\\n".join(...)`` and other literals without letters are not texts, nor are
the arguments of calls inside a shown expression (``event.get("done")``) or subscripts (``model["name"]``).
"""

from __future__ import annotations

import ast
import re

import pytest
from slicer_support import COMMON_DIR, MODULE_DIR, TRAINING_MODULE_DIR

FILES = [
    MODULE_DIR / "WaveletDiffusion.py",
    TRAINING_MODULE_DIR / "WaveletDiffusionTraining.py",
    *sorted((MODULE_DIR / "WaveletDiffusionWidgets").glob("*.py")),
    *sorted((COMMON_DIR / "WaveletDiffusionCommonWidgets").glob("*.py")),
]
# Methods whose every argument is shown (addRow: the label; the field is a widget).
SHOWING_METHODS = {"setText", "setToolTip", "setPlaceholderText", "setWindowTitle", "setStatusTip", "addRow",
                   "setPlainText", "appendPlainText"}  # fmt: skip
# Functions whose first argument and these keywords are shown.
SHOWING_FUNCTIONS = {"errorDisplay", "warningDisplay", "infoDisplay", "messageBox", "confirmOkCancelDisplay",
                     "confirmYesNoDisplay", "confirmRetryCloseDisplay", "showStatusMessage", "tryWithErrorDisplay",
                     "showError", "QLabel", "QPushButton", "QCheckBox", "addItem", "insertItem",
                     "getOpenFileName", "getSaveFileName", "getExistingDirectory"}  # fmt: skip
SHOWING_KEYWORDS = {"windowTitle", "text", "toolTip", "message", "detailedText", "informativeText"}
# Properties that PythonQt sets by assignment (``label.text = ...``).
SHOWING_PROPERTIES = {"text", "toolTip", "plainText", "placeholderText", "windowTitle", "statusTip"}
# Arguments that are not texts: QFileDialog's parent and start folder, addItem's data.
NOT_SHOWN = {"getOpenFileName": {0, 2}, "getSaveFileName": {0, 2}, "getExistingDirectory": {0, 2},
             "addItem": {1}, "insertItem": {0, 2}, "showError": {1}}  # fmt: skip
TRANSLATING = {"_", "translate", "tr"}
WORDS = re.compile(r"[A-Za-z]{2,}")


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def untranslated(expr: ast.expr) -> list[ast.expr]:
    """The string literals with words in ``expr`` that are not inside a ``_()`` call."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Call) and _name(node.func) in TRANSLATING:
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and WORDS.search(node.value):
            found.append(node)
            return
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
            if WORDS.search(text):
                found.append(node)
                return
        if isinstance(node, ast.Call):  # "text".format(...) is looked at; arguments (keys, paths) are not texts
            visit(node.func)
            return
        if isinstance(node, ast.Subscript):  # model["name"]: a key
            visit(node.value)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(expr)
    return found


def shown_expressions(tree: ast.AST):
    """(expression shown to the user, what shows it) for every sink in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            skip = NOT_SHOWN.get(name, set())
            if name in SHOWING_METHODS or name in SHOWING_FUNCTIONS:
                args = node.args if name in SHOWING_METHODS else node.args[:1] if name not in NOT_SHOWN else node.args
                for index, arg in enumerate(args):
                    if index not in skip:
                        yield arg, name
            for keyword in node.keywords:
                if keyword.arg in SHOWING_KEYWORDS:
                    yield keyword.value, f"{name}({keyword.arg}=)"
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in SHOWING_PROPERTIES:
                    yield node.value, f".{target.attr} ="
                elif isinstance(target, ast.Tuple) and any(  # label.text, field.toolTip = ...
                    isinstance(t, ast.Attribute) and t.attr in SHOWING_PROPERTIES for t in target.elts
                ):
                    yield node.value, "tuple assignment"


def problems_in(source: str, filename: str = "<test>") -> list[str]:
    tree = ast.parse(source)
    return [f"{filename}:{literal.lineno}: {sink}: {ast.unparse(literal)[:70]}"
            for expr, sink in shown_expressions(tree) for literal in untranslated(expr)]  # fmt: skip


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_shown_text_is_translatable(path):
    problems = problems_in(path.read_text(encoding="utf-8"), path.name)
    assert not problems, "wrap these texts in _():\n" + "\n".join(problems)


def test_the_check_finds_unwrapped_texts():
    source = """
self.ui.statusLabel.text = "Reading the folder..."
self.ui.statusLabel.text = f"Step {step} of {total}"
self.ui.statusLabel.setText(_("Ready."))
slicer.util.errorDisplay("There is no checkpoint.", windowTitle=_("Training"))
slicer.util.confirmOkCancelDisplay(warning + "\\n\\n" + "Start anyway?", windowTitle="Training")
label = qt.QLabel("Strength:")
layout.addRow("Volume:", selector)
self.showError("Training failed", error)
combo.addItem(f"{name} (cached)", name)
ok = _("Ready: {n}").format(n=3)
self.ui.inputCheckLabel.text = "\\n".join(problems)
"""
    found = problems_in(source)
    assert [p.split(":")[1] for p in found] == ["2", "3", "5", "6", "6", "7", "8", "9", "10"], found
