"""A model by file path or by name: :func:`load_model`, the public loader (``wdmcore.load_model``).

Resolving a name (``demo_phantom_64``, or any name ``wdm models`` lists) to a verified file in the cache is the
hub's work, and building a model from a file is the models' work; the hub also loads files (to check what it
imports), so the name lookup lives here, one floor above both, and the imports point down only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .events import ProgressCallback
    from .models.model import WDMModel

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def is_model_name(text: str) -> bool:
    """Whether ``text`` reads as a model name rather than a file path (no folder, no checkpoint ending)."""
    return bool(text) and "/" not in text and os.sep not in text and Path(text).suffix not in CHECKPOINT_SUFFIXES


def load_model(
    source: str | os.PathLike,
    *,
    preset: str | None = None,
    official_args: dict[str, Any] | None = None,
    family: str | None = None,
    device: torch.device | str = "cpu",
    card: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
) -> WDMModel:
    """Load a released ``.pt`` state dict or one of our ``.safetensors`` files (card included), or a model by
    its name in the catalogue or among the imported models (``wdm models``; downloaded and verified on first
    use, with ``on_progress`` receiving the download's events).

    For a released file the network is the preset detected from the keys and shapes (or the one given), or
    the one the released code builds from ``official_args`` (its ``create_model_and_diffusion`` arguments);
    the diffusion is that of the codebase the arguments or preset describe (wdm-3d, cWDM or fastWDM3D;
    ``family`` overrides). ``card`` entries are merged over the file's card and validated. Files are loaded by
    :func:`wdmcore.models.model.load_checkpoint`."""
    from .models.model import load_checkpoint

    if not Path(source).expanduser().exists() and is_model_name(os.fspath(source)):
        return _load_named(
            os.fspath(source), preset=preset, family=family, device=device, card=card, on_progress=on_progress
        )
    return load_checkpoint(source, preset=preset, official_args=official_args, family=family, device=device, card=card)


def _load_named(
    name: str,
    *,
    preset: str | None,
    family: str | None,
    device: torch.device | str,
    card: dict[str, Any] | None,
    on_progress: ProgressCallback | None,
) -> WDMModel:
    from . import hub
    from .errors import ConfigError
    from .models.cards import validate_card
    from .models.families import FAMILIES
    from .models.model import load_checkpoint

    # The arguments are checked before anything is downloaded.
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}.")
    if card is not None:
        validate_card(card, source="the card given to load_model")
    info = hub.get_model_info(name)  # ConfigError listing the known names and how to import a file
    file = hub.fetch(name, on_progress=on_progress)
    catalogue_card = {k: v for k, v in info.card.items() if k not in ("image_size", "note")}
    if file.suffix == ".safetensors":
        loaded = load_checkpoint(file, device=device)
        # The file's own card is authoritative; the catalogue only fills gaps.
        loaded.card = {**catalogue_card, **loaded.card, "name": loaded.card.get("name") or info.name, **(card or {})}
        return loaded
    named = {**catalogue_card, "name": info.name, "description": info.description, **(card or {})}
    return load_checkpoint(file, preset=preset or info.preset, card=named, device=device)
