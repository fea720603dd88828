"""Reading and writing model files.

Two formats:

* **Released checkpoints** (``.pt``): a plain ``torch.save`` of a state dict. They are read with
  ``weights_only=True``, so a file that carries code is refused and never executed. The network is the preset
  whose keys and shapes match (or the one given, or one built from the released code's arguments).
* **Our own files** (``.safetensors``): the weights plus a JSON *model card* in the file's metadata under
  ``"wdm_card"`` (network and diffusion config, image size, geometry and intensity meaning of the outputs,
  training data, step count). Tensors shared inside the network (the WavU-Net's reused block) are stored once.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, NonFiniteError
from ..filemodes import set_default_mode
from ..networks import PRESETS, DiffusionNetwork, NetworkConfig, build_network, config_from_official_args
from .cards import card_error_for_file, parse_card_json, validate_card

log = logging.getLogger(__name__)

CARD_KEY = "wdm_card"
CARD_FORMAT = 1


# -- reading released .pt state dicts ---------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` checkpoint as a plain state dict, safely, with messages that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Check the path, or download it with `wdm download`.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish. Fetch it again.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on bad bytes; classify by what the file looks like
        text = str(exc)
        if not _looks_like_torch_file(path):
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (it is neither a torch zip archive nor a pickle). "
                "Check that you picked the model file, e.g. brats_unet_128_1200k.pt."
            ) from None
        # Wording differs between torch versions ("Unsupported global: ...", "unsupported GLOBAL ... blocked").
        if "global" in text.lower() or "unsupported class" in text.lower():
            raise CheckpointError(
                f"{path} was refused: besides tensors it contains Python objects or code, which is never executed "
                "here. Released WDM checkpoints are plain state dicts; if you trust this file, re-save its "
                "state dict with `torch.save(model.state_dict(), path)` and try again."
            ) from None
        raise CheckpointError(
            f"{path} could not be read: it looks truncated or corrupt ({torch_load_reason(exc)}). "
            "Download or copy it again; for a catalogue model, `wdm download NAME` verifies the file."
        ) from None
    return _unwrap_state_dict(obj, path)


def torch_load_reason(exc: BaseException) -> str:
    """torch.load's complaint, short, and never its advice to reload with ``weights_only=False`` (which would
    execute whatever code the file carries)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if "weights_only" not in line and "arbitrary code" not in line.lower()]
    for line in kept:
        if line.lower().startswith("weights only load failed"):
            continue
        return f"{type(exc).__name__}: {line[:200]}"
    return type(exc).__name__


