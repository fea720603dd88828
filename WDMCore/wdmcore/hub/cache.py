"""The local model cache: where downloaded and imported models live, and ``records.json``, the record of
what each cached file is (origin, SHA-256 recorded on first download or import). ``WDM_CACHE_DIR`` moves it.
"""

import json
import logging
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pooch

from ..errors import ConfigError, DownloadError
from ..filemodes import set_default_mode
from ..paths import cache_subdir
from .catalogue import Catalogue, CatalogueEntry, base_url_of, load_catalogue

log = logging.getLogger(__name__)

RECORDS_FILE = "records.json"
RECORDS_LOCK = ".records.json.lock"

# ------------------------------------------------------------------------------------------- cache, records


def cache_dir() -> Path:
    """The folder that holds downloaded and imported models (created when first written to).

    ``$WDM_CACHE_DIR/models`` when that variable is set, otherwise ``models`` in the user's cache folder
    (``~/.cache/wdmcore/models`` on Linux, ``~/Library/Caches/wdmcore/models`` on macOS,
    ``%LOCALAPPDATA%\\wdmcore\\Cache\\models`` on Windows).
    """
    return cache_subdir("models")


def read_records(cache: Path) -> dict[str, dict[str, Any]]:
    path = cache / RECORDS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, dict):
            raise TypeError("'models' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DownloadError(
            f"the model record file {path} is unreadable ({exc}). Delete it: digests are then recorded again "
            "on the next download, and imported models must be imported again."
        ) from exc
    return models


def write_records(cache: Path, records: dict[str, dict[str, Any]]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"schema": 1, "models": records}, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".records-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        set_default_mode(tmp)
        os.replace(tmp, cache / RECORDS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_record(cache: Path, name: str, record: dict[str, Any] | None, *, keep_history: bool = False) -> None:
    """Add, replace or (``record=None``) remove one record. The read-modify-write runs under a file lock, so
    processes downloading or importing at the same time never lose each other's records. ``keep_history``:
    the replaced record's digest joins the new record's ``history`` (see :func:`with_history`)."""
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / RECORDS_LOCK):
        records = read_records(cache)
        if record is None:
            records.pop(name, None)
        else:
            records[name] = with_history(record, records.get(name)) if keep_history else record
        write_records(cache, records)


HISTORY_LIMIT = 20  # digests a record remembers from the files it replaced


