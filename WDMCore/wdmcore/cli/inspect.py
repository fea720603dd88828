"""`wdm inspect`: what a checkpoint is (format, network, preset, parameters, card), without sampling."""

from __future__ import annotations

import argparse
import json


def describe(path: str, preset: str | None = None, official_args: dict | None = None) -> dict:
    """What the checkpoint file (or the model of that name, see `wdm models`) holds."""
    from ..models.model import load_model
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="show what a checkpoint file or a named model holds")
    parser.add_argument(
        "checkpoint", help="a released .pt file, a .safetensors file of ours, or a model name (see `wdm models`)"
    )
    parser.add_argument("--preset", help="network preset, when it cannot be detected from the keys")
    parser.add_argument("--official-args", type=json.loads, help="released-code model arguments as JSON")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