def _looks_like_torch_file(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # zip archive, or legacy pickle protocol 2+


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Accept the common wrappers ({"state_dict": ...}, {"model": ...}) and DataParallel's "module." prefix.
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "ema"):
            if key in obj and isinstance(obj[key], dict) and not torch.is_tensor(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors. Use a WDM model checkpoint "
            "(e.g. brats_unet_128_1200k.pt), not an optimiser or other file."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


@cache
def _expected_layout(config: NetworkConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        network = build_network(config)
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def layout_mismatch(state_dict: dict[str, torch.Tensor], config: NetworkConfig) -> dict[str, list[str]]:
    """What differs between a state dict and the network a config builds (empty lists: it fits)."""
    expected = _expected_layout(config)
    return {
        "missing": [k for k in expected if k not in state_dict],
        "unexpected": [k for k in state_dict if k not in expected],
        "shape": [
            f"{k}: file {tuple(state_dict[k].shape)} vs network {expected[k]}"
            for k in expected
            if k in state_dict and tuple(state_dict[k].shape) != expected[k]
        ],
    }


def _describe(mismatch: dict[str, list[str]], limit: int = 5) -> str:
    parts = []
    for kind, items in mismatch.items():
        if items:
            shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{len(items)} {kind}: {shown}")
    return "; ".join(parts)


def detect_preset(state_dict: dict[str, torch.Tensor]) -> str:
    """The preset whose keys and shapes match the state dict exactly, or a CheckpointError naming the nearest."""
    results = {name: layout_mismatch(state_dict, config) for name, (config, _) in PRESETS.items()}
    for name, mismatch in results.items():
        if not any(mismatch.values()):
            return name
    nearest = min(results, key=lambda n: sum(len(v) for v in results[n].values()))
    raise CheckpointError(
        f"the checkpoint fits none of the presets ({', '.join(PRESETS)}). Nearest is {nearest}: "
        f"{_describe(results[nearest])}. If it was trained with other settings of the released code, pass "
        "them with official_args (e.g. {'num_channels': 32, 'channel_mult': '1,2,2'}) or `--official-args`."
    )


def load_network_weights(network: DiffusionNetwork, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, allowing only the keys of blocks that are shared (stored once in our own files)."""
    check_network_weights(network, state_dict, source)
    check_finite_weights(state_dict, source)
    network.load_state_dict(state_dict, strict=False)


def check_network_weights(network: DiffusionNetwork, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights whose keys or shapes do not fit ``network`` (which may live on the meta device: call
    this before allocating a network built from a card, so that a card cannot ask for more than its file holds)."""
    aliases = shared_parameter_aliases(network)
    for alias, canonical in aliases.items():
        if (
            alias in state_dict
            and canonical in state_dict
            and not torch.equal(state_dict[alias], state_dict[canonical])
        ):
            raise CheckpointError(
                f"{source}: {alias} and {canonical} belong to one shared block but hold different values; "
                "the file was not written by a WDM WavU-Net."
            )
    mismatch = layout_mismatch({k: v for k, v in state_dict.items()}, network.config)
    mismatch["missing"] = [k for k in mismatch["missing"] if aliases.get(k) not in state_dict]
    if any(mismatch.values()):
        raise CheckpointError(f"{source} does not fit the network: {_describe(mismatch)}.")


def check_finite_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity: one such value turns every generated volume into NaN."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise NonFiniteError(
            f"{source} holds NaN or infinite weights in {len(bad)} tensor(s) ({shown}); a network with such "
            "weights can only produce NaN volumes. The training that wrote it diverged or the file is damaged: "
            "use an earlier checkpoint or download the file again."
        )


def shared_parameter_aliases(network: torch.nn.Module) -> dict[str, str]:
    """State-dict keys that name a tensor already named by an earlier key: {alias: first key}."""
    seen: dict[int, str] = {}
    aliases = {}
    for key, tensor in network.state_dict(keep_vars=True).items():
        ident = id(tensor)
        if ident in seen:
            aliases[key] = seen[ident]
        else:
            seen[ident] = key
    return aliases


# -- our own .safetensors files ---------------------------------------------------------------------------


def save_model_file(
    path: str | os.PathLike, network: DiffusionNetwork, card: dict[str, Any], extra_tensors: dict | None = None
) -> Path:
    """Write weights and card to ``path`` atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    aliases = shared_parameter_aliases(network)
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items() if k not in aliases}
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    card = {**card, "format": CARD_FORMAT, "network": network.config.to_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={CARD_KEY: json.dumps(card)})
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, card) of one of our ``.safetensors`` files. The card is validated before the tensors are read."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}.")

    def unreadable(exc: Exception) -> CheckpointError:
        return CheckpointError(
            f"{path} could not be read as a safetensors file ({exc}); it looks truncated or corrupt. Copy it again."
        )

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable(exc) from None
    if CARD_KEY not in metadata:
        raise CheckpointError(
            f"{path} has no WaveletDiffusion model card in its metadata. If it holds a network trained elsewhere, "
            "load it as a plain state dict with a preset instead."
        )
    card = parse_card_json(metadata[CARD_KEY], f"the model card in {path}", CheckpointError)
    # A newer format may legitimately fail today's rules: say "upgrade" rather than what looks wrong.
    if isinstance(card, dict) and type(card.get("format")) is int and card["format"] > CARD_FORMAT:
        raise CheckpointError(
            f"{path} was written by a newer WaveletDiffusion (card format {card['format']}); upgrade."
        )
    validate_card(card, **card_error_for_file(path))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise unreadable(exc) from None
    return tensors, card


def network_for_released(
    state_dict: dict[str, torch.Tensor], preset: str | None, official_args: dict[str, Any] | None
) -> tuple[NetworkConfig, str | None]:
    """The network config for a released-format state dict: official args, else the given or detected preset."""
    if official_args is not None:
        return config_from_official_args(official_args), None
    if preset is None:
        preset = detect_preset(state_dict)
    elif preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset][0], preset
