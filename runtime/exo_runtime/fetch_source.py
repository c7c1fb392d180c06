"""Turn what `exo-runtime fetch` is given into requests: an http(s) URL, `hf://ORG/REPO/FILE`
(one file of a Hugging Face repository), `hf://ORG/REPO` (a snapshot of it), or `URL=SHA256`
entries of a list of files."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_DEFAULT_REVISION = "main"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The Hub's own rule for a repository id: ORG/NAME of letters, digits, '-', '_' and '.'.
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InvalidSource(ValueError):
    """The SOURCE string cannot be fetched; the message says which forms are accepted."""


@dataclass(frozen=True)
class FetchSource:
    """One download: where from, with which headers, into which file name."""

    source: str  # identity recorded beside the verified file
    url: str
    filename: str
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class HubSource:
    """`hf://ORG/REPO[/FILE][@REVISION]`: one file of a Hub repository, or (no FILE) all of it."""

    source: str  # as the user wrote it
    endpoint: str
    repo: str  # ORG/NAME
    revision: str  # a branch, tag or commit, as given
    file: str | None
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def resolve_url(self, commit: str, path: str) -> str:
        """The download URL of `path` at `commit` (the Hub redirects LFS files to its CDN)."""
        return f"{self.endpoint}/{self.repo}/resolve/{quote(commit, safe='')}/{quote(path)}"

    def file_source(self, commit: str, path: str) -> str:
        """The identity of one file at a pinned commit, recorded beside it."""
        return f"hf://{self.repo}/{path}@{commit}"


def is_hub_source(source: str) -> bool:
    return urlsplit(source).scheme.lower() == "hf"


def parse_url(source: str, filename: str | None = None) -> FetchSource:
    """An http(s) URL; `filename` overrides the name taken from its path."""
    if urlsplit(source).scheme.lower() not in ("http", "https"):
        raise InvalidSource(
            f"cannot fetch {source!r}: the source must be an http(s):// URL, "
            "hf://ORG/REPO/FILE[@REVISION] (one file) or hf://ORG/REPO[@REVISION] (a snapshot)"
        )
    name = filename or url_file_name(source)
    check_filename(name, source)
    return FetchSource(source=source, url=source, filename=name)


def parse_hub(source: str, env: Mapping[str, str] = os.environ) -> HubSource:
    """`hf://ORG/REPO[/FILE][@REVISION]`, with the endpoint (HF_ENDPOINT) and token (HF_TOKEN)."""
    path, _, revision = source[len("hf://") :].partition("@")
    parts = [p for p in path.split("/") if p]
    if (
        len(parts) < 2
        or "@" in revision
        or not all(_REPO_PART.fullmatch(p) for p in parts[:2])
        or any(p in (".", "..") for p in parts)
    ):
        raise InvalidSource(
            f"cannot fetch {source!r}: a Hugging Face source is hf://ORG/REPO/FILE[@REVISION] "
            "(one file, e.g. hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf@main) "
            "or hf://ORG/REPO[@REVISION] (the repository's files, filtered with --include)"
        )
    endpoint = (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    token = env.get("HF_TOKEN")
    return HubSource(
        source=source,
        endpoint=endpoint,
        repo=f"{parts[0]}/{parts[1]}",
        revision=revision or HF_DEFAULT_REVISION,
        file="/".join(parts[2:]) or None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )


def parse_file_entry(text: str) -> tuple[str, str]:
    """`URL=SHA256`, one entry of a list of files (the last '=' splits: URLs may hold '=')."""
    url, _, digest = text.rpartition("=")
    digest = digest.strip().lower()
    if not url or not _SHA256.fullmatch(digest):
        raise InvalidSource(f"{text!r} is not URL=SHA256 (an http(s) URL, '=', 64 hex digits)")
    parse_url(url)
    return url, digest


def check_filename(name: str, source: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidSource(
            f"cannot tell the file name from {source!r}: pass --filename NAME "
            "(a plain name, no slashes)"
        )


def url_with_last_segment(url: str, name: str) -> str:
    """`url` with its file name replaced: where the other parts of a split file are."""
    parts = urlsplit(url)
    folder = parts.path.rpartition("/")[0]
    return parts._replace(path=f"{folder}/{quote(name)}").geturl()


def url_file_name(url: str) -> str:
    """The file name at the end of `url`'s path ('' when it ends in '/')."""
    return unquote(posixpath.basename(urlsplit(url).path))
