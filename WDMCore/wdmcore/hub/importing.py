"""Adding a checkpoint file fetched by hand to the model cache (:func:`import_model`)."""

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
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
        preset: the network preset (``unet-128``, ...); for a catalogue model it must be the catalogue's.
            Default: the catalogue's, else detected from a released file's keys and shapes.
        card: the model card (spacing, intensities, ...) stored with the record.

    Returns the path of the copy in the cache. When the catalogue knows the model's SHA-256 the file must
    match it; when :mod:`wdmcore.models.checkpoints` is available the file must load under ``preset``.
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
    if preset is None and entry is not None and entry.preset:
        preset = entry.preset
    if entry is not None and entry.preset and preset != entry.preset:
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
    set_record(
        cache,
        name,
        {
            "file": dest.name,
            "sha256": digest,
            "size_bytes": dest.stat().st_size,
            "source": "import",
            "imported_from": str(src.resolve()),
            "preset": preset,
            "card": card or {},
            "recorded_at": now(),
        },
    )
    log.info("imported %s as model %r (%s, sha256 %s) into %s", src, name, preset, digest, dest)
    return dest


def _check_preset(preset: str) -> None:
    if preset not in KNOWN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; available presets: {', '.join(KNOWN_PRESETS)}.")


def _check_loadable(path: Path, preset: str | None) -> str | None:
    """Load the file (under ``preset`` when given) with the checkpoint reader: a file that does not fit is not
    imported. Returns the preset (detected when not given; None for our own files, which carry their card)."""
    from ..models.model import load_model

    if preset is not None:
        _check_preset(preset)
    model = load_model(path, preset=preset)
    return preset or model.card.get("preset")


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
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()
