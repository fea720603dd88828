"""A model name turned into a verified local file: :func:`fetch`.

``models.json`` (next to this file) lists the models wdmcore knows: the released WDM checkpoints on the
Hugging Face Hub and the small demo model bundled inside the package. :func:`fetch` turns a model name into a
local file:

* bundled models are returned from the package folder;
* hub models are downloaded once into :func:`cache_dir` (:mod:`.download`: with :mod:`pooch`, into a temporary
  file moved into place only when complete and verified, resuming with HTTP ``Range`` requests when the
  connection drops);
* every file is checked against a SHA-256 (:mod:`.verification`): the catalogue's digest when it has one,
  otherwise the digest recorded on the first download (trust on first use, announced with a warning), kept in
  ``records.json`` in the cache folder. A cached file that no longer matches its digest is an error, never
  silently used; a download with another digest is refused unless forced, and a forced one says that the file
  changed.

Files fetched by hand (for example on a machine without internet access) enter the same cache through
:func:`import_model`. Environment variables: ``WDM_CACHE_DIR`` moves the cache, ``WDM_HUB_URL`` replaces the
hub's base URL (a mirror, or a local server in tests).
"""

import os
from pathlib import Path
from typing import Any

from ..events import ProgressCallback
from .cache import cache_dir, read_records, sha256_of, unknown_model
from .catalogue import Catalogue, base_url_of, load_catalogue
from .download import download_to_cache
from .verification import (
    bundled_path,
    expected_digest,
    imported_path,
    record_download,
    verify_cached,
    warn_recorded,
    warn_replaced,
)


def fetch(
    name: str,
    *,
    on_progress: ProgressCallback | None = None,
    progressbar: bool | Any = False,
    catalogue: Catalogue | None = None,
    base_url: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """The local path of model ``name``, downloading it into the cache first if needed.

    Args:
        name: a catalogue name (``brats_unet_128_1200k``; the file name is accepted too) or the name of an
            imported model.
        on_progress: receives download progress events (``{"event": "progress", "task": "download",
            "done": bytes, "total": bytes, "eta_s": ..., "model": name}``) and ``"warning"`` events.
        progressbar: True draws a tqdm bar on stderr (for the command line); a tqdm-like object is used as is.
        catalogue: another catalogue than the shipped ``models.json``.
        base_url: replaces the hub's base URL (default: ``$WDM_HUB_URL`` or the catalogue's ``hub_url``).
        force: download again even when the file is cached, and record the new file's digest (the cached
            file stays until the new one has arrived and passed the catalogue's digest, if any). A new file
            whose digest differs from the recorded one is accepted with a warning that names both digests; the
            old digest stays in the record's ``history``.
        verify: check the SHA-256 of an already cached file (a download is always checked).

    Raises:
        DownloadError: the download failed (offline, server error) or a file does not match its digest.
        CheckpointError: a bundled model file is missing from the installation.
        ConfigError: the name is unknown.
    """
    cat = catalogue if catalogue is not None else load_catalogue()
    cache = cache_dir()
    records = read_records(cache)
    entry = cat.get(name)
    if entry is None:
        if name not in records:
            raise unknown_model(name, cat, records)
        return imported_path(name, records[name], cache, verify)
    if entry.kind == "bundled":
        return bundled_path(entry, verify)

    target = cache / entry.filename
    record = records.get(entry.name)
    # With force, a recorded digest is not held against the new download (the catalogue's still is): a
    # different file is accepted, and said to be different (old and new digest) below.
    expected, origin = expected_digest(entry, None if force else record)

    if target.is_file() and not force:
        if expected is None:
            # Cached but no digest anywhere (the record file was deleted): take this file as the reference.
            digest = sha256_of(target)
            record_download(cache, entry, target, digest, url=None)
            warn_recorded(entry, target, digest, on_progress, first_download=False)
        elif verify:
            verify_cached(entry, target, expected, origin)
        return target

    url = entry.url(base_url_of(cat, base_url))
    assert url is not None
    previous = None
    if target.exists():  # forced: keep the old file aside until the new one is in place
        previous = target.with_name(f".{target.name}.previous")
        os.replace(target, previous)
    try:
        final_url = download_to_cache(entry, url, cache, expected, origin, on_progress, progressbar)
    except BaseException:
        if previous is not None:
            os.replace(previous, target)
        raise
    if previous is not None:
        previous.unlink()
    digest = expected or sha256_of(target)
    record_download(cache, entry, target, digest, url=url, final_url=final_url)
    recorded = (record or {}).get("sha256")
    if expected is None and recorded and recorded != digest:
        warn_replaced(entry, record, digest, on_progress)
    elif expected is None and not recorded:
        warn_recorded(entry, target, digest, on_progress, first_download=True)
    return target
