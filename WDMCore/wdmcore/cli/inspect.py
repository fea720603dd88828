"""`wdm inspect`: what a checkpoint is (format, network, preset, parameters, card), without sampling.

A checkpoint file is loaded and described. A model name (see `wdm models`) is described from the catalogue (or
the record of an imported model) without any download: name, task, preset, size, digest, license, source and
card, and, when the model is in the cache, the cached file (path, size, digest check, the network it holds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def describe(path: str, preset: str | None = None, official_args: dict | None = None) -> dict:
    """What the checkpoint file (or the model of that name, see `wdm models`) holds."""
    from ..loading import load_model
    from ..networks import preset_of

    model = load_model(path, preset=preset, official_args=official_args)
    network = model.network
    return {
        "path": str(path),
        "architecture": type(network).__name__,
        "preset": model.card.get("preset") or preset_of(network.config),
        "image_size": model.image_size,
        "parameters": sum(p.numel() for p in network.parameters()),
        "network": network.config.to_dict(),
        "card": {k: v for k, v in model.card.items() if k != "network"},
    }


def describe_named(name: str, preset: str | None = None) -> dict:
    """What the catalogue (or the record of an imported model) says about model ``name``, and its cached file.

    Never downloads: a model that is not cached is described from the catalogue alone.
    """
    from .. import hub
    from ..errors import WDMError
    from ..hub.cache import sha256_of

    info = hub.get_model_info(name)
    entry: dict[str, Any] = {
        "name": info.name,
        "description": info.description,
        "task": info.task,
        "preset": info.preset,
        "source": info.source,
        "size_bytes": info.size_bytes,
        "size_exact": info.size_exact,
        "sha256": info.sha256,
        "sha256_origin": info.sha256_origin,
        "license": info.license,
        "license_url": info.license_url,
        "url": info.url,
        "page_url": info.page_url,
        "citation": info.citation,
        "card": info.card,
        "cached": info.cached,
        "cache_dir": str(hub.cache_dir()),
        "file": None,
    }
    if info.path is None:
        return entry
    found = sha256_of(info.path)
    file: dict[str, Any] = {
        "path": str(info.path),
        "size_bytes": info.path.stat().st_size,
        "sha256": found,
        "sha256_matches": None if info.sha256 is None else found == info.sha256,
        "recorded_at": info.record.get("recorded_at"),
        "recorded_source": info.record.get("source"),
        "history": info.record.get("history", []),
    }
    try:
        loaded = describe(str(info.path), preset or info.preset)
        file.update({k: loaded[k] for k in ("architecture", "preset", "image_size", "parameters", "network")})
    except WDMError as exc:  # a damaged cached file: the catalogue entry is still worth showing
        file["error"] = str(exc)
    entry["file"] = file
    return entry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show what a checkpoint file or a named model holds",
        description="Describe a checkpoint file, or a model of the catalogue by name without downloading it.",
    )
    parser.add_argument(
        "checkpoint", help="a released .pt file, a .safetensors file of ours, or a model name (see `wdm models`)"
    )
    parser.add_argument("--preset", help="network preset, when it cannot be detected from the keys")
    parser.add_argument("--official-args", type=json.loads, help="released-code model arguments as JSON")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..loading import is_model_name

    if not Path(args.checkpoint).expanduser().exists() and is_model_name(args.checkpoint):
        return _run_named(args)
    info = describe(args.checkpoint, args.preset, args.official_args)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['architecture']}, {info['parameters']:,} parameters")
    preset = info["preset"] or "none (a custom network)"
    print(f"  preset: {preset}; image size {info['image_size']}^3")
    for key, value in info["card"].items():
        if key not in ("preset", "image_size"):  # printed above
            print(f"  {key}: {value}")
    return 0


def _run_named(args: argparse.Namespace) -> int:
    entry = describe_named(args.checkpoint, args.preset)
    if args.json:
        print(json.dumps(entry, indent=2))
        return 0
    for line in _named_lines(entry):
        print(line)
    return 0


def _named_lines(e: dict[str, Any]) -> list[str]:
    from .models import _size

    size = _size(e["size_bytes"], e["size_exact"])
    lines = [
        f"{e['name']}: {e['description']}",
        f"  task: {e['task']}",
        f"  preset: {e['preset'] or 'none (the file carries its network)'}",
        f"  size: {size}",
        f"  sha256: {_digest_text(e)}",
        f"  license: {e['license'] or 'unknown'}" + (f" ({e['license_url']})" if e["license_url"] else ""),
    ]
    if e["url"]:
        lines.append(f"  url: {e['url']}")
    if e["page_url"] and e["page_url"] != e["url"]:
        lines.append(f"  page: {e['page_url']}")
    if e["citation"]:
        lines.append(f"  citation: {e['citation']}")
    if e["card"]:
        lines.append("  card:")
        lines += [f"    {key}: {_card_value(value)}" for key, value in e["card"].items()]
    file = e["file"]
    if file is None:
        where = "bundled file missing: reinstall wdmcore" if e["source"] == "bundled" else "not downloaded"
        if e["source"] == "huggingface":
            where += f"; `wdm download {e['name']}` fetches it ({size}) into {e['cache_dir']}"
        lines.append(f"  file: {where}")
        return lines
    lines.append(f"  file: {file['path']} ({file['size_bytes']:,} bytes)")
    if file["recorded_at"]:
        lines.append(f"    recorded: {file['recorded_at']} ({file['recorded_source']})")
    check = {True: "matches", False: "DOES NOT MATCH the expected digest", None: "nothing to compare with"}
    lines.append(f"    sha256: {file['sha256']} ({check[file['sha256_matches']]})")
    for old in file["history"]:
        lines.append(f"    replaced: sha256 {old.get('sha256')} (recorded {old.get('recorded_at')}, "
                     f"replaced {old.get('replaced_at')})")  # fmt: skip
    if "error" in file:
        lines.append(f"    cannot be loaded: {file['error']}")
    else:
        preset = f"preset {file['preset']}" if file["preset"] else "a custom network"
        size = file["image_size"]
        size = "x".join(map(str, size)) if isinstance(size, (list, tuple)) else f"{size}^3"
        lines.append(
            f"    network: {file['architecture']}, {file['parameters']:,} parameters, {preset}, image size {size}"
        )
    return lines


def _digest_text(e: dict[str, Any]) -> str:
    if e["sha256"] is None:
        return "not in the catalogue; recorded on the first download or import"
    origin = {"catalogue": "from the catalogue", "recorded": "recorded on the first download or import"}
    return f"{e['sha256']} ({origin.get(e['sha256_origin'], e['sha256_origin'])})"


def _card_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
