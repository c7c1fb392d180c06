"""Stream a URL into a `.part` file: resume with Range, hash as it writes, retry brief faults."""

from __future__ import annotations

import errno
import hashlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from exo_runtime.fetch_progress import ProgressReporter
from exo_runtime.fetch_source import FetchSource

FailureReason = Literal[
    "ChecksumMismatch",
    "NotFound",
    "DiskFull",
    "ReadOnly",
    "Unauthorized",
    "NetworkError",
    "InvalidSource",
]

CHUNK_BYTES = 1 << 20
BACKOFF_CAP_SECONDS = 30.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class FetchFailed(Exception):
    """The fetch cannot succeed; `reason` is the machine-readable cause the operator reports."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Transient(Exception):
    """A fault worth retrying: a dropped connection, a short body, a 5xx or 429."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled each time up to the cap

    def delay(self, attempt: int) -> float:
        return min(self.backoff * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS)


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

    path: Path
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    def restart(self) -> None:
        try:
            with self.path.open("wb"):
                pass
        except OSError as err:
            raise failure_for_os_error(err, self.path) from err
        self.hasher, self.size = hashlib.sha256(), 0


def download(
    client: httpx.Client,
    source: FetchSource,
    part_path: Path,
    progress: ProgressReporter,
    policy: RetryPolicy,
) -> Downloaded:
    """Download `source` into `part_path` (resuming what is there); return its sha256 and size."""
    try:
        part = _hash_existing(part_path, progress)
    except OSError as err:
        raise failure_for_os_error(err, part_path) from err
    attempt = 0
    while True:
        size_before = part.size
        try:
            _transfer(client, source, part, progress)
            return Downloaded(sha256=part.hasher.hexdigest(), size=part.size)
        except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
            # Retrying cannot fix a redirect loop or a URL httpx cannot fetch.
            raise FetchFailed("NetworkError", f"cannot download {source.url}: {err}") from err
        except (_Transient, httpx.TransportError) as err:
            # The bound is on attempts in a row that made no progress: a long download over a
            # link that drops now and then still completes.
            attempt = 1 if part.size > size_before else attempt + 1
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


def _hash_existing(path: Path, progress: ProgressReporter) -> _Part:
    """Hash a partial file left by an earlier run, so the final digest covers every byte."""
    part = _Part(path)
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
    client: httpx.Client, source: FetchSource, part: _Part, progress: ProgressReporter
) -> None:
    # Byte offsets only mean something in the file's own encoding, not a compressed one.
    headers = {**source.headers, "Accept-Encoding": "identity"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    with client.stream("GET", source.url, headers=headers) as response:
        if response.status_code == 416:
            total = _total_from_content_range(response)
            if total == part.size:
                return  # the part already holds the whole file
            asked = part.size
            part.restart()
            raise _Transient(f"the server cannot resume at byte {asked} (416); starting over")
        total = _check_status(response, source)
        if part.size and not _is_resumed(response, part.size):
            # The server ignored the Range header and sends the whole file: start over.
            print("the server does not resume downloads; starting from zero", file=sys.stderr)
            part.restart()
        progress.start(part.size, total)
        try:
            with part.path.open("ab") as f:
                # Raw and unbuffered: every byte received is on disk when the link drops.
                for block in response.iter_raw():
                    f.write(block)
                    part.hasher.update(block)
                    part.size += len(block)
                    progress.advance(len(block))
        except OSError as err:
            raise failure_for_os_error(err, part.path) from err
    if total is not None and part.size != total:
        raise _Transient(f"the server closed the transfer at {part.size} of {total} bytes")


def _check_status(response: httpx.Response, source: FetchSource) -> int | None:
    """Raise for an unusable answer; return the file's total size when the server says it."""
    status = response.status_code
    if status in (401, 403):
        hint = (
            "set HF_TOKEN to a token that can read it" if source.source.startswith("hf://") else ""
        )
        raise FetchFailed(
            "Unauthorized",
            f"{source.url} answered {status} {response.reason_phrase}: "
            f"{hint or 'the server refuses access to this file'}",
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
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}" if isinstance(err, httpx.TransportError) else text
