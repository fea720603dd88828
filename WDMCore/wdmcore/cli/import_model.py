"""`wdm import-model`: add a checkpoint file fetched by hand to the model cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WDMError
from ..models.cards import parse_card_json, validate_card
from ..vocabulary import PRESET_NAMES
from .progress import fail


def add_parser(subparsers: Any) -> None:
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
    p.add_argument(
        "--preset",
        default=None,
        help="network preset: " + ", ".join(PRESET_NAMES) + " (default: the catalogue's, else read from the "
        "file; needed only for a .pt file whose preset cannot be detected)",
    )
    p.add_argument("--name", default=None, help="model name (default: the file name without extension)")
    p.add_argument("--card", default=None, help="model card: a JSON object, or the path of a JSON file")
    p.set_defaults(handler=run_import_model)


def run_import_model(args: argparse.Namespace) -> int:
    """`wdm import-model FILE [--preset P] [--name N] [--card JSON]`: copy into the cache; print the path."""
    from .. import hub

    try:
        card = _parse_card(args.card)
        path = hub.import_model(args.file, name=args.name, preset=args.preset, card=card)
    except WDMError as exc:
        return fail(exc, None)
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
    card = parse_card_json(text, "--card")
    return validate_card(card, source="--card")
