"""Stream a URL into a `.part` file: resume with Range, hash as it writes, retry brief faults.

A resume sends If-Range with the validator (strong ETag, else Last-Modified) of the version
the part came from, so a file that changed upstream comes back whole (200) and is restarted,
never spliced onto old bytes; a part whose version is unknown is restarted, not resumed.
"""

from __future__ import annotations

import errno
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from exo_runtime.fetch_errors import HF_TOKEN_HINT, FetchFailed
from exo_runtime.fetch_progress import Progress
from exo_runtime.fetch_source import FetchSource
from exo_runtime.fetch_store import CachePaths, record_part_validator

CHUNK_BYTES = 1 << 20
BACKOFF_CAP_SECONDS = 30.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """A fault worth retrying: a dropped connection, a short body, a 5xx or 429."""


class _Stalled(_Transient):
    """The server sends too slowly to ever finish: a trickle, or nothing at all."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled each time up to the cap

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS)


@dataclass(frozen=True)
class StallRule:
    """A transfer that brings fewer than `min_bytes_per_second` over `seconds` is stalled.

    `seconds` is also the read timeout, so a server that goes silent fails as fast as one
    that trickles.
    """

    seconds: float = 60.0
    min_bytes_per_second: float = 16 * 1024

    @property
    def progress_bytes(self) -> int:
        """Bytes an attempt must bring to renew the retries: one window at the minimum rate."""
        return max(1, int(self.seconds * self.min_bytes_per_second))


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int


def failure_for_os_error(err: OSError, path: Path) -> FetchFailed:
    """Map a filesystem error to the reason the operator shows (disk full, read-only, …)."""
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return FetchFailed(
            "DiskFull",
            f"no space left while writing {path}: give the model cache more room "
            "(the ExoModel's storage.size) and retry; the partial file is kept for resuming",
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "mount the destination read-write and writable by this user"
    else:
        hint = "give a --dest that is a folder on a working volume"
    # Any other refusal of the filesystem is, for the operator, the same: it cannot write here.
    return FetchFailed("ReadOnly", f"cannot write {path} ({err.strerror or err}): {hint}")


@dataclass
class _Part:
    """The partial file and the digest of every byte it holds so far."""

    paths: CachePaths
    source: str
    validator: str | None = None  # If-Range value for the version these bytes come from
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    @property
    def path(self) -> Path:
        return self.paths.part

    def restart(self) -> None:
        try:
            with self.path.open("wb"):
                pass
        except OSError as err:
            raise failure_for_os_error(err, self.path) from err
        self.hasher, self.size, self.validator = hashlib.sha256(), 0, None

    def begin(self, validator: str | None) -> None:
        """An empty part starts receiving the version that `validator` names."""
        try:
            record_part_validator(self.paths, self.source, validator)
        except OSError as err:
            raise failure_for_os_error(err, self.paths.part_record) from err
        self.validator = validator


def download(
    client: httpx.Client,
    source: FetchSource,
    paths: CachePaths,
    validator: str | None,
    progress: Progress,
    policy: RetryPolicy,
    stall: StallRule,
) -> Downloaded:
    """Download `source` into `paths.part` (resuming the bytes of the version `validator`
    names, if any); return the whole file's sha256 and size."""
    try:
        part = _hash_existing(paths, source.source, validator, progress)
    except OSError as err:
        raise failure_for_os_error(err, paths.part) from err
    attempt = 0
    while True:
        size_before = part.size
        try:
            _transfer(client, source, part, progress, stall)
            return Downloaded(sha256=part.hasher.hexdigest(), size=part.size)
        except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
            # Retrying cannot fix a redirect loop or a URL httpx cannot fetch.
            raise FetchFailed("NetworkError", f"cannot download {source.url}: {err}") from err
        except (_Transient, httpx.TransportError) as err:
            # The bound is on attempts in a row that made no progress: a long download over a
            # link that drops now and then still completes. A try that stalled must have
            # brought more than a trickle, or a server that sends a few bytes and stalls,
            # again and again, would keep the fetch alive forever.
            gained = part.size - size_before
            stalled = isinstance(err, _Stalled | httpx.ReadTimeout)
            progressed = gained >= stall.progress_bytes if stalled else gained > 0
            attempt = 1 if progressed else attempt + 1
            if attempt > policy.retries:
                raise FetchFailed(
                    "NetworkError",
                    f"downloading {source.url} failed after {attempt} attempts: {_describe(err)}; "
                    f"{part.size} bytes are kept in {part.path} and the next run resumes there",
                ) from err
            delay = policy.delay(attempt)
            print(
                f"retrying in {delay:.1f}s ({attempt}/{policy.retries}) after: {_describe(err)}",
                file=sys.stderr,
            )
            time.sleep(delay)


def _hash_existing(
    paths: CachePaths, source: str, validator: str | None, progress: Progress
) -> _Part:
    """Hash a partial file left by an earlier run, so the final digest covers every byte."""
    part = _Part(paths, source, validator)
    path = paths.part
    if not path.exists():
        return part
    progress.start(0, path.stat().st_size)
    progress.set_state("verifying")
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            part.hasher.update(block)
            part.size += len(block)
    return part


