"""The `wdm models`, `wdm download` and `wdm import-model` commands (registered by :mod:`wdmcore.cli`).

``add_parsers(subparsers)`` adds the three sub-commands to an :mod:`argparse` sub-parser set; each sets
``func`` to its ``run_*`` function, which returns the process exit code (0 on success, 1 on a wdmcore error).
With ``--progress jsonl`` (read from ``args.progress`` when the main parser defines it, or given after the
sub-command) progress, warnings, results and errors are JSON lines on stdout; otherwise a tqdm bar is drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import hub
from .errors import ConfigError, WDMError
from .events import ProgressCallback, emit, jsonl_writer


def add_parser(subparsers: Any) -> None:
    """Add ``models``, ``download`` and ``import-model`` to ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "models",
        help="list the known models and whether they are cached",
        description="List the catalogue's models, the models imported by hand, and where they are cached.",
    )
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=run_models)

    p = subparsers.add_parser(
        "download",
        help="download a released model into the cache",
        description="Download a model of the catalogue into the cache and verify its SHA-256.",
    )
    p.add_argument("name", help="model name (see `wdm models`)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--hub-url", default=None, help="base URL of a mirror of https://huggingface.co")
    _add_progress_option(p)
    p.set_defaults(handler=run_download)

    p = subparsers.add_parser(
        "import-model",
        help="add a checkpoint file fetched by hand to the cache",
        description=(
            "Copy a checkpoint file into the model cache under a name, with its preset and model card. "
            "Use it for released models downloaded on another machine (their name is taken from the "
            "file name) or for checkpoints of your own."
        ),
    )
    p.add_argument("file", type=Path, help="the checkpoint file (.pt or .safetensors)")
    p.add_argument("--preset", required=True, help="network preset: " + ", ".join(hub.KNOWN_PRESETS))
    p.add_argument("--name", default=None, help="model name (default: the file name without extension)")
    p.add_argument("--card", default=None, help="model card: a JSON object, or the path of a JSON file")
    p.set_defaults(handler=run_import_model)


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("bar", "jsonl", "none"),
        default=argparse.SUPPRESS,  # keep a value the main parser may have set
        help="progress display: a bar (default), JSON lines on stdout, or nothing",
    )


def _progress_mode(args: argparse.Namespace) -> str:
    return getattr(args, "progress", None) or "bar"


def _fail(exc: WDMError, callback: ProgressCallback | None) -> int:
    if callback is not None:
        emit(callback, "error", kind=type(exc).__name__, message=str(exc))
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def run_models(args: argparse.Namespace) -> int:
    """`wdm models`: a table (or JSON) of every model, its preset, size, license and cache state."""
    try:
        infos = hub.list_models()
    except WDMError as exc:
        return _fail(exc, None)
    if getattr(args, "json", False):
        rows = [
            {
                "name": m.name,
                "description": m.description,
                "preset": m.preset,
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
    table = [("NAME", "PRESET", "SIZE", "LICENSE", "STATUS")]
    for m in infos:
        table.append((m.name, m.preset or "-", _size(m.size_bytes, m.size_exact), m.license or "?", _status(m)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {hub.cache_dir()}")
    for m in infos:
        if m.path is not None:
            print(f"  {m.name}: {m.path}")
    return 0


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


def run_download(args: argparse.Namespace) -> int:
    """`wdm download NAME`: fetch into the cache with a progress bar (or JSON lines); print the path."""
    mode = _progress_mode(args)
    callback = jsonl_writer() if mode == "jsonl" else None
    try:
        path = hub.fetch(
            args.name,
            on_progress=callback,
            progressbar=mode == "bar",
            base_url=getattr(args, "hub_url", None),
            force=getattr(args, "force", False),
        )
    except WDMError as exc:
        return _fail(exc, callback)
    if callback is not None:
        emit(callback, "result", model=args.name, path=str(path))
    else:
        print(path)
    return 0


def run_import_model(args: argparse.Namespace) -> int:
    """`wdm import-model FILE --preset P [--name N] [--card JSON]`: copy into the cache; print the path."""
    try:
        card = _parse_card(args.card)
        path = hub.import_model(args.file, name=args.name, preset=args.preset, card=card)
    except WDMError as exc:
        return _fail(exc, None)
    print(path)
    return 0


def _parse_card(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--card {value!r} is neither a JSON object nor a readable file ({exc}).") from exc
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--card is not valid JSON ({exc}); give a JSON object or a .json file.") from exc
    if not isinstance(card, dict):
        raise ConfigError("--card must be a JSON object, e.g. '{\"spacing_mm\": [2, 2, 2]}'.")
    return card
