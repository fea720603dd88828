"""Adding a checkpoint file fetched by hand to the model cache (:func:`import_model`)."""

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..filemodes import set_default_mode
from ..models.cards import validate_card
from .cache import RECORDS_FILE, cache_dir, now, read_records, set_record, sha256_of
from .catalogue import KNOWN_PRESETS, NAME_RE, Catalogue, load_catalogue
from .download import CHUNK_SIZE

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ importing


def import_model(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    preset: str | None = None,
    card: dict[str, Any] | None = None,
    catalogue: Catalogue | None = None,
) -> Path:
    """Copy a checkpoint fetched by hand into the cache under ``name`` and record its digest and card.

    Args:
        path: the file (a released ``.pt`` state dict or a ``.safetensors`` checkpoint).
        name: the model's name (default: the file name without extension). A catalogue name, or the file name
            of a released model, makes the file that model: :func:`fetch` then finds it without downloading.
        preset: the network preset (``unet-128``, ...). Optional when it is known: a catalogue model takes the
            catalogue's, a ``.safetensors`` file carries its network in its card, and a released ``.pt`` file's
            preset is detected from its keys and shapes. A preset that contradicts the file, or the catalogue,
            is refused.
        card: the model card (spacing, intensities, ...) stored with the record.

    Returns the path of the copy in the cache. When the catalogue knows the model's SHA-256 the file must
    match it; the file must load (under ``preset`` when one is given).
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise CheckpointError(f"{src} is not a file; give the path of the checkpoint you downloaded.")
    cat = catalogue if catalogue is not None else load_catalogue()
    entry = cat.get(name) if name else (cat.get(src.name) or cat.get(src.stem))
    name = entry.name if entry is not None else (name or src.stem)
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' only; pass --name to choose one."
        )
    if entry is not None and entry.kind == "bundled":
        raise ConfigError(f"{name!r} is a bundled model and cannot be replaced; choose another --name.")
    if card is not None:
        validate_card(card, source="the card to import")
    if preset is not None:
        _check_preset(preset)
    if preset is None and entry is not None and entry.preset:
        preset = entry.preset
    if entry is not None and entry.preset and preset is not None and preset != entry.preset:
        raise ConfigError(
            f"model {name!r} is a {entry.preset} checkpoint according to the catalogue, not {preset}; "
            f"pass --preset {entry.preset}."
        )

    digest = sha256_of(src)
    if entry is not None and entry.sha256 and digest != entry.sha256:
        raise CheckpointError(
            f"{src} is not the released {name!r}: its SHA-256 is {digest}, "
            f"the catalogue expects {entry.sha256}. "
            f"Download it again from {entry.url(cat.hub_url)}, or import it under another --name."
        )
    preset = _check_loadable(src, preset) or preset
    if entry is not None and entry.preset and preset is not None and preset != entry.preset:
        raise ConfigError(f"{src} holds a {preset} network, but the catalogue's {name!r} is a {entry.preset} one.")

    cache = cache_dir()
    records = read_records(cache)
    previous = records.get(name)
    dest = cache / (entry.filename if entry is not None else f"{name}{src.suffix or '.pt'}")
    if dest.name == RECORDS_FILE:
        raise ConfigError(f"{dest.name!r} is reserved for the cache's record file; choose another --name.")
    if previous and previous.get("sha256") and previous["sha256"] != digest:
        log.warning("replacing model %r in the cache (sha256 %s -> %s)", name, previous["sha256"], digest)
    copied = _copy_with_digest(src, dest)
    if copied != digest:  # the source changed while we read it
        dest.unlink(missing_ok=True)
        raise CheckpointError(f"{src} changed while it was being imported; import it again.")
    record = {
        "file": dest.name,
        "sha256": digest,
        "size_bytes": dest.stat().st_size,
        "source": "import",
        "imported_from": str(src.resolve()),
        "preset": preset,
        "card": card or {},
        "recorded_at": now(),
    }
    set_record(cache, name, record, keep_history=True)
    log.info("imported %s as model %r (%s, sha256 %s) into %s", src, name, preset, digest, dest)
    return dest


def _check_preset(preset: str) -> None:
    if preset not in KNOWN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(KNOWN_PRESETS)}.")


def _check_loadable(path: Path, preset: str | None) -> str | None:
    """The preset of the network in ``path``, checked against ``preset`` when one is given.

    The file must load: a ``.safetensors`` file with its own card, a ``.pt`` file under its detected preset
    (or ``preset`` when the keys do not tell it). ``None`` for a network that matches no preset (a custom
    ``.safetensors`` model, which needs none)."""
    from ..errors import WDMError
    from ..models.model import load_checkpoint
    from ..networks import preset_of

    try:
        model = load_checkpoint(path)
    except WDMError:
        if preset is None or path.suffix == ".safetensors":
            raise
        model = load_checkpoint(path, preset=preset)  # the preset could not be detected from the keys
    found = preset_of(model.network.config)
    if preset is not None and found is not None and found != preset:
        raise ConfigError(
            f"{path} holds a {found} network, not {preset}; pass --preset {found} (or leave --preset out)."
        )
    if preset is not None and found is None:
        raise ConfigError(f"{path} holds a network that is none of the presets, not {preset}; leave --preset out.")
    if found is None and path.suffix != ".safetensors":
        raise ConfigError(f"the network preset of {path} cannot be detected; pass --preset.")
    return found


def _copy_with_digest(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` through a temporary file in the same folder; return the copy's SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(CHUNK_SIZE):
                digest.update(chunk)
                out.write(chunk)
        set_default_mode(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()
