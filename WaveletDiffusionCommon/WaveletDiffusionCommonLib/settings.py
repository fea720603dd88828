"""A module's last choices in the application settings: one JSON object per module, restored field by field.

``settings`` is anything with ``value(key, default)`` and ``setValue(key, value)`` (QSettings in Slicer, a dict
wrapper in tests), so this file never imports Qt. Both modules' parameter files build on it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

P = TypeVar("P")


def save_last_choices(settings: Any, group: str, params: Any, names: Sequence[str]) -> None:
    values = {name: getattr(params, name) for name in names}
    settings.setValue(f"{group}/last", json.dumps(values))


def load_last_choices(settings: Any, group: str, params: P, names: Sequence[str], accept: Callable[[P], bool]) -> P:
    """``params`` with each stored field that ``accept`` takes; unreadable or rejected values are skipped one by
    one, so a damaged or outdated entry never costs the user the rest of their choices."""
    raw = settings.value(f"{group}/last", "")
    try:
        stored = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        stored = {}
    if not isinstance(stored, dict):
        return params
    for name in names:
        if name not in stored:
            continue
        candidate = dataclasses.replace(params, **{name: stored[name]})
        try:
            if accept(candidate):
                params = candidate
        except (TypeError, ValueError):
            continue
    return params


def is_new_parameter_node(node: Any) -> bool:
    """Whether a module's parameter node was just created (it holds no parameter yet). The last choices fill
    only such a node: a node that came with a loaded scene keeps that scene's settings."""
    return node is not None and not tuple(node.GetParameterNames())


def numeric_problem(settings: Any, labels: dict[str, str], *, zero_means_default: tuple[str, ...] = ()) -> str | None:
    """The first of ``settings``' numeric fields (``labels``: field -> words) outside the engine's allowed range
    (``wdmcore.limits``, the table the ``wdm`` command and the worker read), as a sentence; None when all are
    allowed. Fields left None, and those of ``zero_means_default`` left 0, are not checked."""
    from wdmcore.limits import problem  # torch-free; imported here so that this module loads before the engine

    for name, label in labels.items():
        value = getattr(settings, name)
        if value is None or (name in zero_means_default and value == 0):
            continue
        message = problem(name, value, label)
        if message:
            return message
    return None
