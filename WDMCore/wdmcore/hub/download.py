"""Download transport: a model file from a URL into the cache, resumed when the connection drops, bounded
in every way a server can misbehave, and checked by :mod:`pooch` against the expected SHA-256 before it is
moved into place (:func:`download_to_cache`, :class:`ResumableHTTPDownloader`)."""

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pooch

from ..errors import DownloadError
from ..events import ProgressCallback, ProgressTracker, emit
from ..interrupts import sigterm_unwinds
from .cache import RECORDS_FILE, import_command
from .catalogue import CatalogueEntry

log = logging.getLogger(__name__)

# Download behaviour. A connection that drops is resumed. Only a new high-water mark (bytes of the file we
# never had before) is progress: a server that ignores Range and resends the same prefix makes none. Every
# download is bounded: attempts in a row without progress, time without progress, total bytes received and the
# file's size (the catalogue's, plus a margin).
DOWNLOAD_RETRIES = 5
RETRY_WAIT_S = 1.0  # first wait; doubles with every further failed attempt, at most MAX_RETRY_WAIT_S
MAX_RETRY_WAIT_S = 10.0
CHUNK_SIZE = 1 << 16
TIMEOUT_S = (10.0, 30.0)  # connect, read (a silent server is "not answering" after this long)
STALL_LIMIT_S = 120.0  # give up when the file has not grown for this long, over all attempts
SIZE_MARGIN = (1.02, 1 << 20)  # a file may exceed the catalogue's size by 2 % + 1 MiB (approximate sizes)
TRANSFER_FACTOR = 4  # all attempts together may receive at most this many times the size limit
MIN_RATE_BPS = 20_000  # the whole download may take 10 minutes + size / this rate at most
EVENT_INTERVAL_S = 0.25


def download_to_cache(
    entry: CatalogueEntry,
    url: str,
    cache: Path,
    expected: str | None,
    origin: str | None,
    on_progress: ProgressCallback | None,
    progressbar: bool | Any,
) -> str | None:
    """Download into the cache; returns the URL the file came from after redirects."""
    cache.mkdir(parents=True, exist_ok=True)
    downloader = ResumableHTTPDownloader(
        model=entry.name,
        on_progress=on_progress,
        progressbar=progressbar,
        max_bytes=_size_limit(entry),
        preset=entry.preset,
    )
    log.info("downloading %s from %s to %s", entry.name, url, cache)
    try:
        # pooch removes its temporary file on the way out; SIGTERM is turned into an exception so that it does.
        with _quiet_pooch(), sigterm_unwinds():
            pooch.retrieve(
                url,
                known_hash=f"sha256:{expected}" if expected else None,
                fname=entry.filename,
                path=cache,
                downloader=downloader,
            )
        return downloader.final_url
    except ValueError as exc:  # pooch's digest mismatch; it has already deleted the temporary file
        where = "the catalogue" if origin == "catalogue" else f"the digest recorded in {cache / RECORDS_FILE}"
        raise DownloadError(
            f"the download of {entry.name!r} from {url} does not match the SHA-256 of {where} "
            f"(expected {expected}); it was rejected and nothing was kept. The transfer may have been "
            "corrupted: try again. If it fails again, the file on the server differs from the one "
            + (
                "the catalogue describes: update wdmcore."
                if origin == "catalogue"
                else "downloaded before: if the new file is intended, run `wdm download "
                f"{entry.name} --force` to accept it (the old and the new digest are shown and both kept)."
            )
        ) from exc


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch logs to stderr through its own handler; our own log records say the same, so keep it quiet."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _size_limit(entry: CatalogueEntry) -> int | None:
    """The most bytes a download of ``entry`` may have: its catalogue size plus a margin (None: unknown)."""
    size = entry.size_bytes or entry.approx_size_bytes
    if not size:
        return None
    factor, extra = SIZE_MARGIN
    return int(size * factor) + extra