def with_history(record: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """``record`` (the new file's) carrying the digests the model's file had before it, oldest first.

    The history of ``previous`` is kept; ``previous`` itself joins it when its digest differs from the new one,
    with the time it was replaced, so that ``records.json`` shows every content a name has stood for.
    """
    history = list((previous or {}).get("history") or [])
    if previous and previous.get("sha256") and previous["sha256"] != record.get("sha256"):
        history.append(
            {
                "sha256": previous["sha256"],
                "source": previous.get("source"),
                "recorded_at": previous.get("recorded_at"),
                "replaced_at": record.get("recorded_at") or now(),
            }
        )
    if history:
        record = {**record, "history": history[-HISTORY_LIMIT:]}
    return record


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_of(path: Path) -> str:
    return pooch.file_hash(str(path), alg="sha256")


# ------------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`list_models` reports about one model."""

    name: str
    description: str
    preset: str | None
    size_bytes: int | None
    """Exact size of the local file, or the catalogue's size (approximate when ``size_exact`` is False)."""
    size_exact: bool
    license: str | None
    cached: bool
    """True when the file is available locally (downloaded, imported, or bundled and present)."""
    path: Path | None
    """The local file when ``cached``, else None."""
    source: str
    """``"huggingface"``, ``"bundled"`` or ``"imported"`` (imported under a name the catalogue lacks)."""
    url: str | None = None
    sha256: str | None = None
    sha256_origin: str | None = None
    """``"catalogue"``, ``"recorded"`` (first download or import) or None (not known yet)."""
    card: dict[str, Any] = field(default_factory=dict)
    license_url: str | None = None
    citation: str | None = None
    page_url: str | None = None
    """The file's page on the Hub, which shows its SHA-256 (hub models)."""
    record: dict[str, Any] = field(default_factory=dict)
    """What ``records.json`` holds about the model (empty when nothing was recorded yet)."""

    @property
    def task(self) -> str:
        """The task the network was trained for (the card's ``task``; ``generate`` when the card does not say)."""
        return str(self.card.get("task", "generate"))


def list_models(*, catalogue: Catalogue | None = None, base_url: str | None = None) -> list[ModelInfo]:
    """Every catalogue model followed by the models imported under other names, with their local state.

    Listing does not read the files (no digest check); :func:`fetch` verifies.
    """
    cat = catalogue if catalogue is not None else load_catalogue()
    cache = cache_dir()
    records = read_records(cache)
    base = base_url_of(cat, base_url)
    infos = [_entry_info(entry, records.get(entry.name), cache, base) for entry in cat.models]
    for name in sorted(set(records) - set(cat.names())):
        infos.append(_imported_info(name, records[name], cache))
    return infos


def get_model_info(name: str, *, catalogue: Catalogue | None = None, base_url: str | None = None) -> ModelInfo:
    """The :class:`ModelInfo` of one model (catalogue or imported); :class:`ConfigError` if unknown."""
    cat = catalogue if catalogue is not None else load_catalogue()
    entry = cat.get(name)
    cache = cache_dir()
    records = read_records(cache)
    if entry is not None:
        return _entry_info(entry, records.get(entry.name), cache, base_url_of(cat, base_url))
    if name in records:
        return _imported_info(name, records[name], cache)
    raise unknown_model(name, cat, records)


def _entry_info(entry: CatalogueEntry, record: dict | None, cache: Path, base_url: str) -> ModelInfo:
    path = entry.bundled_path if entry.kind == "bundled" else cache / entry.filename
    cached = path.is_file()
    if cached:
        size, exact = path.stat().st_size, True
    elif entry.size_bytes is not None:
        size, exact = entry.size_bytes, True
    else:
        size, exact = entry.approx_size_bytes, False
    if entry.sha256:
        digest, origin = entry.sha256, "catalogue"
    elif record and record.get("sha256"):
        digest, origin = record["sha256"], "recorded"
    else:
        digest, origin = None, None
    card = dict(entry.card)
    if record and record.get("card"):
        card.update(record["card"])
    return ModelInfo(
        name=entry.name,
        description=entry.description,
        preset=entry.preset,
        size_bytes=size,
        size_exact=exact,
        license=entry.license,
        cached=cached,
        path=path if cached else None,
        source=entry.kind,
        url=entry.url(base_url),
        sha256=digest,
        sha256_origin=origin,
        card=card,
        license_url=entry.license_url,
        citation=entry.citation,
        page_url=entry.page_url(),
        record=dict(record or {}),
    )


def _imported_info(name: str, record: dict[str, Any], cache: Path) -> ModelInfo:
    path = cache / record.get("file", "")
    cached = bool(record.get("file")) and path.is_file()
    card = dict(record.get("card") or {})
    return ModelInfo(
        name=name,
        description=str(card.get("description", "imported by hand")),
        preset=record.get("preset"),
        size_bytes=path.stat().st_size if cached else record.get("size_bytes"),
        size_exact=True,
        license=card.get("license"),
        cached=cached,
        path=path if cached else None,
        source="imported",
        sha256=record.get("sha256"),
        sha256_origin="recorded" if record.get("sha256") else None,
        card=card,
        license_url=card.get("license_url"),
        record=dict(record),
    )


def import_command(name: str, file: str, preset: str | None) -> str:
    """The `wdm import-model` command line that makes ``file`` (fetched by hand) the cached model ``name``."""
    command = f"wdm import-model {shlex.quote(file)} --name {name}"
    return f"{command} --preset {preset}" if preset else command


def unknown_model(name: str, cat: Catalogue, records: dict) -> ConfigError:
    known = cat.names() + sorted(set(records) - set(cat.names()))
    return ConfigError(
        f"unknown model {name!r}. Known models: {', '.join(known)}. "
        "To use a checkpoint file, give its path, or import it with `wdm import-model FILE --name NAME` "
        "(see docs/models.md)."
    )
