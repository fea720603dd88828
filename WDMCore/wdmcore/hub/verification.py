"""Which SHA-256 a model file is held to, and the checks against it.

A file's digest comes from the catalogue when it has one; otherwise the digest recorded on the first download
(trust on first use, announced with a warning) in ``records.json`` (:mod:`.cache`). A cached, imported or
bundled file that no longer matches its digest is an error, never silently used; a forced download that brings
another file is recorded with a warning that names the old and the new digest.
"""

import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, DownloadError
from ..events import ProgressCallback, emit
from .cache import RECORDS_FILE, import_command, now, set_record, sha256_of
from .catalogue import CatalogueEntry

log = logging.getLogger(__name__)


def expected_digest(entry: CatalogueEntry, record: dict | None) -> tuple[str | None, str | None]:
    if entry.sha256:
        return entry.sha256, "catalogue"
    if record and record.get("sha256"):
        return record["sha256"], "recorded"
    return None, None


def record_download(
    cache: Path,
    entry: CatalogueEntry,
    target: Path,
    digest: str,
    url: str | None,
    final_url: str | None = None,
) -> None:
    record = {
        "file": target.name,
        "sha256": digest,
        "size_bytes": target.stat().st_size,
        "source": "download" if url else "found in cache",
        "url": url,
        "preset": entry.preset,
        "recorded_at": now(),
    }
    if final_url and final_url != url:  # redirected: say where the bytes whose digest is pinned came from
        record["final_url"] = final_url
    set_record(cache, entry.name, record, keep_history=True)


def warn_recorded(
    entry: CatalogueEntry,
    target: Path,
    digest: str,
    on_progress: ProgressCallback | None,
    first_download: bool,
) -> None:
    how = "this first download" if first_download else f"the cached file {target}"
    message = (
        f"the catalogue has no SHA-256 for {entry.name!r}; recorded the digest of {how} "
        f"(sha256 {digest}) and will check the file against it from now on. To be sure it is authentic, "
        f"compare it with the SHA-256 shown on {entry.page_url() or 'the source page'}."
    )
    log.warning(message)
    emit(on_progress, "warning", model=entry.name, sha256=digest, message=message)


def warn_replaced(
    entry: CatalogueEntry, previous: dict[str, Any], digest: str, on_progress: ProgressCallback | None
) -> None:
    """A forced download brought a file whose digest differs from the one recorded before."""
    since = f", recorded {previous['recorded_at']}" if previous.get("recorded_at") else ""
    message = (
        f"the forced download of {entry.name!r} differs from the file recorded before: old sha256 "
        f"{previous['sha256']}{since}; new sha256 {digest}. The new file replaces the old one and its digest is "
        f"checked from now on (the old one stays in the history in {RECORDS_FILE}). If you did not expect the "
        f"model to change, compare the new digest with the SHA-256 shown on {entry.page_url() or 'the source page'}."
    )
    log.warning(message)
    emit(
        on_progress,
        "warning",
        model=entry.name,
        sha256=digest,
        previous_sha256=previous["sha256"],
        message=message,
    )


def verify_cached(entry: CatalogueEntry, target: Path, expected: str, origin: str | None) -> None:
    found = sha256_of(target)
    if found != expected:
        where = "the catalogue" if origin == "catalogue" else "the digest recorded when it was first stored"
        raise DownloadError(
            f"the cached file {target} of model {entry.name!r} does not match {where} "
            f"(expected sha256 {expected}, found {found}): it was changed or damaged after it was stored. "
            f"Run `wdm download {entry.name} --force` (or fetch(..., force=True)) to download it again, "
            "or import a good copy with `wdm import-model`."
        )


def imported_path(name: str, record: dict[str, Any], cache: Path, verify: bool) -> Path:
    path = cache / record.get("file", "")
    if not record.get("file") or not path.is_file():
        raise CheckpointError(
            f"model {name!r} was imported but its file {path} is no longer in the cache; "
            f"import it again with `{_import_again(name, record)}`."
        )
    if verify and record.get("sha256"):
        found = sha256_of(path)
        if found != record["sha256"]:
            raise DownloadError(
                f"the cached file {path} of imported model {name!r} does not match the digest recorded at "
                f"import (expected sha256 {record['sha256']}, found {found}): it was changed or damaged. "
                f"Import a good copy again with `{_import_again(name, record)}`."
            )
    return path


def _import_again(name: str, record: dict[str, Any]) -> str:
    """The command that imports model ``name`` again: from where it was imported, under its recorded preset."""
    return import_command(name, record.get("imported_from") or "FILE", record.get("preset"))


def bundled_path(entry: CatalogueEntry, verify: bool) -> Path:
    path = entry.bundled_path
    if not path.is_file():
        raise CheckpointError(
            f"the bundled model {entry.name!r} is missing: expected {path}. This wdmcore installation is "
            "incomplete; reinstall it (`pip install --force-reinstall wdmcore`, or `pip install -e WDMCore` "
            "in a source checkout where the file has been built) or choose another model (`wdm models`)."
        )
    if verify and entry.sha256:
        found = sha256_of(path)
        if found != entry.sha256:
            raise CheckpointError(
                f"the bundled model file {path} does not match the catalogue "
                f"(expected sha256 {entry.sha256}, found {found}); reinstall wdmcore."
            )
    return path