def _transfer(
    client: httpx.Client,
    source: FetchSource,
    part: _Part,
    progress: Progress,
    stall: StallRule,
) -> None:
    if part.size and part.validator is None:
        # A bare Range could splice a newer version of the file onto these bytes.
        print(
            "the server gave no ETag or Last-Modified for the partial file, so it cannot be "
            "resumed safely; starting from zero",
            file=sys.stderr,
        )
        part.restart()
    # Byte offsets only mean something in the file's own encoding, not a compressed one.
    headers = {**source.headers, "Accept-Encoding": "identity"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
        headers["If-Range"] = part.validator
    with client.stream("GET", source.url, headers=headers) as response:
        if response.status_code == 416:
            total = _total_from_content_range(response)
            if total == part.size:
                return  # the part already holds the whole file
            asked = part.size
            part.restart()
            raise _Transient(f"the server cannot resume at byte {asked} (416); starting over")
        total = _check_status(response, source)
        served = _validator(response)
        if part.size and not _is_resumed(response, part.size):
            # If-Range failed (the file changed) or the server ignores Range: the whole file.
            print(
                "the server sent the whole file instead of the rest (it changed upstream, or "
                "the server does not resume downloads); starting from zero",
                file=sys.stderr,
            )
            part.restart()
        elif part.size and served is not None and served != part.validator:
            # A server that ignores If-Range but still answers 206 with another version.
            part.restart()
            raise _Transient(
                f"the server resumed a different version of the file ({served}, the partial "
                f"file is {headers['If-Range']}); starting over"
            )
        if not part.size:
            part.begin(served)
        progress.start(part.size, total)
        watch = _ThroughputWatch(stall)
        try:
            with part.path.open("ab") as f:
                # Raw and unbuffered: every byte received is on disk when the link drops.
                for block in response.iter_raw():
                    f.write(block)
                    part.hasher.update(block)
                    part.size += len(block)
                    progress.advance(len(block))
                    watch.received(len(block))
        except OSError as err:
            raise failure_for_os_error(err, part.path) from err
    if total is not None and part.size != total:
        raise _Transient(f"the server closed the transfer at {part.size} of {total} bytes")


class _ThroughputWatch:
    """Raises _Stalled when a window of `stall.seconds` brings too few bytes."""

    def __init__(self, stall: StallRule) -> None:
        self.stall = stall
        self.window_start = time.monotonic()
        self.window_bytes = 0

    def received(self, nbytes: int) -> None:
        self.window_bytes += nbytes
        elapsed = time.monotonic() - self.window_start
        if elapsed < self.stall.seconds:
            return
        if self.window_bytes < self.stall.min_bytes_per_second * elapsed:
            raise _Stalled(
                f"the transfer is stalled: {self.window_bytes} bytes in the last {elapsed:.1f}s, "
                f"under the minimum of {self.stall.min_bytes_per_second:.0f} bytes/s"
            )
        self.window_start, self.window_bytes = time.monotonic(), 0


def _validator(response: httpx.Response) -> str | None:
    """What If-Range may carry for this response's version: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/"):  # If-Range takes no weak ETag (RFC 9110, 13.1.5)
        return etag
    return response.headers.get("Last-Modified", "").strip() or None


def refuse_https_downgrade(response: httpx.Response) -> None:
    """httpx response hook: fail a redirect from https to plain http instead of following it."""
    if not response.has_redirect_location or response.request.url.scheme != "https":
        return
    target = response.request.url.join(response.headers["Location"])
    if target.scheme == "http":
        raise FetchFailed(
            "InsecureRedirect",
            f"refusing the redirect from {response.request.url} to {target}: it would download "
            "over plain http a file asked for over https",
        )


def hub_unauthorized(url: str, response: httpx.Response) -> FetchFailed:
    """A 401/403 of the Hub, with its own explanation (X-Error-Message) when it gives one."""
    said = response.headers.get("X-Error-Message", "").strip()
    said = f" ({said})" if said else ""
    return FetchFailed(
        "Unauthorized",
        f"{url} answered {response.status_code} {response.reason_phrase}{said}: {HF_TOKEN_HINT}",
    )


def _check_status(response: httpx.Response, source: FetchSource) -> int | None:
    """Raise for an unusable answer; return the file's total size when the server says it."""
    status = response.status_code
    if status in (401, 403):
        if source.source.startswith("hf://"):
            raise hub_unauthorized(source.url, response)
        raise FetchFailed(
            "Unauthorized",
            f"{source.url} answered {status} {response.reason_phrase}: the server refuses "
            "access to this file",
        )
    if status in (404, 410):
        raise FetchFailed(
            "NotFound",
            f"{source.url} answered {status} {response.reason_phrase}: check the URL "
            "(repository, file name and revision)",
        )
    if status == 429 or status >= 500:
        raise _Transient(f"{source.url} answered {status} {response.reason_phrase}")
    if status not in (200, 206):
        raise FetchFailed(
            "NetworkError", f"{source.url} answered {status} {response.reason_phrase}"
        )
    if status == 206:
        return _total_from_content_range(response)
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _is_resumed(response: httpx.Response, offset: int) -> bool:
    if response.status_code != 206:
        return False
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == offset


def _total_from_content_range(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Range", "")
    total = value.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _describe(err: Exception) -> str:
    if isinstance(err, httpx.ReadTimeout):
        return "the transfer is stalled: nothing came within the stall timeout (ReadTimeout)"
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}" if isinstance(err, httpx.TransportError) else text
