"""The catalogue of models wdmcore knows: ``models.json`` beside this file.

It lists the released WDM checkpoints on the Hugging Face Hub and the small demo model bundled inside the
package; :func:`load_catalogue` reads and checks it. ``WDM_HUB_URL`` replaces the hub's base URL (a mirror,
or a local server in tests).
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.cards import validate_card

log = logging.getLogger(__name__)

HUB_URL_ENV = "WDM_HUB_URL"
CATALOGUE_PATH = Path(__file__).resolve().with_name("models.json")
KNOWN_PRESETS = ("unet-128", "unet-256", "wavunet-128", "wavunet-256", "cwdm-224", "fastwdm3d-128")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the wdmcore package: bundled models live inside it
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of ``models.json``."""

    name: str
    description: str
    preset: str | None
    source: dict[str, Any]
    format: str
    sha256: str | None = None
    size_bytes: int | None = None
    approx_size_bytes: int | None = None
    license: str | None = None
    license_url: str | None = None
    citation: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``"huggingface"`` (downloaded) or ``"bundled"`` (a file inside the package)."""
        return self.source["kind"]

    @property
    def filename(self) -> str:
        """The file's name in the cache (hub models) or in the package (bundled models)."""
        if self.kind == "bundled":
            return Path(self.source["path"]).name
        return self.source["filename"]

    @property
    def bundled_path(self) -> Path:
        """Where a bundled model's file lies inside the installed package."""
        return PACKAGE_DIR / self.source["path"]

    def url(self, base_url: str) -> str | None:
        """The download URL under ``base_url`` (``https://huggingface.co`` unless overridden)."""
        if self.kind != "huggingface":
            return None
        src = self.source
        return f"{base_url.rstrip('/')}/{src['repo']}/resolve/{src.get('revision', 'main')}/{src['filename']}"

    def page_url(self) -> str | None:
        """The file's page on the Hub, which shows its SHA-256."""
        if self.kind != "huggingface":
            return None
        src = self.source
        return f"https://huggingface.co/{src['repo']}/blob/{src.get('revision', 'main')}/{src['filename']}"


@dataclass(frozen=True)
class Catalogue:
    """The parsed ``models.json``."""

    models: tuple[CatalogueEntry, ...]
    hub_url: str = "https://huggingface.co"
    path: Path | None = None

    def get(self, name: str) -> CatalogueEntry | None:
        """The entry called ``name``; the file name (``brats_unet_128_1200k.pt``) is accepted too."""
        for entry in self.models:
            if name in (entry.name, entry.filename):
                return entry
        return None

    def names(self) -> list[str]:
        return [entry.name for entry in self.models]


def load_catalogue(path: str | os.PathLike | None = None) -> Catalogue:
    """Read and check a catalogue file (by default the ``models.json`` shipped with wdmcore)."""
    path = Path(path) if path is not None else CATALOGUE_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model catalogue {path} not found; reinstall wdmcore or pass an existing file.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model catalogue {path} cannot be read ({exc}); fix or replace the file.") from exc

    def bad(message: str) -> ConfigError:
        return ConfigError(f"model catalogue {path}: {message}; fix the file (see docs/models.md for its format).")

    if not isinstance(data, dict) or data.get("schema") != 1 or not isinstance(data.get("models"), list):
        raise bad('expected {"schema": 1, "models": [...]}')
    entries = []
    for i, raw in enumerate(data["models"]):
        if not isinstance(raw, dict):
            raise bad(f"model #{i} is not an object")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise bad(f"model #{i} has no valid name (letters, digits, '.', '_', '-')")
        source = raw.get("source")
        if not isinstance(source, dict) or source.get("kind") not in ("huggingface", "bundled"):
            raise bad(f"model {name!r}: source.kind must be 'huggingface' or 'bundled'")
        needed = ("repo", "filename") if source["kind"] == "huggingface" else ("path",)
        for key in needed:
            if not isinstance(source.get(key), str) or not source[key]:
                raise bad(f"model {name!r}: source.{key} is missing")
        if source["kind"] == "huggingface" and Path(source["filename"]).name != source["filename"]:
            raise bad(f"model {name!r}: source.filename must be a plain file name")
        if source["kind"] == "bundled" and (Path(source["path"]).is_absolute() or ".." in Path(source["path"]).parts):
            raise bad(f"model {name!r}: source.path must be relative to the wdmcore package")
        digest = raw.get("sha256")
        if digest is not None and (not isinstance(digest, str) or not _SHA256_RE.match(digest.lower())):
            raise bad(f"model {name!r}: sha256 must be 64 hexadecimal digits or null")
        card = raw.get("card") or {}
        try:
            validate_card(card, source=f"model {name!r}")
        except ConfigError as exc:
            raise bad(str(exc)) from None
        entries.append(
            CatalogueEntry(
                name=name,
                description=str(raw.get("description", "")),
                preset=raw.get("preset"),
                source=dict(source),
                format=str(raw.get("format", "")),
                sha256=digest.lower() if digest else None,
                size_bytes=raw.get("size_bytes"),
                approx_size_bytes=raw.get("approx_size_bytes"),
                license=raw.get("license"),
                license_url=raw.get("license_url"),
                citation=raw.get("citation"),
                card=dict(card),
            )
        )
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise bad(f"duplicate model names {duplicates}")
    hub_url = str(data.get("hub_url", "https://huggingface.co"))
    return Catalogue(models=tuple(entries), hub_url=hub_url, path=path)


def base_url_of(cat: Catalogue, base_url: str | None) -> str:
    return base_url or os.environ.get(HUB_URL_ENV) or cat.hub_url
