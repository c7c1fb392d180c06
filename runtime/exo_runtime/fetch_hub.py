"""The Hugging Face Hub's listing of a revision, and the fetch plan made from it.

One request, the one huggingface_hub's `model_info(files_metadata=True)` makes:
`GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true` answers the commit the
revision points at (`sha`) and every file (`siblings[].rfilename`) with its size and, for LFS
files, `lfs.sha256`: the digest each download is verified against. Files are then downloaded
from `{endpoint}/{repo}/resolve/{commit}/{path}`, so a branch that moves during the fetch
cannot mix two commits.
"""

from __future__ import annotations

import posixpath
import re
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from exo_runtime.fetch_download import RetryPolicy, hub_unauthorized
from exo_runtime.fetch_errors import FetchFailed
from exo_runtime.fetch_plan import (
    FetchPlan,
    PlannedFile,
    check_relative_path,
    model_entry,
    select,
    split_gguf_parts,
)
from exo_runtime.fetch_source import HubSource

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int | None
    sha256: str | None  # the LFS object's sha256; None for a file kept in git itself


@dataclass(frozen=True)
class HubRevision:
    commit: str
    files: dict[str, HubFile]


def list_revision(client: httpx.Client, hub: HubSource, policy: RetryPolicy) -> HubRevision:
    """The commit `hub.revision` points at and the files there, retrying brief faults."""
    url = f"{hub.endpoint}/api/models/{hub.repo}/revision/{quote(hub.revision, safe='')}"
    attempt = 0
    while True:
        try:
            response = client.get(url, params={"blobs": "true"}, headers=hub.headers)
            if response.status_code != 429 and response.status_code < 500:
                return _parse_listing(url, hub, response)
            problem = f"{url} answered {response.status_code} {response.reason_phrase}"
        except (httpx.TooManyRedirects, httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
            raise FetchFailed("NetworkError", f"cannot list {url}: {err}") from err
        except httpx.TransportError as err:
            problem = f"{type(err).__name__}: {err or type(err).__name__}"
        attempt += 1
        if attempt > policy.retries:
            raise FetchFailed(
                "NetworkError", f"listing {url} failed after {attempt} attempts: {problem}"
            )
        delay = policy.delay(attempt)
        print(
            f"retrying in {delay:.1f}s ({attempt}/{policy.retries}) after: {problem}",
            file=sys.stderr,
        )
        time.sleep(delay)


def _parse_listing(url: str, hub: HubSource, response: httpx.Response) -> HubRevision:
    if response.status_code in (401, 403):
        raise hub_unauthorized(url, response)
    if response.status_code == 404:
        raise FetchFailed(
            "NotFound",
            f"{url} answered 404: no repository {hub.repo} with a revision {hub.revision!r} "
            "(check the name and revision; a private repository needs HF_TOKEN)",
        )
    if response.status_code != 200:
        raise FetchFailed(
            "NetworkError", f"{url} answered {response.status_code} {response.reason_phrase}"
        )
    try:
        body = response.json()
        commit = body["sha"]
        siblings = body["siblings"]
        if not (isinstance(commit, str) and _COMMIT.fullmatch(commit)):
            raise ValueError(f"'sha' is {commit!r}, not a commit")
        files = {}
        for entry in siblings:
            path = entry["rfilename"]
            check_relative_path(path, url)
            lfs = entry.get("lfs") or {}
            digest = lfs.get("sha256")
            size = lfs.get("size", entry.get("size"))
            files[path] = HubFile(
                path=path,
                size=size if isinstance(size, int) and size >= 0 else None,
                sha256=digest if isinstance(digest, str) and _SHA256.fullmatch(digest) else None,
            )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FetchFailed(
            "NetworkError", f"{url} did not answer a listing of the revision ({err})"
        ) from err
    return HubRevision(commit=commit, files=files)


def plan_hub(
    hub: HubSource,
    listing: HubRevision,
    includes: Collection[str],
    sha256: str | None,
    filename: str | None,
    request: dict,
) -> FetchPlan:
    """The files to download from `listing`: hub.file (with its other parts, when it is one
    part of a split GGUF) into DEST/<its name, or `filename`>, or every file that `includes`
    selects, into their folders under DEST."""
    where = f"{hub.repo} at {hub.revision}" + (
        f" ({listing.commit})" if listing.commit != hub.revision else ""
    )
    if hub.file is not None:
        if hub.file not in listing.files:
            raise FetchFailed("NotFound", f"{where} has no file {hub.file}")
        wanted = split_gguf_parts(hub.file) or [hub.file]
        for path in wanted:
            if path not in listing.files:
                raise FetchFailed(
                    "MissingPart",
                    f"{where} has {hub.file} but not {path}: a split GGUF loads only with all "
                    f"{len(wanted)} parts",
                )
        if len(wanted) > 1 and filename not in (None, posixpath.basename(hub.file)):
            raise FetchFailed(
                "InvalidSource",
                f"--filename cannot rename {hub.file}, a part of a split GGUF: llama.cpp finds "
                "the other parts by their names",
            )
        local = {p: posixpath.basename(p) for p in wanted}
        if len(wanted) == 1 and filename:
            local[hub.file] = filename
    else:
        wanted = sorted(select(listing.files, includes))
        selection = f" (--include {' '.join(includes)})" if includes else ""
        local = {p: p for p in wanted}
        model = model_entry(wanted, where + selection)
    files = []
    for index, path in enumerate(wanted):
        listed = listing.files[path]
        expected = listed.sha256
        if sha256 is not None and path == hub.file:
            if expected is not None and expected != sha256:
                raise FetchFailed(
                    "ChecksumMismatch",
                    f"the Hub lists sha256 {expected} for {path} in {where}, expected {sha256}: "
                    "the file changed upstream or the expected sha256 is wrong; nothing was "
                    "downloaded",
                )
            expected = sha256
        files.append(
            PlannedFile(
                path=local[path],
                url=hub.resolve_url(listing.commit, path),
                source=hub.file_source(listing.commit, path),
                sha256=expected,
                size=listed.size,
                split_part=f"{index + 1} of {len(wanted)}"
                if hub.file is not None and index
                else None,
                headers=hub.headers,
            )
        )
    if hub.file is not None:
        model = local[wanted[0]]
    return FetchPlan(request=request, files=tuple(files), model=model, revision=listing.commit)