# --------------------------------------------------------------------------------------------- downloader


class _Retry(Exception):
    """An attempt failed in a way that another attempt may fix (dropped connection, server error)."""


class _DownloadProgress:
    """Feeds byte counts to the events callback (throttled) and to an optional tqdm bar."""

    def __init__(self, model: str, on_progress: ProgressCallback | None, progressbar: bool | Any):
        self.model = model
        self.on_progress = on_progress
        self.progressbar = progressbar
        self.tracker: ProgressTracker | None = None
        self.bar: Any = None
        self.total: int | None = None
        self.done = 0
        self.received = 0  # bytes received over all attempts, never reset
        self._pending = 0
        self._last = 0.0

    def start(self, done: int, total: int | None) -> None:
        """Called for every response: the byte count we (re)start from and the file size if known."""
        self.total, self.done, self._pending = total, done, 0
        if self.tracker is None:
            self.tracker = ProgressTracker(self.on_progress, "download", total or 0, model=self.model)
        self.tracker.total = total or 0
        self.tracker.done = done
        if self.progressbar is True and self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self.model,
                ascii=sys.platform == "win32",
                leave=True,
            )
        elif self.progressbar and self.progressbar is not True:
            self.bar = self.progressbar
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            if hasattr(self.bar, "refresh"):
                self.bar.refresh()
        self._send(force=True)

    def update(self, n: int) -> None:
        self.done += n
        self.received += n
        self._pending += n
        if self.bar is not None:
            self.bar.update(n)
        self._send(force=False)

    def finish(self) -> None:
        self._send(force=True)

    def close(self) -> None:
        if self.bar is not None and self.progressbar is True:
            self.bar.close()

    def _send(self, force: bool) -> None:
        now = time.monotonic()
        if self.on_progress is None or not (force or now - self._last >= EVENT_INTERVAL_S):
            return
        self._last = now
        assert self.tracker is not None
        if self.total:
            self.tracker.advance(self._pending, unit="bytes")
        else:  # size unknown: no ETA
            self.tracker.done += self._pending
            emit(
                self.on_progress,
                "progress",
                task="download",
                done=self.tracker.done,
                total=None,
                eta_s=None,
                model=self.model,
                unit="bytes",
            )
        self._pending = 0


class ResumableHTTPDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes dropped transfers.

    pooch streams into a temporary file and moves it into the cache only after the digest check; this
    callable fills that file. When the connection drops it asks for the rest with ``Range: bytes=N-``; a
    server that ignores the range (answers 200) is read again from the start into the emptied file. Progress
    goes to ``on_progress`` events and, with ``progressbar``, a tqdm bar.

    Bounded in every way a server can misbehave: ``retries`` attempts in a row that add no new bytes, no new
    bytes for ``STALL_LIMIT_S``, more than ``max_bytes`` in the file (an endless stream), more than
    ``TRANSFER_FACTOR`` times that over all attempts, or a total time beyond 10 minutes + size / ``MIN_RATE_BPS``.
    A name that does not resolve or a refused connection is "no network" at once, without retries.
    """

    def __init__(
        self,
        model: str,
        on_progress: ProgressCallback | None = None,
        progressbar: bool | Any = False,
        retries: int | None = None,
        max_bytes: int | None = None,
        preset: str | None = None,
    ):
        self.model = model
        self.preset = preset  # named in the import command that the error messages suggest
        self.on_progress = on_progress
        self.progressbar = progressbar
        self.retries = DOWNLOAD_RETRIES if retries is None else retries
        self.max_bytes = max_bytes
        self.final_url: str | None = None  # where the bytes came from, after redirects
        self._etag: str | None = None  # of the file being downloaded, to resume only that same file

    def __call__(self, url: str, output_file: str, pooch_obj: Any = None, check_only: bool = False) -> Any:
        import requests

        if check_only:
            response = requests.head(url, timeout=TIMEOUT_S, allow_redirects=True)
            return response.status_code == 200

        progress = _DownloadProgress(self.model, self.on_progress, self.progressbar)
        self._etag = None
        self.final_url = None
        failures = 0
        high_water = 0  # the most bytes of the file we ever held: only beating it is progress
        started = last_progress = time.monotonic()
        limit = self.max_bytes
        deadline = started + 600.0 + (limit or 0) / MIN_RATE_BPS
        last_error: BaseException | None = None
        try:
            with open(output_file, "w+b") as out:
                while True:
                    try:
                        self._attempt(requests, url, out, progress)
                        break
                    except (_Retry, requests.ConnectionError, requests.Timeout) as exc:
                        last_error = exc
                    except requests.exceptions.ChunkedEncodingError as exc:  # connection dropped mid-body
                        last_error = exc
                    except requests.RequestException as exc:  # malformed URL, redirect loop: no point retrying
                        raise DownloadError(f"cannot download {self.model!r} from {url}: {_short(exc)}") from exc
                    now_ = time.monotonic()
                    if out.tell() > high_water:
                        high_water, failures, last_progress = out.tell(), 0, now_
                    failures += 1
                    if _no_network(last_error) and progress.received == 0:
                        raise self._no_network(url, last_error)
                    if (
                        failures > self.retries
                        or now_ - last_progress > STALL_LIMIT_S
                        or now_ > deadline
                        or (limit is not None and progress.received > TRANSFER_FACTOR * limit)
                    ):
                        raise self._give_up(url, last_error, out.tell(), progress, failures)
                    wait = min(RETRY_WAIT_S * 2 ** (failures - 1), MAX_RETRY_WAIT_S)
                    log.warning(
                        "download of %s interrupted at %d bytes (%s); retrying in %.1f s",
                        self.model,
                        out.tell(),
                        _short(last_error),
                        wait,
                    )
                    time.sleep(wait)
            progress.finish()
        finally:
            progress.close()
        return None

    def _attempt(self, requests: Any, url: str, out: Any, progress: _DownloadProgress) -> None:
        offset = out.tell()
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self._etag:  # the rest only if the file is still the same one, else the whole new file
                headers["If-Range"] = self._etag
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S, allow_redirects=True) as resp:
            self.final_url = resp.url or url
            status = resp.status_code
            etag = resp.headers.get("ETag")
            if status in (200, 206) and etag and not etag.startswith("W/"):
                self._etag = etag
            if status == 416 and offset and progress.total == offset:
                return  # we already had every byte
            if status >= 500 or status == 429:
                raise _Retry(f"server answered {status} {resp.reason}")
            if status >= 400:
                raise DownloadError(self._http_message(url, status, resp.reason))
            total = _content_total(resp, offset if status == 206 else 0)
            if total is not None and self.max_bytes is not None and total > self.max_bytes:
                raise DownloadError(self._too_big(url, f"the server announces {total} bytes"))
            if status == 206:
                start = _content_range_start(resp)
                if start != offset:
                    log.info("server resumed at byte %s instead of %d; starting over", start, offset)
                    out.seek(0)
                    out.truncate()
                    raise _Retry(f"unusable partial response starting at byte {start}")
            elif offset:
                log.info("server does not resume downloads (status %d); reading %s again", status, self.model)
                out.seek(0)
                out.truncate()
                offset = 0
            progress.start(offset, total)
            for chunk in resp.iter_content(chunk_size=CHUNK_SIZE):
                if chunk:
                    out.write(chunk)
                    progress.update(len(chunk))
                    if self.max_bytes is not None and out.tell() > self.max_bytes:
                        raise DownloadError(self._too_big(url, f"it sent more than {self.max_bytes} bytes"))
            out.flush()
            if total is not None and out.tell() < total:
                raise _Retry(f"connection closed after {out.tell()} of {total} bytes")
            if total is not None and out.tell() > total:
                out.seek(0)
                out.truncate()
                raise _Retry(f"server sent more bytes than announced ({total})")

    def _import_command(self, url: str) -> str:
        """The import command for the file this URL serves, as a browser or `curl -O` names it when saved."""
        return import_command(self.model, Path(urlsplit(url).path).name or "FILE", self.preset)

    def _too_big(self, url: str, what: str) -> str:
        return (
            f"the download of {self.model!r} from {urlsplit(url).netloc} was stopped: {what}, more than the "
            f"catalogue's size of this model allows ({self.max_bytes} bytes with margin). The server is not "
            "serving the model file; nothing was kept. Try again later or use another --hub-url."
        )

    def _no_network(self, url: str, error: BaseException | None) -> DownloadError:
        host = urlsplit(url).netloc
        return DownloadError(
            f"no network: cannot reach {host} ({_short(error)}). This computer seems to be offline, or a "
            f"firewall/proxy blocks the connection. Connect and try again, or download {url} on a machine with "
            f"internet access and import the file here with `{self._import_command(url)}` (see docs/models.md)."
        )

    def _http_message(self, url: str, status: int, reason: str) -> str:
        if status == 404:
            hint = "the file is not (or no longer) there: update wdmcore, whose catalogue may be outdated"
        elif status in (401, 403):
            hint = "access was refused: the repository may require logging in or accepting terms in a browser"
        else:
            hint = "check the address"
        return (
            f"cannot download {self.model!r}: {url} answered {status} {reason}; {hint}. "
            "Alternatively download the file by hand and import it with "
            f"`{self._import_command(url)}`."
        )

    def _give_up(
        self, url: str, error: BaseException | None, done: int, progress: _DownloadProgress, attempts: int
    ) -> DownloadError:
        host = urlsplit(url).netloc
        manual = (
            f"try again later, or download {url} on a machine with internet access and import the file here "
            f"with `{self._import_command(url)}` (see docs/models.md)."
        )
        if _is_timeout(error):
            return DownloadError(
                f"the server {host} is not answering: no data for {TIMEOUT_S[1]:.0f} s at a time "
                f"({attempts} attempt(s), {done} bytes kept of {self.model!r}); nothing was kept: {manual}"
            )
        of = f" of {progress.total}" if progress.total else ""
        return DownloadError(
            f"the download of {self.model!r} from {host} kept failing at {done}{of} bytes "
            f"({attempts} attempts without getting further; last error: {_short(error)}); "
            f"nothing was kept: {manual}"
        )


def _no_network(error: BaseException | None) -> bool:
    """A name that does not resolve or a refused connection: retrying right away will not help."""
    text = repr(error) + str(error)
    markers = ("NameResolution", "Name or service not known", "nodename nor servname", "getaddrinfo",
               "Temporary failure in name resolution", "Connection refused", "ConnectionRefused",
               "Network is unreachable")  # fmt: skip
    return any(m in text for m in markers)


def _is_timeout(error: BaseException | None) -> bool:
    import requests

    return isinstance(error, requests.Timeout) or "timed out" in str(error).lower()


def _short(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if any(m in text for m in ("Name or service not known", "nodename nor servname", "getaddrinfo", "name resolution")):
        return "the server name could not be resolved"
    if "Network is unreachable" in text:
        return "the network is unreachable"
    if _is_timeout(error):
        return "timed out"
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _content_total(resp: Any, offset: int) -> int | None:
    crange = resp.headers.get("Content-Range", "")
    if "/" in crange and not crange.endswith("/*"):
        try:
            return int(crange.rsplit("/", 1)[1])
        except ValueError:
            pass
    length = resp.headers.get("Content-Length")
    if length is not None and "Content-Encoding" not in resp.headers:
        try:
            return offset + int(length)
        except ValueError:
            pass
    return None


def _content_range_start(resp: Any) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None
