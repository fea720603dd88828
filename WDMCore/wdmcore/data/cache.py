"""A folder of preprocessed volumes, stored as .npy files and read back memory-mapped.

Each entry is ``<key>.npy`` (the float32 [0, 1] volume, before the final 2x - 1, so training and evaluation
share it) plus ``<key>.json`` (affine, source information, configuration). The key is a SHA-256 over the
resolved file path, its modification time (ns) and size, the preprocessing fields that change the volume,
and the cache format version: editing or replacing a file, or changing the preprocessing, gives a new key.
Entries are written to a temporary name and renamed, the JSON last, so concurrent DataLoader workers and
interrupted runs never see half-written entries. Old entries are never deleted automatically; delete the
folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import DataError, DiskFullError
from ..volumes.writing import describe_os_error, disk_is_full
from .discovery import Case
from .preprocess import PreparedVolume, PreprocessConfig, SourceInfo, preprocess_01

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(path: str | Path, config: PreprocessConfig) -> str:
    """The cache key of a volume file under a preprocessing configuration."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot stat the file ({exc}); check that it exists") from exc
    payload = {
        "format": CACHE_FORMAT,
        "path": str(path),
        "mtime_ns": stat.st_mtime_ns,
        "size": stat.st_size,
        "config": config.geometry_and_intensity_fields(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class PreprocessCache:
    """Preprocessed [0, 1] volumes in ``root``, keyed by :func:`cache_key`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if disk_is_full(exc, self.root.parent):
                reason = describe_os_error(exc, self.root.parent)
                raise DiskFullError(f"cannot create the cache folder {self.root}: {reason}") from exc
            raise DataError(f"{self.root}: cannot create the cache folder ({exc}); choose a writable folder") from exc

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def load(self, key: str, config: PreprocessConfig) -> PreparedVolume | None:
        """The cached [0, 1] volume (array memory-mapped read-only) or None if absent."""
        npy, meta_path = self.paths(key)
        if not meta_path.is_file() or not npy.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(npy, mmap_mode="r")
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable cache entry (%s); it will be rebuilt", npy, exc)
            return None
        cfg01 = PreprocessConfig(**{**config.to_dict(), "output_range01": True})
        return PreparedVolume(
            array=array,
            affine=np.asarray(meta["affine"], dtype=np.float64),
            source=SourceInfo.from_dict(meta["source"]),
            config=cfg01,
        )

    def store(self, key: str, prepared: PreparedVolume) -> None:
        npy, meta_path = self.paths(key)
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_npy, tmp_meta = npy.with_name(npy.name + tag), meta_path.with_name(meta_path.name + tag)
        meta = {
            "format": CACHE_FORMAT,
            "affine": np.asarray(prepared.affine).tolist(),
            "source": prepared.source.to_dict(),
            "config": prepared.config.geometry_and_intensity_fields(),
        }
        try:
            with open(tmp_npy, "wb") as f:
                np.save(f, np.ascontiguousarray(prepared.array, dtype=np.float32))
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_npy, npy)
            os.replace(tmp_meta, meta_path)
        except OSError as exc:
            for p in (tmp_npy, tmp_meta):
                p.unlink(missing_ok=True)
            if disk_is_full(exc, self.root):  # not the volume's fault: never let it be skipped as a bad file
                raise DiskFullError(
                    f"cannot write a cache entry into {self.root}: {describe_os_error(exc, self.root)} (the cache "
                    "folder is chosen with --cache DIR); the volumes prepared so far are kept and are not prepared "
                    "again"
                ) from exc
            raise DataError(
                f"{self.root}: cannot write a cache entry ({exc}); check free space and permissions"
            ) from exc

    def get_or_prepare(self, case: Case, config: PreprocessConfig) -> tuple[PreparedVolume, bool]:
        """(the [0, 1] volume, whether it came from the cache); prepares and stores it if needed."""
        key = cache_key(case.path, config)
        cached = self.load(key, config)
        if cached is not None:
            return cached, True
        prepared = preprocess_01(case, config)
        self.store(key, prepared)
        cached = self.load(key, config)
        return (cached if cached is not None else prepared), False
