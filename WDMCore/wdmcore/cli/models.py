"""`wdm models`: the catalogue's models, those imported by hand, and whether they are cached."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..errors import WDMError
from .progress import fail

if TYPE_CHECKING:
    from .. import hub


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the known models and whether they are cached",
        description="List the catalogue's models, the models imported by hand, and where they are cached.",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    """`wdm models`: a table (or JSON) of every model, its preset, size, license and cache state."""
    from .. import hub

    try:
        infos = hub.list_models()
    except WDMError as exc:
        return fail(exc, None)
    if getattr(args, "json", False):
        rows = [
            {
                "name": m.name,
                "description": m.description,
                "preset": m.preset,
                "task": _task(m),
                "size_bytes": m.size_bytes,
                "size_exact": m.size_exact,
                "license": m.license,
                "source": m.source,
                "cached": m.cached,
                "path": str(m.path) if m.path else None,
                "url": m.url,
                "sha256": m.sha256,
                "sha256_origin": m.sha256_origin,
            }
            for m in infos
        ]
        print(json.dumps({"cache_dir": str(hub.cache_dir()), "models": rows}, indent=2))
        return 0
    table = [("NAME", "TASK", "PRESET", "SIZE", "LICENSE", "STATUS")]
    for m in infos:
        row = (m.name, _task(m), m.preset or "-", _size(m.size_bytes, m.size_exact), m.license or "?", _status(m))
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {hub.cache_dir()}")
    for m in infos:
        if m.path is not None:
            print(f"  {m.name}: {m.path}")
    return 0


def _task(m: hub.ModelInfo) -> str:
    card = getattr(m, "card", None) or {}
    return str(card.get("task", "generate"))


def _size(size: int | None, exact: bool) -> str:
    if size is None:
        return "?"
    text = f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
    return text if exact else f"~{text}"


def _status(m: hub.ModelInfo) -> str:
    if m.source == "bundled":
        return "bundled" if m.cached else "bundled, file missing"
    if not m.cached:
        return "not downloaded" if m.source == "huggingface" else "file missing, import again"
    return "cached" if m.source == "huggingface" else "imported"
