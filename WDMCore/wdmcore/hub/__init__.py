"""The model catalogue, verified downloads and the local model cache.

* :mod:`.catalogue`: ``models.json``, the models wdmcore knows;
* :mod:`.cache`: where models live locally and what is recorded about each file;
* :mod:`.fetching`: :func:`fetch`, a model name turned into a verified local file;
* :mod:`.download`: the transport, resumable downloads checked by SHA-256 (:class:`ResumableHTTPDownloader`);
* :mod:`.verification`: which SHA-256 each file is held to (the catalogue's, or the one recorded first);
* :mod:`.importing`: :func:`import_model` for files fetched by hand.
"""

from ..paths import CACHE_ENV
from .cache import RECORDS_FILE, ModelInfo, cache_dir, get_model_info, list_models
from .catalogue import CATALOGUE_PATH, HUB_URL_ENV, KNOWN_PRESETS, Catalogue, CatalogueEntry, load_catalogue
from .download import ResumableHTTPDownloader
from .fetching import fetch
from .importing import import_model

__all__ = [
    "CACHE_ENV",
    "CATALOGUE_PATH",
    "HUB_URL_ENV",
    "KNOWN_PRESETS",
    "RECORDS_FILE",
    "Catalogue",
    "CatalogueEntry",
    "ModelInfo",
    "ResumableHTTPDownloader",
    "cache_dir",
    "fetch",
    "get_model_info",
    "import_model",
    "list_models",
    "load_catalogue",
]
